"""The run folder as one type: what training wrote under `runs/<name>/<stage>/`, read back for push, eval, the app's
registry and the cards.

    runs/<name>/<stage>/adapter/          PEFT adapter, tokenizer and the chat template it was trained with
    runs/<name>/<stage>/resolved_config.yaml, metrics.json, lineage.json, split.json, loss.png
    runs/<name>/<stage>/checkpoints/      the Trainer's checkpoints (their trainer_state.json holds the loss log)
    runs/<name>/eval/results.json         the evaluation (gate verdict and metrics per stage), when one ran

The stage's rows are not copied into the run: `train_rows()` / `held_out_rows()` re-read the data files lineage.json
names, check each file's sha256 against it, and pick exactly the conversations split.json lists.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer import REPO_ROOT
from trainer.typed_yaml import ConfigError
from trainer.train.config import PipelineConfig, load_config

if TYPE_CHECKING:
    from trainer.data.conversations import Conversation

STAGE_FILES = ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "resolved_config.yaml",
               "metrics.json", "lineage.json", "split.json")


class RunError(ValueError):
    """A run folder that is missing, unfinished or inconsistent; the message names the file and what to do."""


@dataclass(frozen=True)
class StageRun:
    """One finished stage of a run: its config as trained, metrics, lineage and split (read with `read_stage`)."""

    name: str
    dir: Path
    cfg: PipelineConfig
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    split: dict[str, Any]
    """`{"train": [{"sha256", "source"}, ...], "eval": [...]}`: the conversations each side got, in order."""

    @property
    def run_dir(self) -> Path:
        return self.dir.parent

    @property
    def adapter_dir(self) -> Path:
        return self.dir / "adapter"

    @cached_property
    def template(self) -> str:
        """The chat template saved with the adapter (the one it was trained with)."""
        path = self.adapter_dir / "chat_template.jinja"
        if path.is_file():
            return path.read_text(encoding="utf-8")
        config = self.adapter_dir / "tokenizer_config.json"
        if config.is_file():
            template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
            if isinstance(template, str):
                return template
        raise RunError(f"{self.adapter_dir}: no chat template saved with the adapter (chat_template.jinja)")

    @property
    def data_is_local(self) -> bool:
        """Whether every dataset the stage read was a local file; a Hub dataset has no file here to export."""
        datasets = self.lineage.get("datasets") or []
        return bool(datasets) and all(d.get("file_sha256") for d in datasets)

    def train_rows(self) -> list[Conversation]:
        """The conversations the stage trained on, in split.json's order, from data files checked against the
        lineage (RunError naming the file when one is gone or changed)."""
        return self._split_rows("train")

    def held_out_rows(self) -> list[Conversation]:
        """The conversations the stage held out for evaluation, in split.json's order, checked like `train_rows`."""
        return self._split_rows("eval")

    def _split_rows(self, key: str) -> list[Conversation]:
        by_hash = self._conversations
        wanted = [row["sha256"] for row in self.split.get(key, [])]
        missing = [h for h in wanted if h not in by_hash]
        if missing:
            sources = ", ".join(str(d.get("source")) for d in self.lineage.get("datasets") or [])
            raise RunError(f"{self.dir / 'split.json'}: {len(missing)} {key} rows are no longer in {sources} "
                           "(the data changed since training)")
        return [by_hash[h] for h in wanted]

    @cached_property
    def _conversations(self) -> dict[str, Conversation]:
        """Every conversation of every dataset the lineage names (the stage's `path` and its `eval_path`), by
        content hash, after checking each recorded file's sha256."""
        from trainer.data.readers import DataError
        from trainer.data.conversations import file_sha256, load_conversations

        datasets = self.lineage.get("datasets") or []
        if not datasets:
            raise RunError(f"{self.dir / 'lineage.json'}: names no dataset, so the stage's rows cannot be re-read")
        for dataset in datasets:
            for recorded, sha in (dataset.get("file_sha256") or {}).items():
                path = _data_file(recorded)
                if path is None:
                    raise RunError(f"{recorded}: the data file {self.name} was trained on is gone")
                if file_sha256(path) != sha:
                    raise RunError(f"{recorded}: changed since {self.name} was trained (sha256 differs from "
                                   f"{self.dir / 'lineage.json'}); restore it or retrain")
        # Every row counts as read at training: a bad row was skipped then and is skipped again, not an error now.
        spec = dataclasses.replace(self.cfg.stages[self.name].dataset, max_bad_fraction=1.0, strict=False)
        out: dict[str, Conversation] = {}
        for dataset in datasets:
            try:
                conversations, _ = load_conversations(spec, REPO_ROOT, path=dataset.get("source") or spec.path)
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

        states = sorted((self.dir / "checkpoints").glob("checkpoint-*/trainer_state.json"), key=step)
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
        from trainer.train.lineage import write_json

        path = self.dir / "lineage.json"
        lineage = json.loads(path.read_text(encoding="utf-8"))
        from trainer.eval.gate import verdict_of

        lineage["evaluation"] = {"verdict": verdict_of(gate), "passed": gate["passed"], "summary": gate["summary"],
                                 "results": os.path.relpath(results_path, self.dir), "date": created}
        write_json(path, lineage)


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
    stage_dir = Path(run_dir) / stage
    missing = [n for n in STAGE_FILES if not (stage_dir / n).is_file()]
    if missing:
        raise RunError(f"{stage_dir}: not a finished stage (missing {', '.join(missing)}); train it first")
    try:
        cfg = load_config(stage_dir / "resolved_config.yaml")
    except ConfigError as exc:
        raise RunError(str(exc)) from None
    read = lambda name: json.loads((stage_dir / name).read_text(encoding="utf-8"))  # noqa: E731
    return StageRun(stage, stage_dir, cfg, read("metrics.json"), read("lineage.json"), read("split.json"))


def finished_stages(run_dir: Path) -> list[str]:
    """Stages of a run with an adapter, in the order the run's config lists them."""
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    present = [d.name for d in run_dir.iterdir() if (d / "adapter" / "adapter_model.safetensors").is_file()
               and (d / "resolved_config.yaml").is_file()]
    if not present:
        raise RunError(f"{run_dir}: no finished stage (no */adapter/adapter_model.safetensors)")
    order = list(load_config(run_dir / present[0] / "resolved_config.yaml").stages)
    return sorted(present, key=lambda s: order.index(s) if s in order else len(order))


# Adapters as the app finds them: JSON files only, no model and no config loaded

def adapter_dirs(runs_dir: Path) -> list[Path]:
    """Every `<run>/<stage>/adapter` folder with an adapter_config.json under a runs folder, sorted."""
    return [d for d in sorted(Path(runs_dir).glob("*/*/adapter")) if (d / "adapter_config.json").is_file()]


def trained_base(adapter_dir: Path) -> str | None:
    """The base model an adapter was trained on: its stage's lineage.json when training here wrote one, else the
    adapter's own adapter_config.json."""
    lineage = Path(adapter_dir).parent / "lineage.json"
    if lineage.is_file():
        return json.loads(lineage.read_text(encoding="utf-8")).get("base_model", {}).get("name")
    config = Path(adapter_dir) / "adapter_config.json"
    if config.is_file():
        return json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    return None


def describe_adapter(adapter_dir: Path) -> str:
    """`stage2 of run demo, eval loss 1.980 -> 1.970`, from the stage's own files."""
    stage_dir = Path(adapter_dir).parent
    text = f"{stage_dir.name} of run {stage_dir.parent.name}"
    metrics = stage_dir / "metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text(encoding="utf-8"))
        if m.get("eval_loss_first") is not None and m.get("eval_loss_last") is not None:
            text += f", eval loss {m['eval_loss_first']:.3f} -> {m['eval_loss_last']:.3f}"
    return text
