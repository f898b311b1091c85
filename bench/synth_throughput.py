"""Generation throughput of `python -m trainer generate` against a real OpenAI-compatible server.

    python bench/synth_throughput.py [--n 8] [--max-tokens 48] [--concurrency 1 4] [--continuous-batching]

Starts `transformers serve` on the demo model (127.0.0.1, offline, CPU), builds one plan from the knowledge base
and generates it with each concurrency setting in turn, into fresh folders, through the same engine the CLI uses
(`trainer.inference.endpoint.EndpointEngine`). Reports conversations/s, completion tokens/s and the ratio against
concurrency 1 measured in the same run. The server answers one request at a time unless it runs with
`--continuous-batching`, which the flag turns on, so the ratio shows what concurrency buys with each server mode.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import markdown_table  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="conversations per setting")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--continuous-batching", action="store_true")
    parser.add_argument("--out", default="bench/results/synth_throughput.jsonl")
    args = parser.parse_args(argv)

    import torch

    from trainer.hub.local_server import ServeError, transformers_serve
    from trainer.train.demo_model import demo_model_path
    from trainer.kb.loader import load_kb
    from trainer.inference.endpoint import EndpointEngine
    from trainer.inference.model import BASE
    from trainer.jobs.synth import LocalProvider, SynthSettings, build_plan, generate

    kb = load_kb(REPO / "data" / "kb")
    plan = build_plan(kb, args.n, seed=11, false_premise_share=0.1, turns=(8, 8))
    work = Path(tempfile.mkdtemp(prefix="synth-bench-"))
    results = []
    try:
        with transformers_serve(demo_model_path(), work, continuous_batching=args.continuous_batching) as (
                base_url, model):
            decoding = replace(LocalProvider.DECODING, max_new_tokens=args.max_tokens, temperature=0.0)
            EndpointEngine(base_url, {BASE: model}, timeout=600).generate(
                [{"role": "user", "content": "warm-up"}], BASE, replace(decoding, max_new_tokens=8))
            for concurrency in args.concurrency:
                engine = EndpointEngine(base_url, {BASE: model}, concurrency=concurrency, timeout=600)
                settings = SynthSettings(decoding=decoding, concurrency=concurrency)
                run = generate(plan, engine, work / f"c{concurrency}" / "raw.jsonl", settings, progress=False)
                results.append({"concurrency": concurrency, "conversations": len(run.rows),
                                "requests": run.usage.requests, "completion_tokens": run.usage.completion_tokens,
                                "seconds": round(run.seconds, 2),
                                "conversations_per_s": round(len(run.rows) / run.seconds, 4),
                                "tokens_per_s": round(run.usage.completion_tokens / run.seconds, 2)})
    except ServeError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results[0]["tokens_per_s"]
    mode = "continuous batching" if args.continuous_batching else "default (one request at a time)"
    print(f"transformers serve, {mode}; demo model on CPU ({torch.get_num_threads()} threads); {args.n} "
          f"conversations of 4 exchanges, max {args.max_tokens} tokens per answer, temperature 0\n")
    print(markdown_table(["concurrency", "conversations/s", "completion tokens/s", "ratio vs 1"],
                         [[r["concurrency"], r["conversations_per_s"], r["tokens_per_s"],
                           f"{r['tokens_per_s'] / base:.2f}x"] for r in results]))
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "mode": mode, "n": args.n,
                             "max_tokens": args.max_tokens, "results": results}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
