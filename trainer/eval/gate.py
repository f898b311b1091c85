"""The gate: whether an adapter may be published, decided by paired non-inferiority against its base.

The adapter and its base answer the same questions, so each gating metric is a paired difference (adapter - base)
with an interval (`trainer.eval.stats.paired_outcomes`). With a margin m (a few points by default):

- the metric **fails** when its whole interval lies below -m (the adapter is worse by more than the margin);
- it **passes** when its whole interval lies above -m (the adapter is not worse by more than the margin);
- otherwise it is **inconclusive at n = N**, with the number of questions that would decide it at the spread seen.

The adapter fails if any metric fails, passes if every measured metric passes, and is inconclusive otherwise; when
none was measured (an outside prompt set has no rubric, and no judge ran) it is **not gated**. `push` refuses only a
failing adapter (without `--force`); an inconclusive or ungated one is published with that verdict in its card. Point
estimates alone let one question decide the verdict at small n; this rule does not.
"""

from __future__ import annotations

from typing import Any

DEFAULT_MARGIN = 0.05
"""Non-inferiority margin on rates (0.05 = five points): how much worse than the base an adapter may be and pass.
The one default: `EvalJob.margin` (the eval's `margin` key and `--margin`) is this."""
GATED = (("rubric_accuracy", "rubric accuracy"), ("false_premise_correction", "false-premise correction"),
         ("judge", "judge (adapter wins - base wins)"))

GATE_RULE = (
    "Paired non-inferiority with margin {margin:.2f}: for rubric accuracy, false-premise correction and, where a judge "
    "ran, the judge's net preference, the difference adapter - base over the same questions gets a 95% interval "
    "(Agresti-Min for paired proportions). A metric fails when its interval lies entirely below -{margin:.2f}, passes "
    "when it lies entirely above, and is inconclusive otherwise. The adapter fails if any metric fails, passes if "
    "every measured metric passes, and is inconclusive otherwise; a metric that could not be measured (no "
    "false-premise question, no judge) is reported and does not decide, and with none measured the adapter is not "
    "gated."
)


def metric_verdict(comparison: dict[str, Any] | None, margin: float) -> str | None:
    """`passed`, `failed` or `inconclusive` for one paired comparison; None when it was not measured."""
    if not comparison or not comparison.get("n") or comparison.get("interval") is None:
        return None
    low, high = comparison["interval"]
    if high < -margin:
        return "failed"
    if low > -margin:
        return "passed"
    return "inconclusive"


def gate_decision(comparisons: dict[str, dict[str, Any] | None], margin: float = DEFAULT_MARGIN) -> dict[str, Any]:
    """The verdict for one adapter from its paired comparisons with the base (keys of GATED). `passed` is True,
    False or None (inconclusive), so a reader that only knows pass/fail never mistakes inconclusive for either."""
    checks: dict[str, str | None] = {}
    parts, failed, open_ = [], [], []
    needed: dict[str, int | None] = {}
    for key, label in GATED:
        comparison = comparisons.get(key)
        verdict = metric_verdict(comparison, margin)
        checks[key] = verdict
        if verdict is None:
            parts.append(f"{label}: not measured" if key != "judge" else "no judge")
            continue
        low, high = comparison["interval"]
        text = (f"{label} {comparison['difference']:+.2f} [{low:+.2f}, {high:+.2f}] "
                f"(n={comparison['n']}, {comparison['adapter_only']} better / {comparison['base_only']} worse, "
                f"p={comparison['p_value']:.2g})")
        if verdict == "failed":
            failed.append(label)
            text += f": worse than the base by more than {margin:.2f}"
        elif verdict == "inconclusive":
            open_.append(label)
            needed[key] = comparison.get("items_needed")
            text += ": inconclusive" + (f", about {needed[key]} questions would decide it" if needed[key]
                                        else ", no number of questions decides it at this spread")
        parts.append(text)
    measured = [v for v in checks.values() if v is not None]
    if not measured:
        return {"verdict": "not gated", "passed": None,
                "summary": "not gated: nothing the gate decides on was measured (no rubric question, no judge)",
                "failed": [], "inconclusive": [], "checks": checks, "margin": margin, "n": 0, "items_needed": {}}
    if failed:
        verdict = "failed"
    elif measured and all(v == "passed" for v in measured):
        verdict = "passed"
    else:
        verdict = "inconclusive"
    n = max((comparisons[key]["n"] for key, _ in GATED if comparisons.get(key) and comparisons[key].get("n")),
            default=0)
    return {"verdict": verdict, "passed": {"passed": True, "failed": False}.get(verdict),
            "summary": (f"inconclusive at n = {n}: " if verdict == "inconclusive" else "") + "; ".join(parts),
            "failed": failed, "inconclusive": open_, "checks": checks, "margin": margin, "n": n,
            "items_needed": needed}


