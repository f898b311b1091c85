"""The knowledge base (KB): versioned, sourced facts that ground synthetic data and drive the audit.

`data/kb/*.yaml` holds countries, universities, scholarships, admission tests and rules (common false claims with
a regex that spots them). Every fact carries an official `source` URL and an `as_of` date. `load_kb(path)` reads
every YAML file in the folder, validates it (sources, dates, ids, country codes, regexes, the rules' own
examples, unknown keys) and returns a frozen `KnowledgeBase`; a mistake raises one `KBError` naming the file, the
entry and the rule broken.

Lookups are built once at load time. `find_*` splits a text into lowercase word tokens once (C-level string
operations, cached for the last text, so the audit's several questions about one conversation share the work)
and looks names up by their first token, then confirms the whole phrase: no loop over entities and no regex
scan, which keeps the audit fast on thousands of long conversations.

Names match whole words in any case; an alias written without lowercase letters (`US`, `UK`, `MIT`, `U.S.`) or
starting with a lowercase word (`the States`) matches only exactly as written, so "us" and "mit" never hit.
"""

from __future__ import annotations

import datetime
import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

LEVELS = ("bachelor", "master", "phd")
REGIONS = ("africa", "americas", "asia", "europe", "oceania")
GROUPS = ("all", "commonwealth", "non_commonwealth", "eea", "non_eea") + REGIONS
"""Named country groups an eligibility list may use; the loader expands them to the KB's own countries."""
SECTIONS = ("version", "countries", "universities", "scholarships", "tests", "rules")

AS_OF = re.compile(r"^\d{4}-(0[1-9]|1[0-2])(-\d{2})?$")
URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$")
ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
CODE = re.compile(r"^[A-Z]{2}$")


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


@dataclass(frozen=True)
class Rule:
    """A common false claim: `trigger` matches a sentence stating it, `unless` a cue that the sentence corrects it."""

    id: str
    topic: str
    country: str | None
    trigger: re.Pattern
    unless: re.Pattern | None
    claim: str
    fact: str
    source: str
    as_of: str
    keywords: tuple[str, ...] = ()
    """Words (whole, any case) of which every sentence the trigger can match contains one: a cheap gate."""
    examples_false: tuple[str, ...] = ()
    examples_corrected: tuple[str, ...] = ()

    @property
    def examples(self) -> dict[str, list[str]]:
        """{"false": sentences the rule flags, "corrected": sentences it lets through}, as written in the YAML."""
        return {"false": list(self.examples_false), "corrected": list(self.examples_corrected)}


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


def _name_tokens(name: str) -> tuple[bytes, ...]:
    return tuple(_tokens(name).joined.split())


class _Names:
    """Every name of one entity type, indexed by its first lowercase token and mapped back to its entity."""

    def __init__(self, names: Iterable[tuple[str, Any]], alternation: bool = False):
        self.exact: dict[str, Any] = {}
        self.folded: dict[str, Any] = {}
        self.index: dict[bytes, list[tuple[bytes, tuple[bytes, ...], str | None, Any]]] = {}
        for name, entity in names:
            key = _normalise(name)
            sensitive = _case_sensitive(name)
            if sensitive:
                self.exact[key] = entity
            else:
                self.folded[key.lower()] = entity
            tokens = _name_tokens(name)
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
        key = _normalise(matched)
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
    """The loaded, validated KB. Build it with `load_kb`."""

    version: dict[str, str]
    """The `version` block (version, as_of, ...), quoted in dataset cards and audit reports."""
    countries: tuple[Country, ...]
    universities: tuple[University, ...]
    scholarships: tuple[Scholarship, ...]
    tests: tuple[AdmissionTest, ...]
    rules: tuple[Rule, ...]
    path: str = ""

    def __post_init__(self):
        countries = _Names([(n, c) for c in self.countries for n in (c.name, *c.aliases, *c.demonyms)]
                           + [(n, None) for c in self.countries for n in c.not_mentions])
        object.__setattr__(self, "_by_code", {c.code: c for c in self.countries})
        object.__setattr__(self, "_countries", countries)
        object.__setattr__(self, "_universities",
                           _Names((n, u) for u in self.universities for n in (u.name, *u.aliases)))
        object.__setattr__(self, "_scholarships",
                           _Names((n, s) for s in self.scholarships for n in (s.name, *s.aliases)))
        object.__setattr__(self, "_tests", _Names((n, t) for t in self.tests for n in (t.name, *t.aliases)))
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

    def find_universities(self, text: str) -> list[University]:
        """Universities named in `text`, in order of first mention."""
        return self._universities.find(text)

    def find_scholarships(self, text: str) -> list[Scholarship]:
        """Scholarships named in `text`, in order of first mention."""
        return self._scholarships.find(text)

    def find_tests(self, text: str) -> list[AdmissionTest]:
        """Admission tests named in `text`, in order of first mention."""
        return self._tests.find(text)

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
        family, subject = _degree_family(degree, field), _field_key(field)
        if any(_degree_family(p.degree, p.field) == family and _field_key(p.field) == subject for p in u.programmes):
            return True
        if any(_degree_family(n.degree, n.field) == family and _field_key(n.field) == subject
               for n in u.not_offered):
            return False
        # A recorded gap (no law school, no medical school) covers every degree in that field.
        if any(_field_key(n.field) == subject for n in u.not_offered) and \
                not any(_field_key(p.field) == subject for p in u.programmes):
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

def _normalise(name: str) -> str:
    return re.sub(r"[\s\-‐–]+", " ", name.replace("’", "'")).strip()


def _case_sensitive(name: str) -> bool:
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


def _field_key(field: str) -> str:
    return re.sub(r"\s+", " ", field.strip().lower())


def _degree_family(degree: str, field: str) -> str:
    """`MBBS` and `bachelor` + `medicine` are the same family; `MS` and `MSc` too."""
    d = re.sub(r"\s+", " ", degree.strip().lower().replace(".", "").replace("(hons)", "").strip())
    family = _FAMILY_OF.get(d)
    if family is None:  # "Bachelor of Science", "Master of Engineering", ...
        family = next((f for f in ("bachelor", "master") if d.startswith(f)), d)
    subject = _field_key(field)
    if family == "bachelor" and subject == "medicine":
        return "medicine_bachelor"
    if family == "bachelor" and subject == "law":
        return "llb"
    return family


# Loading and validation

_CACHE: dict[tuple[str, tuple[tuple[str, float], ...]], KnowledgeBase] = {}


def load_kb(path: str | Path = "data/kb") -> KnowledgeBase:
    """Read and validate every `*.yaml` in the KB folder; cached until a file changes."""
    folder = Path(path)
    if not folder.is_dir():
        raise KBError(f"{folder}: knowledge base folder not found")
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise KBError(f"{folder}: no .yaml files in the knowledge base folder")
    key = (str(folder.resolve()), tuple((f.name, f.stat().st_mtime) for f in files))
    if key not in _CACHE:
        _CACHE.clear()  # one KB at a time is plenty; old versions only waste memory
        _CACHE[key] = _Loader(folder, files).build()
    return _CACHE[key]


class _Loader:
    def __init__(self, folder: Path, files: Sequence[Path]):
        self.folder = folder
        self.sections: dict[str, list[tuple[Path, int, Any]]] = {s: [] for s in SECTIONS if s != "version"}
        self.version: tuple[Path, Any] | None = None
        self.wheres: dict[str, dict[str, str]] = {}
        for file in files:
            try:
                raw = yaml.safe_load(file.read_text(encoding="utf-8"))
            except yaml.YAMLError as exc:
                raise KBError(f"{file}: not valid YAML: {exc}") from None
            if raw is None:
                continue
            if not isinstance(raw, dict):
                raise KBError(f"{file}: expected a mapping with any of {', '.join(SECTIONS)} at the top level")
            for section, value in raw.items():
                if section not in SECTIONS:
                    raise KBError(f"{file}: {section}: unknown section{_suggest(str(section), SECTIONS)}")
                if section == "version":
                    if self.version is not None:
                        raise KBError(f"{file}: version: already given in {self.version[0]}")
                    self.version = (file, value)
                    continue
                if not isinstance(value, list):
                    raise KBError(f"{file}: {section}: expected a list")
                self.sections[section].extend((file, i, item) for i, item in enumerate(value))

    def build(self) -> KnowledgeBase:
        version = self._version()
        countries = self._all("countries", self._country, key="code")
        self.codes = {c.code: c for c in countries}
        kb = KnowledgeBase(
            version=version,
            countries=countries,
            universities=self._all("universities", self._university),
            scholarships=self._all("scholarships", self._scholarship),
            tests=self._all("tests", self._test),
            rules=self._all("rules", self._rule),
            path=str(self.folder),
        )
        self._check_names(kb)
        combined = "|".join(f"(?:{r.trigger.pattern})" for r in kb.rules)
        try:  # the audit joins every trigger into one regex: named groups or backreferences would break it
            re.compile(combined, re.IGNORECASE)
        except re.error as exc:
            raise KBError(f"{self.folder}: rules: the triggers do not combine into one regex ({exc}); avoid inline "
                          "global flags such as (?i), named groups and backreferences") from None
        return kb

    # Generic helpers

    def _all(self, section: str, build, key: str = "id") -> tuple:
        seen = self.wheres.setdefault(section, {})
        out = []
        for file, index, raw in self.sections[section]:
            where = _where(file, section, index, raw, key)
            if not isinstance(raw, dict):
                raise KBError(f"{where}: expected a mapping")
            entity = build(raw, where)
            ident = getattr(entity, key)
            if ident in seen:
                raise KBError(f"{where}: duplicate {key} {ident!r} (first in {seen[ident]})")
            seen[ident] = where
            out.append(entity)
        return tuple(out)

    def _version(self) -> dict[str, str]:
        if self.version is None:
            raise KBError(f"{self.folder}: no `version` block (version, as_of) in any file")
        file, raw = self.version
        where = f"{file}: version"
        if not isinstance(raw, dict):
            raise KBError(f"{where}: expected a mapping with version and as_of")
        _keys(raw, where, required=("version", "as_of"), optional=("author", "note", "license"))
        out = {str(k): _text(v, f"{where}.{k}") for k, v in raw.items()}
        _as_of(out["as_of"], f"{where}.as_of")
        return out

    # Entities

    def _country(self, raw: dict, where: str) -> Country:
        _keys(raw, where, required=("code", "name", "region", "commonwealth_member"),
              optional=("aliases", "demonyms", "eea_member", "destination", "student_visa", "visa_portal",
                        "study_portal", "health_insurance", "work_rights", "notes", "not_mentions"))
        code = _text(raw["code"], f"{where}.code")
        if not CODE.match(code):
            raise KBError(f"{where}: code {code!r} is not an ISO 3166-1 alpha-2 code (two capital letters)")
        region = _text(raw["region"], f"{where}.region")
        if region not in REGIONS:
            raise KBError(f"{where}: region {region!r} is not one of {', '.join(REGIONS)}")
        destination = _bool(raw.get("destination", False), f"{where}.destination")
        visa = _fact(raw["student_visa"], f"{where}: student_visa", named=True) if raw.get("student_visa") else None
        if destination and visa is None:
            raise KBError(f"{where}: a destination needs a student_visa")
        return Country(
            code=code, name=_text(raw["name"], f"{where}.name"),
            aliases=_texts(raw.get("aliases", []), f"{where}.aliases"),
            demonyms=_texts(raw.get("demonyms", []), f"{where}.demonyms"), region=region,
            commonwealth_member=_bool(raw["commonwealth_member"], f"{where}.commonwealth_member"),
            eea_member=_bool(raw.get("eea_member", False), f"{where}.eea_member"), destination=destination,
            student_visa=visa,
            visa_portal=_url(raw["visa_portal"], f"{where}: visa_portal") if raw.get("visa_portal") else None,
            study_portal=_url(raw["study_portal"], f"{where}: study_portal") if raw.get("study_portal") else None,
            health_insurance=_fact(raw["health_insurance"], f"{where}: health_insurance")
            if raw.get("health_insurance") else None,
            work_rights=_fact(raw["work_rights"], f"{where}: work_rights") if raw.get("work_rights") else None,
            notes=_facts(raw.get("notes", []), f"{where}: notes"),
            not_mentions=_texts(raw.get("not_mentions", []), f"{where}.not_mentions"),
        )

    def _university(self, raw: dict, where: str) -> University:
        _keys(raw, where, required=("id", "name", "country", "source", "as_of"),
              optional=("aliases", "programmes", "not_offered", "notes"))
        programmes = []
        for i, p in enumerate(_list(raw.get("programmes", []), f"{where}: programmes")):
            at = f"{where}: programmes[{i}]"
            if not isinstance(p, dict):
                raise KBError(f"{at}: expected a mapping with degree and field")
            _keys(p, at, required=("degree", "field"))
            programmes.append(Programme(_text(p["degree"], f"{at}.degree"), _text(p["field"], f"{at}.field")))
        negatives = []
        for i, n in enumerate(_list(raw.get("not_offered", []), f"{where}: not_offered")):
            at = f"{where}: not_offered[{i}]"
            if not isinstance(n, dict):
                raise KBError(f"{at}: expected a mapping with degree, field, correction, source and as_of")
            _keys(n, at, required=("degree", "field", "correction", "source", "as_of"))
            negatives.append(NotOffered(_text(n["degree"], f"{at}.degree"), _text(n["field"], f"{at}.field"),
                                        _text(n["correction"], f"{at}.correction"), _url(n["source"], at),
                                        _as_of(n["as_of"], at)))
        for i, n in enumerate(negatives):
            if any(_degree_family(p.degree, p.field) == _degree_family(n.degree, n.field)
                   and _field_key(p.field) == _field_key(n.field) for p in programmes):
                raise KBError(f"{where}: not_offered[{i}] ({n.degree} in {n.field}) is also listed in programmes")
        return University(
            id=self._id(raw, where), name=_text(raw["name"], f"{where}.name"),
            aliases=_texts(raw.get("aliases", []), f"{where}.aliases"), country=self._code(raw["country"], where,
                                                                                          "country"),
            programmes=tuple(programmes), not_offered=tuple(negatives), source=_url(raw["source"], where),
            as_of=_as_of(raw["as_of"], where), notes=_facts(raw.get("notes", []), f"{where}: notes"),
        )

    def _scholarship(self, raw: dict, where: str) -> Scholarship:
        _keys(raw, where, required=("id", "name", "host_country", "levels", "about", "eligibility", "source",
                                    "as_of"), optional=("aliases", "discontinued"))
        host = _text(raw["host_country"], f"{where}.host_country")
        levels = _texts(raw["levels"], f"{where}.levels")
        for level in levels:
            if level not in LEVELS:
                raise KBError(f"{where}: levels: {level!r} is not one of {', '.join(LEVELS)}")
        return Scholarship(
            id=self._id(raw, where), name=_text(raw["name"], f"{where}.name"),
            aliases=_texts(raw.get("aliases", []), f"{where}.aliases"),
            host_country=None if host == "any" else self._code(host, where, "host_country"), levels=levels,
            about=_text(raw["about"], f"{where}.about"), eligibility=self._eligibility(raw["eligibility"], where),
            discontinued=_bool(raw.get("discontinued", False), f"{where}.discontinued"),
            source=_url(raw["source"], where), as_of=_as_of(raw["as_of"], where),
        )

    def _eligibility(self, raw: Any, where: str) -> Eligibility:
        at = f"{where}: eligibility"
        if not isinstance(raw, dict):
            raise KBError(f"{at}: expected a mapping with text and countries")
        _keys(raw, at, required=("text", "countries"), optional=("excluded", "undecided"))
        lists = {}
        for name in ("countries", "excluded", "undecided"):
            value = raw.get(name, [])
            if name == "countries" and value is None:
                lists[name] = None
                continue
            lists[name] = [self._code_or_group(c, f"{at}.{name}") for c in _texts(value, f"{at}.{name}")]
        explicit: dict[str, str] = {}
        for name, entries in lists.items():
            for entry in entries or ():
                if entry in self.codes:
                    if entry in explicit:
                        raise KBError(f"{at}: {entry} is listed in both {explicit[entry]} and {name}")
                    explicit[entry] = name
        # An explicit code beats a group; among groups, excluded beats countries beats undecided.
        verdict: dict[str, str] = dict(explicit)
        for name in ("excluded", "countries", "undecided"):
            for entry in lists[name] or ():
                if entry not in self.codes:
                    for code in self._group(entry):
                        verdict.setdefault(code, name)
        return Eligibility(
            text=_text(raw["text"], f"{at}.text"),
            countries=None if lists["countries"] is None else
            frozenset(c for c, v in verdict.items() if v == "countries"),
            excluded=frozenset(c for c, v in verdict.items() if v == "excluded"),
            undecided=frozenset(c for c, v in verdict.items() if v == "undecided"),
        )

    def _test(self, raw: dict, where: str) -> AdmissionTest:
        _keys(raw, where, required=("id", "name", "kind", "about", "score_range", "source", "as_of"),
              optional=("aliases", "validity"))
        kind = _text(raw["kind"], f"{where}.kind")
        if kind not in ("language", "aptitude"):
            raise KBError(f"{where}: kind {kind!r} is not language or aptitude")
        return AdmissionTest(
            id=self._id(raw, where), name=_text(raw["name"], f"{where}.name"),
            aliases=_texts(raw.get("aliases", []), f"{where}.aliases"), kind=kind,
            about=_text(raw["about"], f"{where}.about"), score_range=_text(raw["score_range"], f"{where}.score_range"),
            validity=_text(raw["validity"], f"{where}.validity") if raw.get("validity") else None,
            source=_url(raw["source"], where), as_of=_as_of(raw["as_of"], where),
        )

    def _rule(self, raw: dict, where: str) -> Rule:
        _keys(raw, where, required=("id", "topic", "country", "keywords", "trigger", "claim", "fact", "source",
                                    "as_of", "examples"), optional=("unless",))
        keywords = _texts(raw["keywords"], f"{where}.keywords")
        for keyword in keywords:
            if len(_name_tokens(keyword)) != 1:
                raise KBError(f"{where}: keywords: {keyword!r} must be one word (letters and digits only)")
        trigger = _regex(raw["trigger"], f"{where}: trigger")
        unless = _regex(raw["unless"], f"{where}: unless") if raw.get("unless") else None
        examples = raw["examples"]
        at = f"{where}: examples"
        if not isinstance(examples, dict):
            raise KBError(f"{at}: expected a mapping with false (and corrected) sentences")
        examples = {"false" if k is False else k: v for k, v in examples.items()}  # YAML reads `false:` as False
        _keys(examples, at, required=("false",), optional=("corrected",))
        false = _texts(examples["false"], f"{at}.false")
        corrected = _texts(examples.get("corrected", []), f"{at}.corrected")
        if not false:
            raise KBError(f"{at}.false: give at least one sentence stating the false claim")
        if unless is not None and not corrected:
            raise KBError(f"{at}.corrected: a rule with `unless` needs at least one corrected sentence")
        for sentence in false:
            if not {k.lower().encode("utf-8") for k in keywords} & _tokens(sentence).words:
                raise KBError(f"{at}.false: none of the keywords ({', '.join(keywords)}) is in {sentence!r}")
            if not trigger.search(sentence):
                raise KBError(f"{at}.false: the trigger does not match {sentence!r}")
            if unless is not None and unless.search(sentence):
                raise KBError(f"{at}.false: `unless` excuses the false sentence {sentence!r}")
        for sentence in corrected:
            if trigger.search(sentence) and not (unless is not None and unless.search(sentence)):
                raise KBError(f"{at}.corrected: the rule would flag the corrected sentence {sentence!r}")
        country = raw["country"]
        return Rule(
            id=self._id(raw, where), topic=_text(raw["topic"], f"{where}.topic"),
            country=None if country is None else self._code(country, where, "country"), trigger=trigger,
            unless=unless, claim=_text(raw["claim"], f"{where}.claim"), fact=_text(raw["fact"], f"{where}.fact"),
            source=_url(raw["source"], where), as_of=_as_of(raw["as_of"], where), keywords=keywords,
            examples_false=false,
            examples_corrected=corrected,
        )

    # References

    def _id(self, raw: dict, where: str) -> str:
        ident = _text(raw["id"], f"{where}.id")
        if not ID.match(ident):
            raise KBError(f"{where}: id {ident!r} must be lowercase letters, digits and hyphens")
        return ident

    def _code(self, value: Any, where: str, key: str) -> str:
        code = _text(value, f"{where}.{key}")
        if code not in self.codes:
            raise KBError(f"{where}: {key} {code!r} is not a country in the knowledge base"
                          f"{_suggest(code, self.codes)}")
        return code

    def _code_or_group(self, value: str, where: str) -> str:
        if value in self.codes or value in GROUPS:
            return value
        raise KBError(f"{where}: {value!r} is neither a country code in the knowledge base nor a group "
                      f"({', '.join(GROUPS)})")

    def _group(self, group: str) -> list[str]:
        tests = {
            "all": lambda c: True,
            "commonwealth": lambda c: c.commonwealth_member,
            "non_commonwealth": lambda c: not c.commonwealth_member,
            "eea": lambda c: c.eea_member,
            "non_eea": lambda c: not c.eea_member,
        }
        test = tests.get(group, lambda c: c.region == group)
        return [code for code, c in self.codes.items() if test(c)]

    def _check_names(self, kb: KnowledgeBase) -> None:
        """Two entities of one kind may not share a name or alias: a mention must map to one of them."""
        for section, entities, fields in (
            ("countries", kb.countries, ("name", "aliases", "demonyms")),
            ("universities", kb.universities, ("name", "aliases")),
            ("scholarships", kb.scholarships, ("name", "aliases")),
            ("tests", kb.tests, ("name", "aliases")),
        ):
            owner: dict[str, str] = {}
            for entity in entities:
                ident = getattr(entity, "id", None) or entity.code
                for f in fields:
                    value = getattr(entity, f)
                    for name in (value,) if isinstance(value, str) else value:
                        tokens = _name_tokens(name)
                        if not tokens:
                            raise KBError(f"{self.wheres[section][ident]}: {f}: {name!r} has no letters or digits")
                        # names match by their word tokens, so "U.S." and "U S" are the same name
                        key = _normalise(name) if _case_sensitive(name) else b" ".join(tokens).decode()
                        if owner.get(key, ident) != ident:
                            raise KBError(f"{self.wheres[section][ident]}: {f}: {name!r} already names "
                                          f"{owner[key]}")
                        owner[key] = ident


def _where(file: Path, section: str, index: int, raw: Any, key: str) -> str:
    ident = raw.get(key) if isinstance(raw, dict) else None
    return f"{file}: {section}[{index}]" + (f" ({key}={ident})" if ident else "")


def _suggest(key: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _keys(raw: Mapping, where: str, required: Sequence[str], optional: Sequence[str] = ()) -> None:
    allowed = (*required, *optional)
    for key in raw:
        if key not in allowed:
            raise KBError(f"{where}: unknown key {key!r}{_suggest(str(key), allowed)}")
    for key in required:
        if key not in raw:
            raise KBError(f"{where} has no {key}")


def _text(value: Any, where: str) -> str:
    if isinstance(value, bool):  # the Norway problem: YAML reads an unquoted NO (or yes, on, off) as a boolean
        raise KBError(f"{where}: expected text, got {value!r}; quote it (\"NO\") so YAML does not read a boolean")
    if not isinstance(value, (str, int, float)) or not str(value).strip():
        raise KBError(f"{where}: expected non-empty text, got {value!r}")
    return str(value).strip()


def _texts(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    return tuple(_text(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where)))


def _list(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise KBError(f"{where}: expected a list, got {value!r}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise KBError(f"{where}: expected true or false, got {value!r}")
    return value


def _url(value: Any, where: str) -> str:
    if value is None or value == "":
        raise KBError(f"{where} has no source")
    if not isinstance(value, str) or not URL.match(value):
        raise KBError(f"{where}: source {value!r} is not an http(s) URL")
    return value


def _as_of(value: Any, where: str) -> str:
    if value is None or value == "":
        raise KBError(f"{where} has no as_of date")
    if isinstance(value, datetime.date):  # YAML reads an unquoted 2026-11-01 as a date
        value = value.isoformat()
    text = str(value)
    if not AS_OF.match(text):
        raise KBError(f"{where}: as_of {value!r} is not a YYYY-MM or YYYY-MM-DD date")
    if len(text) == 10:
        try:
            datetime.date.fromisoformat(text)
        except ValueError:
            raise KBError(f"{where}: as_of {value!r} is not a real date") from None
    return text


def _fact(raw: Any, where: str, named: bool = False) -> Fact:
    if not isinstance(raw, dict):
        raise KBError(f"{where}: expected a mapping with text, source and as_of")
    _keys(raw, where, required=("name", "text", "source", "as_of") if named else ("text", "source", "as_of"))
    return Fact(text=_text(raw["text"], f"{where}.text"), source=_url(raw.get("source"), where),
                as_of=_as_of(raw.get("as_of"), where), name=_text(raw["name"], f"{where}.name") if named else None)


def _facts(value: Any, where: str) -> tuple[Fact, ...]:
    return tuple(_fact(f, f"{where}[{i}]") for i, f in enumerate(_list(value, where)))


def _regex(value: Any, where: str) -> re.Pattern:
    text = _text(value, where)
    try:
        return re.compile(text, re.IGNORECASE)
    except re.error as exc:
        raise KBError(f"{where}: not a valid regex: {exc}") from None
