"""trainer/hub/cards.py and the Space bundle: what push writes for the Space loads back through the app's own settings
loader and card class; the dataset cards count what every data file of a stage did."""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers import REPO
from run_folder import data_files, write_stage

from trainer.hub.cards import dataset_card, feedback_card, model_card, size_category
from trainer.hub.push import PushContext, export_rows, space_settings, stage_space_folder
from trainer.hub.space_hardware import HARDWARE, SPACES_PIN
from trainer.train.rundir import read_stage
from trainer.hub.space_settings import load_space_config


@pytest.fixture
def stages(tmp_path):
    train, test = data_files(tmp_path / "data")
    write_stage(tmp_path, f"stages.stage1.dataset.path={train}")
    write_stage(tmp_path, f"stages.stage2.dataset.path={train}", f"stages.stage2.dataset.eval_path={test}",
                "stages.stage2.dataset.kind=real", "stages.stage2.dataset.license=cc-by-4.0", stage="stage2")
    return [read_stage(tmp_path / "runs" / "demo", s) for s in ("stage1", "stage2")]


def context(revision=None) -> PushContext:
    return PushContext(run="demo", namespace="acme", revision=revision,
                       model_repos={"stage1": "acme/demo-stage1", "stage2": "acme/demo-stage2"},
                       dataset_repos={"stage2": "acme/demo-stage2-data"})


@pytest.mark.parametrize("revision", [None, "v1"])
def test_the_space_bundle_loads_back_through_the_app_settings_and_card(stages, tmp_path, revision):
    from huggingface_hub import SpaceCard

    dest = tmp_path / "space"
    stage_space_folder(stages, context(revision), "acme/demo-space", dest)
    loaded = load_space_config(dest / "space_config" / "space.yaml")
    assert dataclasses.replace(loaded, source=None) == space_settings(stages, context(revision))
    assert loaded.base_model == "smollm2-135m-instruct" and not loaded.discover_runs
    assert [(a.name, a.repo, a.revision, a.path) for a in loaded.adapters] == [
        ("stage1", "acme/demo-stage1", revision, None), ("stage2", "acme/demo-stage2", revision, None)]
    assert (dest / "space_config" / "space.yaml").read_text().startswith("# Written by `python -m trainer push`")

    shipped = SpaceCard.load(REPO / "space_config" / "README.md")
    card = SpaceCard.load(dest / "README.md")
    assert card.text.startswith(shipped.text.rstrip("\n"))
    hardware, serving = card.text[len(shipped.text.rstrip("\n")):].split("## Serving on an engine", 1)
    assert hardware.strip() == f"## Hardware\n\n{HARDWARE['t4-small'].runs_on}"  # the default hardware
    if revision is None:
        assert ("vllm serve smollm2-135m-instruct --port 8000 --dtype bfloat16 \\\n  --enable-lora --max-loras 2 "
                "--max-lora-rank 16 \\\n  --lora-modules stage1=acme/demo-stage1 stage2=acme/demo-stage2") in serving
        assert "on a T4, V100 or P100 (no bfloat16) write --dtype half instead" in serving
        assert "-e LORA_ADAPTERS=acme/demo-stage1,acme/demo-stage2" in serving
    else:  # the adapters at the pushed revision, downloaded first
        assert "hf download acme/demo-stage2 --revision v1 --local-dir adapters/stage2\n" in serving
        assert "--lora-modules stage1=adapters/stage1 stage2=adapters/stage2" in serving
        assert "-v $PWD/adapters/stage1:/data/stage1 " in serving
        assert "LORA_ADAPTERS=stage1=/data/stage1,stage2=/data/stage2" in serving
    # the settings snippet in it loads as the app's settings and names the adapters the commands serve
    snippet = serving.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "engine.yaml").write_text(snippet, encoding="utf-8")
    engine_cfg = load_space_config(tmp_path / "engine.yaml")
    assert engine_cfg.engine == "openai" and engine_cfg.openai.base_served_name == "smollm2-135m-instruct"
    assert [(a.name, a.served_name) for a in engine_cfg.adapters] == [("stage1", "stage1"), ("stage2", "stage2")]
    data, before = card.data.to_dict(), shipped.data.to_dict()
    assert data["models"] == ["smollm2-135m-instruct", "acme/demo-stage1", "acme/demo-stage2"]  # base first
    assert data["datasets"] == ["acme/demo-stage2-data", *before["datasets"]]
    assert {k: v for k, v in data.items() if k not in ("models", "datasets")} == \
        {k: v for k, v in before.items() if k not in ("models", "datasets")}
    assert list(data) == list(before)  # the shipped key order is kept
    for name in ("app.py", "requirements.txt", "trainer/hub/push.py", "space/registry.py"):
        assert (dest / name).is_file(), name


@pytest.mark.parametrize("key, flavor, torch_lines", [
    ("t4-small", "t4-small", ["torch==2.13.0"]),
    ("zero-gpu", "zero-a10g", ["torch==2.11.0", "spaces==0.51.3"]),
    ("cpu-basic", "cpu-basic", ["--extra-index-url https://download.pytorch.org/whl/cpu", "torch==2.13.0+cpu"]),
])
def test_the_space_is_written_for_the_hardware_named(stages, tmp_path, key, flavor, torch_lines):
    """README header and requirements.txt fit the hardware; every other pin is the tool's own; the knowledge base
    the default settings ground and check answers with is in the bundle and loads from it."""
    from huggingface_hub import SpaceCard
    from huggingface_hub._space_api import SpaceHardware

    from trainer.kb.loader import load_kb

    dest = tmp_path / "space"
    stage_space_folder(stages, context(), "acme/demo-space", dest, HARDWARE[key])
    card = SpaceCard.load(dest / "README.md")
    assert card.data.suggested_hardware == flavor and flavor in {h.value for h in SpaceHardware}
    assert f"## Hardware\n\n{HARDWARE[key].runs_on}" in card.text
    assert ("ZeroGPU" in HARDWARE[key].runs_on) == (key == "zero-gpu")
    required = [line.split("#")[0].strip() for line in (dest / "requirements.txt").read_text().splitlines()]
    required = [line for line in required if line]
    shipped = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert [r for r in required if "torch" in r or r.startswith(("--", "spaces"))] == torch_lines
    assert [r for r in required if r not in torch_lines] == [r for r in shipped if r and not r.startswith("torch==")]
    dev_pin = next(line.split()[0] for line in (REPO / "requirements-dev.txt").read_text().splitlines()
                   if line.startswith("spaces=="))
    assert dev_pin == SPACES_PIN  # the Space installs the spaces the tests ran
    kb = dest / "data" / "kb"
    assert sorted(p.name for p in kb.glob("*.yaml")) == sorted(p.name for p in (REPO / "data" / "kb").glob("*.yaml"))
    assert load_kb(kb).version == load_kb(REPO / "data" / "kb").version


def test_the_model_card_carries_the_commands_serving_its_adapter(stages):
    card = model_card(stages[1], "acme/demo-stage2")
    assert "## Serving on an engine" in card.text
    assert "--lora-modules stage2=acme/demo-stage2" in card.text and "LORA_ADAPTERS=acme/demo-stage2 " in card.text


def test_the_dataset_card_of_a_stage_with_an_eval_file_counts_both_files(stages, tmp_path):
    stage = stages[1]
    lineage = json.loads((stage.dir / "lineage.json").read_text())
    lineage["datasets"][0].update(bad=1, bad_by_rule={"empty_content": 1}, duplicates_removed=2)
    lineage["datasets"][1].update(bad=2, bad_by_rule={"empty_content": 1, "bad_role": 1}, duplicates_removed=1)
    (stage.dir / "lineage.json").write_text(json.dumps(lineage))
    stage = read_stage(stage.dir.parent, "stage2")
    card = dataset_card(stage, "acme/demo-stage2-data", export_rows(stage), model_repo="acme/demo-stage2")
    spec = stage.cfg.stage("stage2").dataset
    assert f"- Source: `{spec.path}` (test rows: `{spec.eval_path}`)" in card.text
    assert "3 rows rejected (empty_content: 2, bad_role: 1)" in card.text
    assert "- Exact duplicates removed: 3" in card.text
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0" and data["size_categories"] == ["n<1K"]
    assert "| test | 3 |" in card.text.replace("  ", " ")


@pytest.mark.parametrize("n, category", [(0, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"), (99_999, "10K<n<100K"),
                                         (150_000, "100K<n<1M"), (2_000_000, "1M<n<10M")])
def test_size_categories_are_the_hubs(n, category):
    assert size_category(n) == category
    manifest = {"counts": {"records": n}, "redactions": {}, "adapters": {}, "base_models": [], "reviewers": 0,
                "first": None, "last": None}
    assert feedback_card(manifest).data.to_dict()["size_categories"] == [category]
