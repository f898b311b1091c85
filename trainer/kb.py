"""The knowledge base (KB): versioned, sourced facts that ground synthetic data and drive the audit.

`data/kb/*.yaml` holds countries, universities, scholarships, admission tests and rules (common false claims with
a regex that spots them). Every fact carries an official `source` URL and an `as_of` date. This module holds the
types and the lookups; `trainer.kb_loader.load_kb(path)` reads and validates the files and returns a frozen
`KnowledgeBase`.

Lookups are built once at load time. `find_*` splits a text into lowercase word tokens once (C-level string
operations, cached for the last text, so the audit's several questions about one conversation share the work)
and looks names up by their first token, then confirms the whole phrase: no loop over entities and no regex
scan, which keeps the audit fast on thousands of long conversations.

Names match whole words in any case; an alias written without lowercase letters (`US`, `UK`, `MIT`, `U.S.`) or
starting with a lowercase word (`the States`) matches only exactly as written, so "us" and "mit" never hit.

A rule states a false claim in a sentence when its `trigger` matches, or when all its `terms` occur (an entity, who
it is about, the claim, in any order), and no correction does: a negation in the clauses the claim spans, or an
`unless` cue in the sentence (`Rule.states`). A negation elsewhere in the sentence ("..., so you do not need any
insurance") corrects nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


class KBError(ValueError):
    """The knowledge base is invalid; the message names the file, the entry and the rule broken."""


# Entities

@dataclass(frozen=True)
class Fact:
    """One sourced statement. `name` is set for named things (a visa's official name)."""

    text: str
    source: str
    """Official URL to check the statement against."""
    as_of: str
    """YYYY-MM or YYYY-MM-DD: when the statement was checked, or when the rule it states took effect."""
    name: str | None = None


@dataclass(frozen=True)
class Country:
    code: str
    """ISO 3166-1 alpha-2 code (`GB` for the United Kingdom)."""
    name: str
    aliases: tuple[str, ...]
    demonyms: tuple[str, ...]
    region: str
    commonwealth_member: bool
    eea_member: bool
    """EU member or Iceland, Liechtenstein, Norway."""
    destination: bool
    """A study destination the KB describes (visa, insurance, work rights), not only a home country."""
    student_visa: Fact | None = None
    visa_portal: str | None = None
    study_portal: str | None = None
    health_insurance: Fact | None = None
    work_rights: Fact | None = None
    notes: tuple[Fact, ...] = ()
    not_mentions: tuple[str, ...] = ()
    """Phrases that contain one of the country's names but do not mention it ("New South Wales", "British
    Columbia")."""
    markers: tuple[str, ...] = ()
    """Terms only this destination uses (F-1, SEVIS for the United States; CAS, BRP for the United Kingdom): a text
    using one is about the country without naming it (`KnowledgeBase.find_destinations`)."""


@dataclass(frozen=True)
class Programme:
    degree: str
    field: str


@dataclass(frozen=True)
class NotOffered:
    """A programme a university does not offer, and what to say instead."""

    degree: str
    field: str
    correction: str
    source: str
    as_of: str


@dataclass(frozen=True)
class University:
    id: str
    name: str
    aliases: tuple[str, ...]
    country: str
    programmes: tuple[Programme, ...]
    not_offered: tuple[NotOffered, ...]
    source: str
    as_of: str
    notes: tuple[Fact, ...] = ()


@dataclass(frozen=True)
class Eligibility:
    """Who may apply. `countries` None means open to every nationality except `excluded`; otherwise only the
    listed codes are known to be eligible and any other code is unknown to the KB (unless `excluded`)."""

    text: str
    countries: frozenset[str] | None
    excluded: frozenset[str] = frozenset()
    undecided: frozenset[str] = frozenset()
    """Codes the KB deliberately does not decide (eligible() returns None)."""


@dataclass(frozen=True)
class Scholarship:
    id: str
    name: str
    aliases: tuple[str, ...]
    host_country: str | None
    """Country code of the host, or None when it is hosted in any or several countries."""
    levels: tuple[str, ...]
    about: str
    eligibility: Eligibility
    discontinued: bool
    source: str
    as_of: str
    university: str | None = None
    """The id of the one university the award is held at (Rhodes: Oxford), or None."""


@dataclass(frozen=True)
class Group:
    """A membership set (the Schengen Area, the Commonwealth, the Ivy League): which KB countries or universities
    belong to it. `members` lists every KB entity of `kind` that does (the loader checks the flags it can), so any
    other KB entity of that kind is known not to."""

    id: str
    name: str
    aliases: tuple[str, ...]
    kind: str
    """`country` or `university`."""
    members: frozenset[str]
    """Country codes or university ids."""
    about: str
    source: str
    as_of: str
    examples_flag: tuple[str, ...] = ()
    examples_pass: tuple[str, ...] = ()


@dataclass(frozen=True)
class DegreeStructure:
    """How one field (medicine, law) is entered in one country: after school (`undergraduate`), only after a first
    degree (`graduate`) or both, and which field-specific admission tests it uses."""

    id: str
    country: str
    field: str
    """`medicine` or `law`."""
    entry: str
    """`undergraduate`, `graduate` or `both`."""
    degrees: tuple[str, ...]
    tests: tuple[str, ...]
    """Ids of the field-specific admission tests this country's programmes use; any other test of the same field
    (the MCAT for UK medicine) is known not to be the one."""
    fact: str
    source: str
    as_of: str
    examples_flag: tuple[str, ...] = ()
    examples_pass: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkLimit:
    """How much a student may work during term in one destination; the fact is the country's `work_rights`."""

    country: str
    hours_per_week: int | None
    """The weekly limit during term, or None where the limit is not weekly (a yearly number of hours or days)."""
    examples_flag: tuple[str, ...] = ()
    examples_pass: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"work-{self.country.lower()}"


@dataclass(frozen=True)
class AdmissionTest:
    id: str
    name: str
    aliases: tuple[str, ...]
    kind: str
    """`language` or `aptitude`."""
    about: str
    score_range: str
    validity: str | None
    source: str
    as_of: str
    field: str | None = None
    """`medicine` or `law` for a test only that field uses (MCAT, LSAT, UCAT); None otherwise."""


SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
CLAUSE_BREAK = re.compile(r"[;:,()]|\s[-\u2013\u2014]\s|\b(?:so|but|because|although|though|whereas|while|yet|however|"
                          r"therefore|thus|hence)\b", re.IGNORECASE)
"""Where a clause ends: a negation past one of these is about something else."""
NEGATION = re.compile(r"\b(?:not|no|never|cannot|neither|nor|none)\b|n['\u2019]t\b", re.IGNORECASE)
_BARE_NEGATION = re.compile(r"(?:not|no|never|cannot|neither|nor|none|no longer|\w*n['\u2019]t)", re.IGNORECASE)


def clause_span(sentence: str, start: int, end: int) -> tuple[int, int]:
    """The clauses of `sentence` that the text from `start` to `end` lies in: from the clause break before `start`
    to the one after `end`."""
    lo, hi = 0, len(sentence)
    for match in CLAUSE_BREAK.finditer(sentence):
        if match.end() <= start:
            lo = match.end()
        elif match.start() >= end:
            hi = match.start()
            break
    return lo, hi


@dataclass(frozen=True)
class Rule:
    """A common false claim: `trigger` (or all `terms`) match a sentence stating it; a negation in the claim's
    clauses or an `unless` cue in the sentence correct it (`states`)."""

    id: str
    topic: str
    country: str | None
    trigger: re.Pattern | None
    unless: re.Pattern | None
    claim: str
    fact: str
    source: str
    as_of: str
    keywords: tuple[str, ...] = ()
    """Words (whole, any case) of which every sentence the rule can match contains one: a cheap gate."""
    examples_false: tuple[str, ...] = ()
    examples_corrected: tuple[str, ...] = ()
    terms: tuple[re.Pattern, ...] = ()
    """Instead of a trigger: patterns that must all occur in one sentence, in any order (the entity, who it is
    about, the claim), so paraphrases match; a negation in the clauses they span corrects the claim."""

    @property
    def examples(self) -> dict[str, list[str]]:
        """{"false": sentences the rule flags, "corrected": sentences it lets through}, as written in the YAML."""
        return {"false": list(self.examples_false), "corrected": list(self.examples_corrected)}

    @property
    def patterns(self) -> tuple[re.Pattern, ...]:
        """What must all match a sentence for the rule to look at it: the trigger, or every term."""
        return (self.trigger,) if self.trigger is not None else self.terms

    def claim_spans(self, sentence: str) -> list[tuple[int, int]] | None:
        """Where the sentence words the claim (the trigger's match, or each term's first match), or None."""
        spans = []
        for pattern in self.patterns:
            match = pattern.search(sentence)
            if match is None:
                return None
            spans.append(match.span())
        return spans

    def mentions(self, text: str) -> bool:
        """Whether one of the sentences of `text` words the claim, corrected or not (a question about it)."""
        return any(self.claim_spans(sentence) is not None for sentence in SENTENCE.split(text))

    def states(self, text: str) -> bool:
        """Whether one of the sentences of `text` states the false claim without correcting it."""
        return any(self.in_sentence(sentence) for sentence in SENTENCE.split(text))

    def in_sentence(self, sentence: str) -> bool:
        """Whether this one sentence states the false claim without correcting it."""
        spans = self.claim_spans(sentence)
        if spans is None:
            return False
        lo, hi = clause_span(sentence, min(a for a, _ in spans), max(b for _, b in spans))

        def claims(at: int) -> bool:  # a term's own words ("at no cost", "no limit") are the claim, not a correction
            return bool(self.terms) and any(a <= at < b for a, b in spans)

        if self.unless is not None:
            for match in self.unless.finditer(sentence):
                negation = _BARE_NEGATION.fullmatch(match.group(0)) is not None
                if not claims(match.start()) and (not negation or lo <= match.start() < hi):
                    return False
        if self.terms:
            for match in NEGATION.finditer(sentence, lo, hi):
                if not claims(match.start()):
                    return False
        return True


# Finding names in text. A regex alternation over hundreds of names costs Python's `re` one attempt per character
# (about 2.5 s per entity type on the 25 MB of the StudyAbroadGPT dataset); instead each text is split into
# lowercase word tokens once, with C-level string operations (about 0.4 s for the same 25 MB, shared by every
# entity type), and names are looked up by their first token, then confirmed as a phrase.

_WORD_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789")
_SEPARATORS = bytes(c if (c in _WORD_BYTES or c >= 128) else 32 for c in range(256))
"""Byte map: ASCII letters and digits, and every byte of a non-ASCII character, stay; the rest become spaces."""
_UNICODE_PUNCTUATION = ("\u2019", "\u2018", "\u201c", "\u201d", "\u2013", "\u2014", "\u2010", "\u2026",
                        "\u2022", "\u00a0", "\u00ab", "\u00bb")


@dataclass(frozen=True)
class _Tokens:
    words: frozenset[bytes]
    joined: bytes
    """b" word word ... " with every separator run collapsed to one space, for phrase checks."""


_TOKEN_CACHE: dict[str, _Tokens] = {}
_TOKEN_CACHE_SIZE = 64


def _tokens(text: str) -> _Tokens:
    """Lowercase word tokens of `text`. Recent texts are cached: the audit asks about one conversation's messages
    and their concatenation several times each (a str caches its hash, so a hit costs a dict lookup)."""
    hit = _TOKEN_CACHE.get(text)
    if hit is not None:
        return hit
    low = text.lower()
    if not low.isascii():
        for ch in _UNICODE_PUNCTUATION:  # curly quotes, dashes and the like separate words too
            if ch in low:
                low = low.replace(ch, " ")
    words = low.encode("utf-8").translate(_SEPARATORS).split()
    return _remember(text, _Tokens(frozenset(words), b" " + b" ".join(words) + b" "))


def _remember(text: str, tokens: _Tokens) -> _Tokens:
    if len(_TOKEN_CACHE) >= _TOKEN_CACHE_SIZE:
        try:
            del _TOKEN_CACHE[next(iter(_TOKEN_CACHE))]  # oldest first (dicts keep insertion order)
        except (KeyError, StopIteration, RuntimeError):  # another thread got there first
            pass
    _TOKEN_CACHE[text] = tokens
    return tokens


def name_tokens(name: str) -> tuple[bytes, ...]:
    """The lowercase word tokens a name (or a sentence) is matched by."""
    return tuple(_tokens(name).joined.split())


class _Names:
    """Every name of one entity type, indexed by its first lowercase token and mapped back to its entity."""

    def __init__(self, names: Iterable[tuple[str, Any]], alternation: bool = False):
        self.exact: dict[str, Any] = {}
        self.folded: dict[str, Any] = {}
        self.index: dict[bytes, list[tuple[bytes, tuple[bytes, ...], str | None, Any]]] = {}
        for name, entity in names:
            key = normalise_name(name)
            sensitive = case_sensitive(name)
            if sensitive:
                self.exact[key] = entity
            else:
                self.folded[key.lower()] = entity
            tokens = name_tokens(name)
            if tokens:
                phrase = b" " + b" ".join(tokens) + b" "
                self.index.setdefault(tokens[0], []).append((phrase, tokens[1:], name if sensitive else None,
                                                             entity))
        self.first_tokens = frozenset(self.index)
        self.alternation = ""
        if alternation:  # only the home-country cues need a regex
            parts = []
            if self.folded:
                parts.append(f"(?i:{_trie_pattern(self.folded)})")
            if self.exact:
                parts.append(_trie_pattern(self.exact))
            self.alternation = "(?:" + "|".join(parts) + ")" if parts else "(?!)"

    def entity(self, matched: str) -> Any:
        key = normalise_name(matched)
        return self.exact.get(key) or self.folded.get(key.lower())

    def find(self, text: str) -> list[Any]:
        """Entities named in `text`, ordered by (approximately) their first mention. A name only found inside a
        longer one ("Ireland" in "Northern Ireland", "Wales" in "New South Wales") does not count."""
        tokens = _tokens(text)
        hits: list[tuple[bytes, float, Any]] = []
        for first in self.first_tokens & tokens.words:
            for phrase, rest, exact, entity in self.index[first]:
                if not all(t in tokens.words for t in rest):
                    continue
                at = tokens.joined.find(phrase)
                if at < 0:
                    continue
                where = at / len(tokens.joined)
                if exact is not None:  # acronyms and the like: confirm the exact spelling in the original text
                    at = _find_exact(text, exact)
                    if at < 0:
                        continue
                    where = at / max(1, len(text))
                hits.append((phrase, where, entity))
        found: dict[int, tuple[float, Any]] = {}
        for phrase, where, entity in hits:
            if entity is None:
                continue
            inside = sum(tokens.joined.count(longer) * longer.count(phrase) for longer, _, other in hits
                         if len(longer) > len(phrase) and phrase in longer and other is not entity)
            if inside and tokens.joined.count(phrase) <= inside:
                continue
            if id(entity) not in found or where < found[id(entity)][0]:
                found[id(entity)] = (where, entity)
        return [entity for _, entity in sorted(found.values(), key=lambda x: x[0])]


def _find_exact(text: str, name: str) -> int:
    """Index of the first whole-word, case-sensitive occurrence of `name` in `text`, or -1."""
    at = text.find(name)
    while at >= 0:
        before = text[at - 1] if at > 0 else " "
        after = text[at + len(name)] if at + len(name) < len(text) else " "
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            return at
        at = text.find(name, at + 1)
    return -1


@dataclass(frozen=True)
class KnowledgeBase:
    """The loaded, validated KB. Build it with `trainer.kb_loader.load_kb`."""

    version: dict[str, str]
    """The `version` block (version, as_of, ...), quoted in dataset cards and audit reports."""
    countries: tuple[Country, ...]
    universities: tuple[University, ...]
    scholarships: tuple[Scholarship, ...]
    tests: tuple[AdmissionTest, ...]
    rules: tuple[Rule, ...]
    path: str = ""
    groups: tuple[Group, ...] = ()
    degree_structures: tuple[DegreeStructure, ...] = ()
    work_limits: tuple[WorkLimit, ...] = ()

    def __post_init__(self):
        countries = _Names([(n, c) for c in self.countries for n in (c.name, *c.aliases, *c.demonyms)]
                           + [(n, None) for c in self.countries for n in c.not_mentions])
        object.__setattr__(self, "_by_code", {c.code: c for c in self.countries})
        object.__setattr__(self, "_countries", countries)
        object.__setattr__(self, "_markers", _Names((m, c) for c in self.countries for m in c.markers))
        object.__setattr__(self, "_universities",
                           _Names((n, u) for u in self.universities for n in (u.name, *u.aliases)))
        object.__setattr__(self, "_scholarships",
                           _Names((n, s) for s in self.scholarships for n in (s.name, *s.aliases)))
        object.__setattr__(self, "_tests", _Names((n, t) for t in self.tests for n in (t.name, *t.aliases)))
        object.__setattr__(self, "_groups", _Names((n, g) for g in self.groups for n in (g.name, *g.aliases)))
        object.__setattr__(self, "_test_by_id", {t.id: t for t in self.tests})
        object.__setattr__(self, "_by_id", {u.id: u for u in self.universities})
        object.__setattr__(self, "_scholarship_by_id", {s.id: s for s in self.scholarships})
        object.__setattr__(self, "_home", _HomeCues(self.countries))
        object.__setattr__(self, "_rule_keywords",
                           [(r, frozenset(k.lower().encode("utf-8") for k in r.keywords)) for r in self.rules])

    # Lookups

    def country(self, code: str) -> Country:
        """The country with this ISO code; KBError when the KB does not have it."""
        try:
            return self._by_code[code]
        except KeyError:
            raise KBError(f"{self.path or 'knowledge base'}: no country with code {code!r}") from None

    def university(self, university_id: str) -> University:
        """The university with this id; KBError when the KB does not have it."""
        try:
            return self._by_id[university_id]
        except KeyError:
            raise KBError(f"{self.path or 'knowledge base'}: no university with id {university_id!r}") from None

    def scholarship(self, scholarship_id: str) -> Scholarship:
        """The scholarship with this id; KBError when the KB does not have it."""
        try:
            return self._scholarship_by_id[scholarship_id]
        except KeyError:
            raise KBError(f"{self.path or 'knowledge base'}: no scholarship with id {scholarship_id!r}") from None

    def find_countries(self, text: str) -> list[Country]:
        """Countries named in `text` (by name, alias or demonym), in order of first mention."""
        return self._countries.find(text)

    def find_destinations(self, text: str) -> list[Country]:
        """Countries `text` is about: named (`find_countries`) or identified by a term only that country uses ("On an
        F-1 visa ..." is about the United States), in order of first mention, named ones first."""
        named = self._countries.find(text)
        return named + [c for c in self.find_marked(text) if all(c is not n for n in named)]

    def find_marked(self, text: str) -> list[Country]:
        """Destinations whose own terms (`markers`: F-1, CAS, OSHC) `text` uses, in order of first mention."""
        return self._markers.find(text)

    def find_universities(self, text: str) -> list[University]:
        """Universities named in `text`, in order of first mention."""
        return self._universities.find(text)

    def find_scholarships(self, text: str) -> list[Scholarship]:
        """Scholarships named in `text`, in order of first mention."""
        return self._scholarships.find(text)

    def find_tests(self, text: str) -> list[AdmissionTest]:
        """Admission tests named in `text`, in order of first mention."""
        return self._tests.find(text)

    def find_groups(self, text: str) -> list[Group]:
        """Membership sets named in `text` (Schengen, the Ivy League), in order of first mention."""
        return self._groups.find(text)

    def test(self, test_id: str) -> AdmissionTest:
        """The admission test with this id; KBError when the KB does not have it."""
        try:
            return self._test_by_id[test_id]
        except KeyError:
            raise KBError(f"{self.path or 'knowledge base'}: no admission test with id {test_id!r}") from None

    def joined(self, texts: Sequence[str]) -> str:
        """`" ".join(texts)`, with its words worked out from the texts' own (already split) words, so that
        asking about each message and then about the whole conversation splits every text once."""
        text = " ".join(texts)
        if text not in _TOKEN_CACHE and len(texts) > 1:
            parts = [_tokens(t) for t in texts]
            _remember(text, _Tokens(frozenset().union(*(p.words for p in parts)),
                                    b" " + b" ".join(w for p in parts if (w := p.joined.strip())) + b" "))
        return text

    def words(self, text: str) -> frozenset[bytes]:
        """The lowercase word tokens of `text` (UTF-8), split once and shared with `find_*` and `rules_in`."""
        return _tokens(text).words

    def rules_in(self, text: str) -> list[Rule]:
        """Rules whose keywords occur in `text`: the only ones whose trigger can match it. Much cheaper than running
        every trigger, since the words of a text are split once and shared with `find_*`."""
        words = _tokens(text).words
        return [rule for rule, keywords in self._rule_keywords if not keywords.isdisjoint(words)]

    def home_country(self, text: str) -> Country | None:
        """The student's home country from cues such as "I'm from Nigeria", "I am Indian", "as a Brazilian",
        "my home country is Nepal"; first-person cues win over weaker ones ("students from Ghana")."""
        return self._home.find(text)

    # Questions

    def offers(self, university: str | University, degree: str, field: str) -> bool | None:
        """True if the university offers the programme, False if the KB records that it does not (or that it has
        nothing in that field), None when the KB does not know."""
        u = university if isinstance(university, University) else self._by_id.get(university)
        if u is None:
            return None
        family, subject = degree_family(degree, field), field_key(field)
        if any(degree_family(p.degree, p.field) == family and field_key(p.field) == subject for p in u.programmes):
            return True
        if any(degree_family(n.degree, n.field) == family and field_key(n.field) == subject
               for n in u.not_offered):
            return False
        # A recorded gap (no law school, no medical school) covers every degree in that field.
        if any(field_key(n.field) == subject for n in u.not_offered) and \
                not any(field_key(p.field) == subject for p in u.programmes):
            return False
        return None

    def eligible(self, scholarship_id: str, country_code: str) -> bool | None:
        """Whether citizens of `country_code` may apply; None when the KB does not know (or either is unknown)."""
        s = self._scholarship_by_id.get(scholarship_id)
        if s is None or country_code not in self._by_code:
            return None
        e = s.eligibility
        if country_code in e.undecided:
            return None
        if country_code in e.excluded:
            return False
        if e.countries is None or country_code in e.countries:
            return True
        return None

    def known_scholarship_names(self) -> list[str]:
        """Every scholarship name and alias."""
        return [n for s in self.scholarships for n in (s.name, *s.aliases)]

    def facts_for(self, countries: Iterable[Country] = (), universities: Iterable[University] = (),
                  scholarships: Iterable[Scholarship] = (), tests: Iterable[AdmissionTest] = ()) -> list[Fact]:
        """Readable, sourced facts about these entities (and the rules about these countries), without repeats."""
        out: dict[str, Fact] = {}

        def add(text: str, source: str, as_of: str) -> None:
            out.setdefault(text, Fact(text, source, as_of))

        codes = set()
        for c in countries:
            codes.add(c.code)
            if c.student_visa is not None:
                v = c.student_visa
                add(f"{c.name}: the student visa is the {v.name}. {v.text}", v.source, v.as_of)
            for fact in (c.health_insurance, c.work_rights, *c.notes):
                if fact is not None:
                    add(f"{c.name}: {fact.text}", fact.source, fact.as_of)
        for rule in self.rules:
            if rule.country in codes:
                add(f"{self._by_code[rule.country].name}: {rule.fact}", rule.source, rule.as_of)
        for u in universities:
            where = self._by_code[u.country].name if u.country in self._by_code else u.country
            if u.programmes:
                listed = "; ".join(f"{p.degree} in {p.field}" for p in u.programmes)
                add(f"{u.name} ({where}) offers, among others: {listed}.", u.source, u.as_of)
            for n in u.not_offered:
                add(f"{u.name} does not offer {n.degree} in {n.field}: {n.correction}", n.source, n.as_of)
            for fact in u.notes:
                add(f"{u.name}: {fact.text}", fact.source, fact.as_of)
        for s in scholarships:
            host = self._by_code[s.host_country].name if s.host_country in self._by_code else "several countries"
            status = " It has been discontinued." if s.discontinued else ""
            add(f"{s.name} (study in {host}; {', '.join(s.levels)}): {s.about} Eligibility: {s.eligibility.text}"
                f"{status}", s.source, s.as_of)
        for t in tests:
            validity = f" Validity: {t.validity}" if t.validity else ""
            add(f"{t.name}: {t.about} Scores: {t.score_range}.{validity}", t.source, t.as_of)
        return list(out.values())


# Matching helpers

def normalise_name(name: str) -> str:
    """A name with its whitespace and dashes collapsed to one space and curly apostrophes straightened."""
    return re.sub(r"[\s\-‐–]+", " ", name.replace("’", "'")).strip()


def case_sensitive(name: str) -> bool:
    """Acronyms (no lowercase letters) and names starting with a lowercase word match only as written."""
    letters = [ch for ch in name if ch.isalpha()]
    return bool(letters) and (not any(ch.islower() for ch in letters) or name[0].islower())


def _token(ch: str) -> str:
    if ch == " ":
        return r"[\s\-‐–]+"
    if ch == "'":
        return "['’]"
    return re.escape(ch)


def _trie_pattern(words: Iterable[str]) -> str:
    """A regex matching any of `words`, factored by common prefix so matching stays fast with many names."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = True

    def render(node: dict[str, Any]) -> str:
        branches = [_token(ch) + render(child) for ch, child in sorted(node.items()) if ch != ""]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:  # a word ends here: the longer continuation is optional (greedy, so longest wins)
            return f"(?:{body})?"
        return body

    return render(trie)


class _HomeCues:
    """Regexes for where the student comes from, strongest cue first."""

    def __init__(self, countries: Sequence[Country]):
        self.names = _Names(((n, c) for c in countries for n in (c.name, *c.aliases)), alternation=True)
        self.demonyms = _Names(((d, c) for c in countries for d in c.demonyms), alternation=True)
        name = rf"(?<![\w])(?P<name>{self.names.alternation})(?![\w])"
        demonym = rf"(?<![\w])(?P<demonym>{self.demonyms.alternation})(?![\w])"
        first_person = r"(?:\bi\s+am|\bi'm|\bi’m|\bim|\bwe\s+are|\bwe're)"
        # On ASCII text a name can only match where its first word is a word of the text (names with a character
        # that case-insensitively matches an ASCII letter, such as the Kelvin sign, would break that: no gate then).
        names = [n for c in countries for n in (c.name, *c.aliases, *c.demonyms)]
        self.ascii_gate = None if any(ch in n for n in names for ch in "\u212a\u017f\u0131\u0130") else \
            self.names.first_tokens | self.demonyms.first_tokens
        self.cues = [re.compile(p) for p in (
            # "I'm from Nigeria", "I come from the UK", "citizen of India", "my home country is Nepal"
            (rf"(?i:(?:{first_person}\s+(?:originally\s+|also\s+)?|\bi\s+come\s+|\bi\s+originally\s+come\s+)"
             rf"from\s+(?:the\s+)?){name}"),
            rf"(?i:\b(?:citizen|national|resident)\s+of\s+(?:the\s+)?){name}",
            rf"(?i:\bmy\s+(?:home\s+)?(?:country|nationality)\s*(?:is|:|,)?\s*(?:the\s+)?){name}",
            # "I am Indian", "I'm a Nigerian student", "as a Brazilian"
            rf"(?i:(?:{first_person}|\bas)\s+(?:an?\s+)?){demonym}(?!(?i:\s+(?:universit|college|school|visa)))",
            rf"(?i:\b(?:i\s+live|i\s+am\s+based|i'm\s+based|i\s+am\s+living|i'm\s+living)\s+in\s+(?:the\s+)?){name}",
            # weaker: "students from Ghana", "Indian citizen", "Kenyan passport"
            rf"(?i:\b(?:student|applicant|graduate|citizen|national|candidate)s?\s+from\s+(?:the\s+)?){name}",
            rf"{demonym}(?i:\s+(?:citizen|national|passport(?:\s+holder)?|nationality)s?\b)",
            rf"{demonym}(?i:\s+(?:student|applicant|graduate)s?\b)(?!(?i:\s+visa))",
        )]

    def find(self, text: str) -> Country | None:
        if text.isascii() and self.ascii_gate is not None and self.ascii_gate.isdisjoint(_tokens(text).words):
            return None  # every cue names a country, and no country's first word is in the text
        for cue in self.cues:
            match = cue.search(text)
            if match:
                if match.groupdict().get("name"):
                    return self.names.entity(match.group("name"))
                return self.demonyms.entity(match.group("demonym"))
        return None


DEGREE_FAMILIES = {
    "medicine_bachelor": ("mbbs", "mbchb", "mb chb", "mb bchir", "bm bch", "bm bs", "bmbs", "mb bch bao",
                          "bachelor of medicine", "bachelor of medicine and bachelor of surgery"),
    "md": ("md", "mdcm", "doctor of medicine", "mchd", "doctor of medicine and surgery"),
    "llb": ("llb", "bachelor of laws", "bcl"),
    "jd": ("jd", "juris doctor"),
    "llm": ("llm", "master of laws"),
    "mba": ("mba", "emba", "executive mba", "master of business administration"),
    "phd": ("phd", "dphil", "doctorate", "doctoral", "doctor of philosophy"),
    "master": ("master", "masters", "master's", "ms", "msc", "ma", "meng", "sm", "mphil", "mres", "mpa", "mpp",
               "mph", "mfin", "mst", "msc&t", "laurea magistrale"),
    "bachelor": ("bachelor", "bachelors", "bachelor's", "undergraduate", "ba", "bs", "bsc", "beng", "ab", "sb",
                 "bse", "bmath", "bcs", "be", "bcomm", "bcom", "ba/bs", "laurea"),
    "state_exam": ("staatsexamen", "state examination", "state exam"),
}
_FAMILY_OF = {alias: family for family, aliases in DEGREE_FAMILIES.items() for alias in aliases}


def field_key(field: str) -> str:
    """A programme's field, compared case- and whitespace-insensitively."""
    return re.sub(r"\s+", " ", field.strip().lower())


def degree_family(degree: str, field: str) -> str:
    """`MBBS` and `bachelor` + `medicine` are the same family; `MS` and `MSc` too."""
    d = re.sub(r"\s+", " ", degree.strip().lower().replace(".", "").replace("(hons)", "").strip())
    family = _FAMILY_OF.get(d)
    if family is None:  # "Bachelor of Science", "Master of Engineering", ...
        family = next((f for f in ("bachelor", "master") if d.startswith(f)), d)
    subject = field_key(field)
    if family == "bachelor" and subject == "medicine":
        return "medicine_bachelor"
    if family == "bachelor" and subject == "law":
        return "llb"
    return family
