"""notebooks/paper_recipe.ipynb: committed without outputs, its install choice per card, and the whole notebook run
end to end on the CPU (demo config, a few steps) in a Jupyter kernel of this venv, as Colab or Kaggle would run it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers import REPO

NOTEBOOK = REPO / "notebooks" / "paper_recipe.ipynb"


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def parameter_names(source: str) -> set[str]:
    return {target.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


def test_notebook_is_committed_valid_without_outputs_and_parameters_first():
    nb = read_notebook()
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert code[0].metadata.get("tags") == ["parameters"]
    assert {"CONFIG", "RUN_NAME", "OVERRIDES", "INSTALL", "REPO_URL", "PUSH", "HUB_NAMESPACE", "SPACE_HARDWARE",
            "EVAL_LIMIT"} <= parameter_names(code[0].source)
    assert 'CONFIG = "configs/paper.yaml"' in code[0].source and "PUSH = False" in code[0].source


def notebook_namespace(**params) -> dict:
    """The parameters cell with `params` set, then the helpers cell, run in this process (as the kernel would)."""
    code = [cell.source for cell in read_notebook().cells if cell.cell_type == "code"]
    namespace: dict = {}
    exec(code[0] + "\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items()), namespace)
    exec(code[1], namespace)
    return namespace


def run_cell(namespace: dict, marker: str) -> None:
    """Run the notebook's code cell whose source contains `marker` in `namespace`."""
    cell = next(c for c in read_notebook().cells if c.cell_type == "code" and marker in c.source)
    exec(cell.source, namespace)


@pytest.mark.parametrize("smi, index, liger", [
    ("Tesla T4, 7.5\nTesla T4, 7.5\n", "cu128", True),
    ("Tesla P100-PCIE-16GB, 6.0\n", "cu126", False),
    ("Tesla V100-SXM2-16GB, 7.0\n", "cu126", True),
    ("NVIDIA A100-SXM4-80GB, 8.0\n", "cu128", True),
    ("Tesla P100-PCIE-16GB, [N/A]\n", "cu126", False),  # a driver too old to report the capability
    (None, "cpu", False),
])
def test_install_picks_the_torch_build_and_liger_from_the_compute_capability(smi, index, liger):
    url, uses_liger, why = notebook_namespace()["torch_build"](smi)
    assert url == f"https://download.pytorch.org/whl/{index}" and uses_liger is liger and why


def test_a_plan_that_does_not_fit_stops_the_notebook_with_one_line(capsys):
    ns = notebook_namespace(CONFIG="configs/paper.yaml", OVERRIDES=["stages.stage1.per_device_train_batch_size=4096"],
                            AUTO_FIT=False, REPO_DIR=str(REPO))
    with pytest.raises(ns["Stop"], match="does not fit this device: change the setting named above") as stop:
        run_cell(ns, '"plan"')
    assert stop.value._render_traceback_() == [f"STOPPED: {stop.value}"]
    assert "does not fit on" in capsys.readouterr().out


def test_outside_the_repository_the_notebook_clones_it_or_says_what_to_set(tmp_path, monkeypatch):
    origin = tmp_path / "origin" / "counsellor"
    (origin / "trainer").mkdir(parents=True)
    (origin / "trainer" / "__main__.py").write_text("")
    (origin / "requirements.txt").write_text("")
    git = ["git", "-C", str(origin), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "repo"]):
        subprocess.run(git + args, check=True)
    work = tmp_path / "content"  # Colab's working folder, outside any copy
    work.mkdir()
    monkeypatch.chdir(work)

    ns = notebook_namespace(REPO_URL="", REPO_DIR=None)
    with pytest.raises(ns["Stop"], match="not inside a copy of the repository: set REPO_URL"):
        ns["find_repo"](clone=True)
    ns = notebook_namespace(REPO_URL=str(origin), REPO_DIR=None)
    with pytest.raises(ns["Stop"], match="run the 'Get the code' cell first"):
        ns["find_repo"]()
    run_cell(ns, "find_repo(clone=True)")
    assert ns["repo"] == work / "counsellor" and (work / "counsellor" / "requirements.txt").is_file()
    assert ns["find_repo"]() == work / "counsellor" and ns["run_dir"]() == work / "counsellor" / "runs" / "paper"


def venv_kernel(tmp_path: Path, monkeypatch) -> str:
    """A Jupyter kernel spec running this venv's Python (ipykernel from requirements-dev.txt), found only here."""
    spec = tmp_path / "jupyter" / "kernels" / "trainer-venv"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "trainer venv", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    return "trainer-venv"


def cell_text(cell) -> str:
    """What a code cell printed and the Markdown it displayed."""
    return "".join(out.get("text", "") + out.get("data", {}).get("text/markdown", "") for out in cell.outputs)


@pytest.mark.slow
def test_the_notebook_runs_end_to_end_on_the_cpu(tmp_path, monkeypatch, demo_model_dir, demo_stage_files):
    from nbclient import NotebookClient

    nb = read_notebook()
    stage1, stage2 = demo_stage_files
    params = {
        "CONFIG": "configs/demo.yaml", "RUN_NAME": "notebook", "OUTPUT_DIR": str(tmp_path / "runs"),
        "OVERRIDES": ["max_length=512", "training.eval_before_training=false",
                      f"stages.stage1.dataset.path={stage1}", "stages.stage1.max_steps=1",
                      f"stages.stage2.dataset.path={stage2}", "stages.stage2.max_steps=1"],
        "REPO_URL": "", "REPO_DIR": None, "INSTALL": False,
        "EVAL_LIMIT": 1, "EVAL_MAX_NEW_TOKENS": 8, "EVAL_ARGS": [],
        "PUSH": False, "HUB_NAMESPACE": "my-school", "SPACE_HARDWARE": "cpu-basic", "PUSH_ARGS": [],
    }
    first = nb.cells[next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")]
    assert set(params) <= parameter_names(first.source), "the test may only set the notebook's own parameters"
    first.source += "\n\n# set by tests/test_notebook.py\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())

    # Run from notebooks/, as Jupyter does for a notebook opened there: the repository is found, not cloned.
    NotebookClient(nb, kernel_name=venv_kernel(tmp_path, monkeypatch), timeout=600, startup_timeout=120,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    outputs = {i: cell_text(cell) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"}
    text = "\n".join(outputs.values())
    assert f"repository: {REPO}" in text
    assert "INSTALL is False: using the packages this Python already has" in text
    plan = next(out for out in outputs.values() if "trainer plan" in out)
    assert "precision: " in plan and "stage2: batch x accumulation" in plan and "\nfits on CPU" in plan
    assert plan.rstrip().endswith("The plan fits: training can start.")

    run = tmp_path / "runs" / "notebook"
    for stage in ("stage1", "stage2"):
        assert (run / stage / "adapter" / "adapter_model.safetensors").is_file()
        metrics = json.loads((run / stage / "metrics.json").read_text())
        assert metrics["optimizer_steps"] == 1
        if stage == "stage1":  # the process's first stage: its peak RSS is this stage's alone (ru_maxrss only grows)
            # the plan train made before the base loaded, against what its process held at peak
            assert metrics["planned_peak_gb"] == pytest.approx(metrics["peak_rss_gb"], rel=0.3), metrics
        assert (f"| {stage} | {metrics['precision']} | {metrics['train_loss_first']:.4f} → "
                f"{metrics['train_loss_last']:.4f} | – → ") in text  # no eval before training: shown as not measured

    results = json.loads((run / "eval" / "results.json").read_text())
    assert set(results["gate"]) == {"stage1", "stage2"} and (run / "eval" / "report.md").is_file()
    for stage, gate in results["gate"].items():
        assert f"**{stage}: {gate['verdict'].upper()}**" in text

    staged = run / "push"
    for stage in ("stage1", "stage2"):
        assert (staged / "models" / "my-school" / f"notebook-{stage}" / "adapter_model.safetensors").is_file()
        assert f"staged: dataset my-school/notebook-{stage}-data" in text
    space = staged / "spaces" / "my-school" / "notebook-space"
    assert (space / "app.py").is_file()
    assert "suggested_hardware: cpu-basic" in (space / "README.md").read_text()
    assert "dry run: nothing was uploaded" in text
