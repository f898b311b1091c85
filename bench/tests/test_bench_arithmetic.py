"""The benchmarks' own arithmetic, on made-up inputs: the FLOPs and peak figures MFU is computed from, the profiler's
op categories and summary, the loss-parity and fp16 verdicts and their tables. (tests/test_bench.py runs the scripts
end to end as a user would; neither folder imports the other.)"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))  # the scripts import their siblings (gpu_qlora) by name, as when run from bench/
sys.path.insert(0, str(BENCH.parent))


def test_mfu_formula_and_peaks():
    import gpu_qlora

    assert gpu_qlora.count_parameters(gpu_qlora.MISTRAL_7B_V03) == 7_248_023_552  # Mistral-7B-v0.3's count
    shape = gpu_qlora.MISTRAL_7B_V03
    assert gpu_qlora.flops_per_token(shape, 1500) == 6 * 7_248_023_552 + 12 * 32 * 4096 * 1500
    assert gpu_qlora.peak_tflops("NVIDIA H200") == 989.0
    assert gpu_qlora.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_qlora.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_qlora.peak_tflops("Tesla T4") == 65.0
    assert gpu_qlora.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_qlora.peak_tflops("some new card") is None


def _synthetic_step():
    """One forward and backward through a LoRA layer, a 4-bit base layer, attention and the loss, then the optimizer
    step, as the profiler's events would give them (parents by index; forward thread 1)."""
    from bench.profile_step import Op

    def op(name, us, parent=None, seq=-1, backward=False, fwd_thread=None):
        return Op(name, us, 0.0, parent, 1, seq, backward, fwd_thread)

    return [
        op("qlora/lm_head_ce", 1, None),                          # 0
        op("qlora/decoder", 1, 0),                                # 1
        op("qlora/attention", 1, 1),                              # 2
        op("qlora/lora", 1, 2),                                   # 3: q_proj's adapter
        op("aten::mm", 10, 3, seq=7),                             # 4: lora_A matmul
        op("qlora/base_linear", 1, 3),                            # 5: q_proj's 4-bit base
        op("bitsandbytes::dequantize_4bit", 20, 5),               # 6
        op("aten::linear", 30, 5, seq=8),                         # 7: the base matmul
        op("aten::_scaled_dot_product_flash_attention_for_cpu", 40, 2, seq=9),  # 8
        op("aten::mul", 5, 1, seq=10),                            # 9: RMSNorm in the decoder
        op("aten::mm", 50, 0, seq=11),                            # 10: LM head
        op("aten::logsumexp", 6, 0),                              # 11
        op("autograd::engine::evaluate_function: MmBackward0", 1, None, seq=7, backward=True, fwd_thread=1),  # 12
        op("MmBackward0", 1, 12, seq=7, backward=True, fwd_thread=1),                                       # 13
        op("aten::mm", 12, 13),                                   # 14: LoRA backward -> lora
        op("autograd::engine::evaluate_function: MatMul4BitBackward", 1, None, backward=True),              # 15
        op("bitsandbytes::dequantize_4bit", 21, 15),              # 16: dequantization in the backward
        op("aten::mm", 31, 15),                                   # 17: base backward matmul -> base_matmul
        op("autograd::engine::evaluate_function: MulBackward0", 1, None, seq=10, backward=True, fwd_thread=1),  # 18
        op("aten::mul", 4, 18),                                   # 19: norm backward -> other
        op("autograd::engine::evaluate_function: MmBackward0", 1, None, seq=11, backward=True, fwd_thread=1),  # 20
        op("aten::mm", 55, 20),                                   # 21: LM head backward -> lm_head_ce
        op("qlora/optimizer", 1, None),                           # 22: gradient clipping
        op("aten::_foreach_norm", 3, 22),                         # 23
        op("Optimizer.step#AdamW.step", 1, None),                 # 24
        op("aten::_fused_adamw_", 8, 24),                         # 25
        op("aten::add_", 2, None),                                # 26: outside every range -> other
    ]


def test_profile_categorises_forward_backward_and_optimizer_ops():
    from bench.profile_step import categorise

    assert categorise(_synthetic_step()) == [
        "lm_head_ce", "other", "attention", "lora", "lora", "base_matmul", "nf4_dequant", "base_matmul",
        "attention", "other", "lm_head_ce", "lm_head_ce", "lora", "lora", "lora", "base_matmul", "nf4_dequant",
        "base_matmul", "other", "other", "lm_head_ce", "lm_head_ce", "optimizer", "optimizer", "optimizer",
        "optimizer", "other"]


def test_profile_summary_shares_and_markdown():
    from bench.profile_step import CATEGORIES, markdown, summarise

    summary = summarise(_synthetic_step(), wall_seconds=0.5)
    cats = summary["categories"]
    assert summary["clock"] == "CPU" and summary["step_wall_ms"] == 500.0 and summary["total_ms"] == 0.309
    assert cats["nf4_dequant"]["ms"] == 0.041 and cats["lora"]["ms"] == 0.025
    assert cats["optimizer"]["top_ops"][0] == ["aten::_fused_adamw_", 0.008]
    assert abs(sum(cats[c]["share"] for c in CATEGORIES) - 1) < 1e-3
    table = markdown({"tiny": True, "device": "cpu", "warmup_steps": 1, "sequences_per_step": 8,
                      "sides": {"ours": {"profile": summary}, "baseline": {"error": "exit 1: boom"}}})
    assert "| NF4 dequantization (bitsandbytes) | 0.0 | 13.3% |" in table
    assert "baseline: failed" in table


def test_loss_parity_verdict():
    from bench.loss_parity import markdown, parity_verdict

    ok = parity_verdict([2.0, 1.5, 1.2], [2.0, 1.51, 1.205])
    assert ok["passed"] and ok["verdict"] == "PASS" and abs(ok["max_rel_diff"] - 0.01 / 1.51) < 1e-9
    assert [r["step"] for r in ok["steps"]] == [1, 2, 3]
    off = parity_verdict([2.0, 1.5, 1.2], [2.0, 1.5, 1.22])  # 1.6% at step 3
    assert not off["passed"] and "exceeds" in off["reasons"][0]
    assert not parity_verdict([2.0, 1.5], [2.0, 1.5, 1.2])["passed"]  # a side stopped early
    assert not parity_verdict([], [])["passed"]
    assert not parity_verdict([2.0], [2.0], same_batches=False)["passed"]
    assert not parity_verdict([float("nan")], [2.0])["passed"]
    side = {"layout": "8 x 1"}
    text = markdown({"tiny": True, "device": "cpu", "sequences_per_step": 8, "verdict": off,
                     "sides": {"ours": side, "baseline": side}})
    assert "**FAIL**" in text and "| 3 | 1.20000 | 1.22000 | 1.64e-02 |" in text


def test_loss_parity_fingerprints_match_across_layouts():
    import torch

    from bench.loss_parity import conversation_fingerprints

    a, b = [5, 6, 7, 8], [9, 10, 11]
    packed = {"input_ids": torch.tensor([a + b]), "position_ids": torch.tensor([[0, 1, 2, 3, 0, 1, 2]])}
    padded = {"input_ids": torch.tensor([a, b + [0]]), "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}
    assert conversation_fingerprints(packed) == conversation_fingerprints(padded)
    assert len(set(conversation_fingerprints(packed))) == 2


def test_fp16_verdict_passes_within_one_percent_without_late_skips():
    from bench.precision_memory import fp16_verdict, markdown

    bf16 = {"losses": [3.0, 2.8, 2.6, 2.5, 2.4, 2.3], "skipped_at": []}
    ok = fp16_verdict({"losses": [3.3, 2.9, 2.61, 2.51, 2.405, 2.31], "skipped_at": [1, 2]}, bf16, warmup=2)
    assert ok["verdict"] == "PASS" and ok["skipped_total"] == 2 and ok["skipped_after_warmup"] == []
    late = fp16_verdict({"losses": [3.0, 2.8, 2.6, 2.5, 2.4, 2.3], "skipped_at": [5]}, bf16, warmup=2)
    assert late["verdict"] == "FAIL" and late["skipped_after_warmup"] == [5]
    drift = fp16_verdict({"losses": [3.0, 2.8, 2.6, 2.5, 2.4, 2.4], "skipped_at": []}, bf16, warmup=2)
    assert drift["verdict"] == "FAIL" and drift["worst_rel_diff_after_warmup"] > 0.04
    assert fp16_verdict({"losses": []}, bf16, warmup=2)["verdict"] == "FAIL"
    text = markdown({"mode": "fp16", "device": "Tesla T4", "command": "x", "verdict": late})
    assert "**FAIL**" in text and "| 5 | 2.4000 | 2.4000 | 0.0000 |" in text
    plan = markdown({"mode": "plan", "device": "cpu", "command": "x", "runs": [
        {"label": "2 x 1", "planned_peak_gb": 1.39, "peak_gpu_gb": None, "peak_rss_gb": 1.52}]})
    assert "| 2 x 1 | 1.39 | 1.52 | 0.91 |" in plan
