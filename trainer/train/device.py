"""Precision and kernels by device: what this GPU (or a named one, or the CPU) can run, decided from its compute
capability, never from what PyTorch emulates.

One rule for training, `trainer serve` and the app:

- `precision: auto` is bf16 on a GPU of compute capability 8.0 or newer (Ampere, Ada, Hopper), fp16 mixed precision
  on older GPUs (T4 7.5, V100 7.0, P100 6.0), and on a CPU bf16 where it is native (AVX512-BF16 or AMX), fp32
  elsewhere. `torch.cuda.is_bf16_supported()` says yes on a T4, where bf16 only runs emulated (slow, and Triton
  kernels fail with "cvt with .f32.bf16 requires sm_80"), so it is never asked.
- An explicit `bf16` where it is not native is refused with the reason, and so is `fp16` on a CPU (accelerate runs
  no fp16 autocast or loss scaling there); `fp32` runs anywhere.
- Triton (Liger's kernels, `torch.compile`, `compile_layers`, the app's compiled decode) needs capability 7.0.
- PyTorch's CUDA 12.8+ wheels start at Turing (7.5): a P100 or V100 needs the cu126 build, named before anything
  loads (`torch_build_problem`).

Every decision is a pure function of a `DeviceInfo`, so the tests simulate any card; `detect_device()` reads the one
this process has, and `named_gpu()` one of the common cards in `GPUS` (for `python -m trainer plan --gpu`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from trainer.typed_yaml import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
"""The `precision` setting's values."""
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
BF16_CAPABILITY = (8, 0)
TRITON_CAPABILITY = (7, 0)
CU126_INDEX = "https://download.pytorch.org/whl/cu126"
"""PyTorch's CUDA 12.6 wheels: the newest builds with kernels for Pascal (sm_60) and Volta (sm_70)."""


class DeviceError(ConfigError):
    """A setting this device cannot run, or a torch build without kernels for it; the message says what to change."""


@dataclass(frozen=True)
class DeviceInfo:
    """What the decisions need to know about one device."""

    kind: str
    """`cuda` or `cpu`."""
    name: str
    """As the driver names it (`Tesla T4`) or `cpu`."""
    capability: tuple[int, int] | None = None
    """CUDA compute capability (major, minor); None on a CPU."""
    memory_gb: float | None = None
    """Total memory the device reports, GiB (for a CPU: the machine's)."""
    arch_list: tuple[str, ...] = ()
    """`torch.cuda.get_arch_list()` of the installed torch (empty: unknown, e.g. a card named for `plan`)."""
    cpu_native_bf16: bool = False
    """A CPU with AVX512-BF16 or AMX (bf16 matmuls native)."""
    key: str | None = None
    """The `GPUS` key when the device was named rather than detected."""
    count: int = 1
    """CUDA devices this process sees."""

    @property
    def sm(self) -> str | None:
        return f"sm_{self.capability[0]}{self.capability[1]}" if self.capability else None

    def describe(self) -> str:
        if self.kind == "cpu":
            return f"CPU ({'native' if self.cpu_native_bf16 else 'no native'} bfloat16)"
        return f"{self.name} (compute capability {self.capability[0]}.{self.capability[1]}, {self.memory_gb:g} GB)"


@dataclass(frozen=True)
class GPUSpec:
    key: str
    name: str
    capability: tuple[int, int]
    memory_gb: float
    """What torch.cuda reports as total memory, GiB."""
    note: str = ""


GPUS: dict[str, GPUSpec] = {spec.key: spec for spec in (
    GPUSpec("t4", "Tesla T4", (7, 5), 14.74, "Colab and Kaggle free tier; the Space's t4-small"),
    GPUSpec("p100", "Tesla P100-PCIE-16GB", (6, 0), 15.89, "Kaggle free tier; the paper's card"),
    GPUSpec("v100", "Tesla V100-SXM2-16GB", (7, 0), 15.77),
    GPUSpec("v100-32gb", "Tesla V100-SXM2-32GB", (7, 0), 31.74),
    GPUSpec("l4", "NVIDIA L4", (8, 9), 22.06, "Colab Pro, the Space's l4x1"),
    GPUSpec("a10g", "NVIDIA A10G", (8, 6), 22.06, "the Space's a10g-small"),
    GPUSpec("rtx3060", "NVIDIA GeForce RTX 3060", (8, 6), 11.76, "12 GB desktop card"),
    GPUSpec("rtx4090", "NVIDIA GeForce RTX 4090", (8, 9), 23.55),
    GPUSpec("a100-40gb", "NVIDIA A100-SXM4-40GB", (8, 0), 39.39),
    GPUSpec("a100-80gb", "NVIDIA A100-SXM4-80GB", (8, 0), 79.15),
    GPUSpec("h100", "NVIDIA H100 80GB HBM3", (9, 0), 79.11),
    GPUSpec("h200", "NVIDIA H200", (9, 0), 139.8, "what BENCHMARKS.md measured on"),
    GPUSpec("zero-gpu", "ZeroGPU (H200 slice)", (9, 0), 69.5,
            "free ZeroGPU Spaces: half an H200 per call (size='large'), a daily quota per visitor"),
)}
_ALIASES = {"tesla-t4": "t4", "p100-16gb": "p100", "v100-16gb": "v100", "a100": "a100-40gb", "a100-40": "a100-40gb",
            "a100-80": "a100-80gb", "h100-80gb": "h100", "zerogpu": "zero-gpu", "zero": "zero-gpu",
            "rtx-3060": "rtx3060", "rtx-4090": "rtx4090", "3060": "rtx3060", "4090": "rtx4090"}


def named_gpu(name: str) -> DeviceInfo:
    """One of the common cards by its `GPUS` key (or an alias: `a100` is the 40 GB one); a ConfigError lists them."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = _ALIASES.get(key, key)
    if key not in GPUS:
        close = difflib.get_close_matches(key, list(GPUS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"--gpu {name}: unknown card{hint}; known: {', '.join(GPUS)} (or give --memory GB)")
    spec = GPUS[key]
    return DeviceInfo("cuda", spec.name, spec.capability, spec.memory_gb, key=key)


def cpu_native_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX). Elsewhere PyTorch emulates them: on a
    2-core AVX2 AMD EPYC a bf16 matmul measured 0.75 GFLOPS against 37 in float32, and a demo training step took
    613 s instead of ~12 s."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def _machine_memory_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 2)
    except OSError:
        return None
    return None


def detect_device() -> DeviceInfo:
    """This process's device: CUDA device 0 (its capability, memory and torch's arch list), or the CPU."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return DeviceInfo("cuda", props.name, (props.major, props.minor), round(props.total_memory / 2**30, 2),
                          tuple(torch.cuda.get_arch_list()), count=torch.cuda.device_count())
    return DeviceInfo("cpu", "cpu", memory_gb=_machine_memory_gb(), cpu_native_bf16=cpu_native_bf16())


def native_bf16(device: DeviceInfo) -> bool:
    """bf16 runs natively: capability 8.0+ on a GPU, AVX512-BF16 or AMX on a CPU."""
    if device.kind == "cuda":
        return device.capability is not None and device.capability >= BF16_CAPABILITY
    return device.cpu_native_bf16


def triton_ok(device: DeviceInfo) -> bool:
    """Triton's kernels (Liger, torch.compile on a GPU) run: a CUDA GPU of capability 7.0 or newer."""
    return device.kind == "cuda" and device.capability is not None and device.capability >= TRITON_CAPABILITY


@dataclass(frozen=True)
class Precision:
    """A resolved precision: how training mixes and what the 4-bit weights dequantize to."""

    name: str
    """`bf16`, `fp16` or `fp32`."""
    reason: str
    """Why, in words (shown by `plan`, `train` and the app)."""

    @property
    def dtype(self) -> str:
        """The torch dtype's name: compute dtype of the 4-bit base and dtype of its unquantized parts."""
        return DTYPES[self.name]

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    @property
    def trl_flags(self) -> dict[str, bool]:
        """TRL's bf16 / fp16, always both set (TRL turns bf16 on by itself otherwise)."""
        return {"bf16": self.name == "bf16", "fp16": self.name == "fp16"}


def resolve_precision(setting: str, device: DeviceInfo, where: str = "precision") -> Precision:
    """`auto | bf16 | fp16 | fp32` on this device. An explicit bf16 without native support is refused."""
    if setting not in PRECISIONS:
        raise ConfigError(f"{where}: must be one of {', '.join(PRECISIONS)}, got {setting!r}")
    native = native_bf16(device)
    if device.kind == "cuda":
        cap = f"{device.capability[0]}.{device.capability[1]}" if device.capability else "unknown"
        if setting == "bf16" and not native:
            raise DeviceError(
                f"{where}: bf16 needs a GPU of compute capability 8.0 or newer (Ampere); the {device.name} is {cap}, "
                "where bfloat16 only runs emulated (torch.cuda.is_bf16_supported() says yes by emulation): slow, "
                "and Triton kernels fail on it. Use precision: auto (fp16 mixed precision here) or fp16")
        if setting == "auto":
            if native:
                return Precision("bf16", f"auto: the {device.name} (compute capability {cap}) runs bfloat16 natively")
            return Precision("fp16", f"auto: the {device.name} (compute capability {cap}) has no native bfloat16 "
                                     "(needs 8.0); fp16 mixed precision, LoRA weights kept in fp32, loss scaling")
        return Precision(setting, f"{setting}, as configured, on the {device.name}")
    if setting == "fp16":
        raise DeviceError(f"{where}: fp16 mixed precision needs a CUDA GPU (its loss scaling and fp16 kernels are GPU "
                          "features; accelerate runs no fp16 autocast on a CPU); use precision: auto or fp32 here")
    if setting == "bf16" and not native:
        raise DeviceError(f"{where}: bf16 on this CPU runs emulated (no AVX512-BF16 or AMX): ~50x slower than fp32. "
                          "Use precision: auto (fp32 here) or fp32")
    if setting == "auto":
        if native:
            return Precision("bf16", "auto: this CPU has native bfloat16 (AVX512-BF16 or AMX)")
        return Precision("fp32", "auto: this CPU has no native bfloat16 (no AVX512-BF16 or AMX); fp32 is ~50x "
                                 "faster here than emulated bfloat16")
    return Precision(setting, f"{setting}, as configured, on the CPU")


def resolve_compute_dtype(setting: str, precision: Precision, device: DeviceInfo) -> str:
    """The 4-bit compute dtype: `auto` follows the precision; an explicit bfloat16 where it is not native is
    refused like `precision: bf16`."""
    if setting == "auto":
        return precision.dtype
    if setting == "bfloat16" and not native_bf16(device):
        raise DeviceError(f"quantization.compute_dtype: bfloat16 is not native on {device.describe()}; use auto "
                          "(follows precision) or float16 / float32")
    return setting


def _arch_ok(capability: tuple[int, int], arch_list: tuple[str, ...]) -> bool:
    """Whether a torch build with these archs has kernels for this capability: a cubin for the same major version and
    a minor no newer (binary compatible), or PTX (`compute_XY`) no newer, which the driver compiles."""
    major, minor = capability
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        if not digits.isdigit():
            continue
        a_major, a_minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def torch_build_problem(device: DeviceInfo, torch_version: str | None = None) -> str | None:
    """One line naming the torch build to install when the installed one has no kernels for this GPU (a P100 under
    a CUDA 12.8+ wheel fails later with "no kernel image is available"); None when it has, or cannot be known."""
    if device.kind != "cuda" or not device.arch_list or device.capability is None:
        return None
    if _arch_ok(device.capability, device.arch_list):
        return None
    if torch_version is None:
        import torch

        torch_version = torch.__version__
    version = torch_version.split("+")[0]
    built = ", ".join(a for a in device.arch_list if a.startswith("sm_"))
    if device.capability < (7, 5):
        fix = (f"install PyTorch's CUDA 12.6 build, the newest with {device.sm} kernels: pip install "
               f"torch=={version} --index-url {CU126_INDEX}")
    else:
        fix = "install a PyTorch build for it (https://pytorch.org/get-started/locally/)"
    return (f"this torch ({torch_version}) has no kernels for the {device.name} ({device.sm}; it was built for "
            f"{built}): {fix}")


def check_torch_build(device: DeviceInfo) -> None:
    """Raise a DeviceError with `torch_build_problem`'s line, before any weights load."""
    problem = torch_build_problem(device)
    if problem:
        raise DeviceError(problem)


def one_process_per_gpu(device: DeviceInfo, environ=None) -> None:
    """Refuse one process on several GPUs (Kaggle's T4 x2): the Trainer would then take per-device batch x GPUs
    conversations per pass but keep a 4-bit model on the first GPU alone, twice the planned memory there."""
    import os

    environ = os.environ if environ is None else environ
    if device.kind == "cuda" and device.count > 1 and int(environ.get("WORLD_SIZE", "1")) == 1:
        raise DeviceError(f"this process sees {device.count} GPUs: a single training process would put "
                          f"{device.count}x the planned batch on the first one. Train on one "
                          "(CUDA_VISIBLE_DEVICES=0 python -m trainer train ...) or on all, one process each "
                          f"(torchrun --nproc_per_node {device.count} -m trainer train ...)")


def with_memory(device: DeviceInfo, memory_gb: float) -> DeviceInfo:
    """The same device with another memory size (`plan --memory`)."""
    return replace(device, memory_gb=memory_gb)
