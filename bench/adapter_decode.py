"""Adapter decode speed in the `local` engine: eager against compiled decode, side by side in one process (issue 16).

For each decode mode (`eager`: op by op; `compiled`: static KV cache, torch.compile'd decode step, adapters
hot-swapped into one compiled LoRA slot, see `trainer.inference.decode.CompiledDecode`) the script loads the app's
engine (`space.engine.InferenceEngine`) with the base and two LoRA adapters, then measures single-stream greedy
generation:

- the base alone, one adapter, and requests alternating between the two adapters (each one a switch);
- time to first token (a one-token request) and decode tokens/s (the other tokens over the rest of the time);
- the adapter's decode slowdown against the base (the issue's target on a GPU: within 1.3x);
- the switch: `AdapterModel.activate` cycling adapter a -> base -> adapter b -> base, median and p95 ms (target
  under 10 ms), and whether any switch compiled a new graph (torch._dynamo's unique-graph counter);
- the engine's load time, which for `compiled` includes compiling the base's and the slot's decode graphs.

Answers are checked token for token between the modes (greedy): a compiled step that computed something else would
show here before it showed in a chat.

Models:
    python bench/adapter_decode.py --no-4bit             # the demo model (CPU, float32), two random rank-16 adapters
    python bench/adapter_decode.py --modes eager         # the same in 4-bit (compiled 4-bit needs a CUDA GPU)
    python bench/adapter_decode.py --mistral7b           # Mistral-7B-Instruct-v0.3's shapes, random weights (GPU;
                                                         # built by bench/gpu_qlora.py's builder, reused if present)
    python bench/adapter_decode.py --tiny --no-4bit      # those shapes shrunk (hidden 64, 2 layers): a CPU rehearsal

Adapters are written here with random weights at `--rank` over every attention and MLP projection (as
configs/paper.yaml trains them): speed depends on shapes, not on the values. Writes `<out-dir>/adapter_decode.json`
and `.md` (default bench/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUESTION = [{"role": "user", "content": "Which documents do I need for a UK Student visa, and when should I apply "
                                        "for it?"}]


def write_random_adapter(model_dir: Path, out: Path, rank: int, alpha: int, seed: int, base_name: str) -> Path:
    """A PEFT LoRA adapter folder for `model_dir`'s architecture, every projection targeted, random weights (B too,
    so it changes the answers), written without loading the model."""
    import torch
    from safetensors.torch import save_file

    config = json.loads((model_dir / "config.json").read_text())
    hidden, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    q_out, kv_out = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    shapes = {"q_proj": (hidden, q_out), "k_proj": (hidden, kv_out), "v_proj": (hidden, kv_out),
              "o_proj": (q_out, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
              "down_proj": (inter, hidden)}
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for i in range(layers):
        for name, (fan_in, fan_out) in shapes.items():
            group = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            key = f"base_model.model.model.layers.{i}.{group}.{name}"
            weights[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, generator=generator) / fan_in ** 0.5
            weights[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.02
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()},
              str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name, "r": rank,
        "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": list(TARGETS), "bias": "none",
        "inference_mode": True}, indent=2))
    return out


def build_model(args) -> tuple[Path, str]:
    """The base model's folder and the name the adapters record for it."""
    if args.mistral7b or args.tiny:
        from bench.gpu_qlora import MISTRAL_7B_V03, TINY, child_build

        shape = TINY if args.tiny else MISTRAL_7B_V03
        model_dir = args.model_dir or Path(f"/tmp/gpu_qlora-{'tiny' if args.tiny else 'mistral7b'}")
        work = args.work_dir
        work.mkdir(parents=True, exist_ok=True)
        child_build({"model_dir": str(model_dir), "shape": shape, "conversations": 2, "target_tokens": 64,
                     "max_length": 256, "data": str(work / "unused.jsonl")})
        return model_dir, str(model_dir)
    from trainer.train.demo_model import DEMO_MODEL_NAME, demo_model_path

    return demo_model_path(), DEMO_MODEL_NAME


def measure_mode(mode: str, base: str, adapters: list[Path], args) -> dict:
    """Load the engine in `mode`, then time requests and switches; returns figures and the answers' token ids."""
    from dataclasses import replace

    import torch
    from torch._dynamo.utils import counters

    from space.engine import InferenceEngine
    from trainer.inference.engine import StreamStats
    from space.registry import AdapterRegistry, RegisteredAdapter
    from trainer.inference.model import BASE, GenerationSettings

    registry = AdapterRegistry([RegisteredAdapter(name, str(path), True, trained_base=base)
                                for name, path in zip(("a", "b"), adapters)])
    started = time.time()
    engine = InferenceEngine(base, registry, load_in_4bit=args.load_in_4bit, decode=mode,
                             cache_tokens=args.cache_tokens).load()
    load_seconds = time.time() - started
    assert engine.adapter_names == ["a", "b"], engine.refused
    generation_config = engine.model.get_base_model().generation_config
    settings = GenerationSettings(max_new_tokens=args.new_tokens, temperature=0.0, repetition_penalty=1.0)
    answers: dict[str, str] = {}  # "<request number> <adapter>" -> the answer, for every full-length request

    def one(adapter: str, new_tokens: int) -> dict:
        stats = StreamStats()
        generation_config.min_new_tokens = new_tokens  # random weights may pick the end token: never stop early
        text = ""
        for text in engine.stream(QUESTION, adapter, replace(settings, max_new_tokens=new_tokens), stats=stats):
            pass
        if new_tokens == args.new_tokens:
            answers[f"{len(answers)} {adapter}"] = text
        return {"new_tokens": stats.new_tokens, "seconds": stats.total_s}

    def summary(order: list[str]) -> dict:
        """Whole requests of new_tokens; time to first token = a one-token request (prompt + first token);
        decode rate = the other tokens over the difference (the streamer's chunks cannot time single tokens)."""
        full = [one(name, args.new_tokens) for name in order]
        first = [one(name, 1) for name in order]
        seconds = [r["seconds"] for r in full]
        ttft = statistics.median(r["seconds"] for r in first)
        decode = statistics.median(seconds) - ttft
        return {"tokens_per_second": round(sum(r["new_tokens"] for r in full) / sum(seconds), 2),
                "ttft_s": round(ttft, 4),
                "decode_tokens_per_second": round((args.new_tokens - 1) / decode, 2) if decode > 0 else None,
                "requests": len(full)}

    one("a", args.new_tokens)  # warm-up: allocator, kernels (and, compiled, a first run of each graph)
    one(BASE, args.new_tokens)
    graphs_before = counters["stats"]["unique_graphs"]
    repeats = max(1, args.repeats)
    out = {"base": summary([BASE] * repeats), "adapter": summary(["a"] * repeats),
           "switching": summary(["b", "a"] * repeats)}
    base_rate, adapter_rate = out["base"]["decode_tokens_per_second"], out["adapter"]["decode_tokens_per_second"]
    out["adapter_slowdown"] = round(base_rate / adapter_rate, 3) if base_rate and adapter_rate else None

    served = engine.served
    samples = []
    cycle = ["a", BASE, "b", BASE]
    with torch.inference_mode():
        for i in range(args.switches):
            begin = time.perf_counter()
            served.activate(cycle[i % len(cycle)])
            samples.append(time.perf_counter() - begin)
    samples.sort()
    out["switch_ms"] = {"median": round(statistics.median(samples) * 1000, 3),
                        "p95": round(samples[int(0.95 * (len(samples) - 1))] * 1000, 3),
                        "max": round(samples[-1] * 1000, 3), "switches": len(samples)}
    out["graphs_compiled_while_measuring"] = counters["stats"]["unique_graphs"] - graphs_before
    out["engine_load_seconds"] = round(load_seconds, 1)
    out["serving"] = engine.serving
    if torch.cuda.is_available():
        out["peak_gpu_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    engine._worker.shutdown(wait=True)
    return {"figures": out, "answers": answers}


def markdown(results: dict) -> str:
    lines = [f"`{results['command']}`", "",
             f"{results['device']}, base `{results['base']}` ({results['modes'][0]['figures']['serving']}), "
             f"two rank-{results['rank']} adapters on every projection, greedy, {results['new_tokens']} new tokens, "
             f"{results['repeats']} requests per cell", "",
             "| decode | base tok/s | adapter tok/s | adapter slowdown | alternating a/b tok/s | TTFT base / adapter "
             "| switch median / p95 ms | graphs compiled while measuring | engine load s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in results["modes"]:
        f = run["figures"]
        lines.append(f"| {run['mode']} | {f['base']['decode_tokens_per_second']} | "
                     f"{f['adapter']['decode_tokens_per_second']} | {f['adapter_slowdown']}x | "
                     f"{f['switching']['decode_tokens_per_second']} | {f['base']['ttft_s']} / "
                     f"{f['adapter']['ttft_s']} | {f['switch_ms']['median']} / {f['switch_ms']['p95']} | "
                     f"{f['graphs_compiled_while_measuring']} | {f['engine_load_seconds']} |")
    if len(results["modes"]) == 2:
        eager, compiled = (run["figures"] for run in results["modes"])
        ratio = [round(compiled[k]["decode_tokens_per_second"] / eager[k]["decode_tokens_per_second"], 2)
                 if eager[k]["decode_tokens_per_second"] and compiled[k]["decode_tokens_per_second"] else None
                 for k in ("base", "adapter")]
        lines += ["", f"compiled / eager decode: base {ratio[0]}x, adapter {ratio[1]}x; same answers in both modes: "
                      f"{results['same_answers']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shapes = parser.add_mutually_exclusive_group()
    shapes.add_argument("--mistral7b", action="store_true", help="Mistral-7B-Instruct-v0.3's shapes (needs a GPU)")
    shapes.add_argument("--tiny", action="store_true", help="those shapes shrunk: a CPU rehearsal of --mistral7b")
    parser.add_argument("--model-dir", type=Path, help="where the random-weight model is (re)used")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/adapter_decode-work"))
    parser.add_argument("--modes", default="eager,compiled", help="decode modes, in order (default both)")
    parser.add_argument("--no-4bit", dest="load_in_4bit", action="store_false", help="serve the base unquantized")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="requests per cell (median)")
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--cache-tokens", type=int, default=1024, help="compiled decode's static cache length")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if "compiled" in args.modes.split(",") and args.load_in_4bit and not torch.cuda.is_available():
        parser.error("compiled decode of a 4-bit base needs a CUDA GPU (the engine refuses it on a CPU, see "
                     "BENCHMARKS.md); add --no-4bit, or --modes eager")
    model_dir, base = build_model(args)
    adapters = [write_random_adapter(model_dir, args.work_dir / f"adapter_{name}", args.rank, 2 * args.rank, seed,
                                     base) for seed, name in enumerate("ab", start=1)]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    results = {"command": "python bench/adapter_decode.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "device": device, "base": base if not (args.tiny or args.mistral7b) else
               ("Mistral-7B-shaped, random weights" if args.mistral7b else "tiny Mistral-shaped, random weights"),
               "load_in_4bit": args.load_in_4bit, "rank": args.rank, "new_tokens": args.new_tokens,
               "repeats": args.repeats, "modes": []}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    answers = {}
    for mode in args.modes.split(","):
        print(f"[adapter_decode] {mode} ...", flush=True)
        run = measure_mode(mode, str(model_dir) if (args.tiny or args.mistral7b) else base, adapters, args)
        answers[mode] = run["answers"]
        results["modes"].append({"mode": mode, "figures": run["figures"]})
        print(json.dumps(results["modes"][-1]), flush=True)
        (args.out_dir / "adapter_decode.json").write_text(json.dumps(results, indent=2) + "\n")
    first, *others = answers.values()
    differing = sorted({key for other in others for key in first if other.get(key) != first[key]})
    results["same_answers"] = not differing
    results["differing_answers"] = {key: {mode: answers[mode].get(key) for mode in answers} for key in differing}
    (args.out_dir / "adapter_decode.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out_dir / "adapter_decode.md").write_text(markdown(results))
    print(markdown(results))
    return 0 if results["same_answers"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
