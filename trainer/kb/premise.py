"""The premise check: claims in a visitor's question that the knowledge base contradicts, and whether an answer
carries the correction.

A question built on a false claim ("Health insurance is optional in Germany, right?", "Do I need an I-20 for
Germany?", "Since Stanford is in the Ivy League ...") invites a confident "yes". `PremiseChecker.check` finds such
claims before, and independently of, the model, from the KB's structured relations rather than from hand-written
phrasings alone:

- `rule`: a KB rule's false claim worded in the question (the same `Rule.in_sentence` as the audit);
- `document`: a document, visa or scheme only one destination uses (its `markers`: I-20, CAS, OSHC, PGWP) asked
  about for another destination the question names;
- `membership`: a country or university placed in a set (`groups`: Schengen, EU, EEA, Commonwealth, Ivy League,
  Russell Group, Group of Eight) it is not in;
- `programme`: a programme a named university does not offer (`not_offered`);
- `degree_entry`: undergraduate entry to a field that the country enters only after a first degree (medicine
  and law in the US), and `admission_test`: a field's test another country uses (`degree_structures`);
- `scholarship_host`, `scholarship_university`, `scholarship_level`, `scholarship_nationality`: an award asked
  about for another destination, another university, a level it does not fund, or a nationality it excludes.

`PremiseChecker.check_answer` then asks whether an answer carries each correction: one that opens by agreeing
("Yes! ...") or restates the claim is `premise_affirmed`; one that never corrects it is `premise_ignored`. The
app's live check, `trainer check` and the eval use this same code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


AFFIRMED, IGNORED = "premise_affirmed", "premise_ignored"

# Where a claim is only compared, listed as an alternative or negated, the question asserts nothing.
_COMPARISON = re.compile(r"\b(?:than|versus|vs\.?|compared?|comparison|compare|difference|differ|instead of|"
                         r"rather than|or (?:the|a|an|in)\b|other than|unlike|transfer(?:ring)? from|switch(?:ing)? "
                         r"from)\b", re.IGNORECASE)
_NEGATED_CLAIM = re.compile(r"\b(?:not|isn't|aren't|doesn't|don't|never|no longer|left|outside|non)\b|n't\b",
                            re.IGNORECASE)
_NON_PREFIX = re.compile(r"(?:\bnon[\s-]?|\boutside (?:the |of the )?|\bleft (?:the )?)$", re.IGNORECASE)

# Undergraduate entry to a field: straight after school, as a first degree.
_UNDERGRAD_ENTRY = re.compile(
    r"\b(?:after|from|straight out of|right out of|out of|finishing|finish|leaving|completing|complete)\s+(?:my\s+|"
    r"high\s+|secondary\s+)?(?:high school|secondary school|school|12th(?: grade)?|class 12|grade 12|a[\s-]?levels?|"
    r"the ib|ib diploma|year 12|matric(?:ulation)?)\b|\bundergraduate\b|\bunder-graduate\b|\bbachelor'?s?\b|"
    r"\bbachelor of (?:medicine|laws)\b|\bmbbs\b|\bmbchb\b|\bllb\b|\bfirst degree\b|\bfreshman\b|\bstraight from "
    r"school\b|\bschool leavers?\b|\bfrom year one\b|\bas a first-year\b", re.IGNORECASE)
_GRADUATE_ROUTE = re.compile(r"\bpre[\s-]?(?:med|medical|law)\b|\b(?:after|have|hold|holding|with|completed|"
                             r"completing|finished|finishing|got|earned|graduated with) (?:my |a |an |the )?"
                             r"(?:\w+ )?(?:bachelor|undergrad|first degree|degree)|\bgraduate[\s-]entry\b|"
                             r"\bthen (?:apply|do|go)\b|\bpost[\s-]?bacc", re.IGNORECASE)
_FIELD_WORDS = {
    "medicine": re.compile(r"\b(?:medicine|medical (?:degree|school|programme|program|course|studies)|med school|"
                           r"mbbs|mbchb|study to become a doctor|become a doctor|doctor of medicine|\bmd\b)",
                           re.IGNORECASE),
    "law": re.compile(r"\b(?:law|llb|juris doctor|law school|legal studies|become a lawyer|\bjd\b)\b", re.IGNORECASE),
}
# Level words a question uses for the studies an award should fund; "after my bachelor's", "I have a master's" name
# the level the student already holds, not the one to be funded.
_LEVELS = {
    "bachelor": r"undergraduate|under-graduate|bachelor'?s?|bsc|b\.sc|first degree",
    "master": r"master'?s?|msc|m\.sc|mba|postgraduate taught|llm|mphil",
    "phd": r"phd|ph\.d|doctorate|doctoral|dphil",
}
_LEVEL = re.compile("|".join(rf"(?P<{k}>\b(?:{v})\b)" for k, v in _LEVELS.items()), re.IGNORECASE)
_HELD_LEVEL = re.compile(r"(?:after|with|have|hold|holding|completed|finished|finishing|got|earned|done|"
                         r"completing|graduated from|graduating from)\s+(?:my|a|an|the|our|his|her)?\s*"
                         r"(?:\w+\s+)?$", re.IGNORECASE)

# A school a university does not have ("Princeton's medical school") is every programme of its field.
_SCHOOLS = {
    "medicine": re.compile(r"\b(?:medical school|med school|school of medicine|faculty of medicine)\b", re.IGNORECASE),
    "law": re.compile(r"\b(?:law school|school of law|faculty of law)\b", re.IGNORECASE),
    "business administration": re.compile(r"\b(?:business school|school of business)\b", re.IGNORECASE),
}

# Work during term beyond the limit: unlimited, full-time, any job, or a weekly figure (checked against the limit).
_WORK = re.compile(r"\b(?:work|working|job|jobs|employment|employed)\b", re.IGNORECASE)
_UNLIMITED_WORK = re.compile(
    r"\bunlimited\b|\bno (?:limit|cap|restriction)s?\b|\bas (?:many|much) (?:hours )?as (?:i|we|you|they) "
    r"(?:want|like|wish|please|can)\b|\bany number of hours\b|\bfull[\s-]?time\b|\bany (?:off[\s-]campus )?job\b|"
    r"\bwithout (?:any )?(?:limit|restriction|cap)s?\b", re.IGNORECASE)
_WEEKLY_HOURS = re.compile(r"\b(\d{2})\s*(?:hours?|hrs?|h)\s*(?:a|per|each|every|/)\s*(week|fortnight)\b",
                           re.IGNORECASE)
_BREAK = re.compile(r"\b(?:summer|winter|break|breaks|holidays?|vacations?|june|july|august)\b", re.IGNORECASE)

# An answer's opening that agrees, or one that corrects.
_AFFIRM_OPENING = re.compile(
    r"^\W*(?:yes|yeah|yep|yup|correct|right|exactly|absolutely|sure|certainly|definitely|indeed|of course|true|"
    r"that'?s (?:right|correct|true)|you(?:'re| are) (?:right|correct)|great(?: question)?[,!.]?\s*yes|good news)\b",
    re.IGNORECASE)
_CORRECT_OPENING = re.compile(
    r"^\W*(?:no\b|nope\b|not (?:quite|exactly|really|necessarily)|actually\b|unfortunately\b|in fact\b|that'?s not|"
    r"this is not|that is not|it'?s not|it is not|that'?s a (?:common )?(?:misconception|myth|mistake)|"
    r"a (?:common )?(?:misconception|myth)|careful|i'?m afraid|sorry)", re.IGNORECASE)
_CORRECTING = re.compile(
    r"\b(?:not|no|never|cannot|isn't|aren't|doesn't|don't|didn't|won't|wasn't|neither|nor|none|no longer|only|"
    r"instead|rather than|misconception|myth|mistaken|incorrect|wrong|however|but|unlike|rather|actually)\b|n't\b",
    re.IGNORECASE)


@dataclass(frozen=True)
class Correction:
    """A claim in the question that the KB contradicts, and the KB fact that corrects it."""

    kind: str
    """rule, document, membership, programme, degree_entry, admission_test, scholarship_host,
    scholarship_university, scholarship_level or scholarship_nationality."""
    entry: str
    """The id of the KB entry that holds the correcting fact (a rule, group, degree structure, university,
    scholarship or country)."""
    claim: str
    """The false premise, in words."""
    fact: str
    """What is true instead."""
    source: str
    as_of: str
    subjects: tuple[tuple[str, ...], ...] = ()
    """Names an answer about the claim mentions: one tuple of alternatives per subject (the entity, the set, the
    document). A sentence naming all of them without a correction restates the claim."""
    message: int | None = None
    """Index of the user message that makes the claim (0-based), when checked on a conversation."""

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.entry}:{self.claim}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["subjects"] = [list(s) for s in self.subjects]
        return out


def _names(entity) -> tuple[str, ...]:
    return tuple(n for n in (entity.name, *getattr(entity, "aliases", ())) if n)


def _spans(text: str, names: Sequence[str]) -> list[tuple[int, int]]:
    """Where any of `names` occurs in `text` as whole words (acronyms as written, other names in any case)."""
    out = []
    for name in names:
        flags = 0 if not any(ch.islower() for ch in name) else re.IGNORECASE  # acronyms only as written
        for m in re.finditer(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text, flags):
            out.append(m.span())
    return sorted(out)


_QUESTION_SENTENCE = re.compile(r"(?<=[.!?])(?<!\b[A-Z]\.)(?<!e\.g\.)(?<!i\.e\.)(?<!\bvs\.)(?<!etc\.)\s+|\n+")
"""Sentence ends, but not after an initial or abbreviation ("J.N. Tata", "U.S. Student Program", "e.g.")."""


def _sentences(text: str) -> list[str]:
    return [s for s in _QUESTION_SENTENCE.split(text) if s.strip()]


def _masked(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """`text` with these spans blanked out, so the places inside a name ("Gates Cambridge", "Manaaki New Zealand
    Scholarships") are not read as places the question names."""
    for a, b in spans:
        text = text[:a] + " " * (b - a) + text[b:]
    return text


class PremiseChecker:
    """Build once per KB (`PremiseChecker(kb)`); `check` a question or conversation, `check_answer` an answer."""

    def __init__(self, kb):
        self.kb = kb
        self._structures = {(d.country, d.field): d for d in kb.degree_structures}

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

    def _question(self, text: str) -> list[Correction]:
        kb = self.kb
        found: list[Correction] = []
        destinations = kb.find_destinations(text)
        codes = {c.code for c in destinations}
        for rule in kb.rules_in(text):
            if rule.country and rule.country not in codes:
                continue
            if any(rule.in_sentence(s) for s in _sentences(text)):
                found.append(Correction("rule", rule.id, rule.claim, rule.fact, rule.source, rule.as_of,
                                        self._rule_subjects(rule)))
        for sentence in _sentences(text):
            found += self._documents(sentence)
            found += self._memberships(sentence)
            found += self._scholarships(sentence, text)
        found += self._programmes(text)
        found += self._degrees(text)
        found += self._work(text, destinations)
        return found

    def _work(self, text: str, destinations) -> list[Correction]:
        """More work during term than the destination allows: unlimited, full-time, any job, or more weekly hours."""
        limits = {w.country: w for w in self.kb.work_limits}
        places = [c for c in destinations if c.code in limits]
        if len(places) != 1 or not _WORK.search(text):
            return []
        place, limit = places[0], limits[places[0].code]
        out = []
        for sentence in _sentences(text):
            if not _WORK.search(sentence) or _BREAK.search(sentence) or _COMPARISON.search(sentence):
                continue
            claimed = None
            if (m := _UNLIMITED_WORK.search(sentence)) and not _NEGATED_CLAIM.search(sentence[:m.start()]):
                claimed = m.group(0)
            for n, per in ((int(m.group(1)), m.group(2).lower()) for m in _WEEKLY_HOURS.finditer(sentence)):
                weekly = n / 2 if per == "fortnight" else n
                if limit.hours_per_week is not None and weekly > limit.hours_per_week:
                    claimed = f"{n} hours a {per}"
            if claimed is None:
                continue
            fact = place.work_rights
            out.append(Correction("work_limit", limit.id, f"Students in {place.name} may work {claimed} during term.",
                                  fact.text, fact.source, fact.as_of,
                                  (("work", "working", "hours", "job", "jobs"), _names(place) + place.demonyms)))
            break
        return out

    def _rule_subjects(self, rule) -> tuple[tuple[str, ...], ...]:
        """What an answer about the rule's claim names: one of the rule's keywords, and its country."""
        subjects: tuple[tuple[str, ...], ...] = (tuple(rule.keywords),)
        if rule.country:
            subjects += (_names(self.kb.country(rule.country)) + self.kb.country(rule.country).demonyms,)
        return subjects

    def _documents(self, sentence: str) -> list[Correction]:
        """A term only one destination uses (I-20, CAS, OSHC) asked about for another destination the sentence names
        (or a university there), while the term's own country goes unnamed."""
        kb = self.kb
        markers = kb.find_marked(sentence)
        if not markers or _COMPARISON.search(sentence):
            return []
        named = kb.find_countries(sentence)
        places = [c for c in named if c.destination]
        places += [kb.country(u.country) for u in kb.find_universities(sentence)
                   if all(u.country != p.code for p in places)]
        out = []
        for owner in markers:
            if any(c.code == owner.code for c in named) or any(p.code == owner.code for p in places):
                continue
            others = [p for p in places if p.code != owner.code and p.student_visa is not None]
            if len(others) != 1:
                continue
            term = next(m for m in owner.markers if _spans(sentence, [m]))
            place = others[0]
            visa = place.student_visa
            out.append(Correction(
                "document", place.code, f"{term} is part of studying in {place.name}.",
                f"{term} belongs to studying in {owner.name}, not {place.name}. In {place.name} the student visa is "
                f"the {visa.name}: {visa.text}", visa.source, visa.as_of, ((term,), _names(place))))
        return out

    def _memberships(self, sentence: str) -> list[Correction]:
        """A country or university placed in a set it is not in: the entity nearest the set's name decides."""
        kb = self.kb
        groups = kb.find_groups(sentence)
        if not groups:
            return []
        out = []
        for group in groups:
            spans = [s for s in _spans(sentence, _names(group)) if not _NON_PREFIX.search(sentence[:s[0]])
                     and not re.match(r"\s*(?:scholarships?|fellowships?|scholars?)\b", sentence[s[1]:], re.I)]
            if not spans:
                continue
            entities = kb.find_countries(sentence) if group.kind == "country" else kb.find_universities(sentence)
            if group.kind == "country":  # a university stands for its country ("Is TU Munich in the Schengen Area?")
                entities += [kb.country(u.country) for u in kb.find_universities(sentence)]
            located = [(min(abs(a - gs) if a > gs else abs(gs - b) for a, b in _spans(sentence, _names(e))
                            for gs, _ in spans), e) for e in entities if _spans(sentence, _names(e))]
            if not located:
                continue
            entity = min(located, key=lambda x: x[0])[1]
            ident = entity.code if group.kind == "country" else entity.id
            if ident in group.members:
                continue
            g0, g1 = spans[0]
            e0, e1 = _spans(sentence, _names(entity))[0]
            between = sentence[min(g1, e1):max(g0, e0)]
            if _NEGATED_CLAIM.search(between) or _COMPARISON.search(between):
                continue
            out.append(Correction(
                "membership", group.id, f"{entity.name} is in the {group.name}.",
                f"{entity.name} is not in the {group.name}. {group.about}", group.source, group.as_of,
                (_names(entity), _names(group))))
        return out

    def _programmes(self, text: str) -> list[Correction]:
        """A programme a named university does not offer (the audit's `programme_not_offered`, on the question)."""
        from trainer.kb.claims import programme_pattern

        out = []
        for university in self.kb.find_universities(text):
            for n in university.not_offered:
                school = _SCHOOLS.get(n.field.lower())
                if programme_pattern(n.degree, n.field).search(text) or (
                        school is not None and school.search(text)
                        and not any(p.field.lower() == n.field.lower() for p in university.programmes)):
                    out.append(Correction(
                        "programme", university.id, f"{university.name} offers {n.degree} in {n.field}.",
                        n.correction, n.source, n.as_of, (_names(university), (n.degree, n.field))))
        return out

    def _degrees(self, text: str) -> list[Correction]:
        """Undergraduate entry to a graduate-entry field, and another country's admission test for a field."""
        kb = self.kb
        countries = [c.code for c in kb.find_destinations(text)]
        countries += [u.country for u in kb.find_universities(text) if u.country not in countries]
        out = []
        for field, words in _FIELD_WORDS.items():
            field_match = words.search(text)
            if field_match is None:
                continue
            tests = [t for t in kb.find_tests(text) if t.field == field]
            for code in countries:
                structure = self._structures.get((code, field))
                if structure is None:
                    continue
                place = kb.country(code).name
                if (structure.entry == "graduate" and _UNDERGRAD_ENTRY.search(text)
                        and not _GRADUATE_ROUTE.search(text)):
                    out.append(Correction(
                        "degree_entry", structure.id, f"{field.capitalize()} in {place} can be entered straight "
                        "after school, as an undergraduate degree.", structure.fact, structure.source,
                        structure.as_of, ((field, *structure.degrees),)))
                for test in tests:
                    if test.id not in structure.tests:
                        used = " or ".join(kb.test(t).name for t in structure.tests) or "no common admission test"
                        out.append(Correction(
                            "admission_test", structure.id, f"{test.name} is the admission test for {field} in "
                            f"{place}.", f"{test.name} is not the {field} admission test in {place} (there: {used}). "
                            f"{structure.fact}", structure.source, structure.as_of, (_names(test),)))
        return out

    def _scholarships(self, sentence: str, text: str) -> list[Correction]:
        """An award asked about for another destination or university, a level it does not fund, or a nationality it
        excludes."""
        kb = self.kb
        awards = kb.find_scholarships(sentence)
        if not awards or _COMPARISON.search(sentence):
            return []
        out = []
        plain = _masked(sentence, [span for s in awards for span in _spans(sentence, _names(s))])
        named = [c for c in kb.find_countries(plain) if c.destination]
        universities = kb.find_universities(plain)
        home = kb.home_country(_masked(text, [span for s in awards for span in _spans(text, _names(s))]))
        for s in awards:
            subjects = (_names(s),)
            s_spans = _spans(sentence, _names(s))
            host = kb.country(s.host_country) if s.host_country else None
            if s.university is not None:
                own = kb.university(s.university)
                others = [u for u in universities if u.id != own.id]
                if others and all(u.id != own.id for u in universities):
                    u = others[0]
                    out.append(Correction("scholarship_university", s.id, f"{s.name} can be held at {u.name}.",
                                          f"{s.name} is held only at {own.name}. {s.about}", s.source, s.as_of,
                                          subjects + (_names(u),)))
            if host is not None:
                places = [c for c in named if home is None or c.code != home.code]
                places += [kb.country(u.country) for u in universities if all(u.country != p.code for p in places)]
                if places and all(p.code != host.code for p in places):
                    p = places[0]
                    out.append(Correction("scholarship_host", s.id, f"{s.name} funds study in {p.name}.",
                                          f"{s.name} funds study in {host.name}, not {p.name}. {s.about}", s.source,
                                          s.as_of, subjects + (_names(p),)))
            for m in _LEVEL.finditer(sentence):
                level = m.lastgroup
                if level in s.levels or _HELD_LEVEL.search(sentence[max(0, m.start() - 40):m.start()]):
                    continue
                if s_spans and min(abs(m.start() - a) for a, _ in s_spans) > 80:
                    continue
                funded = ", ".join({"bachelor": "bachelor's", "master": "master's", "phd": "PhD"}[x]
                                   for x in s.levels)
                out.append(Correction("scholarship_level", s.id, f"{s.name} funds {m.group(0)} study.",
                                      f"{s.name} funds {funded} study only. {s.about}", s.source, s.as_of,
                                      subjects + ((m.group(0),),)))
                break
            if home is not None and kb.eligible(s.id, home.code) is False:
                out.append(Correction("scholarship_nationality", s.id, f"Citizens of {home.name} may apply for "
                                      f"{s.name}.", f"Citizens of {home.name} are not eligible for {s.name}. "
                                      f"{s.eligibility.text}", s.source, s.as_of, subjects + (_names(home),)))
        return out

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


def answer_verdict(correction: Correction, answer: str) -> str:
    """`corrected`, `affirmed` (opens by agreeing), `restated` (a sentence names every subject of the claim without
    correcting it) or `ignored`."""
    sentences = _sentences(answer.strip())
    if not sentences:
        return "ignored"
    first = sentences[0]
    if _AFFIRM_OPENING.search(first) and not _CORRECTING.search(first):
        return "affirmed"
    if _CORRECT_OPENING.search(first):
        return "corrected"
    restated = False
    for sentence in sentences:
        named = [bool(_spans(sentence, names)) for names in correction.subjects]
        if any(named) and _CORRECTING.search(sentence):
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


class CheckError(ValueError):
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
                                  for c in row.corrections) or "—"
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
