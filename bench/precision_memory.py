"""The memory plan and fp16 against what a run measures.

`--mode plan`: stage 1 trained for a few steps at three batch layouts, each in its own process; the plan's predicted
peak (`planned_peak_gb` in metrics.json, made by `trainer.train.memory_plan` before the base loaded) against
`torch.cuda.max_memory_allocated` on a GPU, or the process's peak resident memory on a CPU.

`--mode fp16`: the paper recipe (configs/paper.yaml stage 1) for `--steps` optimizer steps in fp16 and in bf16 on the
same model and data: PASS when every step's loss after warm-up is within 1% of bf16's and no optimizer step was
skipped by the loss scaler after warm-up. Needs a GPU with bf16 (it compares the two); `--tiny` on a CPU rehearses the
script with fp32 against bf16.

On a GPU both run at Mistral-7B-Instruct-v0.3's shapes on bench/gpu_qlora.py's random-weight model and synthetic
conversations (built once, reused); on a CPU (`--demo`) the plan mode runs the embedded demo model on the demo's
stage-1 dialogues.

    python bench/precision_memory.py --mode plan --demo          # CPU: demo model, 3 layouts (~5 min on 2 cores)
    python bench/precision_memory.py --mode plan                  # GPU, Mistral-7B shapes (bench/run_gpu.sh --plan)
    python bench/precision_memory.py --mode fp16 --steps 12       # GPU (bench/run_gpu.sh --fp16)

Writes `<out-dir>/precision_memory-<mode>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import gpu_qlora  # noqa: E402  (bench/ sibling: the model and data at Mistral-7B shapes are built there)
from bench.common import answer_child, device_info, result_saver, spawn_child, versions  # noqa: E402

LAYOUTS_GPU = (("8 x 1, checkpointing (paper.yaml)", ["stages.stage1.per_device_train_batch_size=8",
                                                      "stages.stage1.gradient_accumulation_steps=1"]),
               ("2 x 4, checkpointing", ["stages.stage1.per_device_train_batch_size=2",
                                         "stages.stage1.gradient_accumulation_steps=4"]),
               ("2 x 4, no checkpointing", ["stages.stage1.per_device_train_batch_size=2",
                                            "stages.stage1.gradient_accumulation_steps=4",
                                            "training.gradient_checkpointing=false"]))
LAYOUTS_DEMO = (("1 x 2", ["training.per_device_train_batch_size=1", "training.gradient_accumulation_steps=2"]),
                ("2 x 1 (demo.yaml)", []),
                ("4 x 1, no checkpointing", ["training.per_device_train_batch_size=4",
                                             "training.gradient_checkpointing=false"]))
TOLERANCE = 0.01


def child_train(kind: str, spec: dict) -> dict:
    """Stage 1 in this process with `spec["overrides"]`: per-step losses, skipped steps, and the stage's metrics."""
    import torch
    import trl
    from transformers import TrainerCallback

    import trainer.train.stage as stage_module
    from trainer.train.config import load_config

    losses: list[float] = []
    skipped: list[int] = []

    class Record(TrainerCallback):
        def __init__(self, owner):
            self.owner = owner

        def on_step_end(self, args, state, control, **kwargs):
            if self.owner.accelerator.optimizer_step_was_skipped:
                skipped.append(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    class RecordingSFTTrainer(trl.SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(Record(self))

    trl.SFTTrainer = RecordingSFTTrainer  # run_stage imports it at call time
    cfg = load_config(spec["config"], spec["overrides"])
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    started = time.time()
    stage_dir = stage_module.run_stage(cfg, "stage1")
    metrics = json.loads((stage_dir / "metrics.json").read_text())
    return {"side": kind, **device_info(), "losses": losses, "skipped_at": skipped, "wall_seconds":
            round(time.time() - started, 1), **{k: metrics.get(k) for k in (
                "precision", "planned_peak_gb", "peak_gpu_gb", "peak_rss_gb", "skipped_steps", "nonfinite_grad_norms",
                "loss_scale_last", "tokens_per_second", "liger_kernel")}}


def gpu_overrides(spec: dict, steps: int) -> list[str]:
    """configs/paper.yaml stage 1 on bench/gpu_qlora.py's model and conversations, as its `ours` side runs it."""
    return ["name=bench-precision", f"output_dir={spec['work']}/runs", f"max_length={spec['max_length']}",
            f"model.name={spec['model_dir']}", "model.chat_template=mistral", "training.eval_before_training=false",
            "training.logging_steps=1", "training.save_steps=100000", f"stages.stage1.max_steps={steps}",
            "stages.stage1.num_train_epochs=1000", f"stages.stage1.dataset.path={spec['data']}",
            "stages.stage1.dataset.schema=messages", "stages.stage1.dataset.eval_fraction=0",
            "stages.stage1.warmup_ratio=0", *spec.get("ours_set", [])]


def fp16_verdict(fp16: dict, bf16: dict, warmup: int, tolerance: float = TOLERANCE) -> dict:
    """PASS: every logged loss after `warmup` steps within `tolerance` of bf16's, and no skipped step after warm-up."""
    rows = [{"step": i, "fp16": a, "bf16": b, "rel_diff": abs(a - b) / abs(b) if b else math.inf}
            for i, (a, b) in enumerate(zip(fp16.get("losses", []), bf16.get("losses", [])), start=1)]
    after = [r for r in rows if r["step"] > warmup]
    late_skips = [s for s in fp16.get("skipped_at", []) if s > warmup]
    worst = max((r["rel_diff"] for r in after), default=math.inf)
    ok = bool(after) and worst <= tolerance and not late_skips
    return {"verdict": "PASS" if ok else "FAIL", "worst_rel_diff_after_warmup": worst, "steps": rows,
            "skipped_after_warmup": late_skips, "skipped_total": len(fp16.get("skipped_at", []))}


def markdown(results: dict) -> str:
    lines = [f"# {results['mode']}: {results.get('device')}", "", f"`{results['command']}`", ""]
    if results["mode"] == "plan":
        lines += ["| layout | predicted peak (GiB) | measured (GiB) | predicted / measured |", "|---|---|---|---|"]
        for run in results["runs"]:
            if "error" in run:
                lines.append(f"| {run['label']} | failed: {run['error'][-150:]!r} | | |")
                continue
            measured = run.get("peak_gpu_gb") or run.get("peak_rss_gb")
            ratio = run["planned_peak_gb"] / measured if measured and run.get("planned_peak_gb") else None
            lines.append(f"| {run['label']} | {run.get('planned_peak_gb')} | {measured} | "
                         f"{'' if ratio is None else f'{ratio:.2f}'} |")
    else:
        v = results.get("verdict", {})
        first = results.get("compared", ["fp16"])[0]
        lines += [f"verdict: **{v.get('verdict')}** (worst relative loss difference after warm-up "
                  f"{v.get('worst_rel_diff_after_warmup')}, skipped after warm-up {v.get('skipped_after_warmup')}, "
                  f"skipped in all {v.get('skipped_total')})", "", f"| step | {first} | bf16 | rel. diff |",
                  "|---|---|---|---|"]
        lines += [f"| {r['step']} | {r['fp16']:.4f} | {r['bf16']:.4f} | {r['rel_diff']:.4f} |" for r in v.get("steps", [])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["plan", "fp16"], help="required (children are told by --child)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run (plan: 3)")
    parser.add_argument("--warmup-steps", type=int, default=4, help="fp16: steps the loss scale may settle in")
    parser.add_argument("--demo", action="store_true", help="plan on the CPU with the embedded demo model")
    gpu_qlora.add_shared_arguments(parser, "/tmp/precision_memory-work")
    args = parser.parse_args(argv)
    if answer_child(args, child_train):
        return 0
    if args.mode is None:
        parser.error("--mode plan or --mode fp16 is required")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = {"mode": args.mode, "command": " ".join(["python", "bench/precision_memory.py", *sys.argv[1:]]),
               "versions": versions(), "runs": []}
    out = args.out_dir / f"precision_memory-{args.mode}"

    save = result_saver(results, out, markdown)

    spec = {**gpu_qlora.shared_spec(args), "work": str(args.work_dir)}
    if args.demo:
        base = {"config": str(REPO / "configs" / "demo.yaml"), "work": str(args.work_dir)}
        common = [f"output_dir={args.work_dir}/runs", "stages.stage1.max_steps=2",
                  "training.eval_before_training=false", "stages.stage1.dataset.eval_fraction=0"]
        layouts = [(label, base | {"overrides": common + extra}) for label, extra in LAYOUTS_DEMO]
    else:
        if not gpu_qlora.build_model_and_data({**spec, "conversations": 64}, results, save, quiet=args.quiet):
            return 1
        base = {"config": str(REPO / "configs" / "paper.yaml"), "work": str(args.work_dir)}
        if args.tiny:  # bitsandbytes' 8-bit AdamW is a GPU optimizer
            spec["ours_set"] = ["training.optim=adamw_torch"]
        if args.mode == "plan":
            layouts = [(label, base | {"overrides": gpu_overrides(spec, 3) + extra}) for label, extra in LAYOUTS_GPU]
        else:
            other = "fp32" if args.tiny else "fp16"  # a CPU rehearsal runs no fp16 (accelerate has no CPU scaler)
            results["compared"] = [other, "bf16"]
            layouts = [(p, base | {"overrides": gpu_overrides(spec, args.steps) + [f"precision={p}"]})
                       for p in (other, "bf16")]
    for label, child_spec in layouts:
        print(f"[{args.mode}] {label}", flush=True)
        run = spawn_child("train", child_spec, not args.quiet, __file__)
        results["runs"].append({"label": label, **run})
        results["device"] = run.get("device", results.get("device"))
        save()
    if args.mode == "fp16" and len(results["runs"]) == 2:
        results["verdict"] = fp16_verdict(results["runs"][0], results["runs"][1], args.warmup_steps)
        save()
        print(markdown(results))
        return 0 if results["verdict"]["verdict"] == "PASS" else 1
    print(markdown(results))
    return 0 if all("error" not in r for r in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
