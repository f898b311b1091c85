"""Where adapters leave for the Hub: `python -m trainer push` stages one folder per repo and hands each to
`trainer.hub` for one commit.

Layout on the Hub (one repo per artefact, so each loads in two lines and carries its own card):

- `{namespace}/{run}-{stage}`        model repo: the stage's adapter, tokenizer + chat template, card, loss plot
- `{namespace}/{run}-{stage}-data`   dataset repo: the exact train/test rows the stage used, with its card
- `{namespace}/{run}-space`          Space: the app, pointing at the adapter repos above, with the knowledge base its
                                     settings use, written for the hardware `--space-hardware` names

Everything is read from the run directory (`trainer.train.rundir`) and from the data files it names, whose sha256 must
still match the lineage: a stage whose rows cannot be exported exactly fails the push, naming the file, before
anything is staged (`--no-datasets` leaves the data out on purpose; data read from a Hub dataset is linked from the
card, not re-published). Each repo gets one commit per push with all its files; a repo whose files are already
identical gets none.

Gate: when `runs/<name>/eval/results.json` holds `{"gate": {"<stage>": {"verdict": "passed" | "failed" |
"inconclusive", "summary": str}}}` (written by the evaluation), a failed adapter is refused unless `--force`; an
inconclusive one is published with that verdict in its card; the card states the verdict either way.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from trainer import REPO_ROOT
from trainer.hub.cards import base_hub_id, dataset_card, model_card, serving_section, space_card
from trainer.train.rundir import verdict_of
from trainer.hub.api import HubError, connect, push_folder, whoami
from trainer.hub.space_hardware import DEFAULT_HARDWARE, HARDWARE, SpaceHardware, space_requirements
from trainer.train.rundir import RECORD_FILES, RunError, StageRun, finished_stages, read_stage

ADAPTER_FILES_EXCLUDED = {"training_args.bin", "README.md"}  # pickled args and PEFT's stub card
SPACE_FILES = ("app.py",)
SPACE_PACKAGES = ("trainer", "space")
PLACEHOLDER_NAMESPACE = "your-namespace"
_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass
class RepoPlan:
    """One repo to push: its id and type, and the staged folder that becomes its content."""

    repo_id: str
    repo_type: str
    folder: Path
    title: str
    private: bool = False
    revision: str | None = None
    commit: str | None = None
    status: str = "planned"

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file())


@dataclass
class PushContext:
    """What the repos of one push link to: filled in as repos are pushed, and handed to the cards as plain values."""

    run: str
    namespace: str
    revision: str | None = None
    model_repos: dict[str, str] = field(default_factory=dict)
    """Stage -> its model repo (a refused stage has none)."""
    dataset_repos: dict[str, str] = field(default_factory=dict)
    """Stage -> its dataset repo (a stage whose data is not exported has none)."""
    commits: dict[str, str] = field(default_factory=dict)
    """Repo -> the commit this push made there."""

    def model_card(self, stage: StageRun, repo_id: str, gate, forced: bool):
        """The stage's model card, linked to its dataset repo and to its parent's repo and commit."""
        parent = stage.lineage.parent_adapter
        parent_repo = self.model_repos.get(parent.stage or "") if parent else None
        return model_card(stage, repo_id, gate=gate, forced=forced, dataset_repo=self.dataset_repos.get(stage.name),
                          parent_repo=parent_repo, parent_commit=self.commits.get(parent_repo or ""),
                          revision=self.revision)

    def dataset_card(self, stage: StageRun, repo_id: str, rows: dict[str, list[dict]]):
        """The card of the stage's exported rows, linked to its model repo."""
        return dataset_card(stage, repo_id, rows, model_repo=self.model_repos.get(stage.name))


# Staging: the exact folders that become each repo

def export_rows(stage: StageRun) -> dict[str, list[dict]]:
    """The stage's dataset repo content: its train rows and held-out (`test`) rows, exactly as split.json lists
    them, from data files whose sha256 still matches the lineage."""
    return {"train": [c.as_row() for c in stage.train_rows()], "test": [c.as_row() for c in stage.held_out_rows()]}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _fresh(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)


def stage_model_folder(stage: StageRun, ctx: PushContext, repo_id: str, dest: Path, gate, forced) -> None:
    _fresh(dest)
    for path in sorted(stage.adapter_dir.iterdir()):
        if path.is_file() and path.name not in ADAPTER_FILES_EXCLUDED:
            shutil.copy2(path, dest / path.name)
    for name in RECORD_FILES:
        if (stage.dir / name).is_file():
            shutil.copy2(stage.dir / name, dest / name)
    ctx.model_card(stage, repo_id, gate, forced).save(dest / "README.md")


def stage_dataset_folder(stage: StageRun, ctx: PushContext, repo_id: str, dest: Path,
                         rows: dict[str, list[dict]]) -> None:
    _fresh(dest)
    _write_jsonl(dest / "data" / "train.jsonl", rows["train"])
    _write_jsonl(dest / "data" / "test.jsonl", rows["test"])
    ctx.dataset_card(stage, repo_id, rows).save(dest / "README.md")


def space_settings(stages: list[StageRun], ctx: PushContext):
    """The pushed Space's settings: the base the adapters were trained on and the pushed adapter repos, nothing
    discovered from a runs folder; every other setting at its default."""
    from trainer.hub.space_settings import AdapterEntry, SpaceConfig

    return SpaceConfig(
        base_model=stages[-1].cfg.model.name,  # the adapters only fit the base they were trained on
        load_in_4bit=True, discover_runs=False,
        adapters=tuple(AdapterEntry(name=s.name, repo=ctx.model_repos[s.name], revision=ctx.revision,
                                    description=f"{s.name} of {ctx.run}") for s in stages if s.name in ctx.model_repos),
    )


def space_data_folders(cfg) -> list[str]:
    """The folders the Space's settings read besides its code, as the settings name them (relative to the Space):
    the knowledge base, whenever anything grounds answers or checks them (app.py loads it before the model)."""
    grounding = cfg.grounding
    if grounding.enabled or grounding.check_answers or grounding.check_premises or any(a.ground for a in cfg.adapters):
        return [grounding.kb]
    return []


def stage_space_folder(stages: list[StageRun], ctx: PushContext, repo_id: str, dest: Path,
                       hardware: SpaceHardware | None = None) -> None:
    """The app, the packages it imports and the data its settings use (`space_data_folders`), with space.yaml
    pointing at the pushed adapter repos and a README header and requirements.txt for `hardware`."""
    from trainer.hub.space_settings import space_config_yaml
    from trainer.kb.loader import resolve_kb_folder

    hardware = hardware or HARDWARE[DEFAULT_HARDWARE]
    settings = space_settings(stages, ctx)
    _fresh(dest)
    for name in SPACE_FILES:
        shutil.copy2(REPO_ROOT / name, dest / name)
    (dest / "requirements.txt").write_text(space_requirements(hardware), encoding="utf-8")
    for folder in space_data_folders(settings):
        if Path(folder).is_absolute():
            raise HubError(f"grounding.kb: {folder} is outside the Space; name a folder relative to it")
        shutil.copytree(resolve_kb_folder(folder), dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for package in SPACE_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".jinja"):
                target = dest / path.relative_to(REPO_ROOT)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    (dest / "space_config").mkdir()
    (dest / "space_config" / "space.yaml").write_text(space_config_yaml(
        settings, "# Written by `python -m trainer push`: the adapters this Space serves.\n"), encoding="utf-8")
    base = base_hub_id(stages[-1])[0]
    served = [(s.name, ctx.model_repos[s.name]) for s in stages if s.name in ctx.model_repos]
    serving = serving_section(base, served, max(s.cfg.lora.r for s in stages), ctx.revision)
    space_card(base, list(ctx.model_repos.values()), list(ctx.dataset_repos.values()), serving,
               hardware=hardware).save(dest / "README.md")


# The push

def run_push(run_dir: str | Path, *, namespace: str | None = None, stages: list[str] | None = None,
             private: bool = False, revision: str | None = None, dry_run: bool = False,
             out_dir: str | Path | None = None, force: bool = False, datasets: bool = True, space: bool = True,
             endpoint: str | None = None, space_hardware: str = DEFAULT_HARDWARE) -> list[RepoPlan]:
    """Stage (and unless `dry_run`, push) a run's adapters, datasets and Space (written for `space_hardware`, a key
    of `trainer.hub.space_hardware.HARDWARE`). Returns what was done per repo."""
    if space_hardware not in HARDWARE:
        raise HubError(f"--space-hardware {space_hardware}: must be one of {', '.join(HARDWARE)}")
    hardware = HARDWARE[space_hardware]
    run_dir = Path(run_dir)
    names = stages or finished_stages(run_dir)
    stage_runs = [read_stage(run_dir, s) for s in names]
    run = stage_runs[0].cfg.name
    gates = {s.name: s.gate() for s in stage_runs}
    refused = [s.name for s in stage_runs if verdict_of(gates[s.name]) == "failed" and not force]

    # Every published stage's rows, read and checked before anything is staged or pushed: an adapter does not go
    # out without the data it names.
    rows: dict[str, dict[str, list[dict]]] = {}
    if datasets:
        for s in stage_runs:
            if s.name in refused or not s.data_is_local:
                continue
            try:
                rows[s.name] = export_rows(s)
            except RunError as exc:
                raise HubError(f"{exc}; or push without the data (--no-datasets)") from None

    api = None
    if not dry_run:
        api = connect(endpoint)
        if namespace is None:
            namespace = whoami(api)
    namespace = namespace or PLACEHOLDER_NAMESPACE
    out = Path(out_dir) if out_dir else run_dir / "push"
    ctx = PushContext(run=run, namespace=namespace, revision=revision)

    def repo(suffix: str) -> str:
        name = f"{run}-{suffix}" if suffix else run
        if not _REPO_NAME.match(name):
            raise HubError(f"repo name {name!r} is not valid on the Hub (letters, digits, . _ -; at most 96)")
        return f"{namespace}/{name}"

    for s in stage_runs:
        ctx.model_repos[s.name] = repo(s.name)
    done: list[RepoPlan] = []
    commit_message = f"Push {run} from {stage_runs[-1].lineage.git.commit or 'a local run'}"

    def finish(plan: RepoPlan) -> None:
        if api is not None:
            plan.status, plan.commit = push_folder(api, plan.repo_id, plan.repo_type, plan.folder, commit_message,
                                                   private=plan.private, revision=plan.revision)
            ctx.commits[plan.repo_id] = plan.commit
        else:
            plan.status = "staged"
        done.append(plan)
        print(f"[push] {plan.status:9s} {plan.repo_type:7s} {plan.repo_id}"
              + (f" @ {plan.commit}" if plan.commit else "") + f"  ({len(plan.files())} files in {plan.folder})",
              flush=True)

    for s in stage_runs:
        gate = gates[s.name]
        if s.name in refused:
            print(f"[push] refused {s.name}: it failed the comparison with its base ({gate.get('summary', '')}); "
                  "publish anyway with --force", flush=True)
            ctx.model_repos.pop(s.name, None)
            continue
        if s.name in rows:
            ctx.dataset_repos[s.name] = repo(f"{s.name}-data")
        elif datasets:
            print(f"[push] dataset of {s.name} not exported: {s.dir}: the data came from "
                  f"{s.cfg.stages[s.name].dataset.path} (not a local file), so there is nothing to export; its "
                  "source is linked from the model card instead", flush=True)
        model_plan = RepoPlan(ctx.model_repos[s.name], "model", out / "models" / ctx.model_repos[s.name],
                              f"adapter {s.name}", private, revision)
        stage_model_folder(s, ctx, model_plan.repo_id, model_plan.folder, gate, force)
        finish(model_plan)
        if s.name in rows:
            data_plan = RepoPlan(ctx.dataset_repos[s.name], "dataset",
                                 out / "datasets" / ctx.dataset_repos[s.name], f"data of {s.name}", private, revision)
            stage_dataset_folder(s, ctx, data_plan.repo_id, data_plan.folder, rows[s.name])
            finish(data_plan)
    if space and ctx.model_repos:
        space_plan = RepoPlan(repo("space"), "space", out / "spaces" / repo("space"), "Space", private, revision)
        print(f"[push] Space hardware {hardware.key} (suggested_hardware: {hardware.flavor}): {hardware.why}",
              flush=True)
        stage_space_folder([s for s in stage_runs if s.name in ctx.model_repos], ctx, space_plan.repo_id,
                           space_plan.folder, hardware)
        finish(space_plan)
    if refused and not ctx.model_repos:
        raise HubError(f"nothing pushed: {', '.join(refused)} failed evaluation (use --force to publish anyway)")
    return done
