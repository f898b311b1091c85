"""Base model, tokenizer and LoRA adapters for training: resolving and loading the (4-bit) base, the quantized-weights
cache, attaching a new or continued adapter and checking it against the config. Inference on top of this lives in
`trainer.inference`; the chat templates are chosen and verified in `trainer.train.templates`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer import UserError
from trainer.train.config import PipelineConfig, QuantizationSettings, build_lora_config, build_quantization_config
from trainer.train.device import DeviceInfo, Precision, detect_device, resolve_compute_dtype, resolve_precision
from trainer.train.demo_model import cache_root, demo_model_path, is_demo_model


class ModelError(UserError, RuntimeError):
    """A model, tokenizer, template or adapter problem a user can fix; the message says which and how."""


@dataclass(frozen=True)
class BaseModelRef:
    """Where a configured base model really lives."""

    name: str
    """As written in the config."""
    path: str
    """What `from_pretrained` receives: a local folder or a Hub id."""
    revision: str | None
    is_demo: bool
    is_local: bool


def resolve_base_model(name: str, revision: str | None = None) -> BaseModelRef:
    """Accept a Hub id, a local folder, or the demo model's name."""
    if is_demo_model(name):
        return BaseModelRef(name=name, path=str(demo_model_path()), revision=None, is_demo=True, is_local=True)
    if Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: a model folder needs a config.json")
        return BaseModelRef(name=name, path=str(path), revision=None, is_demo=False, is_local=True)
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise ModelError(f"model {name!r}: not a local folder, a Hub id (owner/name) or the demo model's name")
    return BaseModelRef(name=name, path=name, revision=revision, is_demo=False, is_local=False)


def load_tokenizer(ref: BaseModelRef, trust_remote_code: bool = False, local_files_only: bool = False):
    """The base model's tokenizer, as `from_pretrained` gives it."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ref.path, revision=ref.revision, trust_remote_code=trust_remote_code,
                                             local_files_only=local_files_only)
    except OSError as exc:
        raise ModelError(f"cannot load the tokenizer of {ref.name!r}: {exc}") from None


def _device_map() -> Any:
    import torch

    if not torch.cuda.is_available():
        return None
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        return None  # FSDP shards and places the weights itself
    from accelerate import PartialState

    return {"": PartialState().local_process_index}


BNB_KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class _DropKernelNotice:
    """A logging filter that drops bitsandbytes' notice about its optional Hub kernel, and nothing else."""

    def filter(self, record) -> bool:
        return not str(record.msg).startswith(BNB_KERNEL_NOTICE)


def quiet_bitsandbytes_kernel_notice() -> None:
    """Silence the warning bitsandbytes logs at every import on CPUs with AVX512-BF16: that it could not fetch an
    optional CPU kernel from the Hub through the `kernels` package. It then runs its built-in CPU path, the one this
    tool is tested and measured with, and the Hub is often offline here, so the warning asks for nothing a user can
    or needs to do. Call it before bitsandbytes is imported (the CLI, the app and `load_base_model` do)."""
    import logging

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _DropKernelNotice) for f in logger.filters):
        logger.addFilter(_DropKernelNotice())


def base_dtypes(quantization: QuantizationSettings, precision: Precision | None = None,
                device: DeviceInfo | None = None) -> tuple[Precision, str]:
    """(precision, dtype of the base's matmuls and unquantized parts) on this device: `precision` None is `auto`
    (the rule the app and `trainer serve` use for inference); the 4-bit compute dtype follows it unless set."""
    device = device or detect_device()
    precision = precision or resolve_precision("auto", device)
    if not quantization.load_in_4bit:  # on a CPU an unquantized base stays fp32 (training autocasts from there)
        return precision, precision.dtype if device.kind == "cuda" else "float32"
    return precision, resolve_compute_dtype(quantization.compute_dtype, precision, device)


def load_base_model(ref: BaseModelRef, quantization: QuantizationSettings, *, attn_implementation: str = "sdpa",
                    trust_remote_code: bool = False, precision: Precision | None = None, padding_free: bool = False,
                    for_training: bool = True):
    """The frozen base: 4-bit NF4 when configured (GPU or CPU), its matmuls and unquantized parts in the precision's
    dtype (`precision` None: `auto` on this device, as the app serves).

    With `padding_free`, SDPA is swapped for its per-conversation twin (see trainer.train.attention)."""
    quiet_bitsandbytes_kernel_notice()
    import torch
    from transformers import AutoModelForCausalLM

    precision, dtype_name = base_dtypes(quantization, precision)
    quant = build_quantization_config(quantization, dtype_name)
    dtype = getattr(torch, dtype_name)
    attn = attn_implementation
    if padding_free and attn == "sdpa":
        from trainer.train.attention import register_varlen_attention

        attn = register_varlen_attention()
    kwargs: dict[str, Any] = {
        "revision": ref.revision,
        "dtype": dtype,
        "attn_implementation": attn,
        "trust_remote_code": trust_remote_code,
        "device_map": _device_map(),
    }
    if quant is not None:
        kwargs["quantization_config"] = quant
    # Serving only: training keeps quantizing at load until the cached path's training speed is measured on a quiet
    # machine (bench/cpu_train.py); the app's cold start is where the time went.
    cached = quantized_cache_dir(ref, quantization, dtype_name) if (quant is not None and not for_training
                                                                    and not torch.cuda.is_available()) else None
    try:
        if cached is not None and (cached / "config.json").is_file():
            kwargs.pop("quantization_config")  # the cached config carries it; the weights are already packed
            # Read into memory, not mapped: the packed weights match the file's dtype, so mapped pages would stay
            # file-backed, and a kernel that reclaims cold pages (DAMON here) made every forward pass re-read them.
            model = AutoModelForCausalLM.from_pretrained(cached, **{**kwargs, "revision": None}, disable_mmap=True)
            model.name_or_path = model.config._name_or_path = ref.path  # everything downstream sees the source
            _start_bnb_openmp()
        else:
            model = AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
            if cached is not None:
                _save_quantized(model, cached)
    except OSError as exc:
        raise ModelError(f"cannot load base model {ref.name!r}: {exc}") from None
    if for_training:
        model.config.use_cache = False
        if quant is not None:
            keep_4bit_weights_trainable(model)
    return model


def quantized_cache_dir(ref: BaseModelRef, quantization: QuantizationSettings, dtype: str) -> Path | None:
    """Where the 4-bit copy of the embedded demo model is cached for CPU serving loads; None for any other model.

    bitsandbytes quantizes on the CPU with plain torch ops: for the 135M demo model that was about half of the app's
    cold start (profiled with py-spy). The packed weights are
    deterministic, so they are saved once and loaded as they are (state dict, quantization state and logits
    identical). The key covers the source files (name, size, mtime), the quantization settings and the library
    versions, so a changed model or library quantizes afresh."""
    if not ref.is_demo:  # the CPU model this tool ships; other local models (tests' tiny ones) are not kept
        return None
    source = Path(ref.path).resolve()
    files = sorted(p for p in source.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
    if not any(p.suffix == ".safetensors" for p in files):
        return None
    from importlib import metadata

    key = {"source": str(source), "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files],
           "quantization": {**dataclasses.asdict(quantization), "compute_dtype": dtype},
           "versions": [metadata.version(n) for n in ("torch", "transformers", "bitsandbytes")]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root() / "quantized" / f"{source.name}-{digest}"


def _start_bnb_openmp() -> None:
    """Run one bitsandbytes CPU kernel on this thread, as quantizing at load time did.

    bitsandbytes' CPU library uses the system's libgomp, PyTorch its own copy: two OpenMP thread pools. Quantizing
    started bitsandbytes' pool on the loading thread; when a cached load skipped that, the app's generation thread
    later started both pools with full spin-waiting, and on 2 cores their idle threads spun against each other:
    decoding measured 5-30x slower (OMP_WAIT_POLICY=PASSIVE also cures it). One small kernel restores the old state."""
    import bitsandbytes.functional as bnb_functional
    import torch

    bnb_functional.quantize_blockwise(torch.zeros(8192))


def _save_quantized(model, folder: Path) -> None:
    """Save a freshly quantized model for the next load; best effort (a read-only cache only costs time)."""
    import shutil
    import tempfile

    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".partial-"))
        model.save_pretrained(tmp)
        os.rename(tmp, folder)  # atomic: a concurrent load sees the whole folder or none of it
    except Exception:  # no space, read-only, or another process saved it first: the load itself succeeded
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def keep_4bit_weights_trainable(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights into its CPU inference layout.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weights the first time it runs in eval mode
    without gradients (an evaluation pass), and keeps them packed after `model.train()`. The packed layout runs through
    a kernel with no autograd support, so every later backward pass silently drops the gradient through the frozen
    base layers. Training evaluates before, between and after steps, so the repacking is switched off here."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise ModelError(f"{adapter_dir}: not an adapter folder (no adapter_config.json)")
    return json.loads(path.read_text(encoding="utf-8"))


def check_adapter_matches(adapter_dir: str | Path, cfg: PipelineConfig) -> None:
    """Refuse to continue an adapter whose base model or LoRA shape differs from this config."""
    adapter_cfg = read_adapter_config(adapter_dir)
    base = adapter_cfg.get("base_model_name_or_path")
    if base and base != cfg.model.name:
        raise ModelError(f"{adapter_dir}: the adapter was trained on {base!r}, but this config's base model is "
                         f"{cfg.model.name!r}")
    want = {"r": cfg.lora.r, "lora_alpha": cfg.lora.alpha, "target_modules": sorted(cfg.lora.target_modules)}
    have = {"r": adapter_cfg.get("r"), "lora_alpha": adapter_cfg.get("lora_alpha"),
            "target_modules": sorted(adapter_cfg.get("target_modules") or [])}
    for key in want:
        if want[key] != have[key]:
            raise ModelError(f"{adapter_dir}: adapter has {key}={have[key]!r}, config says {want[key]!r}; "
                             "LoRA settings must match across stages")


def attach_adapter(model, cfg: PipelineConfig, init_from: str | Path | None = None):
    """A trainable PeftModel: a fresh LoRA adapter, or the adapter in `init_from` continued (never merged)."""
    from peft import PeftModel, get_peft_model
    from transformers import set_seed

    set_seed(cfg.seed)  # LoRA A matrices are initialised randomly
    if init_from is not None:
        check_adapter_matches(init_from, cfg)
        peft_model = PeftModel.from_pretrained(model, str(init_from), is_trainable=True)
    else:
        peft_model = get_peft_model(model, build_lora_config(cfg))
    # While training, PEFT looks the base up by this field when it saves; keep it on the loaded (local) weights.
    # `name_base_in_adapter` writes the configured name into the final adapter.
    for adapter_config in peft_model.peft_config.values():
        adapter_config.base_model_name_or_path = model.name_or_path
    return peft_model


def name_base_in_adapter(adapter_dir: str | Path, cfg: PipelineConfig) -> None:
    """Record the configured base (Hub id or demo name) in a saved adapter, not this machine's cache path.

    Done after saving: while training, PEFT's checkpoint code looks the base up by this field, so it stays local."""
    path = Path(adapter_dir) / "adapter_config.json"
    adapter_cfg = json.loads(path.read_text(encoding="utf-8"))
    adapter_cfg["base_model_name_or_path"] = cfg.model.name
    adapter_cfg["revision"] = cfg.model.revision
    path.write_text(json.dumps(adapter_cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
