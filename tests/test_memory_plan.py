"""The memory plan: calibrated on what was measured (the H200 runs recorded in bench/recorded at Mistral-7B shapes, the
CPU's resident memory in the session's demo training), and the decisions `plan` and `train` make from it: which
cards the paper's recipe fits, the batch layout auto_fit picks, and the setting a refusal names."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO
from trainer.train.config import load_config
from trainer.train.device import DeviceError, DeviceInfo, named_gpu, with_memory
from trainer.train.memory_plan import KNOWN_SHAPES, apply_plan, estimate_stage, model_shape, plan_memory

PAPER = REPO / "configs" / "paper.yaml"
MISTRAL = KNOWN_SHAPES["mistralai/mistral-7b-instruct-v0.3"]


def recorded_h200_runs():
    """(label, settings, measured peak allocated GiB, conversation tokens) of every recorded H200 run."""
    runs = []
    for path in sorted((REPO / "bench" / "recorded").glob("h200-2026-11-28-*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for run in data if isinstance(data, list) else [data]:
            for side, result in (run.get("sides") or {}).items():
                if result.get("peak_gpu_allocated_gb"):
                    runs.append((f"{path.stem}:{run.get('label', side)}:{side}", result["settings"], result["liger_used"],
                                 result["peak_gpu_allocated_gb"], round(run["data"]["mean_tokens"])))
    return runs


RECORDED = recorded_h200_runs()


def test_the_recorded_runs_are_read():
    assert len(RECORDED) >= 8


@pytest.mark.parametrize(("label", "settings", "liger", "measured", "tokens"), RECORDED, ids=[r[0] for r in RECORDED])
def test_the_estimate_reproduces_the_h200_runs_at_mistral_shapes(label, settings, liger, measured, tokens):
    import dataclasses

    cfg = load_config(PAPER)
    st = dataclasses.replace(cfg.stage("stage1"), padding_free=settings["padding_free"],
                             gradient_checkpointing=settings["gradient_checkpointing"],
                             optim=str(settings["optim"]).split(".")[-1].lower())
    m = estimate_stage(cfg, st, MISTRAL, named_gpu("h200"), "bfloat16", liger, settings["batch"],
                       settings["grad_accum"], 1, [tokens] * 64)
    assert m.peak_gb == pytest.approx(measured, rel=0.08), (label, m.components_gb)


@pytest.mark.parametrize(("card", "precision", "triton"), [("t4", "fp16", True), ("p100", "fp16", False),
                                                           ("v100", "fp16", True), ("a100-80gb", "bf16", True),
                                                           ("l4", "bf16", True), ("zero-gpu", "bf16", True)])
def test_the_paper_recipe_on_the_common_cards(card, precision, triton):
    plan = plan_memory(load_config(PAPER), named_gpu(card), detected=False)
    assert plan.precision.name == precision
    assert plan.kernels["triton"] is triton
    assert all(s["liger"] is triton for s in plan.kernels["stages"].values())
    assert plan.fits, plan.to_json()


def test_a_p100_plan_names_the_torch_build():
    plan = plan_memory(load_config(PAPER), named_gpu("p100"), detected=False)
    assert any("whl/cu126" in note for note in plan.notes)
    simulated = DeviceInfo("cuda", "Tesla P100-PCIE-16GB", (6, 0), 15.89, ("sm_75", "sm_80", "sm_86", "sm_90"))
    plan = plan_memory(load_config(PAPER), simulated, detected=True)
    assert not plan.fits and "whl/cu126" in plan.torch_build


def test_an_8gb_card_gets_a_fitting_layout_with_the_same_global_batch():
    cfg = load_config(PAPER)
    card = with_memory(named_gpu("rtx3060"), 8.0)
    refused = plan_memory(cfg, card, detected=False)
    assert not refused.fits
    advice = refused.stages["stage1"].advice
    assert "auto_fit: true" in advice and "stages.stage1.per_device_train_batch_size=" in advice
    fitted = plan_memory(cfg, card, detected=False, auto_fit=True)
    assert fitted.fits
    for name, result in fitted.stages.items():
        st = cfg.stage(name)
        m = result.memory
        assert m.per_device_train_batch_size * m.gradient_accumulation_steps == \
            st.per_device_train_batch_size * st.gradient_accumulation_steps
        assert m.per_device_train_batch_size < st.per_device_train_batch_size and m.needed_gb <= 8.0
    applied = apply_plan(cfg, fitted)
    assert applied.stage("stage1").per_device_train_batch_size == fitted.stages["stage1"].memory.per_device_train_batch_size


def test_a_card_too_small_for_one_conversation_is_told_which_setting_to_change():
    cfg = load_config(PAPER)
    plan = plan_memory(cfg, with_memory(named_gpu("t4"), 6.0), detected=False, auto_fit=True)
    assert not plan.fits
    assert "lower max_length (fits at" in plan.stages["stage1"].advice
    no_ckpt = load_config(PAPER, ["training.gradient_checkpointing=false"])
    plan = plan_memory(no_ckpt, with_memory(named_gpu("t4"), 6.0), detected=False, auto_fit=True)
    assert "gradient_checkpointing=true" in plan.stages["stage1"].advice
    tiny = plan_memory(cfg, with_memory(named_gpu("t4"), 3.0), detected=False, auto_fit=True)
    assert "the base alone does not fit" in tiny.stages["stage1"].advice


def test_real_lengths_shrink_the_worst_case():
    cfg = load_config(PAPER)
    worst = plan_memory(cfg, named_gpu("t4"), detected=False)
    real = plan_memory(cfg, named_gpu("t4"), detected=False, lengths={"stage1": [600] * 40, "stage2": [400] * 10})
    assert real.stages["stage1"].memory.tokens_per_pass == 8 * 600
    assert real.stages["stage1"].memory.peak_gb < worst.stages["stage1"].memory.peak_gb


def test_shapes_come_from_config_json_or_the_table(tiny_mistral_dir):
    shape, source = model_shape(str(tiny_mistral_dir))
    assert source.endswith("config.json") and shape.layers >= 1
    shape, source = model_shape("mistralai/Mistral-7B-Instruct-v0.3")
    assert shape == MISTRAL and "table" in source


def test_plan_cli_says_fp16_and_fits_on_a_t4_and_json_has_the_keys(capsys):
    from trainer.__main__ import main

    assert main(["plan", "--config", str(PAPER), "--gpu", "t4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("gpu", "precision", "kernels", "peak_gb", "memory_gb", "fits", "per_device_train_batch_size",
                "gradient_accumulation_steps"):
        assert key in data
    assert (data["gpu"], data["precision"], data["fits"]) == ("t4", "fp16", True)
    assert set(data["peak_gb"]) == {"stage1", "stage2"} and data["memory_gb"] < 16
    assert main(["plan", "--config", str(PAPER), "--gpu", "rtx3060", "--memory", "8"]) == 2
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "auto_fit: true" in out
    assert main(["plan", "--config", str(PAPER), "--gpu", "t4", "--set", "precision=bf16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "compute capability 8.0" in err


def test_plan_cli_answers_without_loading_torch_models():
    """`plan` in a process of its own: its exit status and its JSON, with the Hub offline."""
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "trainer", "plan", "--config", str(PAPER), "--gpu", "p100", "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["precision"] == "fp16" and data["kernels"]["triton"] is False and data["fits"]


def test_train_refuses_a_plan_that_does_not_fit_before_the_base_loads(tiny_mistral_dir, tmp_path, monkeypatch):
    import trainer.train.stage as stage

    data = tmp_path / "rows.jsonl"
    row = {"messages": [{"role": "user", "content": "Hi " * 40}, {"role": "assistant", "content": "Hello " * 40}]}
    data.write_text("\n".join(json.dumps(row | {"id": i}) for i in range(8)) + "\n", encoding="utf-8")
    cfg = load_config(PAPER, [f"model.name={tiny_mistral_dir}", f"output_dir={tmp_path}", "max_length=512",
                              f"stages.stage1.dataset.path={data}", "stages.stage1.dataset.schema=messages",
                              f"stages.stage2.dataset.path={data}", "stages.stage2.dataset.schema=messages"])
    loads = []
    monkeypatch.setattr(stage, "load_base_model", lambda *a, **k: loads.append(a))
    small = DeviceInfo("cpu", "cpu", memory_gb=0.5, cpu_native_bf16=True)
    monkeypatch.setattr(stage, "detect_device", lambda: small)
    with pytest.raises(DeviceError) as err:
        stage.run_pipeline(cfg)
    assert "stage1 does not fit" in str(err.value) and not loads
