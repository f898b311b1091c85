"""Per-item measures and the metrics built from them: one model's rates with bootstrap intervals, and adapter-minus-base
paired comparisons over the same items, on all items or on a subset (the uncontaminated ones).

Every answer gets its measures once (`Measures`: rubric pass/score/correction, markdown, a live KB contradiction,
ROUGE-L and BLEU statistics against a reference, held-out loss rows); every table of the report is a view of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from trainer.eval.stats import (bleu_from_statistics, bootstrap_ci, paired_bootstrap, paired_outcomes, pooled_loss)

BINARY = (("rubric_accuracy", "passed"), ("false_premise_correction", "corrected"), ("markdown_rate", "markdown"),
          ("kb_contradiction_rate", "kb_flag"))
"""Rates over 0/1 outcomes: metric name, measure name. Compared pairwise with the paired-proportion interval."""
CONTINUOUS = (("rubric_mean_score", "score"), ("rouge_l", "rouge"))
"""Means of per-item values, compared with the paired bootstrap."""


@dataclass
class Measures:
    """One model's per-item outcomes. Lists align with the evaluation's answer items (None where a measure does not
    apply to an item); `loss` aligns with the held-out conversations."""

    passed: list[float | None] = field(default_factory=list)
    score: list[float | None] = field(default_factory=list)
    corrected: list[float | None] = field(default_factory=list)
    markdown: list[float | None] = field(default_factory=list)
    kb_flag: list[float | None] = field(default_factory=list)
    rouge: list[float | None] = field(default_factory=list)
    bleu: list[list[float] | None] = field(default_factory=list)
    loss: list[list[float]] = field(default_factory=list)

    def values(self, name: str, keep: Sequence[bool] | None) -> list[Any]:
        column = getattr(self, name)
        return [v for i, v in enumerate(column) if v is not None and (keep is None or keep[i])]


def _put(metrics: dict, intervals: dict, key: str, value: float | None, ci, digits: int = 4) -> None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return
    metrics[key] = round(float(value), digits)
    if ci is not None:
        intervals[key] = [round(ci[0], digits), round(ci[1], digits)]


def model_metrics(m: Measures, keep: Sequence[bool] | None = None, keep_conversations: Sequence[bool] | None = None,
                  seed: int = 3407) -> tuple[dict[str, float], dict[str, list[float]]]:
    """One model's metrics (numbers only, as the model card reads them) with percentile-bootstrap intervals, over
    the items `keep` marks (all when None)."""
    metrics: dict[str, float] = {}
    intervals: dict[str, list[float]] = {}
    loss_rows = [r for i, r in enumerate(m.loss) if r[1] > 0 and (keep_conversations is None or keep_conversations[i])]
    if loss_rows:
        loss = pooled_loss(loss_rows)
        ci = bootstrap_ci(loss_rows, pooled_loss, seed=seed)
        _put(metrics, intervals, "eval_loss", loss, ci)
        _put(metrics, intervals, "eval_perplexity", math.exp(loss), (math.exp(ci[0]), math.exp(ci[1])))
    rouge = m.values("rouge", keep)
    if rouge:
        _put(metrics, intervals, "rouge_l", sum(rouge) / len(rouge), bootstrap_ci(rouge, seed=seed))
        bleu = m.values("bleu", keep)
        _put(metrics, intervals, "bleu", bleu_from_statistics(bleu), bootstrap_ci(bleu, bleu_from_statistics,
                                                                                  seed=seed), 2)
    for metric, measure in BINARY:
        values = m.values(measure, keep)
        if values:
            _put(metrics, intervals, metric, sum(values) / len(values), bootstrap_ci(values, seed=seed))
    score = m.values("score", keep)
    if score:
        _put(metrics, intervals, "rubric_mean_score", sum(score) / len(score), bootstrap_ci(score, seed=seed))
    return metrics, intervals


def _pairs(adapter: Measures, base: Measures, name: str, keep: Sequence[bool] | None) -> tuple[list, list]:
    a, b = getattr(adapter, name), getattr(base, name)
    pairs = [(x, y) for i, (x, y) in enumerate(zip(a, b)) if x is not None and y is not None
             and (keep is None or keep[i])]
    return [x for x, _ in pairs], [y for _, y in pairs]


def paired_metrics(adapter: Measures, base: Measures, *, margin: float, keep: Sequence[bool] | None = None,
                   keep_conversations: Sequence[bool] | None = None, seed: int = 3407) -> dict[str, dict[str, Any]]:
    """Adapter - base for every metric, item by item over the same items: the paired-proportion interval and the
    McNemar test for rates, the paired bootstrap for means, pooled loss and corpus BLEU."""
    out: dict[str, dict[str, Any]] = {}
    for metric, measure in BINARY:
        a, b = _pairs(adapter, base, measure, keep)
        if a:
            out[metric] = paired_outcomes(a, b, margin=margin)
    for metric, measure in CONTINUOUS:
        a, b = _pairs(adapter, base, measure, keep)
        if a:
            out[metric] = paired_bootstrap(a, b, seed=seed)
    a, b = _pairs(adapter, base, "bleu", keep)
    if a:
        out["bleu"] = paired_bootstrap(a, b, bleu_from_statistics, seed=seed)
    rows = [(x, y) for i, (x, y) in enumerate(zip(adapter.loss, base.loss)) if x[1] > 0 and y[1] > 0
            and (keep_conversations is None or keep_conversations[i])]
    if rows:
        out["eval_loss"] = paired_bootstrap([x for x, _ in rows], [y for _, y in rows], pooled_loss, seed=seed)
    return out


def judge_comparison(judge: dict[str, Any] | None, keep_ids: set[str] | None = None, *, margin: float
                     ) -> dict[str, Any] | None:
    """The judge's per-question outcomes (adapter wins 1, base wins -1, tie 0; unparseable dropped) as a paired
    comparison for the gate, or None when no judge ran or it disagrees with itself too often to be used."""
    if judge is None or not judge.get("reliable"):
        return None
    outcomes = [o for o, record in zip(judge["outcomes"], judge["per_question"])
                if o is not None and (keep_ids is None or record["id"] in keep_ids)]
    return paired_outcomes(outcomes, [0] * len(outcomes), margin=margin)
