"""Generation throughput of `python -m trainer generate` against a real OpenAI-compatible server.

    python bench/synth_throughput.py [--n 8] [--max-tokens 48] [--concurrency 1 4] [--continuous-batching]

Starts `transformers serve` on the demo model (127.0.0.1, offline, CPU), builds one plan from the knowledge base
and generates it with each concurrency setting in turn, into fresh folders, through the same
`OpenAICompatibleProvider` the CLI uses. Reports conversations/s, completion tokens/s and the ratio against
concurrency 1 measured in the same run. The server answers one request at a time unless it runs with
`--continuous-batching`, which the flag turns on, so the ratio shows what concurrency buys with each server mode.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def start_server(model: Path, port: int, continuous_batching: bool) -> subprocess.Popen:
    cli = Path(sys.executable).with_name("transformers")
    args = [str(cli), "serve", str(model), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    if continuous_batching:
        args.append("--continuous-batching")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            raise SystemExit("transformers serve exited")
        if time.time() > deadline:
            proc.kill()
            raise SystemExit("transformers serve did not start")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()
            return proc
        except OSError:
            time.sleep(1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="conversations per setting")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--continuous-batching", action="store_true")
    parser.add_argument("--out", default="bench/results/synth_throughput.jsonl")
    args = parser.parse_args(argv)

    import torch

    from trainer.demo_model import demo_model_path
    from trainer.kb import load_kb
    from trainer.synth import GenerationSettings, OpenAICompatibleProvider, build_plan, generate

    kb = load_kb(REPO / "data" / "kb")
    plan = build_plan(kb, args.n, seed=11, false_premise_share=0.1, turns=(8, 8))
    work = Path(tempfile.mkdtemp(prefix="synth-bench-"))
    model = work / "smollm2-135m-instruct"
    shutil.copytree(demo_model_path(), model)
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = start_server(model, port, args.continuous_batching)
    results = []
    try:
        provider = OpenAICompatibleProvider(f"http://127.0.0.1:{port}/v1", str(model), timeout=600)
        provider.complete([{"role": "user", "content": "warm-up"}], max_tokens=8, temperature=0)
        for concurrency in args.concurrency:
            settings = GenerationSettings(max_tokens=args.max_tokens, temperature=0.0, concurrency=concurrency)
            run = generate(plan, provider, work / f"c{concurrency}" / "raw.jsonl", settings, progress=False)
            results.append({"concurrency": concurrency, "conversations": len(run.rows),
                            "requests": run.usage.requests, "completion_tokens": run.usage.completion_tokens,
                            "seconds": round(run.seconds, 2),
                            "conversations_per_s": round(len(run.rows) / run.seconds, 4),
                            "tokens_per_s": round(run.usage.completion_tokens / run.seconds, 2)})
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    base = results[0]["tokens_per_s"]
    mode = "continuous batching" if args.continuous_batching else "default (one request at a time)"
    print(f"transformers serve, {mode}; demo model on CPU ({torch.get_num_threads()} threads); {args.n} "
          f"conversations of 4 exchanges, max {args.max_tokens} tokens per answer, temperature 0\n")
    print("| concurrency | conversations/s | completion tokens/s | ratio vs 1 |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['concurrency']} | {r['conversations_per_s']} | {r['tokens_per_s']} | "
              f"{r['tokens_per_s'] / base:.2f}x |")
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "mode": mode, "n": args.n,
                             "max_tokens": args.max_tokens, "results": results}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
