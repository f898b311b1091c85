"""Will the recipe fit this card? Peak memory of each stage, estimated from the model's shapes and the config
alone (no weights loaded), so a 16 GB card's out-of-memory is known before a six-hour run, not after loading.

The estimate (GiB, as `torch.cuda.max_memory_allocated` counts; on a CPU, resident memory):

- **weights**: the targeted projections in 4-bit (0.5 byte a parameter, plus the quantization constants: 1 byte per
  64 with double quantization, 4 without), the embeddings and head in the compute dtype;
- **LoRA**: fp32 weights and gradients, plus the optimizer's state (8-bit AdamW: 2 bytes a parameter, AdamW: 8);
- **activations**: with gradient checkpointing, each layer's input (tokens x hidden) kept for the backward pass
  plus one layer recomputed in full; without it, every layer in full. A layer's full activations are
  `tokens x (6 hidden + 2 kv + 3.4 intermediate)` values in the compute dtype (the 3.4 fitted to the runs below);
- **logits**: tokens x vocabulary in the compute dtype plus their fp32 copy for the loss, unless Liger's fused
  linear cross-entropy (GPU) or the tool's chunked head (CPU) computes the loss without them; at the end of the
  forward pass they live beside the checkpointed inputs, so with checkpointing the peak takes the larger of them
  and one recomputed layer;
- **evaluation**: the same weights and the eval batch's logits, without gradients.

Calibrated on what was measured (BENCHMARKS.md, one H200 at Mistral-7B-Instruct-v0.3's shapes, random NF4 weights,
conversations of 1,604 tokens): the estimate against `max_memory_allocated` is 19.00 / 18.94 GB and 33.41 / 33.28 GB
for 2 and 4 packed conversations without checkpointing, 9.53 / 9.75 GB for 8 with checkpointing and Liger, 10.08 /
10.39 GB without Liger, 5.83 / 5.61 GB for 2 with checkpointing, and 6.23 / 5.88 GB for plain TRL's padded 2 x 4
(-3% to +6%). On the CPU it is checked against the demo run's peak resident memory (bench/precision_memory.py
--mode plan --demo, and tests/test_ddp.py on each run it makes).
A card fits a plan when the peak plus `ALLOCATOR_HEADROOM` (the caching allocator reserved 1.27x what was
allocated on the H200, most of it reusable) plus the CUDA context stays within its memory. The worst pass is
assumed: `per_device_train_batch_size` conversations of `max_length` tokens, unless the stage's real token lengths
are given (`train` gives them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from trainer.train.config import PipelineConfig, StageSettings, pipeline_precision
from trainer.train.device import DeviceError, DeviceInfo, Precision, torch_build_problem, triton_ok

GIB = 2**30


class ShapesUnavailable(DeviceError):
    """The base model's shapes cannot be read here (offline and not cached): `plan` says so; `train` goes on
    without a memory plan, since loading the base will need the same files."""

ALLOCATOR_HEADROOM = 1.15
"""Peak allocated x this must fit: PyTorch's caching allocator holds more than it hands out (fragmentation)."""
TRANSIENT_GB = 0.35
"""On a GPU: a dequantized projection, cuBLAS workspaces and kernel buffers beside the tensors above (the constant
the H200 runs left over once the listed parts were counted)."""
CUDA_CONTEXT_GB = 0.6
"""The CUDA context and kernels' workspace, outside `max_memory_allocated` but on the card."""
CPU_PROCESS_GB = 1.1
"""Resident memory of the training process before the model: Python, torch, transformers, TRL, datasets imported
(measured 1.0-1.2 GiB here)."""
CPU_ACTIVATION_FACTOR = 1.7
"""On a CPU a layer holds more than on a GPU (autocast keeps fp32 and bf16 copies): the demo model's 4 x 1 pass
without checkpointing measured 1.7x the GPU-fitted activations (bench/precision_memory.py --mode plan --demo)."""
OPTIMIZER_BYTES = {"adamw_8bit": 2, "paged_adamw_8bit": 2, "adamw_bnb_8bit": 2, "sgd": 4, "adafactor": 4}
"""Optimizer state per trainable parameter, bytes; anything else (AdamW's fp32 moments) 8."""


@dataclass(frozen=True)
class ModelShape:
    """The shapes that decide memory, read from the model's config.json (or the table for offline planning)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int
    tied_embeddings: bool = False

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one decoder layer, by module name."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ModelShape":
        heads = config["num_attention_heads"]
        hidden = config["hidden_size"]
        return cls(layers=config["num_hidden_layers"], hidden=hidden, intermediate=config["intermediate_size"],
                   heads=heads, kv_heads=config.get("num_key_value_heads") or heads, vocab=config["vocab_size"],
                   head_dim=config.get("head_dim") or hidden // heads,
                   tied_embeddings=bool(config.get("tie_word_embeddings", False)))


KNOWN_SHAPES = {
    "mistralai/mistral-7b-instruct-v0.3": ModelShape(32, 4096, 14336, 32, 8, 32768, 128),
    "mistralai/mistral-7b-instruct-v0.2": ModelShape(32, 4096, 14336, 32, 8, 32000, 128),
    "mistralai/mistral-7b-v0.3": ModelShape(32, 4096, 14336, 32, 8, 32768, 128),
    "smollm2-135m-instruct": ModelShape(30, 576, 1536, 9, 3, 49152, 64, tied_embeddings=True),
    "huggingfacetb/smollm2-135m-instruct": ModelShape(30, 576, 1536, 9, 3, 49152, 64, tied_embeddings=True),
}
"""Shapes of the models the shipped configs name, for planning without the network."""


def model_shape(name: str, revision: str | None = None) -> tuple[ModelShape, str]:
    """The base's shapes and where they were read: its config.json (a local folder, the demo model's converted
    folder, the Hub cache, or the Hub), else the `KNOWN_SHAPES` table. Raises ShapesUnavailable when none has it."""
    from trainer.train.demo_model import cache_root, is_demo_model

    folder = Path(name).expanduser()
    candidates = [folder / "config.json"] if folder.is_dir() else []
    if is_demo_model(name):
        candidates += sorted((cache_root() / "models").glob("*/config.json"))
    for path in candidates:
        if path.is_file():
            return ModelShape.from_config(json.loads(path.read_text(encoding="utf-8"))), str(path)
    if name.lower() in KNOWN_SHAPES:
        return KNOWN_SHAPES[name.lower()], "the table of known models (trainer/train/memory_plan.py)"
    if name.count("/") == 1:
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(name, "config.json", revision=revision)
            return ModelShape.from_config(json.loads(Path(path).read_text(encoding="utf-8"))), f"{name} config.json"
        except Exception as exc:  # offline and not cached, or not a model repo
            raise ShapesUnavailable(f"model {name}: cannot read its config.json to plan memory ({type(exc).__name__}); "
                              "run once with the Hub reachable, or give a local folder") from None
    raise ShapesUnavailable(f"model {name}: no config.json to plan memory from")


@dataclass(frozen=True)
class StageMemory:
    """One stage's estimate at one batch layout."""

    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    per_device_eval_batch_size: int
    tokens_per_pass: int
    components_gb: dict[str, float]
    peak_gb: float
    needed_gb: float
    """What the device must hold: the peak with the allocator's headroom and the CUDA context (or the process)."""
    fits: bool


@dataclass(frozen=True)
class StagePlanResult:
    stage: str
    memory: StageMemory
    configured: tuple[int, int]
    """(batch, accumulation) as configured."""
    gradient_checkpointing: bool = True
    advice: str | None = None
    """When it does not fit: which setting to change."""


@dataclass(frozen=True)
class MemoryPlan:
    """What `python -m trainer plan` prints and `train` checks."""

    device: DeviceInfo
    precision: Precision
    kernels: dict[str, Any]
    shape_source: str
    stages: dict[str, StagePlanResult]
    torch_build: str | None = None
    fitted: bool = False
    """Whether the batch layouts are auto_fit's choice rather than the config's."""
    notes: tuple[str, ...] = field(default=())

    @property
    def fits(self) -> bool:
        return all(s.memory.fits for s in self.stages.values()) and self.torch_build is None

    def render_short(self, stage: str) -> str:
        """One line for the stage's report: the layout, the predicted peak, the device."""
        m, result = self.stages[stage].memory, self.stages[stage]
        layout = f"{m.per_device_train_batch_size} x {m.gradient_accumulation_steps}"
        if (m.per_device_train_batch_size, m.gradient_accumulation_steps) != result.configured:
            layout += f" (auto_fit; configured {result.configured[0]} x {result.configured[1]})"
        memory = "" if self.device.memory_gb is None else f" of {self.device.memory_gb:g}"
        return (f"memory plan: batch x accumulation {layout}, {m.tokens_per_pass:,} tokens in the longest pass, "
                f"peak about {m.peak_gb:.2f} GB (needs {m.needed_gb:.2f}{memory} GB)")

    def to_json(self) -> dict[str, Any]:
        return {
            "gpu": None if self.device.kind == "cpu" else (self.device.key or self.device.name),
            "device": self.device.describe(), "capability": ".".join(map(str, self.device.capability or ())) or None,
            "precision": self.precision.name, "precision_reason": self.precision.reason, "kernels": self.kernels,
            "memory_gb": self.device.memory_gb, "fits": self.fits, "auto_fit": self.fitted,
            "peak_gb": {n: s.memory.peak_gb for n, s in self.stages.items()},
            "needed_gb": {n: s.memory.needed_gb for n, s in self.stages.items()},
            "per_device_train_batch_size": {n: s.memory.per_device_train_batch_size for n, s in self.stages.items()},
            "gradient_accumulation_steps": {n: s.memory.gradient_accumulation_steps for n, s in self.stages.items()},
            "per_device_eval_batch_size": {n: s.memory.per_device_eval_batch_size for n, s in self.stages.items()},
            "tokens_per_pass": {n: s.memory.tokens_per_pass for n, s in self.stages.items()},
            "components_gb": {n: s.memory.components_gb for n, s in self.stages.items()},
            "advice": {n: s.advice for n, s in self.stages.items() if s.advice},
            "torch_build": self.torch_build, "shape_source": self.shape_source, "notes": list(self.notes),
        }


def plan_kernels(cfg: PipelineConfig, device: DeviceInfo, *, detected: bool) -> dict[str, Any]:
    """Which kernels each stage would run on `device`. For a card named rather than detected, Liger's `auto` counts
    as on where Triton runs (the notebook installs liger-kernel there); on this machine it needs the package."""
    import importlib.util

    triton = triton_ok(device)
    have_liger = importlib.util.find_spec("liger_kernel") is not None if detected else True
    out: dict[str, Any] = {"triton": triton, "stages": {}}
    for name, st in cfg.stages.items():
        liger = triton and have_liger and st.use_liger_kernel in (True, "auto")
        out["stages"][name] = {"liger": liger, "compile_layers": bool(st.compile_layers and triton)}
    if device.kind == "cuda" and not triton:
        out["why"] = (f"no Triton: compute capability {device.capability[0]}.{device.capability[1]} < 7.0, so no "
                      "Liger, torch.compile or compiled decode")
    elif device.kind == "cpu":
        out["why"] = "CPU: no Triton kernels; the tool's chunked LM head computes the loss without full logits"
    return out


def _bytes(dtype: str) -> int:
    return {"bfloat16": 2, "float16": 2, "float32": 4}[dtype]


def tokens_per_pass(cfg: PipelineConfig, st: StageSettings, batch: int, lengths: Sequence[int] | None = None) -> int:
    """Tokens in the biggest forward pass: the `batch` longest conversations packed (padding-free) or padded to the
    longest; without lengths, `batch` conversations of `max_length` tokens."""
    if not lengths:
        return batch * cfg.max_length
    longest = sorted(lengths, reverse=True)[:batch]
    return sum(longest) if st.padding_free else len(longest) * longest[0]


def estimate_stage(cfg: PipelineConfig, st: StageSettings, shape: ModelShape, device: DeviceInfo, dtype: str,
                   liger: bool, batch: int, accumulation: int, eval_batch: int,
                   lengths: Sequence[int] | None = None) -> StageMemory:
    """The components and peak of one stage at one batch layout (GiB)."""
    act = _bytes(dtype)
    projections = shape.projection_shapes()
    linear = shape.layers * sum(i * o for i, o in projections.values())
    embed = shape.vocab * shape.hidden * (1 if shape.tied_embeddings else 2)
    if cfg.quantization.load_in_4bit:
        weights = linear * (0.5 + (1 / 64 if cfg.quantization.double_quant else 4 / 64)) + embed * act
    else:
        weights = (linear + embed) * (act if device.kind == "cuda" else 4)
    lora_params = shape.layers * sum(cfg.lora.r * (i + o) for name, (i, o) in projections.items()
                                     if name in cfg.lora.target_modules)
    lora = lora_params * (4 + 4 + OPTIMIZER_BYTES.get(st.optim, 8))
    tokens = tokens_per_pass(cfg, st, batch, lengths)
    layer_full = tokens * (6 * shape.hidden + 2 * shape.kv_heads * shape.head_dim + 3.4 * shape.intermediate) * act
    if device.kind == "cpu":
        layer_full *= CPU_ACTIVATION_FACTOR
    chunked = liger or device.kind == "cpu"
    logits = 0 if chunked else tokens * shape.vocab * (act + 4)
    eval_tokens = tokens_per_pass(cfg, st, eval_batch, lengths)
    # On a CPU the chunked head computes the eval loss too; on a GPU the eval batch's logits are counted in full
    eval_logits = 0 if device.kind == "cpu" else eval_tokens * shape.vocab * (act + 4)
    eval_peak = eval_logits + eval_tokens * 2 * shape.hidden * act
    with_ckpt = shape.layers * tokens * shape.hidden * act + max(layer_full, logits)
    without_ckpt = shape.layers * layer_full + logits
    components = {"weights_4bit" if cfg.quantization.load_in_4bit else "weights": weights / GIB,
                  "lora_and_optimizer": lora / GIB,
                  "activations_with_checkpointing": with_ckpt / GIB,
                  "activations_without_checkpointing": without_ckpt / GIB,
                  "logits": logits / GIB, "eval_pass": eval_peak / GIB}
    activations = with_ckpt if st.gradient_checkpointing else without_ckpt
    transient = TRANSIENT_GB * GIB if device.kind == "cuda" else 0
    if transient:
        components["buffers"] = TRANSIENT_GB
    peak = (weights + lora + transient + max(activations, eval_peak)) / GIB
    if device.kind == "cpu":
        needed = peak + CPU_PROCESS_GB
    else:
        needed = peak * ALLOCATOR_HEADROOM + CUDA_CONTEXT_GB
    fits = device.memory_gb is None or needed <= device.memory_gb
    return StageMemory(batch, accumulation, eval_batch, tokens, {k: round(v, 3) for k, v in components.items()},
                       round(peak + (CPU_PROCESS_GB if device.kind == "cpu" else 0), 3), round(needed, 3), fits)


def _divisors(n: int) -> list[int]:
    return sorted((d for d in range(1, n + 1) if n % d == 0), reverse=True)


def fit_stage(cfg: PipelineConfig, name: str, shape: ModelShape, device: DeviceInfo, dtype: str, liger: bool,
              lengths: Sequence[int] | None = None) -> StageMemory:
    """The largest per-device batch (a divisor of the stage's per-device global batch, so batch x accumulation stays
    the same) whose pass fits, with an eval batch that fits too; the batch-1 layout when nothing fits."""
    st = cfg.stage(name)
    total = st.per_device_train_batch_size * st.gradient_accumulation_steps
    best = None
    for batch in _divisors(total):
        for eval_batch in _divisors(max(st.per_device_eval_batch_size, 1)):
            best = estimate_stage(cfg, st, shape, device, dtype, liger, batch, total // batch, eval_batch, lengths)
            if best.fits:
                return best
    return best


def _advice(cfg: PipelineConfig, name: str, configured: StageMemory, fitted: StageMemory, shape: ModelShape,
            device: DeviceInfo, dtype: str, liger: bool, lengths) -> str:
    st = cfg.stage(name)
    where = f"stages.{name}"
    if fitted.fits:
        return (f"{where}: {configured.per_device_train_batch_size} x {configured.gradient_accumulation_steps} "
                f"needs {configured.needed_gb:.1f} GB; set auto_fit: true (or --set auto_fit=true), which trains "
                f"{fitted.per_device_train_batch_size} x {fitted.gradient_accumulation_steps} (same global batch), "
                f"or set {where}.per_device_train_batch_size={fitted.per_device_train_batch_size} and "
                f"{where}.gradient_accumulation_steps={fitted.gradient_accumulation_steps}"
                + (f" and {where}.per_device_eval_batch_size={fitted.per_device_eval_batch_size}"
                   if fitted.per_device_eval_batch_size != st.per_device_eval_batch_size else ""))
    if not st.gradient_checkpointing:
        return f"{where}: does not fit even 1 conversation per pass; set {where}.gradient_checkpointing=true"
    length = cfg.max_length
    while length > 256:
        length //= 2
        trial = estimate_stage(replace(cfg, max_length=length), st, shape, device, dtype, liger, 1, 1, 1,
                               [min(n, length) for n in lengths] if lengths else None)
        if trial.fits:
            return (f"{where}: does not fit even 1 conversation of {cfg.max_length} tokens per pass "
                    f"({fitted.needed_gb:.1f} GB needed, {device.memory_gb:g} GB on the card); lower max_length "
                    f"(fits at {length}) or lora.r, or use a card with more memory")
    return (f"{where}: the base alone does not fit ({fitted.needed_gb:.1f} GB needed at 1 conversation, "
            f"{device.memory_gb:g} GB on the card); use a card with more memory or a smaller model")


def plan_memory(cfg: PipelineConfig, device: DeviceInfo, *, detected: bool, auto_fit: bool | None = None,
                lengths: Mapping[str, Sequence[int]] | None = None, stages: Sequence[str] | None = None) -> MemoryPlan:
    """The plan for `cfg` on `device`: precision, kernels and each stage's peak; with auto_fit (default: the
    config's) each stage at the largest fitting batch that keeps its global batch."""
    from trainer.train.model import base_dtypes

    precision = pipeline_precision(cfg, device)
    _, dtype = base_dtypes(cfg.quantization, precision, device)
    kernels = plan_kernels(cfg, device, detected=detected)
    shape, source = model_shape(cfg.model.name, cfg.model.revision)
    auto_fit = cfg.auto_fit if auto_fit is None else auto_fit
    results = {}
    for name in (stages or list(cfg.stages)):
        st = cfg.stage(name)
        liger = kernels["stages"][name]["liger"]
        rows = (lengths or {}).get(name)
        configured = estimate_stage(cfg, st, shape, device, dtype, liger, st.per_device_train_batch_size,
                                    st.gradient_accumulation_steps, st.per_device_eval_batch_size, rows)
        chosen, advice = configured, None
        if not configured.fits or auto_fit:
            fitted = fit_stage(cfg, name, shape, device, dtype, liger, rows)
            if auto_fit and fitted.fits:
                chosen = fitted
            elif not configured.fits:
                advice = _advice(cfg, name, configured, fitted, shape, device, dtype, liger, rows)
        results[name] = StagePlanResult(name, chosen, (st.per_device_train_batch_size,
                                                       st.gradient_accumulation_steps), st.gradient_checkpointing,
                                        advice)
    notes = []
    if device.kind == "cuda" and device.capability and device.capability < (7, 5) and not device.arch_list:
        notes.append(f"the {device.name} ({device.sm}) needs PyTorch's CUDA 12.6 build: the CUDA 12.8+ wheels start "
                     "at Turing (sm_75); pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126")
    if lengths is None:
        notes.append(f"worst case assumed: every conversation {cfg.max_length} tokens (max_length); `train` plans "
                     "with the data's real lengths")
    return MemoryPlan(device, precision, kernels, source, results, torch_build_problem(device), fitted=bool(auto_fit),
                      notes=tuple(notes))


def apply_plan(cfg: PipelineConfig, plan: MemoryPlan) -> PipelineConfig:
    """The config with each planned stage's batch layout as the plan chose it."""
    stages = dict(cfg.stages)
    for name, result in plan.stages.items():
        m = result.memory
        stages[name] = replace(stages[name], per_device_train_batch_size=m.per_device_train_batch_size,
                               gradient_accumulation_steps=m.gradient_accumulation_steps,
                               per_device_eval_batch_size=m.per_device_eval_batch_size)
    return replace(cfg, stages=stages)


def render_plan(plan: MemoryPlan) -> str:
    """The plan as a few lines and a table per stage, for the terminal and the notebook."""
    d = plan.device
    lines = [f"device: {d.describe()}" + (f", {d.memory_gb:g} GB" if d.kind == "cpu" and d.memory_gb else ""),
             f"precision: {plan.precision.name} ({plan.precision.reason})"]
    k = plan.kernels
    per_stage = ", ".join(f"{n}: Liger {'on' if v['liger'] else 'off'}, compile_layers "
                          f"{'on' if v['compile_layers'] else 'off'}" for n, v in k["stages"].items())
    lines.append(f"kernels: Triton {'yes' if k['triton'] else 'no'}; {per_stage}" + (f" ({k['why']})" if
                                                                                   k.get("why") else ""))
    if plan.torch_build:
        lines.append(f"torch build: {plan.torch_build}")
    lines.append(f"model shapes from: {plan.shape_source}")
    for name, result in plan.stages.items():
        m = result.memory
        what = "fits" if m.fits else "DOES NOT FIT"
        chosen = f"{m.per_device_train_batch_size} x {m.gradient_accumulation_steps}"
        if (m.per_device_train_batch_size, m.gradient_accumulation_steps) != result.configured:
            chosen += f" (auto_fit; configured {result.configured[0]} x {result.configured[1]})"
        lines.append(f"\n{name}: batch x accumulation {chosen}, eval batch {m.per_device_eval_batch_size}, "
                     f"{m.tokens_per_pass:,} tokens per pass")
        used = "activations_with_" if result.gradient_checkpointing else "activations_without"
        lines += [f"  {key:36} {value:8.2f} GB" + ("  <- this stage" if key.startswith(used) else "")
                  for key, value in m.components_gb.items()]
        lines.append(f"  {'peak (estimated)':36} {m.peak_gb:8.2f} GB; needs {m.needed_gb:.2f} of "
                     f"{d.memory_gb if d.memory_gb is not None else '?'} GB: {what}")
        if result.advice:
            lines.append(f"  -> {result.advice}")
    lines += [f"note: {note}" for note in plan.notes]
    lines.append("\n" + ("fits" if plan.fits else "does not fit") + f" on {d.describe()}")
    return "\n".join(lines)


def check_stage_memory(cfg: PipelineConfig, stage: str, device: DeviceInfo, lengths) -> MemoryPlan | None:
    """The stage's memory plan on this device with its real token lengths (`trainer.train.memory_plan`), before any
    weights load: a plan that does not fit raises a DeviceError naming the setting to change; with `auto_fit` the
    plan carries the batch layout that fits. None when the model's shapes cannot be read (offline, not cached)."""
    try:
        plan = plan_memory(cfg, device, detected=True, lengths={stage: lengths} if lengths else None,
                           stages=[stage])
    except ShapesUnavailable as exc:
        print(f"[{stage}] memory not planned: {exc}", flush=True)
        return None
    result = plan.stages[stage]
    if not result.memory.fits:
        raise DeviceError(f"{cfg.source}: {stage} does not fit {device.describe()}: about "
                          f"{result.memory.needed_gb:.1f} GB needed (python -m trainer plan shows the parts). "
                          + (result.advice or ""))
    return plan
