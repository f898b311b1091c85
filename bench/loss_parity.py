"""Loss parity: the same N optimizer steps on the same data, ours (the shipped path) against plain TRL.

Each side trains in its own process as bench/gpu_qlora.py trains it, on the same random-weight model (Mistral-7B or
`--tiny` shapes) and conversations: `ours` is `trainer.train.stage.run_stage` on configs/paper.yaml with every speed
option it ships (8 conversations packed padding-free into one pass, per-conversation SDPA, gradient checkpointing,
Liger's kernels on CUDA, the compact LM head on a CPU; `--set` adds more), `baseline` is plain TRL + PEFT with padded
2 x 4 batches. What would make the curves differ by design, rather than by the execution path, is made equal:

- the recipe: the baseline gets ours' learning rate, schedule, warm-up (none), gradient clipping, weight decay,
  optimizer and precision (on a CPU without native bfloat16 both compute in float32);
- the starting adapter: PEFT draws LoRA A from the global RNG at different moments in the two code paths, so at
  train start both sides reset every `lora_A` from a generator seeded by its parameter name and zero `lora_B`;
- the batches: each side fingerprints the conversations of every optimizer step (a hash of each conversation's
  tokens, from the packed row or the padded rows); the verdict needs the same 8 conversations per step;
- the loss normalisation: both log the mean loss over all assistant tokens of the step (TRL passes the step's
  token count to the loss, with or without accumulation), so 8 x 1 packed and 2 x 4 padded average alike.

PASS when every step's loss is within `--tolerance` (default 1%) of the baseline's, relative, and the batches match.

    python bench/loss_parity.py --tiny                 # CPU rehearsal at tiny shapes (~2 min)
    python bench/loss_parity.py --steps 8              # on a CUDA GPU at Mistral-7B shapes

Writes `<out-dir>/loss_parity.json` and `loss_parity.md`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import gpu_qlora  # noqa: E402  (bench/ sibling: the model, data and training sides are built there)
from bench.common import answer_child, finish, result_saver  # noqa: E402

TOLERANCE = 0.01


def parity_verdict(ours: list[float], baseline: list[float], tolerance: float = TOLERANCE,
                   same_batches: bool = True) -> dict:
    """Per-step losses side by side, the largest relative difference, and PASS / FAIL: every step within
    `tolerance` of the baseline, as many steps on each side, finite losses, and the same batches."""
    rows = []
    for step, (o, b) in enumerate(zip(ours, baseline), start=1):
        rel = abs(o - b) / abs(b) if b not in (0, None) and math.isfinite(o) and math.isfinite(b) else math.inf
        rows.append({"step": step, "ours": o, "baseline": b, "rel_diff": rel})
    worst = max((r["rel_diff"] for r in rows), default=math.inf)
    reasons = []
    if len(ours) != len(baseline) or not rows:
        reasons.append(f"step counts differ or are empty: ours {len(ours)}, baseline {len(baseline)}")
    if not same_batches:
        reasons.append("the two sides trained on different conversations in some step")
    if worst > tolerance:
        reasons.append(f"max relative difference {worst:.4%} exceeds {tolerance:.2%}")
    return {"steps": rows, "max_rel_diff": worst, "tolerance": tolerance, "same_batches": same_batches,
            "passed": not reasons, "verdict": "PASS" if not reasons else "FAIL", "reasons": reasons}


def markdown(results: dict) -> str:
    lines = [f"# Loss parity, {'tiny' if results['tiny'] else 'Mistral-7B'} shapes on {results.get('device', '?')}",
             ""]
    v = results.get("verdict")
    if not v:
        errors = {n: s.get("error", "")[-300:] for n, s in results.get("sides", {}).items() if "error" in s}
        return "\n".join(lines + [f"No verdict: {errors or results.get('error')}"]) + "\n"
    lines += [f"{len(v['steps'])} optimizer steps of {results['sequences_per_step']} conversations; ours: "
              f"{results['sides']['ours'].get('layout')}, baseline: {results['sides']['baseline'].get('layout')}; "
              f"same conversations in every step: {'yes' if v['same_batches'] else 'NO'}.", "",
              "| step | ours loss | plain TRL loss | relative difference |", "|---|---|---|---|"]
    for r in v["steps"]:
        lines.append(f"| {r['step']} | {r['ours']:.5f} | {r['baseline']:.5f} | {r['rel_diff']:.2e} |")
    lines += ["", f"Max relative difference {v['max_rel_diff']:.2e} against a tolerance of {v['tolerance']:.0%}: "
                  f"**{v['verdict']}**" + (f" ({'; '.join(v['reasons'])})" if v["reasons"] else "") + "."]
    return "\n".join(lines) + "\n"


# The child: one side, trained as bench/gpu_qlora.py trains it, recording losses and batches

def conversation_fingerprints(inputs: dict) -> list[int]:
    """A hash of each conversation's tokens in a batch: rows of a padded batch (attention mask), or the pieces of a
    padding-free row (split where position_ids restart at 0)."""
    ids = inputs["input_ids"]
    pieces = []
    positions = inputs.get("position_ids")
    if ids.shape[0] == 1 and positions is not None and int((positions[0] == 0).sum()) > 1:
        starts = (positions[0] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
        pieces = [ids[0, a:b] for a, b in zip(starts, starts[1:])]
    else:
        mask = inputs.get("attention_mask")
        pieces = [row[mask[i].bool()] if mask is not None else row for i, row in enumerate(ids)]
    return [zlib.crc32(p.cpu().numpy().astype("int64").tobytes()) for p in pieces]


def reset_adapter(model) -> int:
    """Every `lora_A` from a generator seeded by its name (PEFT's kaiming-uniform bound), every `lora_B` zero."""
    import torch

    count = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            key = name.removeprefix("module.")
            if ".lora_A." in key:
                gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
                bound = 1 / math.sqrt(param.shape[1])
                param.copy_((torch.rand(param.shape, generator=gen) * 2 - 1) * bound)
                count += 1
            elif ".lora_B." in key:
                param.zero_()
    return count


def child_side(kind: str, spec: dict) -> dict:
    import trl
    from transformers import TrainerCallback

    losses: dict[int, float] = {}
    batches: dict[int, list[int]] = {}
    reset: list[int] = []

    class LossRecorder(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            reset.append(reset_adapter(model))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses[state.global_step] = float(logs["loss"])

    base_trainer = trl.SFTTrainer

    class ParitySFTTrainer(base_trainer):
        def __init__(self, *args, **kwargs):
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), LossRecorder()]
            super().__init__(*args, **kwargs)

        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                batches.setdefault(self.state.global_step + 1, []).extend(conversation_fingerprints(inputs))
            return super().compute_loss(model, inputs, *args, **kwargs)

    trl.SFTTrainer = ParitySFTTrainer  # both sides import it at call time
    result = (gpu_qlora.child_ours if kind == "ours" else gpu_qlora.child_baseline)(spec)
    settings = result.get("settings", {})
    return {**result, "losses": [losses[s] for s in sorted(losses)],
            "batches": [sorted(batches[s]) for s in sorted(batches)], "lora_a_reset": reset[0] if reset else 0,
            "layout": f"{settings.get('batch')} x {settings.get('grad_accum')}"
                      + (" packed padding-free" if settings.get("padding_free") else " padded")}


def baseline_recipe(overrides: list[str]) -> tuple[dict, str]:
    """SFTConfig settings (and the compute dtype) that give plain TRL ours' recipe, from configs/paper.yaml's stage 1
    with the same overrides bench/gpu_qlora.py applies to ours."""
    import torch

    from trainer.train.config import load_config, pipeline_precision
    from trainer.train.model import base_dtypes

    cfg = load_config(REPO / "configs" / "paper.yaml", overrides)
    st = cfg.stage("stage1")
    precision, dtype = base_dtypes(cfg.quantization, pipeline_precision(cfg))
    return ({"learning_rate": st.learning_rate, "lr_scheduler_type": st.lr_scheduler_type, "warmup_steps": 0,
             "max_grad_norm": st.max_grad_norm, "weight_decay": st.weight_decay,
             "optim": st.optim if torch.cuda.is_available() else "adamw_torch",  # as gpu_qlora.child_ours
             **precision.trl_flags,
             "activation_checkpointing": st.gradient_checkpointing}, dtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per side (default 8)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="relative, per step (default 0.01)")
    gpu_qlora.add_shared_arguments(parser, "/tmp/loss_parity-work")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if answer_child(args, child_side):
        return 0
    if args.steps < 1 or not 0 < args.tolerance < 1:
        parser.error("--steps must be at least 1 and --tolerance in (0, 1)")

    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    baseline_args, dtype = baseline_recipe(args.ours_set)
    spec = {
        **gpu_qlora.shared_spec(args), "steps": args.steps, "warmup_steps": 0, "gen_tokens": 0,
        "baseline_batch": [2, 4], "baseline_args": baseline_args, "baseline_dtype": dtype,
        "conversations": args.steps * 8,
    }
    results = {"command": "python bench/loss_parity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "tiny": args.tiny, "sequences_per_step": 8, "baseline_recipe": baseline_args,
               "compute_dtype": dtype, "sides": {}}
    stem = args.out_dir / "loss_parity"
    save = result_saver(results, stem, markdown)

    t0 = time.time()
    keep = ("side", "device", "settings", "liger_used", "layout", "losses", "batches", "lora_a_reset", "error")
    if not gpu_qlora.build_and_run_sides(spec, ["baseline", "ours"], results, save, quiet=args.quiet,
                                         script=__file__, keep=keep,
                                         announce=lambda side: f"[parity] {side}: {args.steps} optimizer steps ..."):
        return 1
    ours, base = results["sides"]["ours"], results["sides"]["baseline"]
    if "error" not in ours and "error" not in base:
        results["verdict"] = parity_verdict(ours["losses"], base["losses"], args.tolerance,
                                            same_batches=ours["batches"] == base["batches"])
    finish(results, save, markdown, stem, t0, "parity")
    return 0 if results.get("verdict", {}).get("passed") else 1


if __name__ == "__main__":
    sys.exit(main())
