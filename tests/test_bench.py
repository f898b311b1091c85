"""bench/: the GPU QLoRA benchmark runs end to end at tiny shapes on the CPU, the scaling benchmark keeps every
synthesised row, and the fast content hash that ingestion uses is byte-identical to the canonical json.dumps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

from trainer.data import conversations as data_module


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
def test_gpu_qlora_tiny_runs_both_sides_and_reports(tmp_path):
    proc = _run(["bench/gpu_qlora.py", "--tiny", "--mode", "both", "--steps", "2", "--quiet",
                 "--out-dir", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work"),
                 "--model-dir", str(tmp_path / "model")], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "gpu_qlora.json").read_text())
    assert results["tiny"] and results["mode"] == "both"
    assert results["data"]["conversations"] >= 16 and results["data"]["mean_tokens"] > 50
    assert results["data"]["parameters"] > 0
    for name in ("ours", "baseline"):
        side = results["sides"][name]
        assert "error" not in side, side
        assert side["device"] == "cpu"
        assert side["tokens_per_second"] > 0 and side["samples_per_second"] > 0
        assert side["optimizer_steps"] == 2
        assert side["mfu"] is None and side["peak_gpu_allocated_gb"] is None  # no GPU: reported as such
        assert side["paper_recipe_hours"] > 0
    assert results["sides"]["ours"]["settings"]["padding_free"] is True
    assert results["sides"]["baseline"]["settings"]["padding_free"] is False
    assert results["ratio"]["tokens_per_second"] > 0
    generation = results["sides"]["ours"]["generation"]
    assert generation["adapters"] == ["a", "b"]
    for key in ("base", "adapter", "switching"):
        assert generation[key]["tokens_per_second"] > 0 and generation[key]["ttft_s"] > 0
        assert generation[key]["new_tokens_each"] == generation["max_new_tokens"]
    table = (tmp_path / "out" / "gpu_qlora.md").read_text()
    assert "| ours |" in table and "| baseline |" in table and "ours / baseline" in table


def test_mfu_formula_and_peaks():
    sys.path.insert(0, str(REPO / "bench"))
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


@pytest.mark.slow
def test_scaling_keeps_every_synthesised_row(tmp_path):
    out = tmp_path / "scaling.jsonl"
    proc = _run(["bench/scaling.py", "--sizes", "100", "300", "--tasks", "ingest", "audit", "--no-memory-probe",
                 "--data-dir", str(tmp_path / "data"), "--out", str(out)], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ingest = {r["rows"]: r for r in rows if r["task"] == "ingest"}
    assert set(ingest) == {100, 300}
    for n, r in ingest.items():
        assert r["kept"] == n and r["duplicates"] == 0 and r["bad"] == 0  # the per-copy suffix defeats dedup
        assert r["train"] + r["eval"] == n
        assert r["per_row_ratio_vs_smallest"] > 0
    audits = [r for r in rows if r["task"] == "audit" and not r["kb"]]
    assert {r["rows"] for r in audits} == {100, 300}
    assert "per-row cost, largest / smallest" in proc.stdout


@pytest.mark.slow
def test_synth_throughput_runs_against_transformers_serve(tmp_path):
    out = tmp_path / "synth.jsonl"
    proc = _run(["bench/synth_throughput.py", "--n", "1", "--max-tokens", "4", "--concurrency", "1",
                 "--out", str(out)], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    (result,) = record["results"]
    assert result["conversations"] == 1 and result["requests"] == 4 and result["completion_tokens"] > 0
    assert "| 1 |" in proc.stdout


@pytest.mark.slow
def test_serve_concurrency_runs_both_engines_side_by_side(tmp_path):
    out = tmp_path / "serve.json"
    proc = _run(["bench/serve_concurrency.py", "--visitors", "1", "2", "--new-tokens", "4", "--engines", "local",
                 "transformers", "--out", str(out)], timeout=600)  # vLLM is tests/test_vllm.py's
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["engine"].split()[0], r["visitors"]) for r in rows] == [("local", 1), ("local", 2), ("openai", 1),
                                                                      ("openai", 2)]
    assert all(not r["errors"] and r["new_tokens"] > 0 and r["ttft_p95_s"] > 0 for r in rows), rows
    assert "| local | 2 |" in proc.stdout


@pytest.mark.skipif(data_module._orjson is None, reason="orjson not installed: ingestion uses json.dumps only")
def test_fast_content_hash_is_the_canonical_json_hash():
    import hashlib

    def canonical(messages):
        text = json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False,
                          separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(points), 8192):  # every code point, quotes, backslashes and controls included
        text = "".join(map(chr, points[start:start + 8192]))
        messages = [{"role": "user", "content": text}, {"role": "assistant", "content": '"\\/\n\t' + text[::-1]}]
        assert data_module.content_hash(messages) == canonical(messages)
    lone = [{"role": "user", "content": "a\ud800b"}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(UnicodeEncodeError):  # as before the fast path: json.dumps keeps it, encoding refuses it
        data_module.content_hash(lone)


# bench/profile_step.py and bench/loss_parity.py (issue 17)

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


@pytest.mark.slow
def test_profile_step_and_compiled_loss_parity_tiny_end_to_end(tmp_path):
    model = str(tmp_path / "model")
    proc = _run(["bench/profile_step.py", "--tiny", "--mode", "ours", "--quiet", "--out-dir", str(tmp_path / "p"),
                 "--work-dir", str(tmp_path / "pw"), "--model-dir", model], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    profile = json.loads((tmp_path / "p" / "profile_step.json").read_text())["sides"]["ours"]["profile"]
    for category in ("nf4_dequant", "lora", "base_matmul", "attention", "lm_head_ce", "optimizer"):
        assert profile["categories"][category]["ms"] > 0, category
    assert (tmp_path / "p" / "profile_ours.json.gz").stat().st_size > 1000
    assert "| LoRA branches" in (tmp_path / "p" / "profile_step.md").read_text()

    # training.compile_layers (each decoder layer torch.compile'd) against plain TRL: the same losses within 1%. The
    # compiled layers run the same code as the eager ones, so this also checks our eager path's losses.
    proc = _run(["bench/loss_parity.py", "--tiny", "--steps", "3", "--quiet", "--set", "training.compile_layers=true",
                 "--out-dir", str(tmp_path / "l"), "--work-dir", str(tmp_path / "lw"), "--model-dir", model],
                timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parity = json.loads((tmp_path / "l" / "loss_parity.json").read_text())
    assert parity["verdict"]["passed"] and parity["verdict"]["same_batches"]
    assert len(parity["sides"]["ours"]["losses"]) == len(parity["sides"]["baseline"]["losses"]) == 3
    assert parity["sides"]["ours"]["lora_a_reset"] == 14  # 2 layers x 7 projections
    metrics = json.loads((tmp_path / "lw" / "runs" / "bench-ours" / "stage1" / "metrics.json").read_text())
    assert metrics["compiled_layers"] == 2  # the tiny model's two decoder layers really ran compiled


@pytest.mark.slow
def test_adapter_decode_tiny_compares_eager_and_compiled(tmp_path):
    """bench/adapter_decode.py --tiny (the CPU rehearsal of the GPU run): both decode modes, same answers, the
    switch timed, and no graph compiled by a switch."""
    proc = _run(["bench/adapter_decode.py", "--tiny", "--no-4bit", "--new-tokens", "16", "--repeats", "3",
                 "--switches", "20", "--cache-tokens", "128", "--out-dir", str(tmp_path / "out"),
                 "--work-dir", str(tmp_path / "work"),
                 "--model-dir", str(tmp_path / "model")], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "adapter_decode.json").read_text())
    assert results["same_answers"] and [run["mode"] for run in results["modes"]] == ["eager", "compiled"]
    for run in results["modes"]:
        figures = run["figures"]
        for key in ("base", "adapter", "switching"):
            assert figures[key]["decode_tokens_per_second"] > 0 and figures[key]["ttft_s"] > 0
        assert figures["adapter_slowdown"] > 0 and figures["switch_ms"]["switches"] == 20
        assert figures["graphs_compiled_while_measuring"] == 0
    assert "compiled decode" in results["modes"][1]["figures"]["serving"]
    table = (tmp_path / "out" / "adapter_decode.md").read_text()
    assert "| eager |" in table and "| compiled |" in table and "compiled / eager decode" in table


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
