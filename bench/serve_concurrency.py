"""Many visitors at once: the Space's `local` engine against `engine: openai` on `transformers serve` and on vLLM,
side by side.

    python bench/serve_concurrency.py [--visitors 1 4 16] [--new-tokens 48] [--engines local transformers vllm]
                                      [--out bench/results/serve.json]

All engines serve the embedded demo model's base on this machine's CPU, through the code the app runs
(`space.engine.InferenceEngine`, `space.remote_engine.OpenAIEngine`). For each number of visitors, that many threads
each stream one counselling question (greedy, the same `--new-tokens`) and time it as a visitor sees it: from the
request to the first text (time to first token, queueing included) and to the end. Reported per engine and load:
aggregate new tokens/s over the wall time of the whole burst (tokens counted with the demo tokenizer on the final
texts, the same way for both engines) and the p50/p95 time to first token.

The local engine holds one lock per generation (the adapter is model-wide state), so its visitors queue; a server
decides for itself how it interleaves requests (`--continuous-batching` passes that flag to `transformers serve`;
vLLM batches continuously, and is started through `scripts/vllm.sh` with its default, compiled, start-up).
Run it on an otherwise idle machine: both engines share its cores with nothing else.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import markdown_table, run_together  # noqa: E402

QUESTIONS = [
    "Which documents do I need for a German student visa?",
    "How many hours may I work per week on a student visa in Australia?",
    "Is health insurance compulsory for international students in Germany?",
    "How do I write a strong statement of purpose for a master's in computer science?",
]
SYSTEM = "You are a careful study-abroad counsellor."


def burst(engine, visitors: int, new_tokens: int, tokenizer) -> dict:
    """`visitors` threads each stream one question at once; what each saw, and the burst's totals."""
    from trainer.inference.model import BASE, GenerationSettings

    settings = GenerationSettings(max_new_tokens=new_tokens, temperature=0.0)
    barrier = threading.Barrier(visitors)
    results: list[dict] = [{} for _ in range(visitors)]

    def visitor(i: int) -> None:
        messages = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        barrier.wait()
        started = time.perf_counter()
        first, text = None, ""
        try:
            for text in engine.stream(messages, BASE, settings):
                if first is None and text:
                    first = time.perf_counter() - started
        except Exception as exc:  # recorded, not raised: one failed visitor must not hide the others' figures
            results[i] = {"error": f"{type(exc).__name__}: {exc}"}
            return
        results[i] = {"ttft_s": first, "total_s": time.perf_counter() - started,
                      "new_tokens": len(tokenizer(text, add_special_tokens=False)["input_ids"])}

    wall = run_together(visitor, visitors)
    ok = [r for r in results if "error" not in r]
    ttfts = sorted(r["ttft_s"] for r in ok if r["ttft_s"] is not None)
    tokens = sum(r["new_tokens"] for r in ok)
    return {
        "visitors": visitors, "wall_s": round(wall, 2), "new_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2) if wall else None,
        "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None,
        "ttft_p95_s": round(ttfts[min(len(ttfts) - 1, int(round(0.95 * (len(ttfts) - 1))))], 3) if ttfts else None,
        "errors": [r["error"] for r in results if "error" in r],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--visitors", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--continuous-batching", action="store_true", help="pass it to transformers serve")
    ap.add_argument("--engines", nargs="+", choices=["local", "transformers", "vllm"],
                    default=["local", "transformers", "vllm"])
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    from trainer.hub.local_server import VLLMServer, transformers_serve
    from space.engine import InferenceEngine
    from space.registry import AdapterRegistry
    from space.remote_engine import OpenAIEngine
    from trainer.train.demo_model import DEMO_MODEL_NAME, demo_model_path
    from trainer.hub.space_settings import load_space_config

    model_dir = demo_model_path()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows: list[dict] = []

    def measure(engine, label: str) -> None:
        burst(engine, 1, 4, tokenizer)  # warm-up: first-call costs are not what a visitor of a running Space sees
        for n in args.visitors:
            rows.append({"engine": label, **burst(engine, n, args.new_tokens, tokenizer)})
            print(json.dumps(rows[-1]), flush=True)

    def remote(url: str, name: str):
        cfg = load_space_config(None, ["engine=openai", f"openai.base_url={url}", f"openai.base_served_name={name}"])
        return OpenAIEngine.from_config(cfg, AdapterRegistry([]))

    if "local" in args.engines:
        local = InferenceEngine(DEMO_MODEL_NAME, AdapterRegistry([]), load_in_4bit=True).load()
        measure(local, "local")
        del local
    if "transformers" in args.engines:
        with tempfile.TemporaryDirectory() as tmp, \
                transformers_serve(model_dir, Path(tmp), continuous_batching=args.continuous_batching) as (url, name):
            measure(remote(url, name), "openai (transformers serve" + (", continuous batching)" if
                                                                       args.continuous_batching else ")"))
    if "vllm" in args.engines:
        with tempfile.TemporaryDirectory() as tmp:
            server = VLLMServer(model_dir, {}, Path(tmp), dtype="bfloat16").start()
            try:
                measure(remote(server.base_url, server.model), "openai (vLLM, CPU build)")
            finally:
                server.stop()

    print("\n" + markdown_table(
        ["engine", "visitors", "new tokens/s (all visitors)", "TTFT p50", "TTFT p95", "errors"],
        [[r["engine"], r["visitors"], r["tokens_per_s"], f"{r['ttft_p50_s']} s", f"{r['ttft_p95_s']} s",
          len(r["errors"])] for r in rows]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"new_tokens": args.new_tokens, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
