"""Where one QLoRA optimizer step spends its time: `torch.profiler` around one step of ours and/or plain TRL.

Each side trains in its own process exactly as bench/gpu_qlora.py trains it (same random-weight model at Mistral-7B
or `--tiny` shapes, same conversations, same settings), for `--warmup-steps` steps and then one more under the
profiler (CPU activity, plus CUDA where there is a GPU). Before training, forward hooks wrap modules in
`record_function` ranges so ops can be attributed to what ran them:

- `qlora/lora`: a PEFT LoRA layer minus its base layer: `lora_A` / `lora_B` (the adapter's small matmuls), dropout,
  scaling, casts and the sum with the base output;
- `qlora/base_linear`: its frozen 4-bit `base_layer` (the base matmul; the NF4 dequantization inside is split out
  by op name: `bitsandbytes::dequantize_4bit` / `dequantize_blockwise`);
- `qlora/attention`: each `self_attn` minus its projections (RoPE, SDPA or varlen SDPA, reshapes);
- `qlora/decoder`: the decoder body (norms, MLP activation, embeddings, residuals: "other");
- `qlora/lm_head_ce`: the causal-LM wrapper outside the decoder body (LM head, cross-entropy, TRL's fused/chunked
  loss or Liger's fused linear cross-entropy);
- `qlora/optimizer`: gradient clipping; the optimizer's own step is torch's `Optimizer.step#...` range.

The backward pass runs outside those ranges, so each backward op is attributed through its autograd node to the
forward op that created it (sequence number and forward thread, as torch's own profiler links backward stacks); with
gradient checkpointing the recomputed forward passes through the hooks again. Each op's self time (device time on a
GPU, CPU time otherwise) goes to exactly one category:

    nf4_dequant, lora, base_matmul, attention, lm_head_ce, optimizer, other

    python bench/profile_step.py --tiny --mode both          # CPU rehearsal at tiny shapes (~1 min)
    python bench/profile_step.py --mode ours                 # on a CUDA GPU at Mistral-7B shapes

Writes `<out-dir>/profile_step.json` (categories in ms and share of the step, the top ops of each category, the
step's wall time) and `profile_step.md`, plus each side's Chrome trace `profile_<side>.json.gz` unless `--no-trace`
(open in chrome://tracing or https://ui.perfetto.dev).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import gpu_qlora  # noqa: E402  (bench/ sibling: the model, data and training sides are built there)
from bench.common import answer_child, finish, result_saver  # noqa: E402

CATEGORIES = ("nf4_dequant", "lora", "base_matmul", "attention", "lm_head_ce", "optimizer", "other")
CATEGORY_LABELS = {"nf4_dequant": "NF4 dequantization (bitsandbytes)",
                   "lora": "LoRA branches (lora_A / lora_B, scaling, casts)",
                   "base_matmul": "frozen 4-bit base matmuls (without dequantization)",
                   "attention": "attention (RoPE, SDPA, reshapes)", "lm_head_ce": "LM head + cross-entropy",
                   "optimizer": "optimizer step + gradient clipping",
                   "other": "other (norms, MLP activation, embeddings, residuals, framework)"}
RANGES = {"qlora/lora": "lora", "qlora/base_linear": "base_matmul", "qlora/attention": "attention",
          "qlora/decoder": "other", "qlora/lm_head_ce": "lm_head_ce", "qlora/optimizer": "optimizer"}
DEQUANT_OPS = ("bitsandbytes::dequantize_4bit", "bitsandbytes::dequantize_blockwise")
ATTENTION_OPS = ("scaled_dot_product", "flash_attention", "flash_attn", "efficient_attention", "_cudnn_attention")
LOSS_OPS = ("cross_entropy", "nll_loss", "log_softmax", "logsumexp", "liger")
BACKWARD_SCOPE = 1  # torch.autograd.RecordScope.BACKWARD_FUNCTION: the autograd node around a backward op
ENGINE_PREFIX = "autograd::engine::evaluate_function: "  # the engine's range around a node (and its grad sums)


@dataclass(frozen=True)
class Op:
    """One profiled op: its name, self times and place in the call tree (indices into the event list)."""

    name: str
    self_cpu_us: float
    self_device_us: float
    parent: int | None
    thread: int = 0
    sequence_nr: int = -1
    backward: bool = False
    """An autograd node of the backward pass (the op's forward is found through sequence_nr / fwd_thread)."""
    fwd_thread: int | None = None


def ops_from_profile(events) -> list[Op]:
    """torch.profiler's FunctionEvents as `Op`s (parents as indices)."""
    index = {id(e): i for i, e in enumerate(events)}
    return [Op(name=e.name, self_cpu_us=float(e.self_cpu_time_total), self_device_us=float(e.self_device_time_total),
               parent=index.get(id(e.cpu_parent)) if e.cpu_parent is not None else None, thread=e.thread,
               sequence_nr=e.sequence_nr,
               backward=getattr(e.scope, "value", e.scope) == BACKWARD_SCOPE or e.name.startswith(ENGINE_PREFIX),
               fwd_thread=e.fwd_thread) for e in events]


def _by_name(name: str) -> str | None:
    low = name.lower()
    if any(key in low for key in ATTENTION_OPS):
        return "attention"
    if any(key in low for key in LOSS_OPS):
        return "lm_head_ce"
    if "matmul4bit" in low:  # bitsandbytes' autograd node for the 4-bit linear (its backward matmul)
        return "base_matmul"
    return None


def categorise(ops: list[Op]) -> list[str]:
    """The category of each op: a dequantization op by name; else the innermost `qlora/*` or `Optimizer.*` range
    around it; inside a backward autograd node, the category of the forward op that created that node; failing
    those, attention / loss ops by name; else `other`."""

    def under_backward(i: int) -> bool:
        j: int | None = i
        while j is not None:
            if ops[j].backward:
                return True
            j = ops[j].parent
        return False

    forward: dict[tuple[int, int], int] = {}
    for i, op in enumerate(ops):
        if op.sequence_nr >= 0 and not under_backward(i):
            forward.setdefault((op.sequence_nr, op.thread), i)
    memo: dict[int, str] = {}

    def resolve(i: int, depth: int = 0) -> str:
        if i in memo:
            return memo[i]
        name = ops[i].name
        found = "nf4_dequant" if name in DEQUANT_OPS or name.startswith(tuple(d + "." for d in DEQUANT_OPS)) else None
        j: int | None = i
        while found is None and j is not None:
            here = ops[j]
            if here.name in RANGES:
                found = RANGES[here.name]
            elif here.name.startswith(("Optimizer.step#", "Optimizer.zero_grad#")):
                found = "optimizer"
            elif here.backward:
                origin = None if here.sequence_nr < 0 else forward.get(
                    (here.sequence_nr, here.fwd_thread if here.fwd_thread is not None else here.thread))
                if origin is not None and depth < 8:
                    found = resolve(origin, depth + 1)
                found = found if found not in (None, "other") else (_by_name(here.name) or _by_name(name) or found)
                break
            j = here.parent
        found = found or _by_name(name) or "other"
        memo[i] = found
        return found

    return [resolve(i) for i in range(len(ops))]


def summarise(ops: list[Op], wall_seconds: float | None, top: int = 6) -> dict:
    """Self time per category (device time where any op has some, else CPU time), its share of all self time,
    and each category's heaviest ops."""
    cats = categorise(ops)
    device = any(op.self_device_us > 0 for op in ops)
    key = "self_device_us" if device else "self_cpu_us"
    totals = {c: 0.0 for c in CATEGORIES}
    by_op: dict[str, dict[str, float]] = {c: {} for c in CATEGORIES}
    for op, cat in zip(ops, cats):
        t = getattr(op, key)
        totals[cat] += t
        by_op[cat][op.name] = by_op[cat].get(op.name, 0.0) + t
    whole = sum(totals.values())
    return {
        "clock": "device (CUDA kernels)" if device else "CPU",
        "total_ms": round(whole / 1000, 3), "step_wall_ms": round(wall_seconds * 1000, 1) if wall_seconds else None,
        "ops": len(ops),
        "categories": {c: {"ms": round(totals[c] / 1000, 3), "share": round(totals[c] / whole, 4) if whole else 0.0,
                           "top_ops": [[n, round(t / 1000, 3)] for n, t in
                                       sorted(by_op[c].items(), key=lambda kv: -kv[1])[:top] if t > 0]}
                       for c in CATEGORIES},
    }


def markdown(results: dict) -> str:
    sides = results["sides"]
    lines = [f"# One QLoRA optimizer step under torch.profiler, {'tiny' if results['tiny'] else 'Mistral-7B'} "
             f"shapes on {results.get('device', '?')}", ""]
    ok = {n: s for n, s in sides.items() if "profile" in s}
    for name, s in sides.items():
        if "profile" not in s:
            lines += [f"{name}: failed: {s.get('error', '')[-300:]!r}", ""]
    if not ok:
        return "\n".join(lines) + "\n"
    lines += [f"Step {results['warmup_steps'] + 1} (after {results['warmup_steps']} warm-up steps), "
              f"{results['sequences_per_step']} conversations; self time by category ("
              + ", ".join(f"{n}: {s['profile']['clock']} clock, {s['profile']['total_ms']:.0f} ms of self time, "
                          f"step wall {s['profile']['step_wall_ms']} ms" for n, s in ok.items()) + ").", "",
              "| category | " + " | ".join(f"{n} ms | {n} share" for n in ok) + " |",
              "|---|" + "---|---|" * len(ok)]
    for c in CATEGORIES:
        cells = " | ".join(f"{s['profile']['categories'][c]['ms']:.1f} | {s['profile']['categories'][c]['share']:.1%}"
                           for s in ok.values())
        lines.append(f"| {CATEGORY_LABELS[c]} | {cells} |")
    for name, s in ok.items():
        lines += ["", f"Heaviest ops ({name}):", ""]
        for c in CATEGORIES:
            tops = s["profile"]["categories"][c]["top_ops"][:3]
            if tops:
                lines.append(f"- {c}: " + ", ".join(f"`{n}` {t:.1f} ms" for n, t in tops))
    return "\n".join(lines) + "\n"


# The child: one side, trained as bench/gpu_qlora.py trains it, with the profiler around one step

def _label_modules(model) -> list:
    """Forward hooks that open a `record_function` range when a module starts and close it when it returns."""
    import torch

    peft_model = model
    while hasattr(peft_model, "module") and not hasattr(peft_model, "get_base_model"):
        peft_model = peft_model.module  # accelerate / DDP wrappers
    causal_lm = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    # PEFT's tuner calls the causal LM's `.forward` directly (no hooks fire there): label the tuner instead.
    outer = peft_model.base_model if hasattr(peft_model, "get_base_model") else causal_lm
    labelled = [(outer, "qlora/lm_head_ce"), (causal_lm.get_decoder(), "qlora/decoder")]
    for name, module in causal_lm.named_modules():
        if name.endswith("self_attn"):
            labelled.append((module, "qlora/attention"))
        if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
            # The whole PEFT layer is LoRA (scaling, casts, the sum with the base output) except its base layer.
            labelled += [(module, "qlora/lora"), (module.base_layer, "qlora/base_linear")]
            for part in ("lora_A", "lora_B", "lora_dropout"):
                labelled += [(m, "qlora/lora") for m in getattr(module, part).values()]
    handles = []
    for module, label in labelled:
        stack: list = []

        def enter(_module, _args, label=label, stack=stack):
            scope = torch.autograd.profiler.record_function(label)
            scope.__enter__()
            stack.append(scope)

        def leave(_module, _args, _output, stack=stack):
            if stack:
                stack.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave, always_call=True)]
    return handles


def child_side(kind: str, spec: dict) -> dict:
    """Train `kind` (ours / baseline) for warm-up + 1 steps; profile the last; return gpu_qlora's result plus the
    profile summary."""
    import torch
    import trl
    from torch.profiler import ProfilerActivity, profile, record_function
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()
    state: dict = {}

    class StepProfiler(TrainerCallback):
        """Label modules at train start; run the profiler from the start to the end of step `warmup + 1`."""

        def on_train_begin(self, args, trainer_state, control, model=None, **kwargs):
            state["handles"] = _label_modules(model)

        def on_step_begin(self, args, trainer_state, control, **kwargs):
            if trainer_state.global_step == spec["warmup_steps"] and "profiler" not in state:
                activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
                if cuda:
                    torch.cuda.synchronize()
                state["profiler"] = profile(activities=activities, record_shapes=False, with_stack=False)
                state["profiler"].__enter__()
                state["started"] = time.perf_counter()

        def on_step_end(self, args, trainer_state, control, **kwargs):
            if "profiler" in state and "wall" not in state:
                if cuda:
                    torch.cuda.synchronize()
                state["wall"] = time.perf_counter() - state["started"]
                state["profiler"].__exit__(None, None, None)

    base_trainer = trl.SFTTrainer

    class ProfiledSFTTrainer(base_trainer):
        def __init__(self, *args, **kwargs):
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), StepProfiler()]
            super().__init__(*args, **kwargs)

        def _clip_grad_norm(self, model):
            with record_function("qlora/optimizer"):
                return super()._clip_grad_norm(model)

    trl.SFTTrainer = ProfiledSFTTrainer  # both sides import it at call time
    result = (gpu_qlora.child_ours if kind == "ours" else gpu_qlora.child_baseline)(spec)
    if "wall" not in state:
        return {**result, "error": "the profiled step never ended (fewer steps than warm-up + 1?)"}
    profiler = state["profiler"]
    summary = summarise(ops_from_profile(profiler.events()), state["wall"])
    if spec.get("trace"):
        plain = Path(spec["work"]) / f"profile_{kind}.json"
        profiler.export_chrome_trace(str(plain))
        target = Path(spec["out_dir"]) / f"profile_{kind}.json.gz"
        with plain.open("rb") as src, gzip.open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        plain.unlink()
        summary["trace"] = str(target)
    return {**result, "profile": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["ours", "baseline", "both"], default="both")
    parser.add_argument("--warmup-steps", type=int, help="steps before the profiled one (default 2; 1 with --tiny)")
    parser.add_argument("--no-trace", action="store_true", help="skip the Chrome traces")
    gpu_qlora.add_shared_arguments(parser, "/tmp/profile_step-work")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if answer_child(args, child_side):
        return 0

    warmup = args.warmup_steps if args.warmup_steps is not None else (1 if args.tiny else 2)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        **gpu_qlora.shared_spec(args), "out_dir": str(args.out_dir), "steps": 1, "warmup_steps": warmup,
        "gen_tokens": 0, "baseline_batch": [2, 4], "trace": not args.no_trace, "conversations": (warmup + 1) * 8,
    }
    results = {"command": "python bench/profile_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "tiny": args.tiny, "mode": args.mode, "warmup_steps": warmup, "sequences_per_step": 8,
               "categories": CATEGORY_LABELS, "sides": {}}
    stem = args.out_dir / "profile_step"
    save = result_saver(results, stem, markdown)

    t0 = time.time()
    keep = ("side", "device", "cuda", "threads", "settings", "liger_used", "peak_gpu_allocated_gb", "peak_rss_gb",
            "profile", "error")
    if not gpu_qlora.build_and_run_sides(
            spec, ["baseline", "ours"] if args.mode == "both" else [args.mode], results, save, quiet=args.quiet,
            script=__file__, keep=keep,
            announce=lambda side: f"[profile] {side}: {warmup} warm-up steps, then one profiled step ..."):
        return 1
    finish(results, save, markdown, stem, t0, "profile")
    return 0 if all("error" not in s for s in results["sides"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
