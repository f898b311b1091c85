"""The layout's promises, checked without a model: the headless trainer never depends on the app, importing any
module loads nothing heavy, and the shipped Space settings load through the real loader."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import subprocess
import sys

from helpers import REPO

APP_PACKAGES = ("gradio", "app", "space")
HEAVY = ("torch", "transformers", "gradio", "peft", "trl", "datasets", "accelerate", "bitsandbytes")


def module_names(package: str) -> list[str]:
    """Every module of a package folder under the repo, as an import name (`trainer.eval.judge`)."""
    names = []
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) for every import in a file: top level or inside a function, `import x`, `from x import y`,
    and `importlib.import_module("x")` / `__import__("x")` with a literal name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def test_the_import_scan_sees_every_kind_of_import():
    source = ("import gradio as gr\nfrom space.engine import BASE\n"
              "def f():\n    import app\n    from space import privacy\n"
              "    importlib.import_module('space.registry')\n    return __import__('gradio.themes')\n"
              "from . import sibling\nimport trainer.config\n")
    assert [name for _, name in imported_names(ast.parse(source))] == [
        "gradio", "space.engine", "trainer.config", "app", "space", "space.registry", "gradio.themes"]


def test_nothing_under_trainer_imports_the_app_or_gradio():
    offending = []
    for path in sorted((REPO / "trainer").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, name in imported_names(tree):
            if name.split(".")[0] in APP_PACKAGES:
                offending.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not offending, "the headless trainer must not depend on the app:\n" + "\n".join(offending)


def import_in_fresh_python(modules: list[str], watch: tuple[str, ...]) -> dict[str, list[str]]:
    """Import `modules` one after another in a new interpreter; for each, the watched top-level packages its
    import brought into sys.modules (attributed to the first module that pulled them in)."""
    code = (
        "import importlib, json, sys\n"
        f"watch, modules, brought = {list(watch)!r}, {modules!r}, {{}}\n"
        "for name in modules:\n"
        "    before = {m for m in watch if m in sys.modules}\n"
        "    importlib.import_module(name)\n"
        "    new = sorted(m for m in watch if m in sys.modules and m not in before)\n"
        "    if new:\n"
        "        brought[name] = new\n"
        "print(json.dumps(brought))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_every_trainer_module_leaves_the_app_unloaded():
    modules = module_names("trainer")
    assert {"trainer.train.config", "trainer.eval.run", "trainer.__main__"} <= set(modules)
    brought = import_in_fresh_python(modules, APP_PACKAGES)
    assert brought == {}, f"importing these trainer modules (or one they import) loaded the app: {brought}"


def test_importing_any_module_loads_no_heavy_library():
    modules = module_names("trainer") + module_names("space") + ["app"]
    assert {"space.engine", "space.chat_tab", "trainer.inference.model"} <= set(modules)
    brought = import_in_fresh_python(modules, HEAVY)
    assert brought == {}, f"heavy imports belong inside functions; at import time these loaded them: {brought}"


def test_the_shipped_space_settings_load_through_the_real_loader(tmp_path):
    from trainer.inference.model import GenerationSettings
    from trainer.hub.space_settings import load_space_config, space_config_yaml

    shipped = REPO / "space_config" / "space.yaml"
    cfg = load_space_config(shipped)
    assert cfg.source == str(shipped)
    assert cfg.base_model == "auto" and cfg.load_in_4bit and cfg.discover_runs and cfg.runs_dir == "runs"
    assert cfg.adapters == ()  # adapters come from runs/ unless listed; the file shows an example in comments
    assert (cfg.limits.max_input_chars, cfg.limits.max_history_turns, cfg.limits.concurrency,
            cfg.limits.queue_size, cfg.limits.max_new_tokens_limit) == (2000, 6, 1, 32, 1024)
    assert cfg.generation == GenerationSettings()  # the file spells out the one source's defaults
    feedback = cfg.feedback
    assert feedback.enabled and feedback.store == "data/feedback/feedback.sqlite" and feedback.hub_dataset is None
    assert feedback.token_env == "LABELLING_TOKEN" and feedback.reviewers == ()

    written = tmp_path / "space.yaml"
    written.write_text(space_config_yaml(cfg, "# written back\n"), encoding="utf-8")
    assert load_space_config(written) == dataclasses.replace(cfg, source=str(written))


def test_the_commented_adapter_example_in_the_shipped_settings_loads(tmp_path):
    from trainer.hub.space_settings import load_space_config

    lines = (REPO / "space_config" / "space.yaml").read_text(encoding="utf-8").splitlines()
    start = lines.index("adapters: []") + 1
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("#"))
    example = [line[1:] for line in lines[start:end]]
    assert example, "space.yaml lost its commented adapter example"
    uncommented = "\n".join(lines[:start - 1] + ["adapters:"] + example + lines[end:])
    (tmp_path / "space.yaml").write_text(uncommented, encoding="utf-8")
    (entry,) = load_space_config(tmp_path / "space.yaml").adapters
    assert entry.name == "stage2" and entry.repo and entry.revision and entry.path is None



PACKAGES = ("trainer", "space")
MAX_MODULE_LINES = 600


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the tool it imports, at the top, inside functions or for type checking alike:
    `from trainer.kb import names` is an arrow to `trainer.kb.names`, `from trainer import REPO_ROOT` to `trainer`."""
    modules = set(module_names("trainer") + module_names("space")) | {"app"}
    graph: dict[str, set[str]] = {}
    for name in sorted(modules):
        path = REPO / (name.replace(".", "/") + ".py")
        if not path.is_file():
            path = REPO / name.replace(".", "/") / "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        arrows = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules
                arrows |= subs or {node.module}
            elif isinstance(node, ast.Import):
                arrows |= {a.name for a in node.names} & modules
        arrows |= {m for _, m in imported_names(tree) if m in modules and m not in arrows and
                   not any(a.startswith(m + ".") for a in arrows)}
        graph[name] = arrows - {name}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted: modules that import each other,
    directly or through others."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_the_circle_finder_finds_direct_and_roundabout_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert sorted(import_circles(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


def test_no_modules_import_each_other():
    graph = import_graph()
    assert graph["trainer.kb.audit"] >= {"trainer.kb.claims", "trainer.kb.loader"}  # lazy imports count too
    circles = import_circles(graph)
    assert not circles, "modules that import each other, directly or through others:\n" + "\n".join(
        " <-> ".join(c) for c in circles)


def test_no_module_of_the_trainer_or_the_app_is_over_600_lines():
    long = {str(p.relative_to(REPO)): n for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these by job (at most {MAX_MODULE_LINES} lines each): {long}"


def test_the_trainer_folders_are_its_jobs():
    folders = {p.name for p in (REPO / "trainer").iterdir() if (p / "__init__.py").is_file()}
    assert folders == {"data", "kb", "train", "inference", "eval", "hub", "jobs"}
    loose = sorted(p.name for p in (REPO / "trainer").glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "providers.py", "typed_yaml.py"]


# Floors: the order written once in docs/architecture.md

def floors() -> list[tuple[str, tuple[str, ...]]]:
    """The floors, bottom up, as docs/architecture.md lists them: (name, the modules or packages on it)."""
    block = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8").split("## Floors", 1)[1].split("```")[1]
    out = []
    for line in block.splitlines():
        match = re.match(r"\s*\d+\s+(\w+)\s+(\S.*)$", line)
        if match:
            out.append((match.group(1), tuple(m.strip() for m in match.group(2).split(","))))
    return out


def floor_of(module: str, order: list[tuple[str, tuple[str, ...]]]) -> int | None:
    """The floor of a module: the one naming it or the longest package holding it (`trainer` is only its own
    `__init__`, not everything under it)."""
    best = None
    for number, (_, names) in enumerate(order):
        for name in names:
            if module == name or (name != "trainer" and module.startswith(name + ".")):
                if best is None or len(name) > best[1]:
                    best = (number, len(name))
    return None if best is None else best[0]


def upward_imports(graph: dict[str, set[str]], order) -> list[str]:
    """`a -> b (floor x above y)` for every import that goes up a floor; a module on no floor is listed too."""
    out = []
    for module, arrows in sorted(graph.items()):
        here = floor_of(module, order)
        if here is None:
            out.append(f"{module} is on no floor")
            continue
        for target in sorted(arrows):
            there = floor_of(target, order)
            if there is not None and there > here:
                out.append(f"{module} -> {target} ({order[there][0]} is above {order[here][0]})")
    return out


def test_the_floor_check_finds_an_import_that_goes_up():
    order = [("settings", ("trainer", "trainer.typed_yaml")), ("data", ("trainer.data",)), ("hub", ("trainer.hub",))]
    graph = {"trainer.data.export": {"trainer.hub.cards", "trainer.typed_yaml"}, "trainer.hub.cards": {"trainer"},
             "trainer.typed_yaml": set(), "trainer.data": {"trainer.data.export"}, "trainer.kb.x": set()}
    assert upward_imports(graph, order) == ["trainer.data.export -> trainer.hub.cards (hub is above data)",
                                            "trainer.kb.x is on no floor"]


def test_every_import_goes_down_the_floors_written_in_the_architecture():
    order = floors()
    assert [name for name, _ in order] == ["settings", "data", "kb", "train", "inference", "eval", "hub", "jobs",
                                           "cli", "app"]
    found = upward_imports(import_graph(), order)
    assert not found, "imports that go up a floor (docs/architecture.md, Floors):\n" + "\n".join(found)


MAX_FUNCTION_LINES = 100


def test_no_function_of_the_trainer_or_the_app_is_over_100_lines():
    long = []
    for path in [*(p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))), REPO / "app.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"split these into steps (at most {MAX_FUNCTION_LINES} lines each): {long}"


def test_every_error_of_the_tool_is_a_user_error_the_cli_prints_in_one_line():
    import importlib
    import inspect

    from trainer import UserError

    found = {}
    for name in module_names("trainer"):
        if name == "trainer.__main__":
            continue
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, Exception):
                found[f"{name}.{cls_name}"] = cls
    assert len(found) >= 14
    strays = sorted(n for n, cls in found.items() if not issubclass(cls, UserError))
    assert not strays, f"errors the command line would print as a traceback: {strays}"
    main = (REPO / "trainer" / "__main__.py").read_text(encoding="utf-8")
    assert "except UserError as exc" in main and main.count("Error,") == 0


def test_no_stub_files_beside_the_modules():
    """Gradio writes a .pyi stub beside a module that subclasses one of its components; none may appear."""
    stubs = sorted(str(p.relative_to(REPO)) for package in PACKAGES for p in (REPO / package).rglob("*.pyi"))
    assert not stubs, f"stub files written at run time: {stubs}"


def crossings(folder: str, forbidden: set[str], skip: str | None = None) -> list[str]:
    """`file:line imports name` for every import under `folder` (but not under `skip`) of a top-level name in
    `forbidden`."""
    found = []
    for path in sorted((REPO / folder).rglob("*.py")):
        if skip and (REPO / skip) in path.parents:
            continue
        for line, name in imported_names(ast.parse(path.read_text(encoding="utf-8"))):
            if name.split(".")[0] in forbidden:
                found.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return found


def test_the_tests_and_the_benchmarks_do_not_import_each_other():
    """tests/ runs the benchmarks as a user does (their arithmetic is tested in bench/tests); bench/ reads nothing of
    tests/. Scripts are named too, since a bench script imports its siblings by name (`import gpu_qlora`)."""
    bench = {"bench"} | {p.stem for p in (REPO / "bench").glob("*.py")}
    tests = {"tests", "conftest"} | {p.stem for p in (REPO / "tests").glob("*.py")}
    assert crossings("tests", bench) == []
    assert crossings("bench", tests, skip="bench/tests") == []
    assert crossings("bench/tests", tests) == []
    assert crossings("bench/tests", bench)  # the check sees an import when there is one


def test_a_test_file_imports_no_other_test_file():
    """Fixtures live in conftest.py and what tests share in helper modules (helpers, stub_servers, run_folder), so a
    test file can be read, run and changed alone."""
    test_files = {p.stem for p in (REPO / "tests").glob("test_*.py")}
    assert crossings("tests", test_files) == []
