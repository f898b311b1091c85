"""The premise check: claims in a visitor's question that the knowledge base contradicts, and whether an answer
carries the correction.

A question built on a false claim ("Health insurance is optional in Germany, right?", "Do I need an I-20 for
Germany?", "Since Stanford is in the Ivy League ...") invites a confident "yes". `PremiseChecker.check` finds such
claims before, and independently of, the model:

- `rule`: a KB rule's false claim worded in the question (the same `Rule.in_sentence` as the audit), universal
  claims included ("every UK university requires IELTS");
- every relation kind `data/kb/relations.yaml` declares (membership, documents, visa prerequisites, application
  systems, programmes, entry routes, admission tests, an award's host, university, level and nationality, work
  limits, post-study work lengths, test scales and validity, tuition, a university's country): the question's
  entities are linked once (`trainer.kb.mentions.Question`) and each relation's check reads the claim between them
  (`trainer.kb.relations`: the generic `pair` check, or a function registered for a kind that needs a computation
  in `trainer.kb.relation_checks`).

`PremiseChecker.check_answer` then asks whether an answer carries each correction: one that opens by agreeing
("Yes! ...") or restates the claim is `premise_affirmed`; one that never corrects it is `premise_ignored`. An
answer corrects by denying the claim next to one of its subjects or by stating the KB's fact in its own terms
(`Correction.evidence`). The app (which shows the correction above the answer before it streams), its live check,
`trainer check` and the eval use this same code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


from trainer import UserError
from trainer.kb.mentions import names_of, sentences, spans
from trainer.kb.relations import Correction, digits, evidence, terms_of

AFFIRMED, IGNORED = "premise_affirmed", "premise_ignored"
__all__ = ["AFFIRMED", "IGNORED", "Correction", "PremiseChecker", "answer_verdict"]

# An answer's opening that agrees, or one that corrects.
_AFFIRM_OPENING = re.compile(
    r"^\W*(?:yes|yeah|yep|yup|correct|right|exactly|absolutely|sure|certainly|definitely|indeed|of course|true|"
    r"that'?s (?:right|correct|true)|you(?:'re| are) (?:right|correct)|great(?: question)?[,!.]?\s*yes|good news)\b",
    re.IGNORECASE)
_CORRECT_OPENING = re.compile(
    r"^\W*(?:no\b(?!\s+(?:need|problem|worries|doubt)\b)|nope\b|not (?:quite|exactly|really|necessarily)|actually\b|unfortunately\b|in fact\b|that'?s not|"
    r"this is not|that is not|it'?s not|it is not|that'?s a (?:common )?(?:misconception|myth|mistake)|"
    r"a (?:common )?(?:misconception|myth)|careful|i'?m afraid|sorry)", re.IGNORECASE)
_CORRECTING = re.compile(
    r"\b(?:not|no|never|cannot|isn't|aren't|doesn't|don't|didn't|won't|wasn't|neither|nor|none|no longer|"
    r"misconception|myth|mistaken|incorrect|wrong|instead of|rather than|unlike|excluded|ineligible)\b|n't\b|"
    r"\bonly\b(?!\s+(?:charges?|costs?|has to|have to|needs? to|pays?|asks?)\b)", re.IGNORECASE)
"""Words that deny or restrict what they stand next to. "But" and "actually" are not among them, nor "only" before
what it costs ("TUM only charges the semester fee"): agreeing answers use them as much. A correction without such a
word states the fact instead (`Correction.evidence`)."""


def _terms(sentence: str) -> set[str]:
    """The sentence's evidence-like terms (`terms_of`), number words as digits ("five years" states "5 year")."""
    return terms_of(digits(sentence))


def _sentences(text: str) -> list[str]:
    return [sentence.text for sentence in sentences(text)]


class PremiseChecker:
    """Build once per KB (`PremiseChecker(kb)`); `check` a question or conversation, `check_answer` an answer."""

    def __init__(self, kb):
        from trainer.kb import relation_checks  # noqa: F401  (registers the checks relations.yaml names)
        from trainer.kb.relations import CHECKS, check_pair

        self.kb = kb
        self._checks = [(r, check_pair if r.spec.check == "pair" else CHECKS[r.spec.check].function)
                        for r in kb.relations]
        self._recent: dict[str, list[Correction]] = {}

    # The question

    def check(self, conversation: str | Sequence[dict[str, str]]) -> list[Correction]:
        """The corrections the visitor's turns call for, latest turn first, without repeats. A string is one
        question."""
        if isinstance(conversation, str):
            turns = [(None, conversation)]
        else:
            turns = [(i, m.get("content")) for i, m in enumerate(conversation)
                     if m.get("role") == "user" and isinstance(m.get("content"), str)]
        out: dict[str, Correction] = {}
        for index, text in reversed(turns):
            for c in self._question(text or ""):
                if c.key not in out:
                    out[c.key] = Correction(**{**asdict(c), "message": index}) if index is not None else c
        return list(out.values())

    def every_correction(self, question: str) -> list[Correction]:
        """Every correction each rule and relation finds in one question, before `check` keeps one per premise (what
        the KB's own examples are checked against)."""
        return self._question(question)

    def _question(self, text: str) -> list[Correction]:
        """The KB rules the question words, then every relation's check (relations.yaml) on its linked mentions;
        remembered for the last few questions (the live check asks again about the question it was shown)."""
        if text in self._recent:
            return self._recent[text]
        found = self._find(text)
        if len(self._recent) >= 256:
            try:
                self._recent.pop(next(iter(self._recent)), None)  # oldest first
            except (StopIteration, RuntimeError):  # another thread got there first
                pass
        self._recent[text] = found
        return found

    def _find(self, text: str) -> list[Correction]:
        from trainer.kb.mentions import Question

        kb = self.kb
        found: list[Correction] = []
        codes = {c.code for c in kb.find_destinations(text)}
        for rule in kb.rules_in(text):
            if rule.country and rule.country not in codes:
                continue
            if any(rule.in_sentence(s) for s in _sentences(text)):
                subjects = self._rule_subjects(rule)
                found.append(Correction("rule", rule.id, rule.claim, rule.fact, rule.source, rule.as_of, subjects,
                                        evidence=evidence(kb, rule.claim, rule.fact, subjects)))
        question = Question(kb, text)
        for relation, check in self._checks:
            found += check(relation, question, kb)
        return found

    def _rule_subjects(self, rule) -> tuple[tuple[str, ...], ...]:
        """What an answer about the rule's claim names: one of the rule's keywords, and its country."""
        subjects: tuple[tuple[str, ...], ...] = (tuple(rule.keywords),)
        if rule.country:
            subjects += (names_of(self.kb.country(rule.country)),)
        return subjects

    # The answer

    def check_answer(self, corrections: Sequence[Correction], answer: str, message: int | None = None) -> list[Any]:
        """Audit flags (`trainer.kb.claims.Flag`, severity fail) for the corrections `answer` does not carry: it opens
        by
        agreeing or restates the claim (`premise_affirmed`), or never corrects it (`premise_ignored`)."""
        from trainer.kb.claims import FAIL, Flag

        flags = []
        for c in corrections:
            verdict = answer_verdict(c, answer)
            if verdict != "corrected":
                rule = AFFIRMED if verdict in ("affirmed", "restated") else IGNORED
                how = {"affirmed": "the answer agrees with", "restated": "the answer repeats",
                       "ignored": "the answer does not correct"}[verdict]
                flags.append(Flag(rule, FAIL, f"{how} the question's false premise “{c.claim}” (knowledge base: "
                                              f"{c.fact})", message, c.source))
        return flags


def distinct(corrections: Sequence[Correction]) -> list[Correction]:
    """The corrections to show, one per premise: a claim worded twice (two tuition rules refuting "free for
    everyone") once, and a relation's correction left out where a KB rule already corrects the same premise from the
    same source (the rule's wording is the curated one). The answer check keeps them all: an answer must carry
    each."""
    rule_sources = {c.source for c in corrections if c.kind == "rule"}
    out, claims = [], set()
    for c in corrections:
        if c.claim in claims or (c.kind != "rule" and c.source in rule_sources):
            continue
        claims.add(c.claim)
        out.append(c)
    return out


def answer_verdict(correction: Correction, answer: str) -> str:
    """`corrected`, `affirmed` (opens by agreeing), `restated` (a sentence names every subject of the claim without
    correcting it) or `ignored`. A sentence corrects when it names a subject of the claim and either words a
    correction ("not", "only", "however") or states the KB's fact in its own terms: a number or a name the fact has
    and the claim lacks ("up to 48 hours per fortnight", "Studyinfo.fi")."""
    sentences = _sentences(answer.strip())
    if not sentences:
        return "ignored"
    first = sentences[0]
    if _AFFIRM_OPENING.search(first) and not _CORRECTING.search(first):
        return "affirmed"
    if _CORRECT_OPENING.search(first):
        return "corrected"
    terms = set(correction.evidence)
    restated = False
    for sentence in sentences:
        named = [bool(spans(sentence, names)) for names in correction.subjects]
        if any(named) and (_CORRECTING.search(sentence) or terms & _terms(sentence)):
            return "corrected"
        if named and all(named):
            restated = True
    return "restated" if restated else "ignored"


# `trainer check FILE`: the same checks on another system's questions and answers

@dataclass
class CheckedRow:
    """One row of a checked file: where it is, the premise corrections its question calls for, and the flags its
    answer (when given) gets from the live check (premise and KB rules)."""

    where: str
    question: str
    answer: str | None
    corrections: list[Correction]
    flags: list[Any]

    def to_dict(self) -> dict[str, Any]:
        return {"where": self.where, "question": self.question, "answer": self.answer,
                "corrections": [c.to_dict() for c in self.corrections],
                "flags": [{"rule": f.rule, "severity": f.severity, "detail": f.detail, "source": f.source}
                          for f in self.flags]}


def read_questions(path) -> list[tuple[str, str, str | None]]:
    """`(file:line, question, answer or None)` for each row of a CSV (header `question`, optional `answer`) or JSONL
    (objects with `question`, optional `answer`) file. A row without a question, or a file that is neither, is a
    `CheckError` naming the file, the row and the rule; blank lines are skipped."""
    import csv
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise CheckError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json"):
        raise CheckError(f"{path}: unsupported file type {suffix or '(none)'}: give a .csv or .jsonl file of "
                         "`question` (and optional `answer`) rows")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CheckError(f"{path}: wrong encoding: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    rows: list[tuple[str, str, str | None]] = []

    def add(where: str, question: Any, answer: Any) -> None:
        if not isinstance(question, str) or not question.strip():
            raise CheckError(f"{where}: missing field: no `question` text")
        if answer is not None and not isinstance(answer, str):
            raise CheckError(f"{where}: non-string content: `answer` must be text")
        rows.append((where, question.strip(), answer.strip() if answer and answer.strip() else None))

    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "question" not in [f.strip().lower() for f in reader.fieldnames]:
            raise CheckError(f"{path}:1: missing field: the header has no `question` column "
                             f"(found: {', '.join(reader.fieldnames or []) or 'nothing'})")
        for row in reader:
            row = {(k or "").strip().lower(): v for k, v in row.items()}
            where = f"{path}:{reader.line_num}"
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue
            add(where, row.get("question"), row.get("answer"))
        return rows
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CheckError(f"{where}: invalid JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise CheckError(f"{where}: not an object: each line must be {{\"question\": ..., \"answer\": ...}}")
        add(where, obj.get("question"), obj.get("answer"))
    return rows


class CheckError(UserError, ValueError):
    """A file `trainer check` cannot read; the message names the file, the row and the rule."""


def check_rows(rows: Sequence[tuple[str, str, str | None]], auditor) -> list[CheckedRow]:
    """Each row's premise corrections, and its answer's live-check flags (`Auditor.check_answer`: the premise
    check and the KB rules), as the app checks an answer."""
    out = []
    for where, question, answer in rows:
        corrections = auditor.premise_corrections([{"role": "user", "content": question}])
        flags = auditor.check_answer([{"role": "user", "content": question},
                                      {"role": "assistant", "content": answer}]) if answer else []
        out.append(CheckedRow(where, question, answer, corrections, flags))
    return out


def check_table(checked: Sequence[CheckedRow]) -> str:
    """A markdown table, one line per row that has a correction or a flag, then the summary line."""
    lines = ["| row | question | false premise: what the KB says (source) | answer flags |", "|---|---|---|---|"]

    def cell(text: str, limit: int = 160) -> str:
        text = " ".join(text.split()).replace("|", "\\|")
        return text if len(text) <= limit else text[: limit - 1] + "…"

    for row in checked:
        if not row.corrections and not row.flags:
            continue
        corrections = "<br>".join(cell(f"{c.claim} → {c.fact}", 240) + f" ({c.source}, as of {c.as_of})"
                                  for c in distinct(row.corrections)) or "—"
        flags = "<br>".join(cell(f"{f.rule}: {f.detail}") for f in row.flags) or ("—" if row.answer else "no answer")
        lines.append(f"| {row.where} | {cell(row.question, 100)} | {corrections} | {flags} |")
    return "\n".join(lines) + "\n\n" + check_summary(checked)


def check_summary(checked: Sequence[CheckedRow]) -> str:
    answered = [r for r in checked if r.answer]
    premised = [r for r in checked if r.corrections]
    uncorrected = [r for r in answered if any(f.rule in (AFFIRMED, IGNORED) for f in r.flags)]
    flagged = [r for r in answered if r.flags]
    return (f"{len(checked)} rows: {len(premised)} with a false premise the KB corrects; {len(answered)} answered, "
            f"{len(flagged)} answers flagged ({len(uncorrected)} leave a false premise uncorrected)")
