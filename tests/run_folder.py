"""Stage folders written from the real config and data code, without training, for tests of what reads a run.

`write_stage` writes what `trainer.train.stage.run_stage` writes about the data (resolved_config.yaml, split.json and
the lineage's `datasets` and `split`, with the same record types) from `prepare_stage_data`, the function training
calls; the adapter files are placeholders, which the readers under test never load. `retarget_stage` points a trained
stage at other data files the same way (for a push test of a stage with a separate eval file, which the shared demo
run does not have).
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import DATA, REPO, write_jsonl

from trainer.data.conversations import prepare_stage_data
from trainer.train.config import PipelineConfig, dump_config, load_config
from trainer.train.lineage import DatasetRecord, SplitRecord, write_json
from trainer.train.rundir import StageFolder, StageSplit


def dialogues() -> list[dict]:
    return [json.loads(line) for line in (DATA / "short_dialogues.jsonl").read_text(encoding="utf-8").splitlines()]


def data_files(folder: Path) -> tuple[Path, Path]:
    """A training file (8 dialogues) and a separate eval file (3 others)."""
    rows = dialogues()
    folder.mkdir(parents=True, exist_ok=True)
    return write_jsonl(folder / "train.jsonl", rows[:8]), write_jsonl(folder / "test.jsonl", rows[8:11])


def _write_data_records(cfg: PipelineConfig, stage: str, stage_dir: Path) -> None:
    """The records of the stage's data, as `run_stage` makes them; a lineage.json already there keeps its other
    keys (an older run's partial one: only `run`, `stage` and `base_model` besides these)."""
    data = prepare_stage_data(cfg.stage(stage).dataset, seed=cfg.seed, max_length=cfg.max_length)
    folder = StageFolder(stage_dir)
    dump_config(cfg, folder.config, stage=stage)
    write_json(folder.split, StageSplit.from_dict(data.split_record()).to_dict())
    lineage = json.loads(folder.lineage.read_text(encoding="utf-8")) if folder.lineage.is_file() else {
        "run": cfg.name, "stage": stage, "base_model": {"name": cfg.model.name}}
    lineage["datasets"] = [DatasetRecord.from_report(r).to_dict() for r in data.reports]
    lineage["split"] = SplitRecord.of(data, seed=cfg.seed,
                                      separate_eval_file=bool(cfg.stage(stage).dataset.eval_path)).to_dict()
    write_json(folder.lineage, lineage)


def write_stage(root: Path, *overrides: str, stage: str = "stage1") -> Path:
    """A finished-looking stage of configs/demo.yaml under `root/runs`, with the given overrides."""
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"output_dir={root / 'runs'}", *overrides])
    folder = StageFolder(cfg.run_dir() / stage)
    folder.adapter.mkdir(parents=True)
    folder.adapter_weights.write_bytes(b"placeholder")
    write_json(folder.adapter / "adapter_config.json", {"base_model_name_or_path": cfg.model.name})
    (folder.adapter / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    write_json(folder.metrics, {"eval_loss_first": 2.0, "eval_loss_last": 1.5})  # as older runs wrote: a few keys
    _write_data_records(cfg, stage, folder.path)
    return folder.path


def retarget_stage(stage_dir: Path, train: Path, test: Path | None = None) -> None:
    """Point a stage's records at `train` (plus a separate eval file `test`, when given), as training on them
    would have."""
    cfg = load_config(stage_dir / "resolved_config.yaml", [f"stages.{stage_dir.name}.dataset.path={train}",
                                                          f"stages.{stage_dir.name}.dataset.eval_path="
                                                          + (str(test) if test else "null")])
    _write_data_records(cfg, stage_dir.name, stage_dir)
