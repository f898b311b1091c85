"""The gate: whether an adapter may be published, from its metrics, the base's and the judge's."""

from __future__ import annotations

from typing import Any

# The gate

GATE_RULE = (
    "An adapter passes when (1) its rubric accuracy is at least the base's, (2) its false-premise correction rate "
    "is at least the base's, and (3) where a judge ran, the judge does not favour the base: the upper bound of the "
    "95% bootstrap interval of `net` (share of questions the adapter won minus share the base won, both orders "
    "combined) is not below 0. A criterion that could not be measured (no false-premise question, no parseable "
    "verdict) is reported and does not decide."
)


def gate_decision(base: dict[str, Any], adapter: dict[str, Any], judge: dict[str, Any] | None) -> dict[str, Any]:
    """The verdict for one adapter from its metrics, the base's and the judge's summary (see GATE_RULE)."""
    checks: dict[str, Any] = {}
    parts, failed = [], []

    def compare(key: str, label: str) -> None:
        a, b = adapter.get(key), base.get(key)
        if a is None or b is None:
            checks[key] = None
            parts.append(f"{label} not measured")
            return
        ok = a >= b
        checks[key] = ok
        parts.append(f"{label} {a:.2f} vs base {b:.2f}" + ("" if ok else " (worse)"))
        if not ok:
            failed.append(label)

    compare("rubric_accuracy", "rubric accuracy")
    compare("false_premise_correction", "false-premise correction")
    if judge is None:
        checks["judge"] = None
        parts.append("no judge configured")
    elif not judge.get("n") or judge.get("net_ci") is None:
        checks["judge"] = None
        parts.append(f"judge gave no parseable verdict ({judge.get('invalid', 0)} unparseable)")
    else:
        low, high = judge["net_ci"]
        ok = high >= 0
        checks["judge"] = ok
        parts.append(f"judge {judge['wins']}-{judge['ties']}-{judge['losses']} (win-tie-loss, n={judge['n']}), "
                     f"net {judge['net']:+.2f} [{low:+.2f}, {high:+.2f}]" + ("" if ok else " (favours the base)"))
        if not ok:
            failed.append("judge")
    passed = not failed
    summary = "; ".join(parts)
    return {"passed": passed, "summary": summary, "failed": failed, "checks": checks}
