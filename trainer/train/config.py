"""Pipeline configuration: the typed settings of one pipeline YAML (both stages) and the objects built from them.

One YAML file describes a whole pipeline (both stages). `model`, `quantization` and `lora` are defined once and
shared by every stage, so stage 2 can never drift from stage 1. `training` holds the defaults every stage inherits;
a stage block overrides any of them. `load_config(path, overrides)` reads it through `trainer.typed_yaml` (the one
YAML loader), returns frozen dataclasses and rejects unknown keys by their dotted name; `build_sft_config` /
`build_lora_config` / `build_quantization_config` turn them into the TRL, PEFT and transformers objects (imported
lazily so `--help` stays instant). Below it are only the data's own settings (`trainer.data.settings`) and the
device rules; training, serving and the app depend on it, never the reverse.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from trainer.data.settings import DATASET_KINDS, SCHEMAS, DatasetSettings
from trainer.train.device import (PRECISIONS, DeviceError, DeviceInfo, Precision, detect_device,
                                  resolve_precision, triton_ok)
from trainer.typed_yaml import ConfigError, coerce, dump_yaml, load_typed, suggest, to_plain

@dataclass(frozen=True)
class ModelSettings:
    name: str = "mistralai/Mistral-7B-Instruct-v0.3"
    """Hub id, local folder, or the embedded demo model's name (`smollm2-135m-instruct`)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of the base model; None means the default branch."""
    chat_template: str = "auto"
    """`auto` (detect from the tokenizer), `mistral`, `chatml`, or a path to a .jinja file with generation markers."""
    attn_implementation: str = "sdpa"
    """Attention kernel: `sdpa`, `eager`, `flash_attention_2`, ..."""
    trust_remote_code: bool = False
    """Allow model repos that ship Python code. Off unless you have read that code."""


@dataclass(frozen=True)
class QuantizationSettings:
    load_in_4bit: bool = True
    """Load the frozen base in 4-bit (QLoRA). bitsandbytes runs it on GPU and CPU alike."""
    quant_type: str = "nf4"
    """`nf4` (the QLoRA paper's NormalFloat) or `fp4`."""
    double_quant: bool = True
    """Quantize the quantization constants too: ~0.4 bit/parameter less memory, no quality cost."""
    compute_dtype: str = "auto"
    """dtype the 4-bit weights are dequantized to for each matmul: `auto` follows the pipeline's `precision`
    (bfloat16, float16 or float32 as resolved on this device); an explicit `bfloat16` where it is not native is
    refused (`trainer.train.device`)."""
    quant_storage: str = "uint8"
    """Storage dtype of packed 4-bit weights; `bfloat16` is required for FSDP sharding."""


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    """Adapter rank. Higher: more capacity, more memory and a bigger adapter file."""
    alpha: int = 32
    """Scaling numerator: updates are scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    bias: str = "none"
    """`none`, `all` or `lora_only`: which biases train."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Module names that get adapters (all attention and MLP projections, as in QLoRA)."""


@dataclass(frozen=True)
class StageSettings:
    dataset: DatasetSettings
    """The stage's training data."""
    init_from: str | None = None
    """Adapter to continue: the name of an earlier stage, a path to an adapter folder, or None for a fresh one."""
    learning_rate: float = 2e-4
    """Peak learning rate."""
    num_train_epochs: float = 1.0
    """Passes over the training split."""
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 means run the epochs."""
    warmup_ratio: float = 0.03
    """Share of the steps spent warming the learning rate up from zero."""
    per_device_train_batch_size: int = 2
    """Conversations per forward pass."""
    per_device_eval_batch_size: int = 2
    """Conversations per evaluation forward pass."""
    gradient_accumulation_steps: int = 4
    """Forward passes per optimizer step (effective batch = batch size x this x devices)."""
    optim: str = "adamw_8bit"
    """transformers optimizer name; `adamw_8bit` is bitsandbytes' 8-bit AdamW."""
    lr_scheduler_type: str = "linear"
    """Learning-rate schedule after warmup."""
    max_grad_norm: float = 0.3
    """Gradient clipping norm."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    padding_free: bool = False
    """Concatenate each batch into one row with per-conversation positions: no pad tokens, no cross-talk."""
    use_liger_kernel: bool | str = "auto"
    """Liger's Triton kernels through TRL (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy): `auto` uses them on a
    CUDA GPU when the `liger-kernel` package imports, `true` requires them, `false` never uses them."""
    compile_layers: bool = False
    """Compile each decoder layer with torch.compile (the LoRA branches' and norms' small ops fused; the layers share
    one compiled graph). The first steps pay the compile time: about a minute, more on a CPU, where it needs a C++
    compiler; on a GPU it needs Triton (compute capability 7.0). Off by default until a GPU profile shows it pays."""
    logging_steps: int = 1
    """Log the training loss every N optimizer steps."""
    eval_steps: int | None = None
    """Evaluate every N optimizer steps; None evaluates at the end of each epoch."""
    eval_before_training: bool = True
    """Measure the eval loss before the first step, so the loss reduction has an honest starting point."""
    save_steps: int = 50
    """Write a resumable checkpoint every N optimizer steps."""
    save_total_limit: int = 2
    """Keep at most this many checkpoints."""


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    """Run name: outputs go to `<output_dir>/<name>/<stage>/`."""
    stages: Mapping[str, StageSettings]
    """Stages in the order they run."""
    output_dir: str = "runs"
    """Folder that holds the run directories."""
    seed: int = 3407
    """Seed for adapter initialisation, shuffling and the train/eval split."""
    max_length: int = 2048
    """Longest conversation in tokens after templating; longer rows are rejected, never silently cut."""
    torch_threads: int | None = None
    """CPU threads for PyTorch; None keeps PyTorch's default."""
    precision: str = "auto"
    """`auto`: bf16 on GPUs of compute capability 8.0+ (Ampere and newer), fp16 mixed precision on older ones (T4,
    V100, P100), on a CPU bf16 where native (AVX512-BF16 or AMX) and fp32 elsewhere; or `bf16`, `fp16`, `fp32`
    explicitly (bf16 where it only runs emulated is refused). The 4-bit compute dtype follows it."""
    auto_fit: bool = False
    """Before training, pick each stage's per-device batch size and accumulation steps that keep its global batch
    and fit this GPU's memory (`python -m trainer plan --fit` shows the choice); off: a plan that does not fit is
    refused before the base loads, naming the setting to change."""
    model: ModelSettings = field(default_factory=ModelSettings)
    quantization: QuantizationSettings = field(default_factory=QuantizationSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    source: str | None = None
    """File the config was read from (set by `load_config`, not by YAML)."""

    def stage(self, name: str) -> StageSettings:
        """Return one stage's settings, or raise a ConfigError naming the stages that exist."""
        if name not in self.stages:
            raise ConfigError(f"{self.source}: no stage named {name!r}; stages are {', '.join(self.stages)}")
        return self.stages[name]

    def run_dir(self) -> Path:
        """Folder holding every stage of this run."""
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-ready form of the resolved config (every stage fully expanded)."""
        out = to_plain(self)
        out.pop("source", None)
        return out


# Keys of StageSettings that a `training:` block may set for all stages.
_SHARED_STAGE_KEYS = tuple(f.name for f in dataclasses.fields(StageSettings) if f.name not in ("dataset", "init_from"))


def _validate_values(cfg: PipelineConfig) -> None:
    """Rules a type check cannot express; each error names the key."""
    q = cfg.quantization
    if q.quant_type not in ("nf4", "fp4"):
        raise ConfigError(f"quantization.quant_type: must be nf4 or fp4, got {q.quant_type!r}")
    if q.compute_dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise ConfigError(f"quantization.compute_dtype: must be auto, bfloat16, float16 or float32, got "
                          f"{q.compute_dtype!r}")
    if q.quant_storage not in ("bfloat16", "float16", "float32", "uint8"):
        raise ConfigError(f"quantization.quant_storage: unknown dtype {q.quant_storage!r}")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision: must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    if cfg.lora.r <= 0 or cfg.lora.alpha <= 0:
        raise ConfigError("lora.r and lora.alpha must be positive")
    if not 0 <= cfg.lora.dropout < 1:
        raise ConfigError(f"lora.dropout: must be in [0, 1), got {cfg.lora.dropout}")
    if cfg.lora.bias not in ("none", "all", "lora_only"):
        raise ConfigError(f"lora.bias: must be none, all or lora_only, got {cfg.lora.bias!r}")
    if not cfg.lora.target_modules:
        raise ConfigError("lora.target_modules: must name at least one module")
    if cfg.max_length < 16:
        raise ConfigError(f"max_length: must be at least 16, got {cfg.max_length}")
    if not cfg.stages:
        raise ConfigError("stages: at least one stage is required")
    seen: list[str] = []
    for name, st in cfg.stages.items():
        where = f"stages.{name}"
        if st.dataset.schema not in ("auto", *SCHEMAS):
            raise ConfigError(
                f"{where}.dataset.schema: unknown schema {st.dataset.schema!r}; use auto or one of {', '.join(SCHEMAS)}"
            )
        if not 0 <= st.dataset.eval_fraction < 1:
            raise ConfigError(f"{where}.dataset.eval_fraction: must be in [0, 1), got {st.dataset.eval_fraction}")
        if st.dataset.kind not in DATASET_KINDS:
            raise ConfigError(f"{where}.dataset.kind: must be synthetic, real or audit, got {st.dataset.kind!r}")
        if st.dataset.grounding not in ("none", "kb"):
            raise ConfigError(f"{where}.dataset.grounding: must be none or kb, got {st.dataset.grounding!r}")
        if not 1 <= st.dataset.grounding_k <= 20:
            raise ConfigError(f"{where}.dataset.grounding_k: must be between 1 and 20, got {st.dataset.grounding_k}")
        if not 0 <= st.dataset.max_bad_fraction <= 1:
            raise ConfigError(f"{where}.dataset.max_bad_fraction: must be in [0, 1]")
        if st.learning_rate <= 0:
            raise ConfigError(f"{where}.learning_rate: must be positive, got {st.learning_rate}")
        if not 0 <= st.warmup_ratio < 1:
            raise ConfigError(f"{where}.warmup_ratio: must be in [0, 1), got {st.warmup_ratio}")
        if st.use_liger_kernel not in (True, False, "auto"):
            raise ConfigError(f"{where}.use_liger_kernel: must be auto, true or false, got {st.use_liger_kernel!r}")
        for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                    "logging_steps", "save_steps", "save_total_limit"):
            if getattr(st, key) < 1:
                raise ConfigError(f"{where}.{key}: must be at least 1")
        if st.max_steps == 0 or st.max_steps < -1:
            raise ConfigError(f"{where}.max_steps: must be -1 (use epochs) or positive")
        if st.max_steps == -1 and st.num_train_epochs <= 0:
            raise ConfigError(f"{where}.num_train_epochs: must be positive")
        if st.init_from is not None and st.init_from not in seen and "/" not in st.init_from \
                and not Path(st.init_from).exists():
            raise ConfigError(
                f"{where}.init_from: {st.init_from!r} is neither an earlier stage ({', '.join(seen) or 'none'}) "
                "nor an adapter folder"
            )
        seen.append(name)


def _merge_training_defaults(raw: dict[str, Any]) -> None:
    """Fold the shared `training:` block into every stage (a stage's own keys win), type-checking it first so an
    error names the key the user wrote, not the stage that inherited it."""
    shared = raw.pop("training", None) or {}
    if not isinstance(shared, dict):
        raise ConfigError("training: expected a mapping")
    stages_raw = raw.get("stages")
    for where, block in [("training", shared)] + [(f"stages.{k}", v) for k, v in
                                                  (stages_raw.items() if isinstance(stages_raw, dict) else ())]:
        if isinstance(block, dict) and "bf16" in block:
            raise ConfigError(f"{where}.bf16: replaced by the pipeline-level `precision: auto | bf16 | fp16 | fp32` "
                              "(auto picks bf16 only where the device runs it natively); remove the bf16 line")
    stage_hints = typing.get_type_hints(StageSettings)
    for key in shared:
        if key not in _SHARED_STAGE_KEYS:
            raise ConfigError(f"training.{key}: unknown key{suggest(key, _SHARED_STAGE_KEYS)}")
        shared[key] = coerce(shared[key], stage_hints[key], f"training.{key}")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, dict) or not stages_raw:
        raise ConfigError("stages: expected a mapping of stage names to settings")
    merged = {}
    for name, block in stages_raw.items():
        if not isinstance(block, dict):
            raise ConfigError(f"stages.{name}: expected a mapping")
        merged[name] = {**shared, **block}
    raw["stages"] = merged


def _drop_legacy_bf16(raw: dict[str, Any]) -> None:
    """A resolved config written before `precision` existed carries `bf16` in every stage: it ran as `auto` does."""
    for block in (raw.get("stages") or {}).values():
        if isinstance(block, dict) and block.pop("bf16", None) is False:
            raw.setdefault("precision", "fp32")
    _merge_training_defaults(raw)


def load_config(path: str | Path, overrides: typing.Sequence[str] = (), *, resolved: bool = False) -> PipelineConfig:
    """Read a pipeline YAML, apply dotted `key=value` overrides, and return the validated, frozen config.
    `resolved`: a run folder's resolved_config.yaml, which may predate the `precision` key."""
    return load_typed(PipelineConfig, Path(path), overrides,
                      prepare=_drop_legacy_bf16 if resolved else _merge_training_defaults, validate=_validate_values)


def dump_config(cfg: PipelineConfig, path: str | Path, stage: str | None = None) -> None:
    """Write the resolved config (optionally naming the stage it produced) as YAML."""
    header = f"# resolved config, as trained for stage {stage}\n" if stage is not None else ""
    Path(path).write_text(dump_yaml(cfg.to_dict(), header), encoding="utf-8")


# Builders: the TRL / PEFT / transformers objects each stage trains with.

def build_lora_config(cfg: PipelineConfig):
    """The PEFT LoraConfig shared by every stage."""
    from peft import LoraConfig

    lora = cfg.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        bias=lora.bias,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )


def pipeline_precision(cfg: PipelineConfig, device: DeviceInfo | None = None) -> Precision:
    """The pipeline's `precision` on this device (or a named one): see `trainer.train.device.resolve_precision`."""
    return resolve_precision(cfg.precision, device or detect_device(), f"{cfg.source}: precision")


def build_quantization_config(q: QuantizationSettings, dtype: str):
    """The bitsandbytes 4-bit config computing in `dtype` (the resolved compute dtype, see
    `trainer.train.device.compute_dtype`), or None when the base is loaded unquantized."""
    if not q.load_in_4bit:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, dtype),
        bnb_4bit_quant_storage=getattr(torch, q.quant_storage),
    )


def liger_kernel_wanted(cfg: PipelineConfig, stage: str, device: DeviceInfo | None = None) -> bool:
    """Resolve a stage's `use_liger_kernel`: `auto` is on where Triton runs (a CUDA GPU of compute capability 7.0+)
    and the liger-kernel package imports; `true` without them raises a ConfigError saying what is missing."""
    import importlib.util

    setting = cfg.stage(stage).use_liger_kernel
    if setting is False:
        return False
    device = device or detect_device()
    missing = [what for what, ok in (
        (f"a CUDA GPU of compute capability 7.0+ for Liger's Triton kernels (this is {device.describe()})",
         triton_ok(device)),
        ("the liger-kernel package (pip install liger-kernel)", importlib.util.find_spec("liger_kernel") is not None))
        if not ok]
    if setting == "auto":
        return not missing
    if missing:
        raise DeviceError(f"{cfg.source}: stages.{stage}.use_liger_kernel is true, but this machine lacks "
                          f"{' and '.join(missing)}; set it to auto or false")
    return True


def compile_layers_ready(cfg: PipelineConfig, stage: str, device: DeviceInfo | None = None) -> None:
    """Raise a ConfigError when a stage asks for `compile_layers` on a machine that cannot compile: on a GPU,
    torch.compile's kernels are Triton (compute capability 7.0+); on a CPU, inductor builds C++ and needs a compiler."""
    import shutil

    if not cfg.stage(stage).compile_layers:
        return
    device = device or detect_device()
    if device.kind == "cuda":
        if not triton_ok(device):
            raise DeviceError(f"{cfg.source}: stages.{stage}.compile_layers is true, but torch.compile's Triton "
                              f"kernels need compute capability 7.0+ and this is {device.describe()}; set it to false")
        return
    if not any(shutil.which(name) for name in ("g++", "c++", "clang++")):
        raise ConfigError(f"{cfg.source}: stages.{stage}.compile_layers is true, but on a CPU torch.compile needs a "
                          "C++ compiler (g++ or clang++ on PATH; apt-get install g++), or set it to false")


def build_sft_config(cfg: PipelineConfig, stage: str, output_dir: str | Path, *, eval_enabled: bool = True,
                     device: DeviceInfo | None = None):
    """The TRL SFTConfig for one stage on this device (or `device`). Raises a ConfigError if TRL rejects a value or
    the device cannot run a setting."""
    from trl import SFTConfig

    st = cfg.stage(stage)
    device = device or detect_device()
    precision = pipeline_precision(cfg, device)
    use_liger = liger_kernel_wanted(cfg, stage, device)
    compile_layers_ready(cfg, stage, device)
    eval_strategy = "no"
    if eval_enabled:
        eval_strategy = "steps" if st.eval_steps else "epoch"
    try:
        return SFTConfig(
            output_dir=str(output_dir),
            seed=cfg.seed,
            data_seed=cfg.seed,
            learning_rate=st.learning_rate,
            num_train_epochs=st.num_train_epochs,
            max_steps=st.max_steps,
            warmup_steps=st.warmup_ratio,  # a float below 1 is a ratio of the total steps
            per_device_train_batch_size=st.per_device_train_batch_size,
            per_device_eval_batch_size=st.per_device_eval_batch_size,
            gradient_accumulation_steps=st.gradient_accumulation_steps,
            optim=st.optim,
            lr_scheduler_type=st.lr_scheduler_type,
            max_grad_norm=st.max_grad_norm,
            weight_decay=st.weight_decay,
            activation_checkpointing=st.gradient_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False} if st.gradient_checkpointing else None,
            **precision.trl_flags,  # both always set: TRL turns bf16 on by itself otherwise
            use_cpu=device.kind == "cpu",
            logging_steps=st.logging_steps,
            logging_first_step=True,
            eval_strategy=eval_strategy,
            eval_steps=st.eval_steps,
            save_strategy="steps",
            save_steps=st.save_steps,
            save_total_limit=st.save_total_limit,
            max_length=None if st.padding_free else cfg.max_length,
            padding_free=st.padding_free,
            use_liger_kernel=use_liger,
            assistant_only_loss=True,
            packing=False,
            report_to="none",
            disable_tqdm=False,
            dataloader_num_workers=0,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{cfg.source}: stages.{stage}: TRL rejected the settings: {exc}") from None
