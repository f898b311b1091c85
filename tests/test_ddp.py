"""Data parallel on the CPU: the demo pipeline under `torchrun --nproc_per_node 2` (gloo) trains both stages, writes
each stage once, and its first step is the single-process step at the same global batch; the shipped accelerate
config really starts two processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import DATA, REPO, write_jsonl

from trainer.data.conversations import file_sha256

DEMO_CONFIG = REPO / "configs" / "demo.yaml"
ACCELERATE_CPU = REPO / "configs" / "accelerate" / "multi_cpu.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")]


def short_demo(out: Path, data: Path, held_out: Path, batch: int) -> list[str]:
    """configs/demo.yaml cut to one optimizer step per stage on 4 short conversations, one held out (evaluated before
    and after training, as the demo does)."""
    return [f"output_dir={out}", "max_length=256", "torch_threads=1",
            *(f"stages.{s}.{key}" for s in ("stage1", "stage2")
              for key in (f"dataset.path={data}", f"dataset.eval_path={held_out}", "max_steps=1")),
            f"training.per_device_train_batch_size={batch}"]


def launch(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_two_processes_train_both_stages_once_with_the_single_process_loss(demo_model_dir, tmp_path):
    from trainer.train.config import load_config
    from trainer.train.stage import run_stage

    from trainer.train.rundir import read_stage

    rows = [json.loads(line) for line in (DATA / "short_dialogues.jsonl").read_text(encoding="utf-8").splitlines()]
    data, held_out = write_jsonl(tmp_path / "four.jsonl", rows[:4]), write_jsonl(tmp_path / "one.jsonl", rows[4:5])

    # 2 processes x 1 conversation per step ...
    out = tmp_path / "ddp"
    sets = [arg for o in short_demo(out, data, held_out, batch=1) for arg in ("--set", o)]
    done = launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "trainer", "train", "--config", str(DEMO_CONFIG), *sets])
    printed = done.stdout
    run_dir = out / "demo"
    assert sorted(p.name for p in run_dir.iterdir()) == ["stage1", "stage2"]
    assert printed.count("finished: ") == 1, printed
    for stage in ("stage1", "stage2"):
        stage_dir = run_dir / stage
        adapters = [p for p in stage_dir.rglob("adapter_model.safetensors") if "checkpoints" not in p.parts]
        assert adapters == [stage_dir / "adapter" / "adapter_model.safetensors"]
        # one report and one record per stage: the main process alone prints and writes
        assert printed.count(f"[{stage}] {data}: 4 rows read") == 1, printed
        assert printed.count(f"[{stage}] eval loss before training") == 1, printed
        assert printed.count(f"[{stage}] done in") == 1, printed
        metrics = read(stage_dir / "metrics.json")
        assert metrics["device"].endswith(" x 2 processes") and metrics["optimizer_steps"] == 1
        if stage == "stage1":  # the process's first stage: its peak RSS is this stage's alone (ru_maxrss only grows)
            # the memory plan, made before the base loaded, against what the main process held
            assert metrics["planned_peak_gb"] == pytest.approx(metrics["peak_rss_gb"], rel=0.3), metrics
        assert metrics["precision"] in ("bf16", "fp32") and metrics["skipped_steps"] == 0
    s1, s2 = read(run_dir / "stage1" / "lineage.json"), read(run_dir / "stage2" / "lineage.json")
    # stage 2 continued the stage-1 adapter as it was finished: neither file changed after stage 2 read them
    assert s2["parent_adapter"]["stage"] == "stage1"
    assert s2["parent_adapter"]["adapter_sha256"] == s1["adapter_sha256"] == \
        file_sha256(run_dir / "stage1" / "adapter" / "adapter_model.safetensors")
    assert s2["parent_adapter"]["lineage_sha256"] == file_sha256(run_dir / "stage1" / "lineage.json")

    # ... is 1 process x 2 conversations per step: the same rows, the same first loss, and the same gradient (the
    # processes' gradients averaged, not each process training alone)
    single = run_stage(load_config(DEMO_CONFIG, short_demo(tmp_path / "single", data, held_out, batch=2)), "stage1")
    one, two = read(single / "metrics.json"), read(run_dir / "stage1" / "metrics.json")
    assert two["tokens_seen"] == one["tokens_seen"]
    assert two["train_loss_first"] == pytest.approx(one["train_loss_first"], rel=0.01)
    first_step = [next(h for h in read_stage(d.parent, "stage1").log_history() if "grad_norm" in h)
                  for d in (single, run_dir / "stage1")]
    assert first_step[1]["grad_norm"] == pytest.approx(first_step[0]["grad_norm"], rel=0.02)


def test_the_shipped_accelerate_cpu_config_starts_two_processes(tmp_path):
    """`accelerate launch --config_file configs/accelerate/multi_cpu.yaml` (not `--cpu`, which starts one without
    mpirun): two ranks that reach each other over gloo."""
    probe = tmp_path / "probe.py"
    probe.write_text("import torch\nfrom accelerate import PartialState\n"
                     "state = PartialState(cpu=True)\n"
                     "total = torch.ones(1)\ntorch.distributed.all_reduce(total)\n"
                     "print(f'rank {state.process_index} of {state.num_processes} {state.backend} {int(total)}',"
                     " flush=True)\n"
                     "state.wait_for_everyone()\nstate.destroy_process_group()\n")
    done = launch([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CPU),
                   str(probe)], timeout=120)
    assert sorted(re.findall(r"rank \d+ of \d+ \w+ \d+", done.stdout)) == ["rank 0 of 2 gloo 2", "rank 1 of 2 gloo 2"]
