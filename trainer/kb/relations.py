"""Relation kinds as data, and the one generic premise check over them.

Each relation kind is declared once in `data/kb/relations.yaml` (`RelationSpec`): which entity types it links
(`trainer.kb.mentions.ENTITY_TYPES`), which field of the subject holds the objects it relates to, whether that list is
closed (the KB lists every member, so anything else is known not to be one), its cue vocabulary, the claim and the
fact as templates, and the questions it must flag and must let through (checked at load). Adding a kind is one YAML
section; where a relation needs a computation (a number against a limit, a degree against a programme list), one
function registered under its name with `@relation_check` and named by the section's `check:`.

The generic check (`pair`) reads a claim between a subject and an object the question names in one sentence (or,
for the student's nationality, anywhere in the message): the set and the country nearest it, the award and the
destination, the application system and the university. It corrects the claim when the KB says the pair does not
hold, and stays quiet when the sentence compares, negates ("non-EU", "isn't in"), or also names a true object.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from trainer.kb.names import NameIndex
from trainer.kb.mentions import ENTITY_TYPES, Mention, Question, Sentence, names_of
from trainer.kb.schema import CLAUSE_BREAK, Eligibility, KBError, clause_span

# Where a claim is only compared, listed as an alternative or negated, the question asserts nothing.
COMPARISON = re.compile(r"\b(?:than|versus|vs\.?|compared?|comparison|compare|difference|differ|instead of|"
                        r"rather than|or (?:the|a|an|in)\b|other than|unlike|transfer(?:ring)? from|switch(?:ing)? "
                        r"from)\b", re.IGNORECASE)
NEGATED = re.compile(r"\b(?:not|isn't|aren't|doesn't|don't|never|no longer|left|outside|non)\b|n't\b", re.IGNORECASE)
NON_PREFIX = re.compile(r"(?:\bnon[\s-]?|\boutside (?:the |of the )?|\bleft (?:the )?|\bnot (?:in |part of )?"
                        r"(?:the |an? )?)$", re.IGNORECASE)
PRESUPPOSED = re.compile(r"\b(?:the rest of|other|another|fellow|among the other)\s+(?:the\s+)?$", re.IGNORECASE)
"""Words before a set's name that take the compared entity as one of its members."""
SCOPES = ("sentence", "nearest", "message")
LIST_JOIN = re.compile(r"\s*(?:,\s*(?:and|or|&)?|and|or|&|/)\s*(?:the\s+)?$", re.IGNORECASE)
"""What separates the items of a list of names ("Harvard, Yale, Princeton and MIT")."""


@dataclass(frozen=True)
class Correction:
    """A claim in the question that the KB contradicts, and the KB fact that corrects it."""

    kind: str
    """`rule` (a KB rule), or the kind of the relation in relations.yaml that found the claim."""
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
    evidence: tuple[str, ...] = ()
    """Numbers, acronyms and KB names in the fact's first sentence that the claim lacks: an answer stating one of them
    next to a subject states the fact ("up to 48 hours per fortnight", "Studyinfo.fi")."""

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.entry}:{self.claim}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["subjects"] = [list(s) for s in self.subjects]
        return out


@dataclass(frozen=True)
class RelationSpec:
    """One relation kind as relations.yaml declares it."""

    id: str
    """Unique name of this declaration."""
    about: str
    """What a false claim of this kind looks like, in words."""
    subject: str
    """The entity type whose KB entry holds the fact (a group, an award, a document, an application system)."""
    object: str
    """The entity type the question links the subject to (a place, a university, a level, the nationality)."""
    kind: str = ""
    """The correction's kind; the id when left out (two declarations may share a kind)."""
    check: str = "pair"
    """`pair` (the generic check) or the name of a function registered with `@relation_check`."""
    holds: str = ""
    """The subject's field listing the objects it relates to (`members`, `levels`, `host_country`, `eligibility`)."""
    closed: bool = True
    """Whether that list is complete, so an object not in it is known not to relate (a set's members)."""
    subject_where: Mapping[str, str] = field(default_factory=dict)
    """Only subjects whose fields have these values (`kind: country` for sets of countries)."""
    object_where: Mapping[str, str] = field(default_factory=dict)
    """Only objects whose fields have these values (`destination: "True"` for study destinations)."""
    scope: str = "sentence"
    """Where the object is looked for: the subject's `sentence`; `nearest`, the sentence or, when it names none, the
    rest of the message ("I start at TCD in September. Where do I collect my BRP?"); or the whole `message` (the
    student's nationality)."""
    pick: str = "any"
    """`any`: a question that also names an object the subject does relate to asserts nothing false; `nearest`: the
    object nearest the subject decides ("Switzerland is an EU country, so are fees the same as in Germany?")."""
    negatable: bool = True
    """Whether a negation between subject and object denies the pair ("Ireland isn't in Schengen"); off where a
    negation there is about something else ("hasn't issued my I-20")."""
    same_clause: bool = False
    """Whether subject and object must share a clause (no comma, semicolon or `so`/`but` between them)."""
    max_distance: int = 0
    """Characters an object may be from the subject (0: anywhere in its scope)."""
    entry: str = "subject"
    """Whose id is the correction's `entry`: `subject` or `object`."""
    cues: Mapping[str, str] = field(default_factory=dict)
    """Named regexes: `claim` must occur in the sentence, `veto` must not; `link` must be all the words between subject
    and object ("is in the"); `held` before an object means the student already has it ("after my bachelor's"); a
    registered check reads its own."""
    claim: str = ""
    """The false premise, a template over `subject`, `object`, `term` (the subject's words), `object_term`."""
    fact: str = ""
    """What is true instead, a template as `claim` with `related` (what the subject does relate to)."""
    cite: str = "subject"
    """The entity (or `subject.field`) whose `source` and `as_of` the correction cites."""
    facts: tuple[Mapping[str, Any], ...] = ()
    """Facts of a registered check, each built into its `facts` dataclass (with `source` and `as_of`)."""
    examples: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """`flag`: questions this relation must correct; `pass`: ones it must let through. Checked at load."""


@dataclass(frozen=True)
class Relation:
    """A declaration with its cues compiled and its facts built, ready to check questions."""

    spec: RelationSpec
    cues: Mapping[str, re.Pattern]
    facts: tuple[Any, ...] = ()

    def __post_init__(self):
        named = [(n, f) for f in self.facts if hasattr(f, "name") for n in (f.name, *getattr(f, "aliases", ()))]
        object.__setattr__(self, "_named", NameIndex(named))

    def named_facts(self, text: str) -> list[Any]:
        """The facts whose name or alias `text` uses (a scheme, a document), looked up by word tokens."""
        return self._named.find(text)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def kind(self) -> str:
        return self.spec.kind or self.spec.id

    def cue(self, name: str) -> re.Pattern | None:
        return self.cues.get(name)


@dataclass(frozen=True)
class RegisteredCheck:
    function: Callable[..., list]
    facts: type | None
    cues: tuple[str, ...]
    """Cue names the function reads: each must be declared by every relation using it."""


CHECKS: dict[str, RegisteredCheck] = {}


def relation_check(name: str, facts: type | None = None, cues: tuple[str, ...] = ()):
    """Register `function(relation, question, kb) -> list[Correction]` as the check `name`; `facts` is the dataclass
    each of the relation's `facts` entries is built into; `cues` the cue names it needs."""
    def register(function):
        CHECKS[name] = RegisteredCheck(function, facts, cues)
        return function
    return register


def compile_relation(spec: RelationSpec, where: str, kb_codes: set[str] | None = None) -> Relation:
    """Check a declaration's references and compile it; KBError naming `where` and the key on a mistake."""
    from trainer.typed_yaml import ConfigError, build

    for key in ("subject", "object"):
        if getattr(spec, key) not in ENTITY_TYPES:
            raise KBError(f"{where}.{key}: {getattr(spec, key)!r} is not an entity type ({', '.join(ENTITY_TYPES)})")
    if spec.pick not in ("any", "nearest"):
        raise KBError(f"{where}.pick: {spec.pick!r} is not any or nearest")
    if spec.scope not in SCOPES:
        raise KBError(f"{where}.scope: {spec.scope!r} is not one of {', '.join(SCOPES)}")
    if spec.entry not in ("subject", "object"):
        raise KBError(f"{where}.entry: {spec.entry!r} is not subject or object")
    if spec.check != "pair" and spec.check not in CHECKS:
        raise KBError(f"{where}.check: {spec.check!r} is neither `pair` nor a registered check "
                      f"({', '.join(sorted(CHECKS))})")
    if spec.check == "pair" and not (spec.holds and spec.claim and spec.fact):
        raise KBError(f"{where}: the `pair` check needs `holds`, `claim` and `fact`")
    unknown = set(spec.examples) - {"flag", "pass"}
    if unknown:
        raise KBError(f"{where}.examples.{sorted(unknown)[0]}: unknown key (flag or pass)")
    if not spec.examples.get("flag"):
        raise KBError(f"{where}.examples.flag: give at least one question the relation must correct")
    cues = {}
    for name, pattern in spec.cues.items():
        try:
            cues[name] = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise KBError(f"{where}.cues.{name}: not a valid regex: {exc}") from None
    registered = CHECKS.get(spec.check)
    if registered is not None:
        for name in registered.cues:
            if name not in cues:
                raise KBError(f"{where}.cues.{name}: required by the `{spec.check}` check")
    facts = []
    for i, raw in enumerate(spec.facts):
        if registered is None or registered.facts is None:
            raise KBError(f"{where}.facts: the `{spec.check}` check takes no facts")
        at = f"{where}.facts[{i}]"
        for key in ("source", "as_of"):
            if not raw.get(key):
                raise KBError(f"{at}.{key}: is empty; every fact needs its official source and the date it was checked")
        try:
            facts.append(build(registered.facts, raw, at, source_field=True))
        except ConfigError as exc:
            raise KBError(str(exc)) from None
        if kb_codes is not None and "country" in raw and raw["country"] not in kb_codes:
            raise KBError(f"{at}.country: {raw['country']!r} is not a country in the knowledge base")
    return Relation(spec, cues, tuple(facts))


# The generic check

def check_pair(relation: Relation, question: Question, kb) -> list:
    """Corrections for claims pairing a subject with an object the KB says it does not relate to."""
    spec = relation.spec
    out = []
    for sentence in question.sentences:
        subjects = [m for m in question.mentions(spec.subject, sentence) if _wanted(m.entity, spec.subject_where)]
        if not subjects or not _cued(relation, sentence.text) or (
                spec.scope == "message" and COMPARISON.search(sentence.text)):
            continue
        objects = _objects(relation, question, sentence if spec.scope != "message" else None)
        if not objects and spec.scope == "nearest":
            objects = _objects(relation, question, None)
        for subject in subjects:
            correction = _pair(relation, question, kb, sentence, subject, objects)
            if correction is not None:
                out.append(correction)
    return out


def _objects(relation: Relation, question: Question, sentence: Sentence | None) -> list[Mention]:
    return [o for o in question.mentions(relation.spec.object, sentence)
            if _wanted(o.entity, relation.spec.object_where) and not _held(relation, question.text, o)]


def _listed(question: Question, objects: list[Mention], chosen: Mention) -> list[Mention]:
    """The chosen object and every object listed with it ("Harvard, Yale, Princeton and MIT")."""
    ordered = sorted(objects, key=lambda o: o.start)
    at = ordered.index(chosen)
    lo = hi = at
    while lo > 0 and LIST_JOIN.fullmatch(question.text[ordered[lo - 1].end:ordered[lo].start]):
        lo -= 1
    while hi + 1 < len(ordered) and LIST_JOIN.fullmatch(question.text[ordered[hi].end:ordered[hi + 1].start]):
        hi += 1
    return ordered[lo:hi + 1]


def _pair(relation: Relation, question: Question, kb, sentence: Sentence, subject: Mention,
          objects: list[Mention]):
    spec = relation.spec
    if NON_PREFIX.search(question.text[sentence.start:subject.start]):
        return None  # "non-EU", "outside the Schengen Area": the sentence places nothing in the set
    candidates = [o for o in objects if o.key != subject.key and not (o.start < subject.end and subject.start < o.end)]
    if spec.max_distance:
        candidates = [o for o in candidates if _distance(o, subject) <= spec.max_distance]
    if not candidates or (spec.pick == "any" and any(holds(relation, kb, subject, o) for o in candidates)):
        return None  # nothing to pair, or the question also names one it does relate to
    obj = min(candidates, key=lambda o: _distance(o, subject))
    if spec.pick == "nearest":  # the nearest decides, with the names listed alongside it
        obj = next((o for o in _listed(question, candidates, obj) if holds(relation, kb, subject, o) is False), obj)
    if holds(relation, kb, subject, obj) is not False:
        return None
    if spec.scope == "message":
        lo, hi = clause_span(sentence.text, subject.start - sentence.start, subject.end - sentence.start)
        if NEGATED.search(sentence.text[lo:hi]):
            return None  # "Not every Commonwealth citizen can get a Commonwealth Scholarship"
    elif question.sentence_of(obj) == sentence:
        lo, hi = min(subject.end, obj.end), max(subject.start, obj.start)
        between = question.text[lo:hi]
        if spec.negatable and NEGATED.search(between):
            return None
        if COMPARISON.search(between) and not PRESUPPOSED.search(question.text[:subject.start]):
            return None  # compared, not claimed; but "compared with the rest of the Ivy League" places it there
        if spec.same_clause and CLAUSE_BREAK.search(between):
            return None
        link = relation.cue("link")
        if link is not None and not link.fullmatch(between):
            return None  # the words between them do not state the relation ("McGill and schools in the US")
    return correction(relation, kb, subject, obj)


def holds(relation: Relation, kb, subject: Mention, obj: Mention) -> bool | None:
    """True or False where the KB decides whether the subject relates to the object, else None."""
    value = _field(subject.entity, relation.spec.holds)
    if isinstance(value, Eligibility):
        return kb.eligible(subject.entity.id, obj.key)
    if value is None or value == () or value == frozenset():
        return None
    related = obj.key == value if isinstance(value, str) else obj.key in value
    return True if related else (False if relation.spec.closed else None)


def correction(relation: Relation, kb, subject: Mention, obj: Mention, *, cited: Any = None, entry: str | None = None,
               subjects: tuple[tuple[str, ...], ...] | None = None, **extra):
    """The correction for one false pair, its texts rendered from the declaration's templates; a registered check
    passes what its templates name as `extra`, and the fact it cites."""
    spec = relation.spec
    values = {"subject": subject.entity, "object": obj.entity, "term": subject.text, "object_term": obj.text,
              "related": related_text(relation, kb, subject), **extra}
    if cited is None:
        cited = _field({"subject": subject.entity, "object": obj.entity}, spec.cite)
    if entry is None:
        entry = subject.key if spec.entry == "subject" else obj.key
    if subjects is None:
        subjects = ((subject.text, *names_of(subject.entity)), (obj.text, *names_of(obj.entity)))
    claim, fact = render(spec.claim, values), render(spec.fact, values)
    return Correction(relation.kind, entry, claim, fact, cited.source, cited.as_of, subjects,
                      evidence=evidence(kb, claim, fact, subjects))


TERM = re.compile(r"\b\d+(?:[.,]\d+)?\s+[a-z]+|\b\d[\d,]{2,}\b|\b[A-Za-z][\w.’'/-]*[A-Z0-9][\w.’'/-]*\b|\b[A-Z][a-z]+(?:\.[a-z]+)?\b|"
                  r"\b[a-z]+-[a-z]+(?:-[a-z]+)?\b")
"""A number with the word after it ("3 years", "48 hours"), a number of three digits or more ("1,500"), acronyms and mixed-case names ("EU/EEA", "I-20"),
capitalised words ("Studyinfo.fi") and hyphenated terms ("graduate-entry", "test-optional")."""


NUMBER_WORDS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
                "eight": "8", "nine": "9", "ten": "10", "twelve": "12", "eighteen": "18", "twenty": "20"}


def digits(text: str) -> str:
    """`text` with number words as digits ("five years" -> "5 years")."""
    return re.sub(r"\b[A-Za-z]+\b", lambda m: NUMBER_WORDS.get(m.group(0).lower(), m.group(0)), text)


def terms_of(text: str) -> set[str]:
    """The `TERM`s of a text, a number's unit in the singular ("3 year" for "3 years")."""
    return {re.sub(r"^(\d\S*)\s+(\w+?)s?$", r"\1 \2", t) for t in TERM.findall(text)}


def evidence(kb, claim: str, fact: str, subjects: tuple[tuple[str, ...], ...]) -> tuple[str, ...]:
    """The terms of the fact that the claim and its subjects lack, which an answer stating the fact would use:
    numbers, acronyms, hyphenated terms and KB names from its first sentence, and the names of application systems
    and tests from the rest ("MonMaster", where the claim was about Parcoursup)."""
    first, _, rest = fact.strip().partition(". ")
    known, systems = kb.name_words(), kb.name_words(("systems", "tests"))
    taken = {w.lower() for text in (claim, *(n for names in subjects for n in names))
             for w in terms_of(digits(text))}
    out = []
    for text, later in ((first, False), (rest, True)):
        for term in sorted(terms_of(text)):
            low = term.lower()
            if low in taken or term in out or (later and low not in systems):
                continue
            if any(ch.isdigit() for ch in term) or sum(ch.isupper() for ch in term) > 1 or low in known or \
                    ("-" in term and term.islower()):
                out.append(term)
    return tuple(out)


def related_text(relation: Relation, kb, subject: Mention) -> str:
    """What the subject does relate to, in words ("Germany", "master's or PhD")."""
    if not relation.spec.holds:
        return ""
    value = _field(subject.entity, relation.spec.holds)
    if isinstance(value, Eligibility):
        return value.text
    ids = [value] if isinstance(value, str) else sorted(value or ())
    return " or ".join(kb.name_of(i) for i in ids)


_THE = re.compile(r"(?<![Tt]he )(?<!\w)(United States|United Kingdom|Netherlands|Philippines)\b")
"""Country names that take "the" in a sentence ("in the United Kingdom")."""


def render(template: str, values: Mapping[str, Any]) -> str:
    """A claim or fact template filled in, as a sentence: "the" before the names that take it, a capital first
    letter. A field the template names that the values lack is a KBError."""
    try:
        text = " ".join(template.format(**values).split())
    except (AttributeError, KeyError, IndexError) as exc:
        raise KBError(f"template {template!r}: {exc}") from None
    text = _THE.sub(r"the \1", text)
    return text[:1].upper() + text[1:]


def _field(entity: Any, path: str) -> Any:
    for part in path.split("."):
        entity = entity[part] if isinstance(entity, Mapping) else getattr(entity, part)
    return entity


def _wanted(entity: Any, where: Mapping[str, str]) -> bool:
    return all(str(getattr(entity, k, None)) == v for k, v in where.items())


def _cued(relation: Relation, text: str) -> bool:
    claim, veto = relation.cue("claim"), relation.cue("veto")
    return (claim is None or claim.search(text) is not None) and (veto is None or veto.search(text) is None)


def _held(relation: Relation, text: str, obj: Mention) -> bool:
    """Whether the words before the object say the student already has it ("after my bachelor's")."""
    held = relation.cue("held")
    return held is not None and held.search(text[max(0, obj.start - 40):obj.start]) is not None


def _distance(a: Mention, b: Mention) -> int:
    return max(0, max(a.start, b.start) - min(a.end, b.end))
