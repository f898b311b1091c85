"""The evaluation's results as types (`trainer.eval.results`): results.json read back and written again unchanged,
report.md rendered from them byte for byte as the evaluation wrote it, and the charts drawn from them."""

from __future__ import annotations

import json

import pytest
from helpers import REPO

from trainer.eval import EvalError
from trainer.eval.report import plot_loss_curves, plot_metrics, render_report
from trainer.eval.results import (AdapterResult, Contamination, EvalResults, Gate, Grounded, JudgeResults,
                                  ModelResult, Throughput)

FIXTURES = REPO / "tests" / "data" / "eval"
"""Two real evaluations of the demo run (paths and ports made neutral), each with the report.md it wrote: three
rubric questions copied into the training data with --grounded, and a pairwise judge."""


@pytest.mark.parametrize("name", ["contaminated_grounded", "judged"])
def test_results_json_round_trips_and_renders_the_same_report(name):
    text = (FIXTURES / name / "results.json").read_text(encoding="utf-8")
    results = EvalResults.read(FIXTURES / name / "results.json")
    assert results.to_dict() == json.loads(text)
    assert json.dumps(results.to_dict(), indent=2, ensure_ascii=False) + "\n" == text  # the keys in the same order
    assert render_report(results) == (FIXTURES / name / "report.md").read_text(encoding="utf-8")

    assert [model for model, _ in results.models] == ["base", "stage1", "stage2"]
    assert type(results.base) is ModelResult and all(type(a) is AdapterResult for a in results.adapters.values())
    assert all(isinstance(g, Gate) for g in results.gate.values()) and results.n.questions == 4
    assert isinstance(results.base.throughput, Throughput) and results.settings.bootstrap.method == "percentile"
    for stage, entry in results.adapters.items():
        assert entry.loss_reduction.eval_curve and entry.paired["rubric_accuracy"]["n"] == 4, stage
    if name == "judged":
        assert isinstance(results.judge, JudgeResults) and results.grounded is None
        assert results.judge.per_adapter["stage1"].judgements == 8
        assert results.base.metrics_uncontaminated is None and results.adapters["stage1"].paired_uncontaminated is None
    else:
        assert isinstance(results.contamination, Contamination) and len(results.contamination.matches) == 3
        assert isinstance(results.grounded, Grounded) and results.grounded.recall.k == 3
        assert results.n.contaminated_items == 3 and results.base.throughput_grounded is not None
        assert results.adapters["stage1"].comparison(clean=True)["rubric_accuracy"]["n"] == 1


def test_the_charts_are_drawn_from_the_results(tmp_path):
    results = EvalResults.read(FIXTURES / "judged" / "results.json")
    plot_metrics(results, tmp_path / "metrics.png")
    plot_loss_curves(results, tmp_path / "loss_curves.png")
    assert (tmp_path / "metrics.png").stat().st_size > 0 and (tmp_path / "loss_curves.png").stat().st_size > 0


def test_the_records_keep_every_key_their_producers_write():
    from trainer.eval.gate import gate_decision
    from trainer.inference.model import BatchAnswers

    measured = {"n": 10, "difference": 0.2, "interval": [0.05, 0.35], "adapter_only": 3, "base_only": 1,
                "p_value": 0.62, "items_needed": None}
    for decision in (gate_decision({"rubric_accuracy": measured}), gate_decision({})):
        assert Gate.from_dict(decision).to_dict() == decision
    throughput = BatchAnswers(texts=["a", "b"], new_tokens=[3, 4], prompt_tokens=[5, 6], seconds=2.0).throughput()
    assert Throughput.from_dict(throughput).to_dict() == throughput


def test_a_file_that_is_not_an_evaluations_results_is_one_user_error(tmp_path):
    partial = tmp_path / "results.json"
    partial.write_text(json.dumps({"gate": {"stage1": {"passed": True, "summary": "rubric 0.62 vs base 0.55"}}}))
    with pytest.raises(EvalError, match="results.json: not an evaluation's results.json"):
        EvalResults.read(partial)
    partial.write_text("{not json")
    with pytest.raises(EvalError, match="results.json"):
        EvalResults.read(partial)


def test_a_key_a_phase_adds_without_a_field_fails_the_evaluation_not_results_json():
    """Built from a phase's dict (strict), an unknown key is an error naming the record; read from a file written by
    another version, it is ignored; a phase's own `_x` keys are never written."""
    from trainer.eval.results import Recall

    recall = {"k": 3, "n": 2, "recall": 0.5, "per_question": [], "misses": []}
    with pytest.raises(TypeError, match=r"Recall has no field for \['precision'\]: add it to trainer/eval/results.py"):
        Recall.from_dict({**recall, "precision": 0.4}, strict=True)
    assert Recall.from_dict({**recall, "precision": 0.4}).to_dict() == recall
    grounded = {"settings": {}, "kb_version": {}, "index_seconds": 0.1, "recall": {**recall, "new": 1},
                "models": {"base": {"metrics": {}, "intervals": {}, "vs_ungrounded": {}, "_flags": [[]]}}}
    with pytest.raises(TypeError, match=r"Recall has no field for \['new'\]"):  # nested records are held too
        Grounded.from_dict(grounded, strict=True)
    grounded["recall"] = recall
    assert "_flags" not in Grounded.from_dict(grounded, strict=True).to_dict()["models"]["base"]
