"""bench/: the GPU QLoRA benchmark runs end to end at tiny shapes on the CPU, the scaling benchmark keeps every
synthesised row, and the fast content hash that ingestion uses is byte-identical to the canonical json.dumps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from trainer import data as data_module


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
    proc = _run(["bench/serve_concurrency.py", "--visitors", "1", "2", "--new-tokens", "4", "--out", str(out)],
                timeout=600)
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
