"""The knowledge base (KB): versioned, sourced facts that ground synthetic data and drive the audit.

`data/kb/*.yaml` holds countries, universities, scholarships, admission tests and rules (common false claims with
a regex that spots them). Every fact carries an official `source` URL and an `as_of` date. This module holds the
types and the rules' sentence logic; `trainer.kb.loader.load_kb(path)` reads and validates the files and returns a
frozen `KnowledgeBase` (`trainer.kb.knowledge_base`).

Lookups are built once at load time. `find_*` splits a text into lowercase word tokens once (C-level string
operations, cached for the last text, so the audit's several questions about one conversation share the work)
and looks names up by their first token, then confirms the whole phrase: no loop over entities and no regex
scan, which keeps the audit fast on thousands of long conversations.

Names match whole words in any case; an alias written without lowercase letters (`US`, `UK`, `MIT`, `U.S.`) or
starting with a lowercase word (`the States`) matches only exactly as written, so "us" and "mit" never hit.

A rule states a false claim in a sentence when its `trigger` matches, or when all its `terms` occur (an entity, who
it is about, the claim, in any order), and no correction does: a negation in the clauses the claim spans, or an
`unless` cue in the sentence (`Rule.states`). A negation elsewhere in the sentence ("..., so you do not need any
insurance") corrects nothing."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from trainer import UserError


class KBError(UserError, ValueError):
    """The knowledge base is invalid; the message names the file, the entry and the rule broken."""


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
    region: str
    commonwealth_member: bool
    aliases: tuple[str, ...] = ()
    demonyms: tuple[str, ...] = ()
    eea_member: bool = False
    """EU member or Iceland, Liechtenstein, Norway."""
    destination: bool = False
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
    country: str
    source: str
    as_of: str
    aliases: tuple[str, ...] = ()
    programmes: tuple[Programme, ...] = ()
    not_offered: tuple[NotOffered, ...] = ()
    """Programmes it does not offer, each with the correction a counsellor should give."""
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


class PremiseExamples:
    """`examples_flag` and `examples_pass` of an entry whose `examples` holds the questions the premise check must
    correct with it (`flag`) and must let through (`pass`)."""

    examples: Mapping[str, tuple[str, ...]]

    @property
    def examples_flag(self) -> tuple[str, ...]:
        return tuple(self.examples.get("flag", ()))

    @property
    def examples_pass(self) -> tuple[str, ...]:
        return tuple(self.examples.get("pass", ()))


@dataclass(frozen=True)
class Group(PremiseExamples):
    """A membership set (the Schengen Area, the Commonwealth, the Ivy League): which KB countries or universities
    belong to it. `members` lists every KB entity of `kind` that does (the loader checks the flags it can), so any
    other KB entity of that kind is known not to."""

    id: str
    name: str
    kind: str
    """`country` or `university`."""
    members: frozenset[str]
    """Country codes or university ids."""
    about: str
    source: str
    as_of: str
    aliases: tuple[str, ...] = ()
    examples: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """`flag`: questions the premise check must correct with this group; `pass`: ones it must let through."""


@dataclass(frozen=True)
class DegreeStructure(PremiseExamples):
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
    examples: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """`flag`: questions the premise check must correct with this entry; `pass`: ones it must let through."""


@dataclass(frozen=True)
class WorkLimit(PremiseExamples):
    """How much a student may work during term in one destination; the fact is the country's `work_rights`."""

    country: str
    hours_per_week: int | None
    """The weekly limit during term, or None where the limit is not weekly (a yearly number of hours or days)."""
    off_campus_after_months: int = 0
    """Months of study before off-campus work is allowed at all (F-1: one academic year); 0 where there is no wait."""
    examples: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """`flag`: questions the premise check must correct with this entry; `pass`: ones it must let through."""

    @property
    def id(self) -> str:
        return f"work-{self.country.lower()}"


@dataclass(frozen=True)
class AdmissionTest:
    id: str
    name: str
    kind: str
    """`language` or `aptitude`."""
    about: str
    score_range: str
    source: str
    as_of: str
    aliases: tuple[str, ...] = ()
    validity: str | None = None
    field: str | None = None
    """`medicine` or `law` for a test only that field uses (MCAT, LSAT, UCAT); None otherwise."""
    levels: tuple[str, ...] = ()
    """The levels whose admission uses the test (the SAT: bachelor); empty where any level may."""


@dataclass(frozen=True)
class ApplicationSystem:
    """Where students apply: a national or regional application service and the countries, universities and levels
    it serves (systems.yaml)."""

    id: str
    name: str
    about: str
    source: str
    as_of: str
    countries: tuple[str, ...]
    """Every country the system serves."""
    aliases: tuple[str, ...] = ()
    universities: tuple[str, ...] = ()
    """Where it serves only some universities of its country: every KB university it serves."""
    levels: tuple[str, ...] = ()
    """The levels it handles; every level where empty."""


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
