"""The run folder as one type: what training wrote under `runs/<name>/<stage>/`, read back for push, eval, the app's
registry and export.

    runs/<name>/<stage>/adapter/          PEFT adapter, tokenizer and the chat template it was trained with
    runs/<name>/<stage>/resolved_config.yaml, metrics.json, lineage.json, split.json, loss.png
    runs/<name>/eval/results.json         the evaluation (gate verdict and metrics per stage), when one ran
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, PipelineConfig, load_config


class RunError(ValueError):
    """A run folder that is missing, unfinished or inconsistent; the message names the file and what to do."""


@dataclass(frozen=True)
class StageRun:
    name: str
    dir: Path
    cfg: PipelineConfig
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    split: dict[str, Any]


def read_stage(run_dir: Path, stage: str) -> StageRun:
    stage_dir = run_dir / stage
    needed = ["adapter/adapter_model.safetensors", "adapter/adapter_config.json", "resolved_config.yaml",
              "metrics.json", "lineage.json", "split.json"]
    missing = [n for n in needed if not (stage_dir / n).is_file()]
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


def read_gate(run_dir: Path, stage: str) -> dict[str, Any] | None:
    path = run_dir / "eval" / "results.json"
    if not path.is_file():
        return None
    gate = json.loads(path.read_text(encoding="utf-8")).get("gate", {})
    return gate.get(stage)


def read_eval_metrics(run_dir: Path, stage: str) -> dict[str, float]:
    path = run_dir / "eval" / "results.json"
    if not path.is_file():
        return {}
    adapters = json.loads(path.read_text(encoding="utf-8")).get("adapters", {})
    metrics = adapters.get(stage, {}).get("metrics", {})
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
