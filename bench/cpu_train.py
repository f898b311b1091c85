"""CPU training throughput and peak memory: `trainer train` against TRL's defaults, side by side.

Both sides train the same 4-bit demo model with the same LoRA, chat template, data, batch size, seed and number of
optimizer steps; the loss is on assistant tokens for both. What differs is what each side does with the batch:

- `trl`: SFTTrainer with TRL's defaults (pad each batch to its longest row, gradient checkpointing on);
- `ours`: `trainer.train.stage.run_stage` with the settings of configs/demo.yaml (plus `--set` overrides).

Each side runs in its own process (peak RSS is per process) and reports real tokens per second: tokens of the
conversations themselves, never pad tokens, over the training loop's wall time (model loading excluded).

Data mixes:
  a  the StudyAbroadGPT sample (long conversations of similar length, ~1.7-2.1k tokens)
  b  mixed lengths: short informal questions (~100-250 tokens) interleaved with long answers (~0.7-1.3k tokens)

    python bench/cpu_train.py --mix a --mix b --steps 8 --max-length 2048          # both sides, both mixes
    python bench/cpu_train.py --side ours --mix b --steps 8 --set training.gradient_checkpointing=true
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import append_results  # noqa: E402

SAMPLE = REPO / "tests" / "data" / "studyabroadgpt_sample.jsonl"
SHORT = REPO / "tests" / "data" / "short_dialogues.jsonl"


def _sample_conversations() -> list[list[dict[str, str]]]:
    from trainer.data.conversations import read_dialogues

    return read_dialogues(SAMPLE)


def build_mix(mix: str, tokenizer, template: str, max_length: int) -> list[dict]:
    """The rows of a data mix, each within max_length once templated (so neither side truncates or drops)."""
    def fits(messages):
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_length

    if mix == "a":
        rows = [m for m in _sample_conversations() if fits(m)]
    elif mix == "b":
        short = [json.loads(line)["messages"] for line in SHORT.read_text(encoding="utf-8").splitlines()]
        long = [m[:2] for m in _sample_conversations()]  # one question, one long answer
        rows = []
        for i in range(min(len(short), len(long))):  # distinct rows: the trainer would drop duplicates
            rows.append(short[i])
            rows.append(long[i])
        rows = [m for m in rows if fits(m)]
        random.Random(0).shuffle(rows)
    else:
        raise SystemExit(f"unknown mix {mix!r}")
    return [{"messages": m} for m in rows]


def run_side(side: str, mix: str, steps: int, max_length: int, overrides: list[str], workdir: Path) -> dict:
    """Train one side in this process and return its measurements."""
    import torch

    from trainer.train.config import load_config
    from trainer.train.model import load_tokenizer, resolve_base_model
    from trainer.train.templates import select_training_template

    base = [
        f"max_length={max_length}", "name=bench-" + side, f"output_dir={workdir}",
        "training.eval_before_training=false", "training.save_steps=100000", "training.logging_steps=1",
        f"stages.stage1.max_steps={steps}", "stages.stage1.dataset.eval_fraction=0",
        "stages.stage1.num_train_epochs=100",
    ]
    cfg = load_config(REPO / "configs" / "demo.yaml", base + overrides)
    ref = resolve_base_model(cfg.model.name)
    tokenizer = load_tokenizer(ref)
    template = select_training_template(tokenizer, cfg.model.chat_template)
    rows = build_mix(mix, tokenizer, template.text, max_length)
    data_file = workdir / f"mix-{mix}.jsonl"
    data_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = load_config(REPO / "configs" / "demo.yaml",
                      base + overrides + [f"stages.stage1.dataset.path={data_file}"])
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)

    if side == "ours":
        from trainer.train.stage import run_stage

        stage_dir = run_stage(cfg, "stage1")
        metrics = json.loads((stage_dir / "metrics.json").read_text())
        tokens, seconds = metrics["tokens_seen"], metrics["train_seconds"]
        settings = {k: v for k, v in cfg.to_dict()["stages"]["stage1"].items()
                    if k in ("gradient_checkpointing", "padding_free", "optim")} | {"precision": metrics["precision"]}
    else:
        import datasets
        from trl import SFTConfig, SFTTrainer

        from trainer.train.config import build_lora_config
        from trainer.train.model import load_base_model

        tokenizer.chat_template = template.text
        model = load_base_model(ref, cfg.quantization)
        args = SFTConfig(  # TRL's defaults, except what must match the other side
            output_dir=str(workdir / "trl"), max_steps=steps, per_device_train_batch_size=2,
            gradient_accumulation_steps=1, learning_rate=2e-4, max_length=max_length, seed=cfg.seed, data_seed=cfg.seed,
            assistant_only_loss=True, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=build_lora_config(cfg))
        started = time.time()
        trainer.train()
        seconds = time.time() - started
        tokens = next(h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h)
        settings = {"gradient_checkpointing": args.activation_checkpointing, "padding_free": args.padding_free,
                    "optim": str(args.optim), "bf16": args.bf16}
    return {
        "side": side, "mix": mix, "steps": steps, "max_length": max_length, "rows_in_mix": len(rows),
        "tokens": int(tokens), "seconds": round(seconds, 2), "tokens_per_second": round(tokens / seconds, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "threads": torch.get_num_threads(), "settings": settings, "overrides": overrides,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=["ours", "trl", "both"], default="both")
    parser.add_argument("--mix", action="append", choices=["a", "b"], help="data mix(es); default both")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for our side")
    parser.add_argument("--out", type=Path, help="append results as JSON lines to this file")
    args = parser.parse_args(argv)
    mixes = args.mix or ["a", "b"]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.side != "both":
        with tempfile.TemporaryDirectory() as tmp:
            result = run_side(args.side, mixes[0], args.steps, args.max_length, args.overrides, Path(tmp))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    results = []
    for mix in mixes:
        pair = {}
        for side in ("trl", "ours"):  # side by side, one process each
            cmd = [sys.executable, __file__, "--side", side, "--mix", mix, "--steps", str(args.steps),
                   "--max-length", str(args.max_length)] + [f"--set={o}" for o in args.overrides]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            line = next((out for out in proc.stdout.splitlines() if out.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
                return 1
            pair[side] = json.loads(line[len("RESULT "):])
            print(f"mix {mix} {side:4s}: {pair[side]['tokens_per_second']:8.1f} tokens/s  "
                  f"peak RSS {pair[side]['peak_rss_gb']:.2f} GB  ({pair[side]['tokens']} tokens in "
                  f"{pair[side]['seconds']} s)", flush=True)
        ratio = pair["ours"]["tokens_per_second"] / pair["trl"]["tokens_per_second"]
        mem = pair["ours"]["peak_rss_gb"] / pair["trl"]["peak_rss_gb"]
        print(f"mix {mix}: ours / TRL defaults = {ratio:.2f}x tokens/s, {mem:.2f}x peak RSS", flush=True)
        results.append({"mix": mix, "speedup": round(ratio, 3), "memory_ratio": round(mem, 3), **pair})
    append_results(args.out, results, command=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
