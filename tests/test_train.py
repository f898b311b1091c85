"""Integration: both stages of configs/demo.yaml on the embedded demo model, on the CPU, with small test data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import DEMO_CONFIG, REPO, short_demo_overrides

from trainer.train.config import load_config
from trainer.data.conversations import file_sha256
from trainer.train.stage import run_pipeline, run_stage

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def stage_files(demo_stage_files) -> tuple[Path, Path]:
    return demo_stage_files


def demo_config(out: Path, stage_files, *extra: str):
    """The session's shortened demo config (helpers' `short_demo_overrides`) writing to `out`."""
    return load_config(DEMO_CONFIG, short_demo_overrides(out, stage_files, *extra))


@pytest.fixture(scope="module")
def demo_run(demo_training):
    """`python -m trainer train --config configs/demo.yaml`, both stages: the session's one demo training."""
    return demo_training


def read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_both_stages_leave_the_run_directory(demo_run):
    cfg = demo_run.cfg
    for stage in ("stage1", "stage2"):
        d = cfg.run_dir() / stage
        for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/tokenizer.json",
                     "adapter/chat_template.jinja", "resolved_config.yaml", "metrics.json", "lineage.json",
                     "split.json", "loss.png"):
            assert (d / name).is_file(), f"{stage}: {name} missing"
        assert (d / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        metrics = read(d / "metrics.json")
        for key in ("train_loss_first", "train_loss_last", "train_loss_reduction_pct", "eval_loss_first",
                    "eval_loss_last", "eval_loss_reduction_pct", "tokens_seen", "tokens_per_second",
                    "samples_per_second", "peak_rss_gb", "wall_seconds"):
            assert metrics[key] is not None, f"{stage}: {key}"
        assert metrics["tokens_seen"] > 0 and metrics["optimizer_steps"] == cfg.stages[stage].max_steps
        assert load_config(d / "resolved_config.yaml").to_dict() == cfg.to_dict()


def test_each_stage_is_planned_once(demo_run, stage_files):
    """`train --stage all` checks every stage before training any, and reads each stage's data and the tokenizer
    once: the plan it checked is the plan it trains."""
    assert demo_run.reads == {str(stage_files[0]): 1, str(stage_files[1]): 1}
    assert demo_run.tokenizer_loads == 1


def test_stage1_learns_on_assistant_tokens(demo_run):
    cfg = demo_run.cfg
    metrics = read(cfg.run_dir() / "stage1" / "metrics.json")
    assert metrics["eval_loss_last"] < metrics["eval_loss_first"]


def test_base_weights_unchanged_and_lora_weights_changed(demo_run):
    import torch
    from safetensors.torch import load_file

    cfg, before, after = demo_run.cfg, demo_run.weights_before, demo_run.weights_after
    assert before == after  # the 4-bit base is frozen; nothing is ever merged into it
    s1 = load_file(cfg.run_dir() / "stage1" / "adapter" / "adapter_model.safetensors")
    s2 = load_file(cfg.run_dir() / "stage2" / "adapter" / "adapter_model.safetensors")
    b_keys = [k for k in s1 if "lora_B" in k]
    assert b_keys and all(s1[k].abs().sum() > 0 for k in b_keys)  # lora_B starts at zero
    assert set(s1) == set(s2)
    assert any(not torch.equal(s1[k], s2[k]) for k in s1)  # stage 2 trained further


def test_lineage_links_stage2_to_stage1_and_the_data(demo_run, stage_files):
    cfg, before = demo_run.cfg, demo_run.weights_before
    s1 = read(cfg.run_dir() / "stage1" / "lineage.json")
    s2 = read(cfg.run_dir() / "stage2" / "lineage.json")
    assert s1["parent_adapter"] is None
    assert s2["parent_adapter"]["stage"] == "stage1"
    assert s2["parent_adapter"]["adapter_sha256"] == s1["adapter_sha256"] == \
        file_sha256(cfg.run_dir() / "stage1" / "adapter" / "adapter_model.safetensors")
    assert s2["parent_adapter"]["lineage_sha256"] == file_sha256(cfg.run_dir() / "stage1" / "lineage.json")
    assert s1["base_model"]["weights_sha256"]["model.safetensors"] == before
    assert s1["base_model"]["name"] == "smollm2-135m-instruct"
    assert s1["datasets"][0]["file_sha256"] == {str(stage_files[0]): file_sha256(stage_files[0])}
    assert s1["datasets"][0]["kept"] == 10 and s1["split"]["train_rows"] + s1["split"]["eval_rows"] == 10
    assert s1["seed"] == 3407 and s1["libraries"]["trl"] and s1["libraries"]["peft"]
    assert "commit" in s1["git"]
    assert s1["chat_template"]["family"] == "chatml"
    split = read(cfg.run_dir() / "stage1" / "split.json")
    assert len(split["train"]) == s1["split"]["train_rows"] and len(split["eval"]) == s1["split"]["eval_rows"]


def test_the_records_read_back_as_types_and_write_back_byte_for_byte(demo_run, tmp_path):
    from trainer.train.lineage import write_json
    from trainer.train.rundir import finished_stages, read_stage

    cfg = demo_run.cfg
    assert finished_stages(cfg.run_dir()) == ["stage1", "stage2"]
    stage2 = read_stage(cfg.run_dir(), "stage2")
    assert stage2.lineage.parent_adapter.stage == "stage1" and stage2.lineage.base_model.demo
    assert stage2.metrics.optimizer_steps == 1 and stage2.metrics.device.startswith("cpu")
    assert [d.kept for d in stage2.lineage.datasets] == [4] and len(stage2.split.eval) == stage2.lineage.split.eval_rows
    for stage in ("stage1", "stage2"):
        run = read_stage(cfg.run_dir(), stage)
        for path, record in ((run.folder.lineage, run.lineage), (run.folder.metrics, run.metrics),
                             (run.folder.split, run.split)):
            write_json(tmp_path / path.name, record.to_dict())
            assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path


def test_adapter_carries_the_trained_template_and_names_its_base(demo_run, demo_tokenizer):
    from transformers import AutoTokenizer

    from trainer.train.templates import select_training_template

    cfg = demo_run.cfg
    adapter = cfg.run_dir() / "stage2" / "adapter"
    tok = AutoTokenizer.from_pretrained(adapter)
    assert tok.chat_template == select_training_template(demo_tokenizer).text
    assert read(adapter / "adapter_config.json")["base_model_name_or_path"] == "smollm2-135m-instruct"


def test_stage2_starts_from_stage1(demo_run, stage_files, tmp_path):
    """Stage 2's first-batch loss with the stage-1 adapter is below a fresh adapter's on the same batch."""
    cfg = demo_run.cfg
    continued = read(cfg.run_dir() / "stage2" / "metrics.json")["train_loss_first"]
    fresh_cfg = demo_config(tmp_path, stage_files, "stages.stage2.init_from=null",
                            "training.eval_before_training=false")
    fresh = read(run_stage(fresh_cfg, "stage2") / "metrics.json")["train_loss_first"]
    assert continued < fresh


@pytest.mark.slow
def test_padding_free_gives_the_same_loss_as_padded_batches(stage_files, tmp_path, tiny_mistral_dir):
    """Mechanics, so on the tiny random Mistral: one step's loss with and without padding-free batches."""
    losses = {}
    for padding_free in ("false", "true"):
        cfg = demo_config(tmp_path / padding_free, stage_files, f"training.padding_free={padding_free}",
                          f"model.name={tiny_mistral_dir}",
                          "stages.stage1.max_steps=1", "training.eval_before_training=false",
                          "stages.stage1.dataset.eval_fraction=0", "training.per_device_train_batch_size=4")
        losses[padding_free] = read(run_stage(cfg, "stage1") / "metrics.json")["train_loss_first"]
    assert losses["true"] == pytest.approx(losses["false"], rel=0.02)


@pytest.mark.slow
def test_resume_continues_an_interrupted_stage(stage_files, tmp_path):
    """Kill a training process after its first checkpoint, then `--resume` finishes the stage from there."""
    stage1, stage2 = stage_files
    args = [sys.executable, "-m", "trainer", "train", "--config", str(REPO / "configs" / "demo.yaml"),
            "--stage", "stage1", "--set", f"output_dir={tmp_path}", "--set", "max_length=512",
            "--set", f"stages.stage1.dataset.path={stage1}", "--set", "stages.stage1.max_steps=4",
            "--set", "stages.stage1.dataset.eval_fraction=0",
            "--set", "training.save_steps=2", "--set", "training.eval_before_training=false",
            "--set", "training.save_total_limit=3"]
    checkpoints = tmp_path / "demo" / "stage1" / "checkpoints"
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.time() + 300
        while not (checkpoints / "checkpoint-2" / "trainer_state.json").is_file():
            assert proc.poll() is None, "training exited before writing a checkpoint"
            assert time.time() < deadline, "no checkpoint within 5 minutes"
            time.sleep(0.5)
        time.sleep(1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "demo" / "stage1" / "metrics.json").exists()
    done = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*")
                  if (p / "trainer_state.json").is_file())
    assert done and done[-1] < 4

    from trainer.__main__ import main

    assert main(args[3:] + ["--resume"]) == 0
    metrics = read(tmp_path / "demo" / "stage1" / "metrics.json")
    assert metrics["resumed_from"] == f"checkpoint-{done[-1]}"
    assert metrics["optimizer_steps"] == 4
    # A second --resume finds the stage complete and leaves it alone.
    stamp = (tmp_path / "demo" / "stage1" / "metrics.json").stat().st_mtime_ns
    assert main(args[3:] + ["--resume"]) == 0
    assert (tmp_path / "demo" / "stage1" / "metrics.json").stat().st_mtime_ns == stamp


def test_paper_pipeline_runs_end_to_end_on_a_tiny_mistral(tiny_mistral_dir, stage_files, tmp_path):
    """configs/paper.yaml as shipped (8-bit AdamW, NF4, Mistral template, both stages) on a tiny Mistral."""
    stage1, stage2 = stage_files
    cfg = load_config(REPO / "configs" / "paper.yaml", [
        f"model.name={tiny_mistral_dir}", f"output_dir={tmp_path}", "max_length=512",
        f"stages.stage1.dataset.path={stage1}", "stages.stage1.dataset.schema=messages",
        f"stages.stage2.dataset.path={stage2}", "stages.stage1.max_steps=2", "stages.stage2.max_steps=2",
        "training.logging_steps=1",
    ])
    run_pipeline(cfg, "all")
    s2 = read(cfg.run_dir() / "stage2" / "lineage.json")
    assert s2["chat_template"]["family"] == "mistral"
    assert s2["parent_adapter"]["stage"] == "stage1"
    from trainer.train.device import detect_device, native_bf16

    # the dtype that ran: bfloat16 where it is native, float32 on a CPU that would only emulate it
    assert s2["quantization"] == {"load_in_4bit": True, "quant_type": "nf4", "double_quant": True,
                                  "compute_dtype": "bfloat16" if native_bf16(detect_device()) else "float32"}
    resolved = load_config(cfg.run_dir() / "stage2" / "resolved_config.yaml")
    assert resolved.stages["stage2"].optim == "adamw_8bit"
    st2 = resolved.stages["stage2"]
    assert (st2.per_device_train_batch_size, st2.gradient_accumulation_steps) == (8, 2)  # the paper's 2 x 8, packed
    assert st2.padding_free and st2.use_liger_kernel == "auto"
    assert read(cfg.run_dir() / "stage2" / "metrics.json")["liger_kernel"] is False  # no CUDA here


# Training with grounding: the same retrieved KB passages the app serves with, in each row's system prompt

def test_grounded_planning_adds_kb_passages_without_changing_the_split(tmp_path, stage_files, demo_model_dir):
    from trainer.train.stage import plan_pipeline

    from trainer.data.readers import DataError

    # the passages lengthen every row: at max_length 512 most grounded rows no longer fit, and they are rejected
    # (named, with their length), never cut
    with pytest.raises(DataError, match=r"stage1\.jsonl:\d+: too long after templating: \d+ tokens > max_length 512"):
        plan_pipeline(demo_config(tmp_path, stage_files, "stages.stage1.dataset.grounding=kb"), ["stage1"])
    plain = plan_pipeline(demo_config(tmp_path, stage_files, "max_length=1536"), ["stage1"]).stages["stage1"]
    plan = plan_pipeline(demo_config(tmp_path, stage_files, "max_length=1536", "stages.stage1.dataset.grounding=kb",
                                     "stages.stage1.dataset.grounding_k=3"), ["stage1"]).stages["stage1"]
    assert plain.grounded is None and plain.training_rows("train") == plain.data.train
    assert plan.data.split_record() == plain.data.split_record()  # the rows as written decide the split
    rows = plan.training_rows("train")
    assert len(rows) == len(plan.data.train) and [r.location for r in rows] == [c.location for c in plan.data.train]
    for grounded, written in zip(rows, plan.data.train):
        system = grounded.messages[0]
        assert system["role"] == "system" and ("[1] " in system["content"] or "No entry of the knowledge base"
                                               in system["content"])
        assert grounded.messages[1:] == written.messages[1:] if written.messages[0]["role"] == "system" else \
            grounded.messages[1:] == written.messages
    assert any("(source: https://" in r.messages[0]["content"] for r in rows)
    assert sum(plan.data.train_lengths) > sum(plain.data.train_lengths)  # the passages are trained on
    record = plan.grounded["record"]
    assert record["kb_version"]["version"] and record["retrieval"]["k"] == 3 and record["kb_path"].endswith("kb")


def test_grounding_settings_are_validated(tmp_path, stage_files):
    from trainer.typed_yaml import ConfigError

    with pytest.raises(ConfigError, match=r"stages.stage1.dataset.grounding: must be none or kb, got 'sometimes'"):
        demo_config(tmp_path, stage_files, "stages.stage1.dataset.grounding=sometimes")
    with pytest.raises(ConfigError, match=r"stages.stage1.dataset.grounding_k: must be between 1 and 20"):
        demo_config(tmp_path, stage_files, "stages.stage1.dataset.grounding_k=0")


def test_a_grounded_stage_trains_and_its_lineage_records_the_kb(tmp_path, stage_files, demo_model_dir):
    cfg = demo_config(tmp_path, stage_files, "max_length=1024", "stages.stage1.dataset.grounding=kb",
                      "stages.stage1.dataset.grounding_k=2", "stages.stage1.max_steps=1",
                      "training.eval_before_training=false")
    stage_dir = run_stage(cfg, "stage1")
    lineage = json.loads((stage_dir / "lineage.json").read_text())
    assert lineage["grounding"]["method"] == "kb" and lineage["grounding"]["kb_version"]["version"]
    split = json.loads((stage_dir / "split.json").read_text())
    written = {r["sha256"] for r in split["train"]}
    from trainer.train.rundir import read_stage

    rows = read_stage(cfg.run_dir(), "stage1").train_rows()  # the data files' rows, unchanged, still found
    assert {c.content_hash for c in rows} == written
