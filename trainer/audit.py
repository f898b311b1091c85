"""`python -m trainer audit FILE`: rule checks that keep hallucinations out of stage-1 data.

Each conversation gets flags. `fail` flags send it to the audit split (never to training); `verify` flags keep it
but mark what a person should check. Rules:

- structure: roles, turn order, turn count; an answer without markdown structure is `verify` (`no_markdown`)
- length: answers too short or too long
- language: answers that are not English, by script, then by a language identifier (`trainer/language.py`)
- placeholder: template slots left in the text ("[University Name]", "{program}", "XYZ University")
- near_duplicate: MinHash (bottom-k over byte 8-grams, `trainer/near_dup.py`) similarity with an earlier conversation
- kb_contradiction: a knowledge-base rule's false claim stated in a sentence without correction (Medicare for
  international students in Australia, the retired "Tier 4" visa name, ...), matched by meaning (`Rule.in_sentence`)
  in conversations about the rule's country (named, or known by its own terms: F-1, CAS, OSHC)
- programme_not_offered: a programme the KB says a university does not offer, asked about and not corrected
- scholarship_ineligible: a scholarship recommended to a student from a country the KB says is not eligible
- scholarship_discontinued: a discontinued scholarship presented as open
- unknown_scholarship: a named scholarship, fellowship or award that is not in the KB (`verify`, or `fail` for
  generated data, where every name should come from the KB)
- unknown_name: a named app, portal, agency, survey or programme ("Global Education Survey") that is not a KB entity,
  the organisation of a KB source or a well-known body (`verify`)
- unverified_number: a figure for an attribute the KB describes (work hours, fees, a visa's or test result's length,
  a test score, an insurance share) that no KB fact of the entity it is about carries (`verify`): the entities its
  sentence names (a university's or scholarship's country too), else the conversation's; "95% of graduates" is not
- llm_judge: optional, a model asked whether the answer contradicts the KB facts (`generate --judge`: rows that pass
  the rules; `trainer audit --judge URL`: every row, and the report lists where the judge and the KB rules disagree)

Rules are compiled once and triggered by keyword, so the audit stays linear in the data; from 1,000 conversations
up the per-row rules run in 2 forked processes, and near-duplicates are counted with numpy (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from trainer.caseless import CaselessPattern, lowered
from trainer.kb import SENTENCE
from trainer.kb_loader import SHIPPED_KB
from trainer.language import answer_language

FAIL, VERIFY = "fail", "verify"

PLACEHOLDER = re.compile(
    r"\[(?:(?:your|the|insert|enter|add|target|chosen|preferred|selected|student'?s?|applicant'?s?|full)\s+)?"
    r"(?:university|college|program(?:me)?|course|country|city|name|insert|field|degree|company|school|scholarship|"
    r"amount|date|deadline)[^\]]{0,30}\](?!\()|\{[a-z_]{2,30}\}|<insert[^>]*>|\bXYZ (?:University|"
    r"College|Scholarship)\b|\bABC (?:University|College)\b|\blorem ipsum\b", re.IGNORECASE)
"""Template slots: "[University Name]", "[Your University]", "{program}", "XYZ University"; a markdown link's text
("[the university's admissions page](https://...)") is not one."""
MARKDOWN = re.compile(r"^\s{0,3}(?:#{1,6}\s|[-*+]\s|\d+[.)]\s)|\*\*[^*]+\*\*", re.MULTILINE)
NEGATION = re.compile(
    r"\b(?:not|no|never|isn't|aren't|doesn't|don't|didn't|cannot|can't|won't|wasn't|unavailable|ineligible|"
    r"discontinued|replaced|retired|closed|ended|no longer|only (?:as|after|for)|instead|however|but)\b",
    re.IGNORECASE)


def _negated(text: str) -> bool:
    """Whether NEGATION occurs in `text`."""
    return _NEGATION.span(text, lowered(text)) is not None


_NEGATION = CaselessPattern(NEGATION)
_PLACEHOLDER = CaselessPattern(PLACEHOLDER)
# A named award is one to five capitalised words before "Scholarship", "Fellowship", ...: found in two steps, the
# award word first, then the words just before it (one pattern tried at every position cost a third of the audit).
AWARD_WORD = re.compile(r"(?:Scholarships?|Fellowships?|Awards?|Grants?|Bursary|Bursaries)\b")
"""No leading \\b: `re` can then skip ahead by the first letter; AWARD_NAME_BEFORE needs a space before it anyway."""
AWARD_NAME_BEFORE = re.compile(r"\b(?:[A-Z][\w'’&.-]*\s){1,5}$")
AWARD_TOKENS = frozenset(w.encode() for w in "scholarship scholarships fellowship fellowships award awards grant "
                                                "grants bursary bursaries".split())
"""An award word AWARD_NAME_BEFORE can name is preceded by whitespace, so on ASCII text it is one of these words."""
AWARD_STOPWORDS = {"the", "a", "an", "merit", "international", "university", "government", "partial", "full",
                   "research", "need-based", "these", "such", "other", "many", "some", "external", "internal",
                   "country-specific", "departmental", "most", "all", "apply", "various", "specific", "graduate",
                   "undergraduate", "postgraduate", "master's", "doctoral", "phd", "travel", "teaching", "study"}
# A named app, portal, agency, survey or programme: capitalised words before one of these words, as for awards.
NAME_TOKENS = frozenset(w.encode() for w in "app apps portal platform agency survey programme programmes program "
                                             "programs initiative network council consultancy consultants hub "
                                             "database index".split())
"""The last word of a name, capitalised; the name ends at it ("Cultural Fit and Program Values" names nothing)."""
LOWER_CASE_NAME_WORDS = frozenset({b"app", b"portal", b"platform"})
"""Last words that may follow a name in lower case ("the UniMatch app")."""
GENERIC_NAME_WORDS = {
    "mba", "emba", "ms", "msc", "ma", "mphil", "phd", "master's", "masters", "master", "bachelor's", "bachelors",
    "bachelor", "undergraduate", "graduate", "postgraduate", "doctoral", "degree", "exchange", "student", "students",
    "study", "international", "university", "college", "school", "business", "academic", "research", "summer",
    "winter", "data", "science", "computer", "engineering", "honours", "honors", "dual", "joint", "executive",
    "full-time", "part-time", "online", "mobile", "official", "work-study", "co-op", "buddy", "mentorship",
    "mentoring", "orientation", "ambassador", "peer", "internship", "placement", "application", "applications",
    "alumni", "career", "careers", "language", "english", "foundation", "pathway", "preparatory", "bridging",
    "writing", "tutoring", "counselling", "counseling", "wellbeing", "support", "accommodation", "housing", "the",
    "a", "an", "your", "our", "this", "that", "its", "their", "my", "new", "and", "of", "for", "in", "&", "section",
    "fit", "with", "eligible", "policy", "public"}
"""Words that describe rather than name ("the Oxford MBA Program", "your university's Buddy Program"): a name made
only of these and KB names is no invented name."""
NAME_LEAD_WORDS = {"the", "a", "an", "your", "our", "this", "that", "its", "their", "my", "contact", "use", "try",
                   "join", "visit", "check", "download", "install", "apply", "see", "consider", "explore", "register",
                   "ask", "email", "call", "through", "via"}
"""Words before a name that are not part of it: articles, and verbs capitalised at the start of a sentence ("Contact
XYZ Agency")."""
KNOWN_BODIES = (
    "british council", "ucas", "common app", "common application", "coalition app", "campus france", "daad",
    "educationusa", "idp", "nhs", "national health service", "gmac", "graduate management admission council",
    "council of graduate schools", "sevis", "sevp", "student and exchange visitor", "ircc", "immiaccount",
    "uni-assist", "studielink", "nuffic", "jasso", "erasmus", "fulbright", "express entry", "provincial nominee",
    "student direct stream", "national student survey", "ets", "college board", "vfs global", "tlscontact",
    "applyboard", "studyportals", "mastersportal", "education new zealand", "quacquarelli symonds", "qs",
    "times higher education", "u.s. news", "us news", "linkedin", "handshake", "coursera", "edx", "duolingo",
    "pearson", "khan academy", "glassdoor", "indeed", "federal work-study", "ielts", "toefl", "gre", "gmat",
    "international experience canada", "working holiday", "global talent", "h-1b", "eures", "euraxess",
    "study in germany", "make it in germany", "chevening", "commonwealth", "marshall", "rhodes",
    # named in the KB-checked seed dialogues (data/seed/)
    "dental council", "bar council", "immigration services agency", "canada revenue agency", "swedish tax agency",
    "migration agency", "federal employment agency", "third level graduate programme", "post-graduation work permit",
    "community volunteer income tax program", "u.s. student program")
"""Real, well-known bodies, apps and schemes an answer may name though the KB has no entry for them."""
_NEXT_CAPITAL = re.compile(r" [A-Z]")
_KNOWN_BODY = re.compile(rf"(?<![\w.-])(?:{'|'.join(map(re.escape, KNOWN_BODIES))})(?![\w-])")
LIVE_CHECK_RULES = ("kb_contradiction", "programme_not_offered", "scholarship_ineligible", "scholarship_discontinued",
                    "premise_affirmed", "premise_ignored")
"""The KB rules the app runs on every served answer (`Auditor.check_answer`)."""
PLACEHOLDER_HINTS = ("[", "{", "<insert", "XYZ ", "ABC ", "orem ipsum")


class AuditError(ValueError):
    """The audit cannot run or write its report; the message names the path and why."""


@dataclass(frozen=True)
class Flag:
    """One finding on one conversation."""

    rule: str
    severity: str
    detail: str
    message: int | None = None
    """Index of the message in the conversation (0-based); reports and audit.jsonl number messages from 1, as
    ingestion's messages do."""
    source: str | None = None
    """The official page of the KB fact a KB flag rests on."""

    def __str__(self) -> str:
        where = f" (message {self.message + 1})" if self.message is not None else ""
        return f"{self.severity}:{self.rule}{where}: {self.detail}"


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
    """The `trainer.data.DataReport` of the file audited: rows rejected, duplicates removed, files skipped."""
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


# The auditor

PARALLEL_FROM_ROWS = 1000
"""From this many conversations up, the per-row rules run in 2 processes (forking costs ~20 ms)."""
CHUNK_ROWS = 32
"""Conversations per claim when processes share the rows: small enough to balance, large enough to be cheap."""
_FORKED: tuple[Any, Any, Any] | None = None
"""(auditor, conversations, next chunk counter) while `Auditor.audit` forks: what the forked processes work on."""


def _claimed_chunks(auditor, conversations, counter) -> dict[int, list[tuple[list[Any], Any]]]:
    """Chunk index -> rows, for every chunk this process claims until none is left."""
    done = {}
    while True:
        with counter.get_lock():
            chunk = counter.value
            counter.value += 1
        start = chunk * CHUNK_ROWS
        if start >= len(conversations):
            return done
        done[chunk] = auditor._rows_between(conversations, start, min(start + CHUNK_ROWS, len(conversations)))


def _chunks_in_fork() -> dict[int, list[tuple[list[Any], Any]]]:
    return _claimed_chunks(*_FORKED)


class Auditor:
    """Audit conversations (lists of messages) against the rules and, when given, a knowledge base."""

    def __init__(self, kb=None, settings: AuditSettings = AuditSettings(),
                 judge: Callable[[list[dict[str, str]], list[Any]], tuple[bool | None, str]] | None = None):
        self.kb, self.settings, self.judge = kb, settings, judge
        self._known_awards: set[str] = set()
        if kb is not None:
            self._owners = _entities_by_number(kb)
            self._known_awards = {n.lower() for n in kb.known_scholarship_names()}
            self._known_sites = _source_labels(kb)
            self._invented: dict[str, bool] = {}
            self._keys_of: tuple[str | None, set[tuple[str, str]]] = (None, set())
            self._test_tokens = {kb.words(n.split()[0]) for t in kb.tests for n in (t.name, *t.aliases)}
            self._test_tokens = {w for words in self._test_tokens for w in words} - COMMON_TEST_WORDS
            self._discontinued = [s for s in kb.scholarships if getattr(s, "discontinued", False)]
            self._gates = {r.id: [CaselessPattern(p) for p in r.patterns] for r in kb.rules}

    def audit(self, conversations: Sequence[Sequence[dict[str, str]]],
              locations: Sequence[str] | None = None) -> AuditReport:
        """Flag every conversation; `locations` (file:line, as ingestion names rows) name them in the report."""
        started = time.perf_counter()
        per_row = self._per_row(conversations)
        rows = [RowAudit(i, flags, locations[i] if locations else None) for i, (flags, _) in enumerate(per_row)]
        from trainer.near_dup import SKETCH_SIZE, near_duplicates_of_sketches

        found = near_duplicates_of_sketches([sketch for _, sketch in per_row], self.settings.near_duplicate,
                                            SKETCH_SIZE)
        for i, (j, similarity) in found.items():
            rows[i].flags.append(Flag("near_duplicate", FAIL, f"{similarity:.0%} similar to {rows[j].where}"))
        if self.judge is not None:
            for row, messages in zip(rows, conversations):
                if self.settings.judge_all or not row.failed:
                    ok, reason = self.judge(list(messages), self._facts(messages))
                    row.judge = {"verdict": {True: "ok", False: "error"}.get(ok, "no verdict"), "reason": reason}
                    if ok is False:
                        row.flags.append(Flag("llm_judge", FAIL, reason[:300]))
        return AuditReport(rows, time.perf_counter() - started, getattr(self.kb, "version", None),
                           getattr(self.kb, "path", None))

    def _per_row(self, conversations: Sequence[Sequence[dict[str, str]]]) -> list[tuple[list[Flag], Any]]:
        """(flags, MinHash sketch) per conversation, in order; split over forked processes on large inputs."""
        processes = self._processes(len(conversations))
        if processes < 2:
            return self._rows_between(conversations, 0, len(conversations))
        import multiprocessing

        global _FORKED
        # Every process (this one too) claims the next chunk of rows from a shared counter until none is left, so
        # a process that gets less CPU (other jobs on the machine) simply does fewer chunks.
        context = multiprocessing.get_context("fork")
        counter = context.Value("q", 0)
        _FORKED = (self, conversations, counter)  # inherited by the forked processes; only results are pickled
        try:
            with context.Pool(processes - 1) as pool:
                others = [pool.apply_async(_chunks_in_fork) for _ in range(processes - 1)]
                done = _claimed_chunks(self, conversations, counter)
                for other in others:
                    done.update(other.get())
        finally:
            _FORKED = None
        return [row for chunk in sorted(done) for row in done[chunk]]

    def _rows_between(self, conversations, start: int, end: int) -> list[tuple[list[Flag], Any]]:
        from trainer.near_dup import sketch

        out = []
        for messages in conversations[start:end]:
            text = "\n".join([c for m in messages if isinstance(c := m.get("content"), str)])
            out.append((self._row_flags(messages), sketch(text)))
        return out

    def _processes(self, rows: int) -> int:
        import multiprocessing
        import os
        import threading

        wanted = self.settings.workers
        if wanted == 1 or (wanted == 0 and rows < PARALLEL_FROM_ROWS):
            return 1
        # Forking a process that runs other threads can deadlock the child (a lock held at the fork stays held).
        if "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
            return 1
        if wanted > 1:
            return min(wanted, rows)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return min(2, cpus)

    def _facts(self, messages) -> list[Any]:
        if self.kb is None:
            return []
        text = " ".join(m["content"] for m in messages)
        kb = self.kb
        return kb.facts_for(countries=kb.find_destinations(text), universities=kb.find_universities(text),
                            scholarships=kb.find_scholarships(text), tests=kb.find_tests(text))

    def _row_flags(self, messages: Sequence[dict[str, str]]) -> list[Flag]:
        from trainer.data import _RowProblem, check_turns

        s = self.settings
        flags: list[Flag] = []
        try:
            check_turns([{"role": m.get("role"), "content": m.get("content")} for m in messages])
        except (_RowProblem, KeyError, TypeError, AttributeError) as exc:
            return [Flag("structure", FAIL, getattr(exc, "detail", None) or str(exc))]
        if not s.min_messages <= len(messages) <= s.max_messages:
            flags.append(Flag("structure", FAIL, f"{len(messages)} messages, expected {s.min_messages}-"
                                                 f"{s.max_messages}"))
        answers = [(i, m["content"]) for i, m in enumerate(messages) if m["role"] == "assistant"]
        for i, answer in answers:
            if len(answer) < s.min_answer_chars:
                flags.append(Flag("length", FAIL, f"answer of {len(answer)} characters", i))
            elif len(answer) > s.max_answer_chars:
                flags.append(Flag("length", FAIL, f"answer of {len(answer):,} characters", i))
            if (language := answer_language(answer)) is not None:
                flags.append(Flag("language", FAIL, f"the answer reads as {language}, not English", i))
            if any(h in answer for h in PLACEHOLDER_HINTS) and (at := _PLACEHOLDER.span(answer, lowered(answer))):
                flags.append(Flag("placeholder", FAIL, f"template slot left in: {answer[at[0]:at[1]]!r}", i))
        if answers and not any(MARKDOWN.search(a) for _, a in answers):
            flags.append(Flag("no_markdown", VERIFY, "no heading, list or bold text in any answer"))
        if self.kb is not None:
            flags.extend(self._kb_flags(messages, answers))
        return flags

    def check_answer(self, messages: Sequence[dict[str, str]]) -> list[Flag]:
        """The audit's KB rules on the last answer of a conversation: the app's live check before an answer is shown
        as final. The same code as `trainer audit` (a false claim a rule knows, a programme the university does not
        offer left uncorrected, a scholarship the student's home country may not apply for, a discontinued scheme);
        each flag names the KB fact and carries its source. Empty without a KB or an answer."""
        if self.kb is None:
            return []
        answers = [(i, m["content"]) for i, m in enumerate(messages) if m.get("role") == "assistant"
                   and isinstance(m.get("content"), str)]
        if not answers:
            return []
        last = answers[-1][0]
        asked = max((i for i, m in enumerate(messages[:last]) if m.get("role") == "user"), default=None)
        flags = [f for f in self._kb_flags(list(messages[:last + 1]), answers[-1:])
                 if f.rule in LIVE_CHECK_RULES and f.message in (last, asked)]
        if asked is not None:  # the question's false premises: the answer must carry each correction
            corrections = self.premise_corrections(messages[asked:asked + 1])
            if any(f.rule == "programme_not_offered" for f in flags):  # the same finding, already flagged
                corrections = [c for c in corrections if c.kind not in ("programme", "degree_entry")]
            flags += self.premise.check_answer(corrections, answers[-1][1], last)
        return flags

    @property
    def premise(self):
        """The KB's premise check (`trainer.premise.PremiseChecker`), built on first use."""
        if getattr(self, "_premise", None) is None:
            from trainer.premise import PremiseChecker

            self._premise = PremiseChecker(self.kb)
        return self._premise

    def premise_corrections(self, messages: Sequence[dict[str, str]]) -> list[Any]:
        """The corrections the user turns of `messages` call for (`PremiseChecker.check`); empty without a KB."""
        return self.premise.check(list(messages)) if self.kb is not None else []

    def _kb_flags(self, messages, answers) -> list[Flag]:
        kb, flags = self.kb, []
        user_text = kb.joined([m["content"] for m in messages if m["role"] == "user"])
        all_text = kb.joined([m["content"] for m in messages])
        countries = {c.code for c in kb.find_destinations(all_text)}
        # Rules: a false claim stated in an answer sentence without a correction. Only rules whose keywords occur in
        # the answer (a set lookup on words split once), whose country the conversation is about and whose patterns
        # all occur in the answer can match, so only those are tried sentence by sentence.
        for i, answer in answers:
            low = lowered(answer)
            candidates = [r for r in kb.rules_in(answer) if (not r.country or r.country in countries)
                          and all(gate.span(answer, low) is not None for gate in self._gates[r.id])]
            if not candidates:
                continue
            for sentence in SENTENCE.split(answer):
                for rule in candidates:
                    if rule.in_sentence(sentence):
                        flags.append(Flag("kb_contradiction", FAIL, f"{rule.id}: {rule.claim} ({rule.fact})", i,
                                          rule.source))
        # Programmes a university does not offer, asked about in a user message that names the university: the
        # next answer must correct the premise. Each (university, programme) is checked at its first question.
        asked: set[tuple[str, str, str]] = set()
        for i, m in enumerate(messages):
            if m["role"] != "user" or not m["content"]:
                continue
            for university in kb.find_universities(m["content"]):
                for negative in university.not_offered:
                    key = (university.id, negative.degree, negative.field)
                    if key in asked or not _programme_pattern(negative.degree, negative.field).search(m["content"]):
                        continue
                    asked.add(key)
                    reply = next((a for j, a in answers if j > i), "")
                    if not _negated(reply):
                        flags.append(Flag("programme_not_offered", FAIL,
                                          f"{university.name} does not offer {negative.degree} {negative.field}; "
                                          f"the answer does not say so ({negative.correction})", i,
                                          negative.source))
        # Scholarships: eligibility for the student's home country, discontinued schemes, unknown names.
        home = kb.home_country(user_text)
        for i, answer in answers:
            split = None
            for scholarship in kb.find_scholarships(answer):
                split = SENTENCE.split(answer) if split is None else split
                sentences = [x for x in split if _mentions(x, scholarship)]
                corrected = any(_negated(x) for x in sentences)
                if home is not None and kb.eligible(scholarship.id, home.code) is False and not corrected:
                    flags.append(Flag("scholarship_ineligible", FAIL,
                                      f"{scholarship.name} recommended to a student from {home.name}, who is not "
                                      "eligible", i, scholarship.source))
                if getattr(scholarship, "discontinued", False) and not corrected:
                    flags.append(Flag("scholarship_discontinued", FAIL, f"{scholarship.name} has been discontinued",
                                      i, scholarship.source))
            if answer.isascii() and AWARD_TOKENS.isdisjoint(kb.words(answer)):
                matches = ()  # no award word: skip the scan
            else:
                matches = AWARD_WORD.finditer(answer)
            for match in matches:
                before = AWARD_NAME_BEFORE.search(answer, max(0, match.start() - 120), match.start())
                if before is None:
                    continue
                name = before.group(0) + match.group(0)
                words = name.split()
                while words and words[0].lower().strip(",.") in AWARD_STOPWORDS:
                    words = words[1:]
                if len(words) < 2:
                    continue
                name = " ".join(words)
                if not any(known in name.lower() or name.lower() in known for known in self._known_awards):
                    flags.append(Flag("unknown_scholarship", self.settings.unknown_scholarship,
                                      f"{name!r} is not in the knowledge base", i))
            flags += [Flag("unknown_name", VERIFY, f"{name!r} is not in the knowledge base", i)
                      for name in self._unknown_names(answer)]
            unverified = self._unverified_numbers(answer, all_text)
            if unverified:
                flags.append(Flag("unverified_number", VERIFY, "not in the KB: " + ", ".join(unverified[:5]), i))
        return flags


    def _unverified_numbers(self, answer: str, all_text: str) -> list[str]:
        """The answer's figures for an attribute the KB describes (work hours, fees, a visa's length, a test score,
        an insurance share), as written, that no KB fact of the entity they are about carries. A figure is about the
        entities its sentence names whose kind the KB describes that way, or, failing those, the conversation's; a
        figure about no such entity ("95% of graduates", "over 200 programmes") is not the KB's to verify."""
        unverified: dict[str, None] = {}
        about: dict[tuple[int, int], set[tuple[str, str]]] = {}
        # a number without a unit can only be a test's score: looked at in answers with a score word and the first
        # word of a test's name (`find_tests`, run where such a number is found, costs more)
        words = self.kb.words(answer)
        bare = not SCORE_TOKENS.isdisjoint(words) and not self._test_tokens.isdisjoint(words)
        if not bare and UNIT_TOKENS.isdisjoint(words) and not any(c in answer for c in "%$€£₹¥"):
            return []  # no figure with a unit or currency
        shown_to = -1
        # Lengths in words ("six months", "three years") are read in KB facts only: in answers they were mostly
        # right and mostly unknown to the KB (the KB-checked seed dialogues got 1 in 6 rows flagged for them).
        for start, end, kind, value in _numbers_at(answer, bare=bare, in_words=False):
            if start < shown_to:
                continue  # the second half of a range already shown ("6-8 weeks")
            span = _sentence_at(answer, start)
            if not _attribute_near(answer, span, start, end, kind):
                continue
            if span not in about:
                about[span] = self._entity_keys(answer[span[0]:span[1]])
            keys = {k for k in about[span] if kind in NUMBER_KINDS.get(k[0], ())}
            if not keys:
                keys = {k for k in self._conversation_keys(all_text) if kind in NUMBER_KINDS.get(k[0], ())}
            if keys and self._owners.get((kind, value), frozenset()).isdisjoint(keys):
                unverified[" ".join(answer[start:end].split())] = None
                shown_to = end
        return list(unverified)

    def _unknown_names(self, answer: str) -> list[str]:
        """The apps, portals, agencies, surveys and programmes `answer` names that the KB does not know ("the
        UniMatch app", "Global Education Survey"): not a KB entity with only describing words around it ("the Oxford
        MBA Program"), not the organisation of a KB source's site (campusfrance.org: "Campus France"), not one of
        KNOWN_BODIES. Awards are `unknown_scholarship`'s."""
        found: dict[int, str] = {}
        # str.find for the last words the answer has, a few times faster than one alternation tried everywhere
        for token in NAME_TOKENS.intersection(self.kb.words(answer)):
            word = token.decode()
            for form in (word.capitalize(), word) if token in LOWER_CASE_NAME_WORDS else (word.capitalize(),):
                at = answer.find(form)
                while at > 0:
                    end = at + len(form)
                    if not (answer[end:end + 1].isalnum() or _NEXT_CAPITAL.match(answer, end)) and \
                            (before := AWARD_NAME_BEFORE.search(answer, max(0, at - 120), at)) is not None:
                        words = before.group(0).split()
                        while words and words[0].lower().strip(",.:") in NAME_LEAD_WORDS:
                            words = words[1:]
                        name = " ".join([*words, form])
                        if name not in self._invented:
                            self._invented[name] = bool(words) and self._invented_name(name, " ".join(words))
                        if self._invented[name]:
                            found[before.start()] = name
                    at = answer.find(form, end)
        return list(dict.fromkeys(found[at] for at in sorted(found)))

    def _invented_name(self, name: str, words: str) -> bool:
        """Whether `name` ("Global Education Survey"; `words`, the name without its last word) is none of the
        bodies `_unknown_names` knows."""
        low = name.lower()
        if _compact(words) in self._known_sites or _compact(name) in self._known_sites:
            return False  # "Campus France", "DAAD Portal"
        if AWARD_TOKENS.intersection(self.kb.words(name)) or _KNOWN_BODY.search(low):
            return False
        kb = self.kb
        for entity in (*kb.find_countries(name), *kb.find_universities(name), *kb.find_scholarships(name),
                       *kb.find_tests(name)):
            for known in (entity.name, *getattr(entity, "aliases", ()), *getattr(entity, "demonyms", ())):
                low = re.sub(rf"\b{re.escape(known.lower())}\b", " ", low)
        return any(w.strip(",.:()") not in GENERIC_NAME_WORDS for w in re.sub(r"['’]s\b", "", low).split()[:-1])

    def _conversation_keys(self, all_text: str) -> set[tuple[str, str]]:
        """`_entity_keys` of a conversation's text, kept for its next answers."""
        if self._keys_of[0] is not all_text:
            self._keys_of = (all_text, self._entity_keys(all_text))
        return self._keys_of[1]

    def _entity_keys(self, text: str) -> set[tuple[str, str]]:
        """The KB entities `text` is about, as `_entity_key`s: destinations, universities, scholarships and tests it
        names, and the countries of the universities and scholarships."""
        kb = self.kb
        keys = {_entity_key(e) for e in (*kb.find_destinations(text), *kb.find_tests(text))}
        for entity in (*kb.find_universities(text), *kb.find_scholarships(text)):
            keys.add(_entity_key(entity))
            home = getattr(entity, "country", None) or getattr(entity, "host_country", None)
            if home is not None:
                keys.add(("Country", home))
        return keys


_MID_LINE_BREAK = re.compile(r"[.!?]\s+")


def _sentence_at(text: str, at: int) -> tuple[int, int]:
    """The span of the sentence (as SENTENCE splits `text`, give or take leading spaces) that holds position `at`,
    found within its line: splitting every answer into sentences cost more than all the numbers' checks together."""
    start = text.rfind("\n", 0, at) + 1
    line_end = text.find("\n", at)
    line_end = len(text) if line_end < 0 else line_end
    for match in _MID_LINE_BREAK.finditer(text, start, at):
        start = match.end()
    match = _MID_LINE_BREAK.search(text, at, line_end)
    return start, match.start() + 1 if match else line_end


def _entity_key(entity) -> tuple[str, str]:
    return type(entity).__name__, getattr(entity, "id", None) or entity.code


def _entities_by_number(kb) -> dict[tuple[str, str], frozenset[tuple[str, str]]]:
    """Each figure in the KB, as `_numbers_at` reads it -> the `_entity_key`s of the entities whose facts carry it (a
    country's facts include its rules'; a rule about no country counts for the entities its fact names). A rule's
    fact verifies none of the figures its false claim states ("40 hours per fortnight was the earlier rule")."""
    out: dict[tuple[str, str], set[tuple[str, str]]] = {}
    claimed = {rule.fact: _numbers_in(rule.claim) for rule in kb.rules}
    groups = [("countries", c) for c in kb.countries] + [("universities", u) for u in kb.universities] + \
        [("scholarships", s) for s in kb.scholarships] + [("tests", t) for t in kb.tests]
    for kind, entity in groups:
        for fact in kb.facts_for(**{kind: [entity]}):
            for number in _numbers_in(fact.text) - claimed.get(fact.text.partition(": ")[2], set()):
                out.setdefault(number, set()).add(_entity_key(entity))
    for rule in kb.rules:
        if rule.country is None and (numbers := _numbers_in(rule.fact) - claimed[rule.fact]):
            text = f"{rule.claim} {rule.fact}"
            for entity in (*kb.find_countries(text), *kb.find_universities(text), *kb.find_scholarships(text),
                           *kb.find_tests(text)):
                for number in numbers:
                    out.setdefault(number, set()).add(_entity_key(entity))
    return {number: frozenset(keys) for number, keys in out.items()}


def _source_labels(kb) -> frozenset[str]:
    """The site names of the KB's official sources, run together ("campusfrance", "britishcouncil", "studyinjapan"):
    an answer naming the organisation behind one ("Campus France", "Study in Japan portal") names a known body."""
    from urllib.parse import urlsplit

    sources = {f.source for f in kb.facts_for(kb.countries, kb.universities, kb.scholarships, kb.tests)}
    sources |= {r.source for r in kb.rules} | {getattr(c, name) or "" for c in kb.countries
                                                for name in ("visa_portal", "study_portal")}
    labels = {label for url in sources for label in (urlsplit(url).hostname or "").split(".")}
    return frozenset(_compact(label) for label in labels if len(label) > 3 and label not in ("www", "gouv"))


def _compact(name: str) -> str:
    return re.sub(r"[\W_]", "", name.lower())


def _mentions(sentence: str, scholarship) -> bool:
    low = sentence.lower()
    return any(name.lower() in low for name in (scholarship.name, *scholarship.aliases))


# Figures and the attributes they measure. `_numbers_at` reads each number with its unit as one of a few kinds;
# `_attribute_near` keeps, in an answer, only those next to a word for that attribute; NUMBER_KINDS says which kinds
# the KB describes for which kind of entity (a university's or scholarship's country counts with it).
NUMBER_KINDS = {
    "Country": frozenset({"hours", "money", "duration", "percent"}),
    "University": frozenset({"money"}),
    "Scholarship": frozenset({"money", "percent"}),
    "AdmissionTest": frozenset({"score", "duration"}),
}
"""Entity kind -> the kinds of figure its KB facts give: work hours, fees and amounts, the length of a visa, work
permit or test result, an insurance or tuition share, a test score."""
ATTRIBUTE_WORDS = {
    "hours": r"work\w*|jobs?|employ\w*|part-time|full-time|weekly|weeks?|fortnight\w*|term|semesters?|holidays?|"
             r"vacations?",
    "money": r"tuition|fees?|costs?|costing|charged?|charges|pays?|paying|payable|paid|prices?|surcharge|IHS|"
             r"insurance|premiums?|OSHC|funds?|funding|financial|bank|blocked|Sperrkonto|proof|living|expenses|rent|"
             r"stipends?|allowances?|scholarships?|bursar(?:y|ies)|awards?|grants?|deposit",
    "duration": r"visas?|permits?|OPT|STEM|post-study|graduate route|PSW|PGWP|stay(?:-back)?|staying|"
                r"work authori[sz]ation|extension|valid(?:ity)?|residence|stamp|job[- ]search",
    "percent": r"insurance|insured|cover(?:s|ed|age)?|reimburs\w*|medical|health|treatment|tuition|fees?|waivers?|"
               r"discounts?|scholarships?|stipends?",
    "score": r"scores?|scored|scoring|bands?|overall|scale|out of|sectional|composite|level",
}
UNIT_TOKENS = frozenset(w.encode() for w in "hour hours hrs percent year years yr yrs month months week weeks points "
                                            "million thousand k m euro euros pound pounds dollar dollars usd eur gbp "
                                            "aud cad inr nzd sgd chf sek nok dkk jpy krw".split())
"""The words of the units and currencies `_numbers_at` reads: an answer with none of them (and no %, no currency
sign) has no figure to check but scores."""
COMMON_TEST_WORDS = frozenset(w.encode() for w in "international test graduate digital scholastic university law "
                                                  "medical japanese language deutsche pearson".split())
"""First words of test names that many texts use: not worth a `find_tests` on a conversation."""
SCORE_TOKENS = frozenset(w.encode() for w in "score scores scored scoring band bands overall scale out sectional "
                                              "composite level".split())
"""The words of ATTRIBUTE_WORDS["score"]: an answer with none has no score to check."""
_ATTRIBUTE = {kind: re.compile(rf"\b(?:{words})\b", re.IGNORECASE) for kind, words in ATTRIBUTE_WORDS.items()}
ATTRIBUTE_WINDOW = {"score": (25, 15)}
"""Characters before and after a figure searched for its attribute word (default 60 and 60, within the sentence): a
score's word is next to it ("an overall IELTS score of 7.0", "band 7"), or up to 60 before with no other number
between ("the average GMAT score of students admitted to the Cambridge MBA is 700")."""
_GPA_BEFORE = re.compile(r"\b(?:C?GPA|grade point average)\b[^.\d]{0,12}$", re.IGNORECASE)
_LEAD_TIME_AFTER = re.compile(r"\s(?:before|in advance|ahead|prior|earlier|ago)\b", re.IGNORECASE)
_DIGITS = re.compile(r"\d[\d,.]*")
_ASCII_DIGITS = re.compile(r"[0-9][0-9,.]*")
"""The same on ASCII text, where `re` can skip ahead by the character set (about 20% faster)."""
_CURRENCY_BEFORE = re.compile(r"(?:[$€£₹¥]|\b(?:USD|EUR|GBP|AUD|CAD|INR|NZD|SGD|CHF|SEK))\s?$", re.IGNORECASE)
_UNIT_STARTS = frozenset(" -–%\u00a0")
"""A unit, a range or a currency word after a number starts with a letter or one of these."""
_CURRENCY_SYMBOLS = frozenset("$€£₹¥")
_UNIT_WORDS = ("hour", "hrs", "percent", "per cent", "year", "yr", "month", "week", "point", "million", "thousand",
               "m ", "m.", "m,", "euro", "pound", "dollar", "usd", "eur", "gbp", "aud", "cad", "inr", "nzd", "sgd",
               "chf", "sek", "nok", "dkk", "jpy", "krw", "to ", "-", "–")
"""How what _UNIT_AFTER and _RANGE_AFTER read after a space starts: a cheap test before running them."""
_RANGE_AFTER = re.compile(r"\s?(?:-|–|to)\s?(?:[$€£₹¥]\s?)?\d[\d,.]*")
"""The second half of a range ("20-25 hours", "6.5 to 7"): the first number takes the unit after it."""
_UNIT_AFTER = re.compile(
    r"(?P<hours>\s?(?:hours?|hrs)\b)|(?P<percent>\s?(?:%|percent\b|per cent\b))|(?P<years>[\s-]?(?:years?|yrs?)\b)|"
    r"(?P<months>[\s-]?months?\b)|(?P<weeks>[\s-]?weeks?\b)|(?P<points>\s?points\b)|"
    r"(?P<times>k\b|\s?(?:million|m)\b|\s?thousand\b)?(?P<currency>\s?(?:euros?|pounds?|dollars?|USD|EUR|GBP|AUD|"
    r"CAD|INR|NZD|SGD|CHF|SEK|NOK|DKK|JPY|KRW)\b)?", re.IGNORECASE)
_WORD_NUMBERS = {w: n for n, w in enumerate("one two three four five six seven eight nine ten eleven twelve".split(),
                                             1)}
_LAST_WORD = re.compile(r"\b[A-Za-z]+$")
_WORD_END = re.compile(r"[a-z]+s?\b")
"""With _LAST_WORD: a length in words ("two years"), as the KB often writes them."""


def _numbers_in(text: str) -> set[tuple[str, str]]:
    """Every figure of `text` as (kind, value): '£9,250' -> ('money', '9250'), '20 hours per week' -> ('hours',
    '20'), '5%' -> ('percent', '5'), 'two years' and '24 months' -> ('duration', '24 months'), a bare '7.0' ->
    ('score', '7'). The KB's side: its facts verify what they carry, whatever attribute word is near."""
    return {(kind, value) for _, _, kind, value in _numbers_at(text)}


def _numbers_at(text: str, bare: bool = True, in_words: bool = True) -> list[tuple[int, int, str, str]]:
    """(start, end, kind, value) for each figure `_numbers_in` reads; start..end spans it as written, with its
    currency and unit; `bare=False` leaves out numbers with neither (scores), for text with no word for a score;
    `in_words=False` leaves out lengths in words ("two years"), for text with no number word.
    Scans digit runs and looks at a few characters either side, instead of running one alternation at every
    position (4x faster)."""
    out = []
    for match in (_ASCII_DIGITS if text.isascii() else _DIGITS).finditer(text):
        start = match.start()
        if start and (text[start - 1].isalnum() or text[start - 1] == "_"):
            continue  # inside a word or a longer token ("B2", "COVID19")
        end = start + len(match.group(0).rstrip(",."))  # "is 730." ends at the 0
        following = text[end:end + 1]
        if following in ".)" and (start == 0 or text[start - 1] == "\n"):
            continue  # a list item's number
        if not (following.isalpha() or following in _UNIT_STARTS) or \
                following == " " and not text[end + 1:end + 9].lower().startswith(_UNIT_WORDS):
            # no unit: most numbers (list items, years, counts)
            money = start and (text[start - 1] in _CURRENCY_SYMBOLS or text[start - 1] == " " and
                               text[start - 2:start - 1].isupper()) and \
                _CURRENCY_BEFORE.search(text, max(0, start - 5), start)
            if (money or bare) and (number := _number_value(text[start:end])) is not None:
                out.append((money.start(), end, "money", _shown(number)) if money else
                           (start, end, "score", _shown(number)))
            continue
        number = _number_value(text[start:end])
        if number is None:
            continue
        after = end
        if (span := _RANGE_AFTER.match(text, end)) is not None:
            after = span.end()
        unit = _UNIT_AFTER.match(text, after)
        if unit.group("currency") is None and unit.group("times") is not None and after != end:
            unit = _UNIT_AFTER.match(text, end)  # "£9,000-12,000" reads each half with its own unit
        stop = unit.end() if unit.end() > after else end
        if unit.group("hours"):
            out.append((start, stop, "hours", _shown(number)))
        elif unit.group("percent"):
            out.append((start, stop, "percent", _shown(number)))
        elif unit.group("years") or unit.group("months"):
            out.append((start, stop, "duration", f"{_shown(number * (12 if unit.group('years') else 1))} months"))
        elif unit.group("weeks"):
            out.append((start, stop, "duration", f"{_shown(number)} weeks"))
        elif unit.group("points"):
            out.append((start, stop, "score", _shown(number)))
        elif (money := _CURRENCY_BEFORE.search(text, max(0, start - 5), start)) or unit.group("currency"):
            times = (unit.group("times") or "").strip().lower()
            number *= {"k": 1000, "thousand": 1000, "m": 1_000_000, "million": 1_000_000}.get(times, 1)
            out.append((money.start() if money else start, stop, "money", _shown(number)))
        elif following.isalpha():
            continue  # "10th", "3rd"
        elif bare:
            out.append((start, end, "score", _shown(number)))
    for unit, months in (("year", 12), ("month", 1), ("week", 0)) if in_words else ():
        at = text.find(unit)  # str.find, then a look at the word before: a regex over the text costs 5x more
        while at > 0:
            if text[at - 1] in " -" and (word := _LAST_WORD.search(text, max(0, at - 8), at - 1)) and \
                    (number := _WORD_NUMBERS.get(word.group(0).lower())) and (unit_end := _WORD_END.match(text, at)):
                value = f"{number * months} months" if months else f"{number} weeks"
                out.append((word.start(), unit_end.end(), "duration", value))
            at = text.find(unit, at + 1)
    return out


def _number_value(digits: str) -> float | None:
    try:
        return float(digits.replace(",", ""))
    except ValueError:
        return None  # "1.2.3"


def _shown(number: float) -> str:
    return str(int(number)) if number == int(number) else f"{number:g}"


def _attribute_near(text: str, sentence: tuple[int, int], start: int, end: int, kind: str) -> bool:
    """Whether a word for the attribute `kind` measures occurs near the figure at start..end, in its sentence."""
    before, after = ATTRIBUTE_WINDOW.get(kind, (60, 60))
    if kind == "duration" and _LEAD_TIME_AFTER.match(text, end):
        return False  # "apply 6-8 weeks before the term" is a lead time, not how long a visa lasts
    if kind == "score":
        if _GPA_BEFORE.search(text, max(sentence[0], start - 20), start):
            return False  # "a GPA of 3.7" is the student's grade, not a test score
        cues = list(_ATTRIBUTE[kind].finditer(text, max(sentence[0], start - 60), start))
        if cues and not any(c.isdigit() for c in text[cues[-1].end():start]):
            return True
    return _ATTRIBUTE[kind].search(text, max(sentence[0], start - before), min(sentence[1], end + after)) is not None


_PROGRAMME_CACHE: dict[tuple[str, str], re.Pattern] = {}
DEGREE_WORDS = {
    "medicine": r"(?:bachelor of medicine|mbbs|mbchb|bm bch|undergraduate medicine|medical degree|md)",
    "bachelor": r"(?:bachelor(?:'s)?|undergraduate|bsc|b\.sc\.?|ba|b\.a\.?|beng|bs)",
    "master": r"(?:master(?:'s)?|msc|m\.sc\.?|ma|meng|ms|mphil|mres|m\.s\.?)",
    "mba": r"(?:mba|master of business administration|business school)",
    "law": r"(?:llb|jd|juris doctor|law degree|bachelor of laws|llm|law school|school of law|faculty of law)",
    "phd": r"(?:phd|ph\.d\.?|doctorate|doctoral)",
}


def _programme_pattern(degree: str, field: str) -> re.Pattern:
    """A regex for a degree family plus field, e.g. MBBS Medicine -> 'bachelor of medicine|mbbs ...'."""
    key = (degree, field)
    if key not in _PROGRAMME_CACHE:
        d, f = degree.lower().replace(".", ""), field.lower()
        if f == "medicine" or d in ("mbbs", "mbchb", "bm bch", "md"):
            family = DEGREE_WORDS["medicine"]
            field_part = r"(?:medicine|medical|mbbs|mbchb|md)?"
        else:
            family = next((v for k, v in DEGREE_WORDS.items() if k in d or re.fullmatch(v, d)), re.escape(d))
            # "an MBA", "a JD", "law school" name the programme without its field
            field_part = "" if family in (DEGREE_WORDS["mba"], DEGREE_WORDS["law"]) else re.escape(f)
        _PROGRAMME_CACHE[key] = re.compile(rf"\b{family}\b[^.?!\n]{{0,40}}{field_part}", re.IGNORECASE)
    return _PROGRAMME_CACHE[key]


def audit_file(path: str | Path, kb_path: str | Path | None = SHIPPED_KB, settings: AuditSettings = AuditSettings(),
               out_dir: str | Path | None = None, *, against: str | Path | None = None, judge=None) -> AuditReport:
    """Audit a dataset file (any schema `trainer.data` reads) against the KB at `kb_path` (None: without a KB, which
    the report says); with `against`, list its rows also found in that file; write `audit.jsonl`, `audit.md` and
    `summary.json` to `out_dir`. A KB folder that does not exist is an error, never a silent skip."""
    from trainer.config import DatasetSettings
    from trainer.data import load_conversations

    kb = None
    if kb_path is not None:
        from trainer.kb_loader import load_kb

        kb = load_kb(kb_path)
    conversations, data_report = load_conversations(DatasetSettings(path=str(path), max_bad_fraction=1.0,
                                                                    eval_fraction=0))
    report = Auditor(kb, settings, judge).audit([list(c.messages) for c in conversations],
                                                [c.location for c in conversations])
    report.ingestion = data_report
    if against is not None:
        from trainer.contamination import rows_also_in

        report.against = rows_also_in(conversations, against)
    if out_dir is not None:
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "audit.jsonl", "w", encoding="utf-8") as fh:
                for conv, row in zip(conversations, report.rows):
                    fh.write(json.dumps({"source": conv.location, **row.to_dict()}, ensure_ascii=False) + "\n")
            (out / "audit.md").write_text(report.markdown(str(path)), encoding="utf-8")
            (out / "summary.json").write_text(json.dumps(report.summary(), indent=2, ensure_ascii=False) + "\n",
                                              encoding="utf-8")
        except OSError as exc:
            raise AuditError(f"{out}: cannot write the audit report there ({exc.strerror or exc})") from None
    return report


def split_by_audit(rows: Iterable[Any], report: AuditReport) -> tuple[list[Any], list[Any]]:
    """(passed, failed) in input order."""
    passed, failed = [], []
    for row, audit in zip(rows, report.rows):
        (failed if audit.failed else passed).append(row)
    return passed, failed
