"""The domain rubric: questions with deterministic rules (must mention, must not claim, a false premise's
correction), their loading and scoring, and what counts as markdown. The file is read through `trainer.typed_yaml`,
so a mistake fails like one in any settings file: `<file>: questions[<index>] (<id>).<key>: <rule>`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from trainer import REPO_ROOT
from trainer.data.settings import TOPICS
from trainer.eval import EvalError
from trainer.typed_yaml import check_keys, convert, item_where, read_yaml

DEFAULT_QUESTIONS = REPO_ROOT / "data" / "eval" / "questions.yaml"
RUBRIC_TOPICS = tuple(t for t in TOPICS if t != "other")

PASS_THRESHOLD = 0.5
"""A rubric question passes when its score (share of points satisfied, zero on a listed error) is at least this."""

MARKDOWN_RULE = ("an answer counts as markdown-formatted when it has at least one ATX heading line (`#` to `######` "
                 "then text) or at least two list-item lines (`-`, `*`, `+` or `1.` / `1)` then text)")
_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+\S", re.MULTILINE)
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d{1,3}[.)])[ \t]+\S", re.MULTILINE)
_REQUIRED_KEYS = ("id", "topic", "question", "false_premise", "must_mention", "source")
_OPTIONAL_KEYS = ("must_not_claim", "correction", "kb", "notes")
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,79}$")

# The rubric

@dataclass(frozen=True)
class Claim:
    """A false claim: fires when `pattern` matches the answer and `unless` (a correcting cue) does not."""

    pattern: re.Pattern
    unless: re.Pattern | None = None

    def fires(self, text: str) -> bool:
        return bool(self.pattern.search(text)) and not (self.unless is not None and self.unless.search(text))


@dataclass(frozen=True)
class Question:
    """One rubric question with the deterministic rules that score an answer to it."""

    id: str
    topic: str
    question: str
    false_premise: bool
    must_mention: tuple[tuple[re.Pattern, ...], ...]
    """Points the answer must make; each point is a tuple of alternatives (any one satisfies it)."""
    must_not_claim: tuple[Claim, ...]
    correction: tuple[re.Pattern, ...]
    """False-premise questions: cues that the answer corrects the premise (any one counts)."""
    source: str
    kb: tuple[str, ...] = ()
    """Knowledge-base entries (data/kb ids or country codes) the rules were drawn from."""

    def points(self) -> tuple[tuple[re.Pattern, ...], ...]:
        """What the score counts: the correction (for a false premise) and then every must_mention point."""
        return ((self.correction,) if self.false_premise else ()) + self.must_mention


@dataclass(frozen=True)
class QuestionScore:
    id: str
    score: float
    passed: bool
    points: tuple[bool, ...]
    claims: tuple[str, ...]
    """Patterns of the false claims that fired."""
    corrected: bool | None
    """False-premise questions: a correction cue is present and no listed error fired; None otherwise."""


def _normalise(text: str) -> str:
    """Typographic quotes and dashes as ASCII, so `doesn't` matches `doesn’t`."""
    return (text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
            .replace("\u00a0", " ").translate({c: "-" for c in range(0x2010, 0x2015)}))


def score_answer(question: Question, answer: str) -> QuestionScore:
    """Score one answer: share of points satisfied (each point: any alternative matches, case-insensitive),
    zero when any must_not_claim fires; passes at >= PASS_THRESHOLD."""
    text = _normalise(answer)
    points = tuple(any(p.search(text) for p in alternatives) for alternatives in question.points())
    claims = tuple(c.pattern.pattern for c in question.must_not_claim if c.fires(text))
    score = 0.0 if claims or not points else sum(points) / len(points)
    corrected = None
    if question.false_premise:
        corrected = any(p.search(text) for p in question.correction) and not claims
    return QuestionScore(question.id, round(score, 4), score >= PASS_THRESHOLD, points, claims, corrected)


def _compile(pattern: Any, where: str) -> re.Pattern:
    if not isinstance(pattern, str) or not pattern.strip():
        raise EvalError(f"{where}: expected a non-empty regex string, got {pattern!r}")
    try:
        compiled = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise EvalError(f"{where}: regex {pattern!r} does not compile: {exc}") from None
    if compiled.search(""):
        raise EvalError(f"{where}: regex {pattern!r} matches the empty string, so it would always be satisfied")
    return compiled


def _alternatives(value: Any, where: str) -> tuple[re.Pattern, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise EvalError(f"{where}: expected at least one pattern")
    return tuple(_compile(p, f"{where}[{i}]" if isinstance(value, list) else where) for i, p in enumerate(items))


def _text(value: Any, where: str) -> str:
    text = convert(value, str, where, EvalError).strip()
    if not text:
        raise EvalError(f"{where}: must be non-empty text")
    return text


def _parse(raw: Any, where: str) -> Question:
    check_keys(raw, where, required=_REQUIRED_KEYS, optional=_OPTIONAL_KEYS, error=EvalError)
    qid = _text(raw["id"], f"{where}.id")
    if not _ID.match(qid):
        raise EvalError(f"{where}.id: must be 1-80 lowercase letters, digits, - _ . (got {qid!r})")
    topic = _text(raw["topic"], f"{where}.topic")
    if topic not in RUBRIC_TOPICS:
        raise EvalError(f"{where}.topic: {topic!r} is not one of {', '.join(RUBRIC_TOPICS)}")
    question = _text(raw["question"], f"{where}.question")
    false_premise = convert(raw["false_premise"], bool, f"{where}.false_premise", EvalError)
    kb = convert(raw.get("kb") or (), tuple[str, ...], f"{where}.kb", EvalError)
    if not all(kb):
        raise EvalError(f"{where}.kb: expected a list of knowledge-base ids (data/kb)")
    source = raw["source"]
    if not isinstance(source, str) or not re.match(r"^https?://[^\s/]+\.[^\s]+$", source):
        raise EvalError(f"{where}.source: must be an http(s) URL of the official page, got {source!r}")
    mentions = raw["must_mention"]
    if not isinstance(mentions, list) or not mentions:
        raise EvalError(f"{where}.must_mention: expected a non-empty list of points, got {mentions!r}")
    points = tuple(_alternatives(p, f"{where}.must_mention[{i}]") for i, p in enumerate(mentions))
    claims_raw = raw.get("must_not_claim") or []
    if not isinstance(claims_raw, list):
        raise EvalError(f"{where}.must_not_claim: expected a list, got {claims_raw!r}")
    claims = []
    for i, c in enumerate(claims_raw):
        cw = f"{where}.must_not_claim[{i}]"
        if isinstance(c, str):
            claims.append(Claim(_compile(c, cw)))
            continue
        if not isinstance(c, dict):
            raise EvalError(f"{cw}: expected a regex or a mapping with `claim` and optional `unless`, got {c!r}")
        check_keys(c, cw, required=("claim",), optional=("unless",), error=EvalError)
        claims.append(Claim(_compile(c["claim"], f"{cw}.claim"),
                            _compile(c["unless"], f"{cw}.unless") if c.get("unless") is not None else None))
    question_text = _normalise(question)
    for i, alternatives in enumerate(points):
        if any(p.search(question_text) for p in alternatives):
            raise EvalError(f"{where}.must_mention[{i}]: the question itself satisfies this point, so it cannot "
                            "tell an answer from an echo of the question")
    correction_raw = raw.get("correction")
    if false_premise:
        if not correction_raw:
            raise EvalError(f"{where}.correction: a false-premise question needs correction patterns")
        correction = _alternatives(correction_raw, f"{where}.correction")
        if any(p.search(question_text) for p in correction):
            raise EvalError(f"{where}.correction: the question itself matches a correction cue, so it cannot tell "
                            "a correction from an echo of the question")
        if not claims:
            raise EvalError(f"{where}.must_not_claim: a false-premise question must list the false claim")
    else:
        if correction_raw:
            raise EvalError(f"{where}.correction: only false-premise questions take correction patterns")
        correction = ()
    return Question(qid, topic, question, false_premise, points, tuple(claims), correction, source, kb)


def parse_question(raw: Any, path: str | Path, index: int) -> Question:
    """One question from YAML (item `index` of the `questions:` list in `path`); raises EvalError in the shape of
    every settings error: `<path>: questions[<index>] (<id>).<key>: <rule>`."""
    try:
        return _parse(raw, item_where("questions", index, raw, key="id"))
    except EvalError as exc:
        raise EvalError(f"{path}: {exc}") from None


def load_questions(path: str | Path) -> list[Question]:
    """Read and validate a rubric file (a `questions:` list, or a bare list). Every error names the file, the
    question and the rule."""
    path = Path(path)
    raw = read_yaml(path, what="questions file", error=EvalError, mapping=False)
    if isinstance(raw, dict):
        try:
            check_keys(raw, "", required=("questions",), error=EvalError)
        except EvalError as exc:
            raise EvalError(f"{path}: {exc}") from None
        raw = raw["questions"]
    if not isinstance(raw, list) or not raw:
        raise EvalError(f"{path}: questions: expected a non-empty list of questions, got {raw!r}")
    questions: list[Question] = []
    first: dict[str, int] = {}
    for i, item in enumerate(raw):
        question = parse_question(item, path, i)
        if question.id in first:
            raise EvalError(f"{path}: {item_where('questions', i, item, key='id')}.id: {question.id!r} is used "
                            f"twice (first at questions[{first[question.id]}])")
        first[question.id] = i
        questions.append(question)
    return questions


def select_questions(questions: Sequence[Question], limit: int | None) -> list[Question]:
    """At most `limit` questions, alternating false-premise and ordinary ones (in file order) so a quick check
    still measures both rates."""
    if limit is None or limit >= len(questions):
        return list(questions)
    fp = [q for q in questions if q.false_premise]
    other = [q for q in questions if not q.false_premise]
    out: list[Question] = []
    while len(out) < limit and (fp or other):
        for pool in (fp, other):
            if pool and len(out) < limit:
                out.append(pool.pop(0))
    return out


def is_markdown(answer: str) -> bool:
    """See MARKDOWN_RULE: a heading, or at least two list items."""
    return bool(_HEADING.search(answer)) or len(_LIST_ITEM.findall(answer)) >= 2

