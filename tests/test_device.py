"""Precision and kernels by device: every decision from simulated device properties (capability, arch list, CPU
flags), not only from the table of named cards; and the fp16 path's pieces that run on a CPU (fp32 LoRA weights,
the precision watch that counts skipped steps and stops a run that keeps overflowing)."""

from __future__ import annotations

import math

import pytest

from helpers import REPO
from trainer.train.config import build_sft_config, compile_layers_ready, liger_kernel_wanted, load_config
from trainer.train.device import (GPUS, DeviceError, DeviceInfo, named_gpu, resolve_compute_dtype,
                                  resolve_precision, torch_build_problem, triton_ok)
from trainer.typed_yaml import ConfigError

CU128_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120")
CU126_ARCHS = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "compute_90")


def gpu(major: int, minor: int, memory: float = 16.0, arch_list=CU128_ARCHS, name: str = "Some GPU") -> DeviceInfo:
    return DeviceInfo("cuda", name, (major, minor), memory, tuple(arch_list))


@pytest.mark.parametrize(("capability", "expected"), [
    ((6, 0), "fp16"), ((6, 1), "fp16"), ((7, 0), "fp16"), ((7, 5), "fp16"),  # P100, GTX 10x0, V100, T4
    ((8, 0), "bf16"), ((8, 6), "bf16"), ((8, 9), "bf16"), ((9, 0), "bf16"), ((12, 0), "bf16"),
])
def test_auto_is_bf16_only_from_compute_capability_8(capability, expected):
    precision = resolve_precision("auto", gpu(*capability))
    assert precision.name == expected
    assert precision.trl_flags == {"bf16": expected == "bf16", "fp16": expected == "fp16"}
    assert precision.dtype == {"bf16": "bfloat16", "fp16": "float16"}[expected]


def test_explicit_bf16_on_a_card_without_it_is_refused_with_the_reason():
    with pytest.raises(DeviceError) as err:
        resolve_precision("bf16", gpu(7, 5, name="Tesla T4"))
    message = str(err.value)
    assert "Tesla T4 is 7.5" in message and "8.0" in message and "emulated" in message and "fp16" in message
    assert resolve_precision("bf16", gpu(8, 0)).name == "bf16"
    assert resolve_precision("fp16", gpu(9, 0)).name == "fp16"  # fp16 runs on any GPU
    assert resolve_precision("fp32", gpu(6, 0)).name == "fp32"


@pytest.mark.parametrize("native", [True, False])
def test_the_cpu_rule_is_as_before(native):
    cpu = DeviceInfo("cpu", "cpu", cpu_native_bf16=native)
    assert resolve_precision("auto", cpu).name == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", cpu).name == "fp32"
    with pytest.raises(DeviceError, match="fp16 mixed precision needs a CUDA GPU"):
        resolve_precision("fp16", cpu)
    if not native:
        with pytest.raises(DeviceError, match="emulated"):
            resolve_precision("bf16", cpu)


def test_an_unknown_precision_is_named():
    with pytest.raises(ConfigError, match="precision: must be one of auto, bf16, fp16, fp32, got 'half'"):
        resolve_precision("half", gpu(8, 0))


def test_the_4bit_compute_dtype_follows_the_precision_unless_set():
    t4, a100 = gpu(7, 5), gpu(8, 0)
    assert resolve_compute_dtype("auto", resolve_precision("auto", t4), t4) == "float16"
    assert resolve_compute_dtype("auto", resolve_precision("auto", a100), a100) == "bfloat16"
    assert resolve_compute_dtype("float32", resolve_precision("auto", t4), t4) == "float32"
    with pytest.raises(DeviceError, match="compute_dtype: bfloat16 is not native"):
        resolve_compute_dtype("bfloat16", resolve_precision("auto", t4), t4)


@pytest.mark.parametrize(("capability", "triton"), [((6, 0), False), ((6, 1), False), ((7, 0), True), ((7, 5), True),
                                                      ((9, 0), True)])
def test_triton_needs_compute_capability_7(capability, triton):
    assert triton_ok(gpu(*capability)) is triton
    assert not triton_ok(DeviceInfo("cpu", "cpu", cpu_native_bf16=True))


def test_liger_and_compile_layers_follow_triton(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "liger_kernel" else real_find_spec(name, *a))
    cfg = load_config(REPO / "configs" / "paper.yaml")
    p100, t4 = gpu(6, 0, name="Tesla P100"), gpu(7, 5, name="Tesla T4")
    assert liger_kernel_wanted(cfg, "stage1", t4) is True
    assert liger_kernel_wanted(cfg, "stage1", p100) is False  # auto: off where Triton does not run
    forced = load_config(REPO / "configs" / "paper.yaml", ["training.use_liger_kernel=true",
                                                             "training.compile_layers=true"])
    with pytest.raises(DeviceError, match="compute capability 7.0"):
        liger_kernel_wanted(forced, "stage1", p100)
    with pytest.raises(DeviceError, match="torch.compile's Triton kernels need compute capability 7.0"):
        compile_layers_ready(forced, "stage1", p100)
    compile_layers_ready(forced, "stage1", t4)  # runs there


def test_trl_flags_are_always_set_explicitly(tmp_path):
    from trainer.train.device import detect_device, native_bf16

    assert resolve_precision("auto", gpu(7, 5)).trl_flags == {"bf16": False, "fp16": True}
    assert resolve_precision("auto", gpu(8, 0)).trl_flags == {"bf16": True, "fp16": False}
    # TRL's own config refuses a GPU flag without a GPU, so the real SFTConfig is built for this machine only
    here = detect_device()
    sft = build_sft_config(load_config(REPO / "configs" / "paper.yaml"), "stage1", tmp_path, device=here)
    assert (sft.bf16, sft.fp16) == (native_bf16(here), False)
    fp32 = load_config(REPO / "configs" / "paper.yaml", ["precision=fp32"])
    sft = build_sft_config(fp32, "stage1", tmp_path, device=here)
    assert (sft.bf16, sft.fp16) == (False, False)  # TRL would turn bf16 on by itself otherwise


@pytest.mark.parametrize(("capability", "archs", "ok"), [
    ((6, 0), CU128_ARCHS, False),   # a P100 under a CUDA 12.8 wheel: "no kernel image is available"
    ((7, 0), CU128_ARCHS, False),   # V100 too
    ((6, 0), CU126_ARCHS, True),
    ((7, 5), CU128_ARCHS, True),
    ((8, 9), ("sm_80", "sm_86", "sm_90"), True),   # an sm_86 cubin runs on sm_89 (same major, older minor)
    ((9, 0), ("sm_80", "sm_86"), False),           # no cubin of major 9 and no PTX
    ((10, 0), ("sm_80", "compute_90"), True),      # PTX for an older arch is compiled by the driver
])
def test_the_torch_build_check_follows_cuda_compatibility(capability, archs, ok):
    problem = torch_build_problem(gpu(*capability, arch_list=archs, name="Card"), "2.13.0+cu128")
    assert (problem is None) is ok
    if not ok and capability < (7, 5):
        assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126" in problem
        assert f"sm_{capability[0]}{capability[1]}" in problem


def test_an_unknown_arch_list_is_not_guessed():
    assert torch_build_problem(named_gpu("p100")) is None  # a named card: the target machine's torch is unknown


def test_one_process_on_two_gpus_is_refused_with_both_ways_out():
    from dataclasses import replace

    from trainer.train.device import one_process_per_gpu

    two_t4 = replace(gpu(7, 5, name="Tesla T4"), count=2)
    with pytest.raises(DeviceError) as err:
        one_process_per_gpu(two_t4, {})
    assert "CUDA_VISIBLE_DEVICES=0" in str(err.value) and "torchrun --nproc_per_node 2" in str(err.value)
    one_process_per_gpu(two_t4, {"WORLD_SIZE": "2"})  # data parallel: one process per GPU
    one_process_per_gpu(gpu(7, 5), {})


def test_named_cards_and_aliases():
    assert named_gpu("T4").capability == (7, 5) and named_gpu("a100").key == "a100-40gb"
    assert named_gpu("A100_80GB").memory_gb > 70 and named_gpu("zerogpu").key == "zero-gpu"
    with pytest.raises(ConfigError, match="did you mean a100-80gb"):
        named_gpu("a100-80g")
    for spec in GPUS.values():  # the table agrees with the rule it feeds
        assert resolve_precision("auto", named_gpu(spec.key)).name == ("bf16" if spec.capability >= (8, 0) else "fp16")


# The fp16 path's pieces that run here

def test_trainable_lora_weights_stay_fp32_on_an_fp16_base(tiny_mistral_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trainer.train.precision_watch import keep_trainable_weights_fp32

    base = AutoModelForCausalLM.from_pretrained(tiny_mistral_dir, dtype=torch.float16)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"]), autocast_adapter_dtype=False)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float16}
    assert keep_trainable_weights_fp32(model) > 0
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.float16}  # the frozen base stays


class _Accelerator:
    def __init__(self):
        import torch

        self.optimizer_step_was_skipped = False
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)


def _step(watch, trainer, step: int, grad: float) -> None:
    """One optimizer step as the Trainer drives the callbacks: gradients set, pre-step, the scaler's verdict, end."""
    import torch

    for p in trainer.model.parameters():
        p.grad = torch.full_like(p, grad)
    watch.on_pre_optimizer_step(None, None, None)
    trainer.accelerator.optimizer_step_was_skipped = not math.isfinite(grad)
    watch.on_step_end(None, type("State", (), {"global_step": step})(), None)


def test_the_precision_watch_counts_skipped_steps_and_stops_a_run_that_keeps_overflowing():
    import torch

    from trainer.train.precision_watch import OVERFLOW_STREAK, PrecisionError, precision_watch

    trainer = type("Trainer", (), {})()
    trainer.model, trainer.accelerator = torch.nn.Linear(4, 4), _Accelerator()
    watch = precision_watch(trainer, "stage1", "fp16")
    for step, grad in enumerate([math.inf, math.inf, 0.5, math.nan, 0.1, 0.2], start=1):  # warm-up skips, then fine
        _step(watch, trainer, step, grad)
    assert (watch.skipped, watch.nonfinite, watch.streak) == (3, 3, 0)
    assert watch.loss_scale() == 2.0**16
    with pytest.raises(PrecisionError) as err:
        for step in range(7, 7 + OVERFLOW_STREAK):
            _step(watch, trainer, step, math.inf)
    message = str(err.value)
    assert f"{OVERFLOW_STREAK} optimizer steps in a row overflowed in fp16" in message
    assert "precision=fp32" in message and "\n" not in message


def test_non_finite_gradients_in_bf16_are_counted_without_a_scaler():
    import torch

    from trainer.train.precision_watch import precision_watch

    trainer = type("Trainer", (), {})()
    trainer.model, trainer.accelerator = torch.nn.Linear(2, 2), _Accelerator()
    trainer.accelerator.scaler = None
    watch = precision_watch(trainer, "stage2", "bf16")
    _step(watch, trainer, 1, math.nan)
    trainer.accelerator.optimizer_step_was_skipped = False
    assert watch.nonfinite == 1 and watch.loss_scale() is None
