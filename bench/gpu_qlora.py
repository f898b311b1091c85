"""QLoRA training and 4-bit generation at Mistral-7B-Instruct-v0.3's exact shapes, offline, side by side with TRL.

No download: the model is built here from a MistralConfig with Mistral-7B-Instruct-v0.3's shapes (hidden 4096,
32 layers, 32 heads, 8 KV heads, MLP 14336, vocabulary 32768, rope theta 1e6, 32768 positions) and random weights,
saved as bf16 safetensors beside a small local tokenizer (BPE trained on the StudyAbroadGPT sample, Mistral's special
tokens, vocabulary padded to 32768, Mistral v0.3's own chat template), then loaded in 4-bit NF4 by each side. Speed
and memory depend on the shapes, not on the weights' values.

Sides, each in its own process (GPU peak memory is per process), on the same synthetic conversations (~1,500 tokens
each, built from the sample's question/answer pairs, max length 2048), 8 conversations per optimizer step as in the
paper:

- `ours`: `trainer.train.stage.run_stage` on configs/paper.yaml as shipped (8 conversations packed into one padding-free
  pass, SDPA per conversation, gradient checkpointing, 8-bit AdamW, and `use_liger_kernel: auto`: TRL's Liger
  kernels on CUDA when `liger_kernel` imports) with the model, data and step count overridden; `--set` changes any
  other setting (bench/run_gpu.sh --sweep compares layouts). The base loads through
  `trainer.train.model.load_base_model`.
  After training, the same process measures generation through `space.engine.InferenceEngine`: the 4-bit base plus
  two adapters (the one just trained and a copy with halved weights), greedy, single stream: base alone, one adapter,
  and requests alternating between the two adapters (each switching).
- `baseline`: plain `transformers` + `peft` + `trl`: `AutoModelForCausalLM.from_pretrained` with the same NF4
  `BitsAndBytesConfig`, `SFTTrainer` with `SFTConfig` defaults (pad each batch to its longest row, no padding-free,
  SDPA, fused AdamW, gradient checkpointing) and a `peft.LoraConfig` with the same r/alpha/targets. Only what must
  match is set: batch 2 x 4, max length 2048 (the default 1024 would cut the conversations), loss on assistant tokens.

Throughput is measured after `--warmup-steps` optimizer steps (CUDA/Triton start-up excluded) to the last step, in
real tokens (TRL's `num_tokens`: padding excluded) per second. Model FLOPs utilisation (MFU), against the device's
dense bf16 peak (table below), uses the PaLM convention:

    FLOPs per token = 6 * N + 12 * L * h * s
    MFU = FLOPs per token * tokens/s / peak

with N every parameter of the unquantized model (7.25e9, embeddings and LM head included), L layers, h hidden size
and s the mean conversation length (each conversation attends only to itself). QLoRA's real work differs (no weight
gradients for the frozen base, a recomputed forward with checkpointing, dequantization), so this is the conventional
figure, comparable with published ones, not a hardware utilisation. The paper's full recipe (13.6M tokens over both
stages) is projected from each side's tokens/s.

    python bench/gpu_qlora.py --mode both --steps 8                # full shapes; needs a CUDA GPU with ~40 GB
    python bench/gpu_qlora.py --tiny --mode both --steps 2         # shrunken shapes, CPU: checks it runs end to end

Writes `<out-dir>/gpu_qlora.json` and `<out-dir>/gpu_qlora.md` (default bench/results/). On a CPU it reports device
`cpu` and leaves MFU and GPU memory empty.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import answer_child, device_info, finish, gpu_memory, result_saver, spawn_child  # noqa: E402

SAMPLE = REPO / "tests" / "data" / "studyabroadgpt_sample.jsonl"
MISTRAL_TEMPLATE = REPO / "tests" / "data" / "mistral_v0.3_chat_template.jinja"
PAPER_TOKENS = 13.6e6  # both stages of the paper's recipe, as the issue counts them

MISTRAL_7B_V03 = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, vocab_size=32768, rope_theta=1e6, max_position_embeddings=32768,
                      head_dim=128, rms_norm_eps=1e-5, sliding_window=None, tie_word_embeddings=False)
TINY = dict(MISTRAL_7B_V03, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, head_dim=16, vocab_size=4096)  # a smaller vocabulary keeps the CPU test quick
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Dense bf16 tensor-core peaks in TFLOP/s from the vendors' datasheets (fp16 where the card has no bf16), matched
# against torch.cuda.get_device_name() in this order.
PEAK_TFLOPS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
               ("L4", 121.0), ("A10G", 70.0), ("T4", 65.0), ("V100", 125.0), ("P100", 18.7)]


def peak_tflops(device_name: str | None) -> float | None:
    if not device_name:
        return None
    return next((peak for key, peak in PEAK_TFLOPS if key.lower() in device_name.lower()), None)


def count_parameters(shape: dict) -> int:
    """Parameters of the unquantized model (embeddings, LM head and norms included): 7,248,023,552 for Mistral-7B."""
    h, layers, inter, vocab = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"], \
        shape["vocab_size"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter + 2 * h
    return vocab * h * (1 if shape["tie_word_embeddings"] else 2) + layers * per_layer + h


def flops_per_token(shape: dict, mean_length: float) -> float:
    """6N + 12 L h s (PaLM, appendix B)."""
    return 6 * count_parameters(shape) + 12 * shape["num_hidden_layers"] * shape["hidden_size"] * mean_length


# Building the model, tokenizer and data (child process "build")

def build_tokenizer(vocab_size: int):
    """BPE trained on the sample with Mistral's special tokens and chat template (`trainer.train.tiny`), its
    vocabulary padded to vocab_size."""
    from trainer.data.conversations import read_dialogues
    from trainer.train.tiny import dialogue_texts, mistral_like_tokenizer

    fast = mistral_like_tokenizer(dialogue_texts(read_dialogues(SAMPLE)), MISTRAL_TEMPLATE.read_text(encoding="utf-8"),
                                  min(vocab_size, 4000), pad_to=vocab_size)
    assert len(fast) == vocab_size, len(fast)
    return fast


def build_conversations(tokenizer, count: int, target: int, max_length: int) -> tuple[list[dict], list[int]]:
    """`count` distinct conversations of about `target` tokens once templated (never over max_length)."""
    pairs = []
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        turns = json.loads(line)["conversations"]
        pairs += [(turns[k]["value"], turns[k + 1]["value"]) for k in range(0, len(turns) - 1, 2)]
    limit = min(max_length - 8, int(target * 1.1))

    def length(messages) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))

    rows, lengths = [], []
    for i in range(count):
        rng = random.Random(i)
        order = rng.sample(range(len(pairs)), len(pairs))
        messages: list[dict[str, str]] = []
        for k, p in enumerate(order):
            question, answer = pairs[p]
            if k == 0:
                question = f"(student {i}) {question}"
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            n = length(messages)
            if n >= target:
                break
        while n > limit:  # trim the last answer by paragraphs, then by characters
            paragraphs = messages[-1]["content"].split("\n\n")
            if len(paragraphs) > 1:
                messages[-1]["content"] = "\n\n".join(paragraphs[:-1])
            else:
                messages[-1]["content"] = messages[-1]["content"][: int(len(messages[-1]["content"]) * 0.8)]
            n = length(messages)
        rows.append({"messages": messages})
        lengths.append(n)
    return rows, lengths


def child_build(spec: dict) -> dict:
    """Build (or reuse) the random-weight model and tokenizer, and write the data file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig

    model_dir, shape = Path(spec["model_dir"]), spec["shape"]
    marker = model_dir / "BENCH_SHAPE.json"
    started = time.time()
    reused = marker.is_file() and json.loads(marker.read_text()) == shape
    if reused:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    else:
        tokenizer = build_tokenizer(shape["vocab_size"])
        config = MistralConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        torch.manual_seed(0)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.device(device):  # random init on the GPU: minutes faster than on the CPU for 7B parameters
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        del model
        marker.write_text(json.dumps(shape))
    build_seconds = time.time() - started
    rows, lengths = build_conversations(tokenizer, spec["conversations"], spec["target_tokens"], spec["max_length"])
    Path(spec["data"]).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return {"build_seconds": round(build_seconds, 1), "reused": reused, "conversations": len(rows),
            "mean_tokens": round(sum(lengths) / len(lengths), 1), "min_tokens": min(lengths),
            "max_tokens": max(lengths), "parameters": count_parameters(shape)}


# Training sides (child processes "ours" and "baseline")

def _timer_callback(marks: list):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time and TRL's running token count at every logged step (the loss .item() syncs the device)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                marks.append((state.global_step, float(logs["num_tokens"]), time.perf_counter()))

    return StepTimer()


def steady_rates(marks: list, warmup: int, sequences_per_step: int) -> dict:
    """Tokens/s and samples/s from the end of step `warmup` to the last step."""
    by_step = {step: (tokens, t) for step, tokens, t in marks}
    last = max(by_step)
    first = warmup if warmup in by_step and warmup < last else min(by_step)
    tokens = by_step[last][0] - by_step[first][0]
    seconds = by_step[last][1] - by_step[first][1]
    if seconds <= 0 or last == first:
        return {"tokens_per_second": None, "samples_per_second": None, "measured_steps": 0}
    steps = sorted(by_step)
    step_seconds = [round(by_step[b][1] - by_step[a][1], 3) for a, b in zip(steps, steps[1:])]
    return {"tokens_per_second": round(tokens / seconds, 1),
            "samples_per_second": round((last - first) * sequences_per_step / seconds, 3),
            "measured_steps": last - first, "measured_tokens": int(tokens), "measured_seconds": round(seconds, 2),
            "step_seconds": step_seconds}


def child_ours(spec: dict) -> dict:
    import torch
    import trl

    import trainer.train.stage as train_module
    from trainer.train.config import load_config

    cuda = torch.cuda.is_available()
    steps = spec["steps"] + spec["warmup_steps"]
    overrides = [
        "name=bench-ours", f"output_dir={spec['work']}/runs", f"max_length={spec['max_length']}",
        f"model.name={spec['model_dir']}", "model.chat_template=mistral",
        "training.eval_before_training=false", "training.logging_steps=1",
        "training.save_steps=100000", f"stages.stage1.max_steps={steps}", "stages.stage1.num_train_epochs=1000",
        f"stages.stage1.dataset.path={spec['data']}", "stages.stage1.dataset.schema=messages",
        "stages.stage1.dataset.eval_fraction=0", "stages.stage1.warmup_ratio=0",
        f"training.use_liger_kernel={ {'auto': 'auto', 'on': 'true', 'off': 'false'}[spec['liger']] }",
    ]
    if not cuda:  # bitsandbytes' 8-bit AdamW is a GPU optimizer
        overrides += ["training.optim=adamw_torch"]
    overrides += spec.get("ours_set", [])
    cfg = load_config(REPO / "configs" / "paper.yaml", overrides)
    st = cfg.stage("stage1")

    marks: list = []

    class TimedSFTTrainer(trl.SFTTrainer):
        def __init__(self, *args, **kwargs):
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), _timer_callback(marks)]
            super().__init__(*args, **kwargs)

    trl.SFTTrainer = TimedSFTTrainer  # run_stage imports it at call time
    started = time.time()
    stage_dir = train_module.run_stage(cfg, "stage1")
    wall = time.time() - started
    metrics = json.loads((stage_dir / "metrics.json").read_text())
    result = {
        "side": "ours", **device_info(), "liger_used": metrics.get("liger_kernel", False),
        "settings": {"padding_free": st.padding_free, "gradient_checkpointing": st.gradient_checkpointing,
                     "optim": st.optim, "batch": st.per_device_train_batch_size,
                     "grad_accum": st.gradient_accumulation_steps, "attn": "sdpa_varlen" if st.padding_free
                     else cfg.model.attn_implementation, "overrides": overrides},
        **steady_rates(marks, spec["warmup_steps"], st.per_device_train_batch_size * st.gradient_accumulation_steps),
        "whole_loop_tokens_per_second": metrics["tokens_per_second"], "optimizer_steps": metrics["optimizer_steps"],
        "train_loss_first": metrics["train_loss_first"], "train_loss_last": metrics["train_loss_last"],
        **gpu_memory(), "peak_rss_gb": metrics["peak_rss_gb"], "wall_seconds": round(wall, 1),
    }
    if spec["gen_tokens"] > 0:
        import gc

        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        result["generation"] = measure_generation(spec, stage_dir / "adapter")
    return result


def child_baseline(spec: dict) -> dict:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from trainer.train.templates import select_training_template

    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    # TRL needs {% generation %} markers for the assistant-only loss; this is the same twin template ours uses.
    tokenizer.chat_template = select_training_template(tokenizer, "mistral").text
    # `baseline_dtype` / `baseline_args` (bench/loss_parity.py): the same precision and optimizer settings as ours,
    # so a loss comparison measures the execution path only; unset, TRL's defaults as a user would have them.
    dtype = getattr(torch, spec.get("baseline_dtype", "bfloat16"))
    model = AutoModelForCausalLM.from_pretrained(
        spec["model_dir"], dtype=dtype, device_map={"": 0} if cuda else None,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype))
    rows = [json.loads(line) for line in Path(spec["data"]).read_text(encoding="utf-8").splitlines()]
    batch, accum = spec["baseline_batch"]
    args = SFTConfig(**{
        "output_dir": f"{spec['work']}/baseline", "max_steps": spec["steps"] + spec["warmup_steps"],
        "per_device_train_batch_size": batch, "gradient_accumulation_steps": accum, "max_length": spec["max_length"],
        "learning_rate": 2e-4, "assistant_only_loss": True, "logging_steps": 1, "save_strategy": "no",
        "report_to": "none", "use_cpu": not cuda, "seed": 3407, "data_seed": 3407, "disable_tqdm": True,
        **spec.get("baseline_args", {}),
    })
    marks: list = []
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=lora, callbacks=[_timer_callback(marks)])
    started = time.time()
    trainer.train()
    wall = time.time() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    import resource

    return {
        "side": "baseline", **device_info(), "liger_used": False,
        "settings": {"padding_free": args.padding_free, "gradient_checkpointing": args.activation_checkpointing,
                     "optim": str(args.optim), "batch": batch, "grad_accum": accum,
                     "attn": model.config._attn_implementation},
        **steady_rates(marks, spec["warmup_steps"], batch * accum),
        "optimizer_steps": trainer.state.global_step, "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None, **gpu_memory(),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "wall_seconds": round(wall, 1),
    }


def measure_generation(spec: dict, adapter_dir: Path) -> dict:
    """Single-stream 4-bit generation through the app's engine: base, one adapter, and alternating adapters."""
    import shutil
    from dataclasses import replace

    from safetensors.torch import load_file, save_file

    from space.engine import InferenceEngine
    from trainer.inference.engine import StreamStats
    from trainer.inference.model import GenerationSettings
    from space.registry import AdapterRegistry, RegisteredAdapter

    # A second adapter with different weights: the trained one with its LoRA B matrices halved.
    second = Path(spec["work"]) / "adapter_b"
    shutil.rmtree(second, ignore_errors=True)
    shutil.copytree(adapter_dir, second)
    weights = load_file(str(second / "adapter_model.safetensors"))
    save_file({k: (v * 0.5 if "lora_B" in k else v) for k, v in weights.items()},
              str(second / "adapter_model.safetensors"))
    base = spec["model_dir"]
    registry = AdapterRegistry([RegisteredAdapter("a", str(adapter_dir), True, trained_base=base),
                                RegisteredAdapter("b", str(second), True, trained_base=base)])
    started = time.time()
    engine = InferenceEngine(base, registry, load_in_4bit=True).load()
    load_seconds = time.time() - started
    generation_config = engine.model.get_base_model().generation_config
    question = [{"role": "user", "content": "Which documents do I need for a UK Student visa, and when should I "
                                            "apply for it?"}]
    settings = GenerationSettings(max_new_tokens=spec["gen_tokens"], temperature=0.0, repetition_penalty=1.0)

    def one(adapter: str, new_tokens: int) -> dict:
        stats = StreamStats()
        generation_config.min_new_tokens = new_tokens  # random weights may pick the end token: never stop early
        for _ in engine.stream(question, adapter, replace(settings, max_new_tokens=new_tokens), stats=stats):
            pass
        return {"new_tokens": stats.new_tokens, "seconds": stats.total_s}

    def summary(adapters: list[str]) -> dict:
        """Whole requests of gen_tokens; time to first token = a one-token request (prompt + first token);
        decode rate = the other tokens over the difference (the streamer's text chunks cannot time tokens)."""
        full = [one(name, spec["gen_tokens"]) for name in adapters]
        first = [one(name, 1) for name in adapters]
        tokens, seconds = sum(r["new_tokens"] for r in full), sum(r["seconds"] for r in full)
        ttft = sum(r["seconds"] for r in first) / len(first)
        decode = seconds / len(full) - ttft
        per_request = tokens / len(full)
        return {"tokens_per_second": round(tokens / seconds, 2), "ttft_s": round(ttft, 4),
                "decode_tokens_per_second": round((per_request - 1) / decode, 2) if decode > 0 else None,
                "requests": len(full), "new_tokens_each": full[0]["new_tokens"]}

    one("a", spec["gen_tokens"])  # warm-up: CUDA kernels, allocator
    runs = {"base": ["base", "base"], "adapter": ["a", "a"], "switching": ["b", "a", "b", "a"]}
    out = {name: summary(adapters) for name, adapters in runs.items()}
    out.update(engine_load_seconds=round(load_seconds, 1), adapters=engine.adapter_names,
               max_new_tokens=spec["gen_tokens"], **gpu_memory())
    return out


# The parent: spawn the children, compare, project, write JSON and markdown

def add_shared_arguments(parser: argparse.ArgumentParser, work_dir: str) -> None:
    """The options of every script that drives these children (this one, profile_step.py, loss_parity.py)."""
    parser.add_argument("--tiny", action="store_true", help="shrunken shapes (hidden 64, 2 layers): runs on a CPU")
    parser.add_argument("--target-tokens", type=int, help="tokens per conversation (default 1500; 160 with --tiny)")
    parser.add_argument("--max-length", type=int, help="default 2048; 256 with --tiny")
    parser.add_argument("--liger", choices=["auto", "on", "off"], default="auto",
                        help="TRL's use_liger_kernel on our side: auto = when liger_kernel imports on CUDA")
    parser.add_argument("--set", dest="ours_set", action="append", default=[], help="extra override for our side")
    parser.add_argument("--model-dir", type=Path, help="where the random-weight model is saved (reused if its "
                                                       "shape matches); default /tmp/gpu_qlora-<shape>")
    parser.add_argument("--work-dir", type=Path, default=Path(work_dir))
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--quiet", action="store_true", help="do not echo the children's output")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)


def shared_spec(args: argparse.Namespace) -> dict:
    """The spec keys every driver sets the same way from `add_shared_arguments`' options."""
    return {
        "shape": TINY if args.tiny else MISTRAL_7B_V03, "work": str(args.work_dir),
        "target_tokens": args.target_tokens or (160 if args.tiny else 1500),
        "max_length": args.max_length or (256 if args.tiny else 2048), "liger": args.liger,
        "ours_set": args.ours_set,
        "model_dir": str(args.model_dir or Path(f"/tmp/gpu_qlora-{'tiny' if args.tiny else 'mistral7b'}")),
        "data": str(args.work_dir / "conversations.jsonl"),
    }


def build_model_and_data(spec: dict, results: dict, save, *, quiet: bool) -> bool:
    """Build (or reuse) the random-weight model and write the conversations in a child process; its summary goes to
    `results["data"]`. False when the build failed: the error is recorded in `results`, saved and printed."""
    build = spawn_child("build", spec, not quiet, __file__)
    if "error" in build:
        results["error"] = build["error"]
        save()
        print(build["error"], file=sys.stderr)
        return False
    results["data"] = build
    return True


def build_and_run_sides(spec: dict, sides: list[str], results: dict, save, *, quiet: bool, script: str | Path,
                        keep: tuple[str, ...], announce) -> bool:
    """Build the model and data, then each side in its own child of `script`, keeping `keep` of each result in
    `results["sides"]` and saving after every phase. False when the build failed (recorded in `results`)."""
    if not build_model_and_data(spec, results, save, quiet=quiet):
        return False
    for side in sides:
        print(announce(side), flush=True)
        result = spawn_child(side, spec, not quiet, script)
        results["sides"][side] = {k: result[k] for k in keep if k in result}
        results["device"] = result.get("device", results.get("device"))
        save()
    return True


def _with_derived(side: dict, build: dict, shape: dict) -> dict:
    rate = side.get("tokens_per_second")
    if not rate:
        return side
    fpt = flops_per_token(shape, build["mean_tokens"])
    peak = peak_tflops(side.get("device")) if side.get("device") != "cpu" else None
    side["model_tflops"] = round(fpt * rate / 1e12, 2)
    side["mfu"] = round(fpt * rate / (peak * 1e12), 4) if peak else None
    side["peak_tflops_bf16"] = peak
    side["paper_recipe_hours"] = round(PAPER_TOKENS / rate / 3600, 2)
    return side


def markdown(results: dict) -> str:
    b, sides = results["data"], results["sides"]
    lines = [f"# QLoRA at {'tiny' if results['tiny'] else 'Mistral-7B-Instruct-v0.3'} shapes on "
             f"{results['device']}", "",
             f"{b['conversations']} synthetic conversations, {b['mean_tokens']:.0f} tokens on average "
             f"({b['min_tokens']}-{b['max_tokens']}), max length {results['max_length']}; "
             f"{results['steps'] + results['warmup_steps']} optimizer steps of "
             f"{results['sequences_per_step']} conversations per side, timed over the last "
             f"{max((s.get('measured_steps') or 0) for s in sides.values()) if sides else 0}; "
             f"{b['parameters']:,} parameters; Liger kernels: "
             f"{'used' if sides.get('ours', {}).get('liger_used') else 'not used'}.", "",
             "| side | tokens/s | samples/s | MFU | peak GPU alloc / reserved (GB) | peak RSS (GB) | "
             "paper recipe (13.6M tokens) |", "|---|---|---|---|---|---|---|"]
    for name, s in sides.items():
        if "error" in s:
            lines.append(f"| {name} | failed | | | | | |")
            continue
        mfu = f"{s['mfu']:.1%}" if s.get("mfu") is not None else "-"
        gpu = (f"{s['peak_gpu_allocated_gb']} / {s['peak_gpu_reserved_gb']}"
               if s.get("peak_gpu_allocated_gb") is not None else "-")
        hours = f"{s['paper_recipe_hours']} h" if s.get("paper_recipe_hours") is not None else "-"
        lines.append(f"| {name} | {s.get('tokens_per_second')} | {s.get('samples_per_second')} | {mfu} | {gpu} | "
                     f"{s.get('peak_rss_gb')} | {hours} |")
    if results.get("ratio"):
        r = results["ratio"]
        lines += ["", f"ours / baseline: **{r['tokens_per_second']}x** tokens/s"
                  + (f", {r['peak_gpu_allocated']}x peak GPU memory" if r.get("peak_gpu_allocated") else "")
                  + (f", {r['peak_rss']}x peak RSS" if r.get("peak_rss") else "")]
    gen = sides.get("ours", {}).get("generation")
    if gen:
        lines += ["", "4-bit generation through space/engine.py (greedy, single stream, "
                      f"{gen['max_new_tokens']} new tokens):", "",
                  "| what | tokens/s (whole request) | decode tokens/s | time to first token |", "|---|---|---|---|"]
        for key, label in (("base", "base model"), ("adapter", "one adapter"),
                           ("switching", "alternating two adapters")):
            g = gen[key]
            lines.append(f"| {label} | {g['tokens_per_second']} | {g['decode_tokens_per_second']} | "
                         f"{g['ttft_s'] * 1000:.0f} ms |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["ours", "baseline", "both"], default="both")
    parser.add_argument("--steps", type=int, default=8, help="measured optimizer steps per side")
    parser.add_argument("--warmup-steps", type=int,
                        help="optimizer steps before the clock starts (default 2: CUDA and Triton start-up; 0 with "
                             "--tiny, where the clock then starts at the end of the first step)")
    parser.add_argument("--gen-tokens", type=int, help="new tokens per generation request (0: skip; default 128, "
                                                       "8 with --tiny)")
    parser.add_argument("--baseline-batch", type=int, nargs=2, default=[2, 4], metavar=("BATCH", "ACCUM"),
                        help="the baseline's batch and accumulation (default the paper's, as ours)")
    add_shared_arguments(parser, "/tmp/gpu_qlora-work")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    children = {"build": child_build, "ours": child_ours, "baseline": child_baseline}
    if answer_child(args, lambda kind, spec: children[kind](spec)):
        return 0

    shape = TINY if args.tiny else MISTRAL_7B_V03
    if args.warmup_steps is None:
        args.warmup_steps = 0 if args.tiny else 2
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        **shared_spec(args), "steps": args.steps, "warmup_steps": args.warmup_steps,
        "gen_tokens": args.gen_tokens if args.gen_tokens is not None else (8 if args.tiny else 128),
        "baseline_batch": args.baseline_batch,
    }
    # Enough distinct conversations that no side sees one twice: (warm-up + measured steps) x batch x accumulation
    per_step = max(2 * 4, args.baseline_batch[0] * args.baseline_batch[1])
    spec["conversations"] = (args.steps + args.warmup_steps) * per_step
    results = {"command": "python bench/gpu_qlora.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "tiny": args.tiny, "mode": args.mode, "shape": shape, "steps": args.steps,
               "warmup_steps": args.warmup_steps, "max_length": spec["max_length"], "sides": {},
               "sequences_per_step": 2 * 4,
               "flops_per_token_formula": "6*N + 12*L*h*s (N all parameters, s mean conversation length)",
               "paper_recipe_tokens": PAPER_TOKENS}
    stem = args.out_dir / "gpu_qlora"
    save = result_saver(results, stem, markdown, ready=lambda results: "data" in results)

    t0 = time.time()
    print(f"[bench] building the {'tiny' if args.tiny else 'Mistral-7B-shaped'} model and data ...", flush=True)
    if not build_model_and_data(spec, results, save, quiet=args.quiet):
        return 1
    build = results["data"]
    print(f"[bench] built in {time.time() - t0:.0f}s: {build}", flush=True)
    for side in (["baseline", "ours"] if args.mode == "both" else [args.mode]):
        t = time.time()
        print(f"[bench] training: {side} ...", flush=True)
        result = spawn_child(side, spec, not args.quiet, __file__)
        if side == "ours" and "error" in result and args.liger == "auto" and "liger" in result["error"].lower():
            print("[bench] ours failed with Liger's kernels; again without them", flush=True)
            first_error = result["error"]
            result = spawn_child(side, {**spec, "liger": "off"}, not args.quiet, __file__)
            result["liger_error"] = first_error[-1500:]
        results["sides"][side] = _with_derived(result, build, shape)
        results["device"] = result.get("device", results.get("device"))
        print(f"[bench] {side} done in {time.time() - t:.0f}s: "
              + json.dumps({k: result.get(k) for k in ("tokens_per_second", "samples_per_second", "mfu",
                                                       "peak_gpu_allocated_gb", "peak_rss_gb", "error")}), flush=True)
        save()
    ours, base = results["sides"].get("ours", {}), results["sides"].get("baseline", {})
    if ours.get("tokens_per_second") and base.get("tokens_per_second"):
        ratio = {"tokens_per_second": round(ours["tokens_per_second"] / base["tokens_per_second"], 3)}
        if ours.get("peak_gpu_allocated_gb") and base.get("peak_gpu_allocated_gb"):
            ratio["peak_gpu_allocated"] = round(ours["peak_gpu_allocated_gb"] / base["peak_gpu_allocated_gb"], 3)
        if ours.get("peak_rss_gb") and base.get("peak_rss_gb"):
            ratio["peak_rss"] = round(ours["peak_rss_gb"] / base["peak_rss_gb"], 3)
        results["ratio"] = ratio
    finish(results, save, markdown, stem, t0, "bench")
    return 0 if all("error" not in s for s in results["sides"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
