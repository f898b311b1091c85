"""The paired statistics and the non-inferiority gate, on fixtures with answers worked out by hand."""

from __future__ import annotations

import math

import pytest

from trainer.eval.gate import DEFAULT_MARGIN, GATE_RULE, gate_decision, metric_verdict
from trainer.train.rundir import verdict_of
from trainer.eval.stats import (items_needed, mcnemar_exact, paired_bootstrap, paired_difference_interval,
                                paired_outcomes)


def outcomes(n: int, adapter_only: int, base_only: int, both: int = 0):
    """(adapter, base) 0/1 outcomes over n items with the given discordant and concordant-pass counts."""
    adapter = [1] * adapter_only + [0] * base_only + [1] * both
    base = [0] * adapter_only + [1] * base_only + [1] * both
    rest = n - len(adapter)
    return adapter + [0] * rest, base + [0] * rest


def test_mcnemar_exact_matches_the_binomial_by_hand():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 0) == 1.0
    assert mcnemar_exact(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 0.0386
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    assert mcnemar_exact(60, 0) == pytest.approx(2 / 2 ** 60)


def test_the_paired_interval_by_hand_and_its_width_at_small_n():
    # one better of five: cells +0.5 -> 1.5/7 vs 0.5/7, difference 1/7, se sqrt((2/7 - 1/49) / 7)
    low, high = paired_difference_interval(1, 0, 5)
    se = math.sqrt((2 / 7 - (1 / 7) ** 2) / 7)
    assert low == pytest.approx(1 / 7 - 1.959964 * se, abs=1e-4)
    assert high == pytest.approx(1 / 7 + 1.959964 * se, abs=1e-4)
    assert low < 0 < high  # unlike the percentile bootstrap, which gives [0, 0.6] here
    low, high = paired_difference_interval(60, 0, 98)
    assert (low, high) == (pytest.approx(0.502, abs=1e-3), pytest.approx(0.698, abs=1e-3))


def test_adapter_truly_better_on_60_of_98_passes():
    adapter, base = outcomes(98, adapter_only=60, base_only=0, both=20)
    comparison = paired_outcomes(adapter, base, margin=DEFAULT_MARGIN)
    assert comparison["difference"] == pytest.approx(60 / 98, abs=1e-4)
    assert comparison["p_value"] < 1e-9
    gate = gate_decision({"rubric_accuracy": comparison}, DEFAULT_MARGIN)
    assert gate["verdict"] == "passed" and gate["passed"] is True


def test_adapter_worse_on_60_of_98_fails():
    adapter, base = outcomes(98, adapter_only=0, base_only=60, both=20)
    comparison = paired_outcomes(adapter, base, margin=DEFAULT_MARGIN)
    gate = gate_decision({"rubric_accuracy": comparison, "false_premise_correction": None}, DEFAULT_MARGIN)
    assert gate["verdict"] == "failed" and gate["passed"] is False
    assert gate["failed"] == ["rubric accuracy"] and "worse than the base by more than 0.05" in gate["summary"]


@pytest.mark.parametrize("adapter_only,base_only", [(1, 0), (0, 1)])
def test_one_of_five_different_is_inconclusive_either_way(adapter_only, base_only):
    adapter, base = outcomes(5, adapter_only, base_only)
    comparison = paired_outcomes(adapter, base, margin=DEFAULT_MARGIN)
    gate = gate_decision({"rubric_accuracy": comparison}, DEFAULT_MARGIN)
    assert gate["verdict"] == "inconclusive" and gate["passed"] is None
    assert gate["summary"].startswith("inconclusive at n = 5: ")
    assert gate["items_needed"]["rubric_accuracy"] == comparison["items_needed"] > 5


def test_items_needed_decides_at_the_observed_spread():
    # one better of five: spread sqrt(2/7 - 1/49), distance 1/7 + 0.05
    expected = math.ceil((1.959964 * math.sqrt(2 / 7 - 1 / 49) / (1 / 7 + 0.05)) ** 2) - 2
    assert items_needed(1, 0, 5, 0.05) == expected == 26
    # at that n, with the same shares, the interval clears -margin
    scale = 26 / 5
    low, _ = paired_difference_interval(round(1 * scale), 0, 26)
    assert low > -0.05
    assert items_needed(0, 0, 10, 0.0) is None  # a difference of exactly -margin: no n decides


def test_the_judge_is_gated_on_its_net_preference_and_an_unmeasured_metric_does_not_decide():
    judge = paired_outcomes([1] * 30 + [-1] * 2 + [0] * 8, [0] * 40, margin=DEFAULT_MARGIN)
    assert (judge["adapter_only"], judge["base_only"]) == (30, 2)
    adapter, base = outcomes(40, adapter_only=12, base_only=1, both=20)
    gate = gate_decision({"rubric_accuracy": paired_outcomes(adapter, base, margin=0.05),
                          "false_premise_correction": None, "judge": judge})
    assert gate["verdict"] == "passed"
    assert gate["checks"] == {"rubric_accuracy": "passed", "false_premise_correction": None, "judge": "passed"}
    assert "false-premise correction: not measured" in gate["summary"]
    assert gate_decision({})["verdict"] == "not gated" and gate_decision({})["passed"] is None  # nothing measured


def test_metric_verdict_edges_and_old_results():
    assert metric_verdict(None, 0.05) is None
    assert metric_verdict({"n": 3, "interval": [-0.2, -0.06]}, 0.05) == "failed"
    assert metric_verdict({"n": 3, "interval": [-0.04, 0.3]}, 0.05) == "passed"
    assert metric_verdict({"n": 3, "interval": [-0.06, 0.3]}, 0.05) == "inconclusive"
    assert verdict_of({"passed": True}) == "passed" and verdict_of({"passed": False}) == "failed"
    assert verdict_of({"verdict": "inconclusive", "passed": None}) == "inconclusive" and verdict_of(None) is None
    assert "{margin" not in GATE_RULE.format(margin=0.05)


def test_paired_bootstrap_resamples_items_together():
    base = [0.2, 0.4, 0.6, 0.8] * 10
    adapter = [b + 0.1 for b in base]  # exactly 0.1 better on every item: every resample says 0.1
    result = paired_bootstrap(adapter, base)
    assert result["difference"] == pytest.approx(0.1) and result["interval"] == [pytest.approx(0.1)] * 2
    assert paired_bootstrap([], []) is None
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])
