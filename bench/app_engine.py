"""The app's inference engine on the demo model (CPU): adapter switching, streaming overhead, latency.

    python bench/app_engine.py [--runs-dir runs] [--new-tokens 64] [--out bench/results/app_engine.jsonl]

Needs the demo adapters (`python -m trainer train --config configs/demo.yaml`). Measures, each against its baseline
in the same process:

1. adapter switch latency with three adapters loaded (`AdapterModel.activate`, as the engine switches) against
   reloading the base plus one adapter from disk;
2. streaming overhead: `engine.stream` (worker thread + TextIteratorStreamer + stop criterion) against a bare
   `model.generate` on the same prompt, model and adapter, greedy, same number of new tokens;
3. time to first token and decode tokens/s through the engine, with the base in 4-bit NF4 and unquantized.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import append_results  # noqa: E402

QUESTION = [
    {"role": "system", "content": "You are a careful study-abroad counsellor."},
    {"role": "user", "content": "Which documents do I need for a student visa application, and how early should I "
                                "start preparing them?"},
]


def build_engine(runs_dir: Path, load_in_4bit: bool, extra_adapter: Path | None):
    from space.engine import InferenceEngine
    from space.registry import AdapterRegistry
    from trainer.hub.space_settings import load_space_config

    overrides = [f"runs_dir={runs_dir}", f"load_in_4bit={str(load_in_4bit).lower()}"]
    if extra_adapter is not None:
        overrides.append(f"adapters=[{{name: extra, path: {extra_adapter}}}]")
    cfg = load_space_config(None, overrides)
    return InferenceEngine("smollm2-135m-instruct", AdapterRegistry.from_config(cfg, REPO),
                           load_in_4bit=load_in_4bit).load()


def switch_latency(engine, rounds: int) -> dict:
    """Median and p95 milliseconds of the engine's switch, cycling adapter -> base -> next adapter -> ..."""
    order = [n for name in engine.adapter_names for n in (name, "base")]
    samples = []
    for i in range(rounds):
        start = time.perf_counter()
        engine.served.activate(order[i % len(order)])
        samples.append(time.perf_counter() - start)
    samples.sort()
    return {"adapters_loaded": len(engine.adapter_names), "switches": len(samples),
            "median_ms": round(statistics.median(samples) * 1000, 3),
            "p95_ms": round(samples[int(0.95 * len(samples))] * 1000, 3),
            "max_ms": round(samples[-1] * 1000, 3)}


def reload_seconds(runs_dir: Path) -> float:
    """Baseline for switching: load the 4-bit base and one adapter from disk, as a naive app would."""
    from peft import PeftModel

    from trainer.train.config import QuantizationSettings
    from trainer.train.model import load_base_model, resolve_base_model

    start = time.perf_counter()
    base = load_base_model(resolve_base_model("smollm2-135m-instruct"), QuantizationSettings(), for_training=False)
    PeftModel.from_pretrained(base, str(runs_dir / "demo" / "stage2" / "adapter"))
    return time.perf_counter() - start


def streaming_overhead(engine, adapter: str, new_tokens: int, repeats: int) -> dict:
    import torch

    from trainer.inference.engine import StreamStats
    from trainer.inference.model import GenerationSettings

    settings = GenerationSettings(max_new_tokens=new_tokens, temperature=0, repetition_penalty=1.0)
    ids = torch.tensor([engine.prompt_ids(QUESTION, adapter)])
    engine.served.activate(adapter)
    bare, streamed, tokens = [], [], set()
    for i in range(repeats + 1):  # alternate, so drift on a shared machine hits both sides alike; 0 is warm-up
        start = time.perf_counter()
        with torch.inference_mode():
            out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                        max_new_tokens=new_tokens, pad_token_id=engine.tokenizer.eos_token_id)
        bare.append(time.perf_counter() - start)
        tokens.add(("bare", out.shape[1] - ids.shape[1]))
        stats = StreamStats()
        start = time.perf_counter()
        for _ in engine.stream(QUESTION, adapter, settings, stats=stats):
            pass
        streamed.append(time.perf_counter() - start)
        tokens.add(("engine", stats.new_tokens))
    b, s = statistics.median(bare[1:]), statistics.median(streamed[1:])
    return {"adapter": adapter, "new_tokens": sorted(tokens), "repeats": repeats,
            "bare_generate_s": round(b, 3), "engine_stream_s": round(s, 3),
            "overhead_pct": round((s - b) / b * 100, 2)}


def latency(engine, adapter: str, new_tokens: int, repeats: int) -> dict:
    from trainer.inference.engine import StreamStats
    from trainer.inference.model import GenerationSettings

    settings = GenerationSettings(max_new_tokens=new_tokens, temperature=0, repetition_penalty=1.0)
    ttft, rate = [], []
    for _ in range(repeats):
        stats = StreamStats()
        for _ in engine.stream(QUESTION, adapter, settings, stats=stats):
            pass
        ttft.append(stats.first_token_s)
        rate.append((stats.new_tokens - 1) / (stats.total_s - stats.first_token_s))
    return {"load_in_4bit": engine.load_in_4bit, "adapter": adapter, "prompt_tokens": stats.prompt_tokens,
            "new_tokens": stats.new_tokens, "ttft_s": round(statistics.median(ttft), 3),
            "decode_tokens_per_s": round(statistics.median(rate), 2), "load_s": round(engine.load_seconds, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not (args.runs_dir / "demo" / "stage2" / "adapter").is_dir():
        print(f"no demo adapters in {args.runs_dir}; run: python -m trainer train --config configs/demo.yaml")
        return 2
    import torch

    torch.set_num_threads(2)
    results = {"command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory() as tmp:
        extra = Path(tmp) / "extra"
        shutil.copytree(args.runs_dir / "demo" / "stage1" / "adapter", extra)
        engine = build_engine(args.runs_dir, True, extra)
        results["switch"] = switch_latency(engine, 300)
        results["reload_base_plus_adapter_s"] = round(statistics.median(reload_seconds(args.runs_dir)
                                                                        for _ in range(3)), 3)
        results["switch_speedup_vs_reload"] = round(results["reload_base_plus_adapter_s"] * 1000
                                                    / results["switch"]["median_ms"])
        results["streaming"] = streaming_overhead(engine, "demo/stage2", args.new_tokens, args.repeats)
        results["latency_4bit"] = latency(engine, "demo/stage2", args.new_tokens, args.repeats)
        del engine
    results["latency_unquantized"] = latency(build_engine(args.runs_dir, False, None), "demo/stage2",
                                             args.new_tokens, args.repeats)
    print(json.dumps(results, indent=2))
    append_results(args.out, [results])
    return 0


if __name__ == "__main__":
    sys.exit(main())
