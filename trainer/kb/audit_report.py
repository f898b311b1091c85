"""What the audit is told and what it tells: its settings (`AuditSettings`), each conversation's flags (`RowAudit`) and
the report over a file (`AuditReport`), written as report.md, audit.jsonl and the train/audit split."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from trainer import UserError
from trainer.kb.claims import FAIL, VERIFY, Flag

LIVE_CHECK_RULES = ("kb_contradiction", "programme_not_offered", "scholarship_ineligible", "scholarship_discontinued",
                    "premise_affirmed", "premise_ignored")
"""The KB rules the app runs on every served answer (`Auditor.check_answer`)."""


class AuditError(UserError, ValueError):
    """The audit cannot run or write its report; the message names the path and why."""


@dataclass(frozen=True)
class AuditSettings:
    """The audit's thresholds; `trainer audit` and `generate` each set their own."""

    min_messages: int = 2
    max_messages: int = 12
    min_answer_chars: int = 80
    max_answer_chars: int = 8000
    near_duplicate: float = 0.8
    """Estimated Jaccard similarity (byte 8-grams) above which a later conversation is a near-duplicate."""
    unknown_scholarship: str = VERIFY
    """`fail` for generated data (every name should come from the KB), `verify` for data written elsewhere."""
    workers: int = 0
    """Processes for the per-row rules (forked; the near-duplicate pass stays in one): 0 = 2 from 1,000 conversations
    up where `fork` exists, 2 CPUs are free to this process and no other thread runs, else 1; 1 = never fork."""
    judge_all: bool = False
    """Ask the judge about every row, also those the rules failed (`trainer audit --judge`, to report where judge and
    rules disagree); `generate` asks only about rows that pass, to save requests."""


@dataclass
class RowAudit:
    """The flags of one conversation, where it came from, and the judge's verdict when one was asked."""

    index: int
    flags: list[Flag] = field(default_factory=list)
    location: str | None = None
    """file:line as ingestion names it; None for rows that come from no file (generated ones)."""
    judge: dict[str, str] | None = None
    """{"verdict": "ok" | "error" | "no verdict", "reason": ...} when a judge was asked."""

    @property
    def failed(self) -> bool:
        return any(f.severity == FAIL for f in self.flags)

    @property
    def where(self) -> str:
        return self.location or f"row {self.index + 1}"

    def to_dict(self) -> dict[str, Any]:
        flags = [{k: (v + 1 if k == "message" and v is not None else v) for k, v in asdict(f).items()
                  if k != "source" or v is not None} for f in self.flags]
        return {"index": self.index, "failed": self.failed, "flags": flags,
                **({"judge": self.judge} if self.judge is not None else {})}

    def disagreement(self) -> str | None:
        """Where the judge and the KB rules disagree on this row: `judge only` (a rule to write?), `rules only` (a
        false alarm, or a judge that missed it), or None."""
        verdict = (self.judge or {}).get("verdict")
        ruled = any(f.rule in LIVE_CHECK_RULES for f in self.flags)
        if verdict == "error" and not ruled:
            return "judge only"
        if verdict == "ok" and ruled:
            return "rules only"
        return None


@dataclass
class AuditReport:
    """Every row's flags, with what the audit ran against: the KB (or none), the ingestion report, other files."""

    rows: list[RowAudit]
    seconds: float
    kb_version: dict[str, str] | None
    kb_path: str | None = None
    ingestion: Any = None
    """The `trainer.data.conversations.DataReport` of the file audited: rows rejected, duplicates removed, files
    skipped."""
    against: dict[str, Any] | None = None
    """`--against OTHER`: {"file": OTHER, "matches": [...]} for the rows also found in OTHER."""

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(f.rule for r in self.rows for f in {x.rule: x for x in r.flags}.values()).items()))

    def kb_line(self) -> str:
        if self.kb_version is None:
            return "Knowledge base: none (--no-kb): the KB rules did not run."
        return (f"Knowledge base: version {self.kb_version.get('version')} (as of {self.kb_version.get('as_of')}), "
                f"{self.kb_path}.")

    def summary(self) -> dict[str, Any]:
        failed = sum(r.failed for r in self.rows)
        out = {"conversations": len(self.rows), "failed": failed, "passed": len(self.rows) - failed,
               "flagged_for_verification": sum(1 for r in self.rows if not r.failed and r.flags),
               "conversations_per_flag": self.counts(), "seconds": round(self.seconds, 3),
               "kb_version": self.kb_version, "kb": None if self.kb_version is None else
               {"version": self.kb_version, "path": self.kb_path}}
        if any(r.location for r in self.rows):
            where: dict[str, list[str]] = {}
            for r in self.rows:
                for rule in dict.fromkeys(f.rule for f in r.flags):
                    where.setdefault(rule, []).append(r.where)
            out["rows_per_flag"] = dict(sorted(where.items()))
        if self.ingestion is not None:
            data = self.ingestion
            out["ingestion"] = {**data.to_dict(), "rejected": [
                {"location": e.location, "rule": e.rule, "detail": e.detail} for e in data.errors],
                "duplicate_rows": [{"location": at, "same_as": first} for at, first in data.duplicate_rows]}
        judged = [r for r in self.rows if r.judge is not None]
        if judged:
            verdicts = Counter(r.judge["verdict"] for r in judged)
            out["judge"] = {"asked": len(judged), **{v: verdicts[v] for v in ("ok", "error", "no verdict")},
                            "disagreements": [{"row": r.where, "kind": r.disagreement(), **r.judge,
                                               "rules": [str(f) for f in r.flags if f.rule in LIVE_CHECK_RULES]}
                                              for r in judged if r.disagreement()]}
        if self.against is not None:
            out["against"] = self.against
        return out

    def markdown(self, title: str) -> str:
        s = self.summary()
        lines = [f"# Audit of {title}", "", self.kb_line(), ""]
        if self.ingestion is not None:
            lines += [f"Ingestion: {self.ingestion.summary()}.", ""]
        lines += [f"{s['conversations']} conversations: {s['passed']} pass, {s['failed']} fail (audit split), "
                  f"{s['flagged_for_verification']} pass with flags to verify; {s['seconds']} s.", "",
                  "| flag | conversations |", "|---|---|"]
        lines += [f"| {rule} | {n} |" for rule, n in s["conversations_per_flag"].items()]
        ingestion = s.get("ingestion")
        if ingestion and ingestion["rejected"]:
            lines += ["", f"## Rows ingestion rejected ({len(ingestion['rejected'])})", ""]
            lines += [f"- {e}" for e in self.ingestion.errors]
        if ingestion and ingestion["duplicate_rows"]:
            lines += ["", f"## Exact duplicates removed ({len(ingestion['duplicate_rows'])})", ""]
            lines += [f"- {d['location']}: same as {d['same_as']}" for d in ingestion["duplicate_rows"]]
        if ingestion and ingestion["skipped_files"]:
            lines += ["", "## Files not read", ""] + [f"- {f['path']}: {f['why']}" for f in ingestion["skipped_files"]]
        if "judge" in s:
            judge = s["judge"]
            lines += ["", f"## Judge and rules disagree ({len(judge['disagreements'])} of {judge['asked']} rows)", "",
                      "`judge only`: the judge found an error no KB rule caught (a rule to write?); `rules only`: a "
                      "KB rule fired and the judge saw no error (a false alarm, or a judge that missed it).", ""]
            lines += [f"- {d['row']}: {d['kind']}: judge {d['verdict']} ({d['reason'][:200]!r})"
                      + (f"; rules: {'; '.join(d['rules'])}" if d["rules"] else "") for d in judge["disagreements"]]
        if self.against is not None:
            matches = self.against["matches"]
            lines += ["", f"## Rows also in {self.against['file']} ({len({m['row'] for m in matches})} rows)", ""]
            lines += [f"- {m['row']} ({m['what']}): {m['how']} ({m['similarity']:.0%}) at {m['other']}"
                      for m in matches]
        examples = [(r.where, f) for r in self.rows for f in r.flags][:40]
        if examples:
            lines += ["", "## First flags", ""] + [f"- {where}: {f}" for where, f in examples]
        return "\n".join(lines) + "\n"
