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


# bench/profile_step.py and bench/loss_parity.py end to end (their arithmetic: bench/tests)


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


