"""Statistics: percentile-bootstrap intervals, ROUGE-L, corpus BLEU and pooled loss."""

from __future__ import annotations

from typing import Any, Callable, Sequence

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95

# Statistics

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
