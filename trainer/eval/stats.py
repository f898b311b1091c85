"""Statistics: percentile-bootstrap intervals, paired comparisons (adapter - base on the same items), ROUGE-L,
corpus BLEU and pooled loss."""

from __future__ import annotations

from typing import Any, Callable, Sequence

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95

def bootstrap_ci(data: Sequence[Any], statistic: Callable[[Any], float] | None = None, *,
                 resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE,
                 seed: int = 3407) -> tuple[float, float] | None:
    """Percentile bootstrap interval of `statistic` (default: the mean) over items resampled with replacement.
    `data` is a sequence of numbers or of equal-length rows (a statistic then gets an (n, k) array). Seeded:
    the same data and seed give the same interval. None for no data."""
    import numpy as np

    values = np.asarray(data, dtype=float)
    n = len(values)
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(resamples, n))
    if statistic is None:
        stats = values[index].mean(axis=1)
    else:
        stats = np.array([statistic(values[i]) for i in index])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F1 per answer (rouge-score, Porter stemming; no model download)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]


def bleu_statistics(hypotheses: Sequence[str], references: Sequence[str]) -> list[list[float]]:
    """Per-answer BLEU sufficient statistics [sys_len, ref_len, correct 1-4, total 1-4] (sacrebleu's 13a
    tokenizer), so corpus BLEU and its bootstrap are sums of rows."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU()
    rows = []
    for hyp, ref in zip(hypotheses, references):
        s = bleu.corpus_score([hyp], [[ref]])
        rows.append([s.sys_len, s.ref_len, *s.counts, *s.totals])
    return rows


def bleu_from_statistics(rows) -> float:
    """Corpus BLEU (0-100, sacrebleu's default exponential smoothing) from summed per-answer statistics."""
    import numpy as np
    from sacrebleu.metrics import BLEU

    total = np.asarray(rows, dtype=float).sum(axis=0)
    return float(BLEU.compute_bleu(correct=[int(x) for x in total[2:6]], total=[int(x) for x in total[6:10]],
                                   sys_len=int(total[0]), ref_len=int(total[1]), smooth_method="exp").score)


def pooled_loss(rows) -> float:
    """Token-weighted loss from per-conversation [nll_sum, tokens] rows."""
    import numpy as np

    total = np.asarray(rows, dtype=float).sum(axis=0)
    return float(total[0] / total[1]) if total[1] else float("nan")


# Paired comparisons: the adapter and its base answer the same items, so compare them item by item.

def _z(confidence: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def mcnemar_exact(adapter_only: int, base_only: int) -> float:
    """Two-sided exact McNemar p-value: the discordant items (one side right, the other wrong) are a fair coin
    under "no difference". For three-valued outcomes (judge wins / losses, ties dropped) it is the sign test."""
    from math import comb

    n = adapter_only + base_only
    if n == 0:
        return 1.0
    k = min(adapter_only, base_only)
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired_difference_interval(adapter_only: int, base_only: int, n: int, confidence: float = CONFIDENCE
                               ) -> tuple[float, float]:
    """Interval for the paired difference of two proportions (adapter - base) from the discordant counts, with
    Agresti and Min's adjustment (half a count added to each of the four cells). Unlike the percentile bootstrap,
    it does not collapse to zero width when every discordant item goes one way: one better answer in five is not
    proof of anything, and this interval says so."""
    m = n + 2
    pb, pc = (adapter_only + 0.5) / m, (base_only + 0.5) / m
    diff = pb - pc
    se = max(0.0, pb + pc - diff * diff) ** 0.5 / m ** 0.5
    z = _z(confidence)
    return max(-1.0, diff - z * se), min(1.0, diff + z * se)


def items_needed(adapter_only: int, base_only: int, n: int, margin: float, confidence: float = CONFIDENCE
                 ) -> int | None:
    """How many items the same paired interval needs to exclude -margin at the observed spread (the discordant
    shares staying what they are): the n at which a verdict would be reached. None when the observed difference
    equals -margin (no n decides it)."""
    import math

    m = n + 2
    pb, pc = (adapter_only + 0.5) / m, (base_only + 0.5) / m
    diff = pb - pc
    distance = abs(diff + margin)
    if distance < 1e-9:
        return None
    spread = max(0.0, pb + pc - diff * diff) ** 0.5
    return max(1, math.ceil((_z(confidence) * spread / distance) ** 2) - 2)


def paired_outcomes(adapter: Sequence[float], base: Sequence[float], *, margin: float,
                    confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Adapter vs base on the same items with 0/1 outcomes (passed, corrected, markdown) or, for the judge, one
    outcome per item in {-1, 0, 1} given as `adapter` with `base` all zero. Returns the point difference, its
    paired interval, the McNemar / sign-test p-value, the counts and the items needed to decide."""
    if len(adapter) != len(base):
        raise ValueError("paired outcomes need one value per item on both sides")
    diffs = [a - b for a, b in zip(adapter, base)]
    n = len(diffs)
    adapter_only = sum(1 for d in diffs if d > 0)
    base_only = sum(1 for d in diffs if d < 0)
    if n == 0:
        return {"n": 0, "difference": None, "interval": None, "p_value": None, "adapter_only": 0, "base_only": 0,
                "items_needed": None, "method": PAIRED_BINARY_METHOD}
    low, high = paired_difference_interval(adapter_only, base_only, n, confidence)
    return {"n": n, "difference": round((adapter_only - base_only) / n, 4), "interval": [round(low, 4),
                                                                                        round(high, 4)],
            "p_value": round(mcnemar_exact(adapter_only, base_only), 4), "adapter_only": adapter_only,
            "base_only": base_only, "items_needed": items_needed(adapter_only, base_only, n, margin, confidence),
            "method": PAIRED_BINARY_METHOD}


PAIRED_BINARY_METHOD = "paired difference, Agresti-Min interval; exact McNemar (sign) test"
PAIRED_BOOTSTRAP_METHOD = "paired percentile bootstrap (items resampled together for both models)"


def paired_bootstrap(adapter: Sequence[Any], base: Sequence[Any], statistic: Callable[[Any], float] | None = None, *,
                     resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 3407
                     ) -> dict[str, Any] | None:
    """Difference statistic(adapter) - statistic(base) (default: the mean) with a percentile-bootstrap interval that
    resamples the same items for both models, for continuous metrics (scores, ROUGE-L, per-conversation loss rows,
    BLEU statistics). None for no items."""
    import numpy as np

    a, b = np.asarray(adapter, dtype=float), np.asarray(base, dtype=float)
    if len(a) != len(b):
        raise ValueError("paired metrics need one row per item on both sides")
    n = len(a)
    if n == 0:
        return None
    stat = statistic or (lambda rows: float(np.mean(rows)))
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(resamples, n))
    diffs = np.array([stat(a[i]) - stat(b[i]) for i in index])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return {"n": n, "difference": round(stat(a) - stat(b), 4), "interval": [round(float(low), 4),
                                                                          round(float(high), 4)],
            "method": PAIRED_BOOTSTRAP_METHOD}
