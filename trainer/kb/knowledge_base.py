"""`KnowledgeBase`: the loaded, frozen knowledge base and its lookups (entities named in a text, the rules about a
country, a university's programmes, group memberships), built once at load time by `trainer.kb.loader`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainer.kb.names import (TOKEN_CACHE, HomeCues, NameIndex, TextTokens, name_variants, remember_tokens,
                              text_tokens)
from trainer.kb.schema import (AdmissionTest, ApplicationSystem, Country, DegreeStructure, Fact, Group, KBError, Rule, Scholarship,
                               University, WorkLimit, degree_family, field_key)


@dataclass(frozen=True)
class KnowledgeBase:
    """The loaded, validated KB. Build it with `trainer.kb.loader.load_kb`."""

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
    systems: tuple[ApplicationSystem, ...] = ()
    relations: tuple[Any, ...] = ()
    """The relation kinds the premise check reads (`trainer.kb.relations.Relation`), from relations.yaml."""
    vocabulary: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    """Words for levels and fields (`trainer.kb.mentions.Named`), from relations.yaml."""

    def __post_init__(self):
        countries = NameIndex([(n, c) for c in self.countries for n in (c.name, *c.aliases, *c.demonyms)]
                           + [(n, None) for c in self.countries for n in c.not_mentions])
        object.__setattr__(self, "_by_code", {c.code: c for c in self.countries})
        object.__setattr__(self, "_countries", countries)
        object.__setattr__(self, "_markers", NameIndex((m, c) for c in self.countries for m in c.markers))
        # a place name that holds a university's short name ("British Columbia", "District of Columbia") is not it
        object.__setattr__(self, "_universities",
                           NameIndex([(n, u) for u in self.universities for n in (u.name, *u.aliases)]
                                     + [(n, None) for c in self.countries for n in c.not_mentions]
                                     + [("District of Columbia", None)]))
        object.__setattr__(self, "_scholarships", NameIndex((v, s) for s in self.scholarships
                                                            for n in (s.name, *s.aliases) for v in name_variants(n)))
        object.__setattr__(self, "_tests", NameIndex((n, t) for t in self.tests for n in (t.name, *t.aliases)))
        object.__setattr__(self, "_systems",
                           NameIndex((n, s) for s in self.systems for n in (s.name, *s.aliases)))
        # level and field words match in any case ("Medical School", "Master's"); acronyms only as written
        object.__setattr__(self, "_vocabulary", {kind: NameIndex((n[0].upper() + n[1:], e) for e in entries
                                                                 for n in (e.name, *e.aliases))
                                                 for kind, entries in self.vocabulary.items()})
        object.__setattr__(self, "_name_of", {**{n.id: n.name for n in self.vocabulary.get("level", ())},
                                              **{u.id: u.name for u in self.universities},
                                              **{c.code: c.name for c in self.countries}})
        object.__setattr__(self, "_structures", {(d.country, d.field): d for d in self.degree_structures})
        object.__setattr__(self, "_groups", NameIndex((n, g) for g in self.groups for n in (g.name, *g.aliases)))
        object.__setattr__(self, "_test_by_id", {t.id: t for t in self.tests})
        object.__setattr__(self, "_by_id", {u.id: u for u in self.universities})
        object.__setattr__(self, "_scholarship_by_id", {s.id: s for s in self.scholarships})
        object.__setattr__(self, "_home", HomeCues(self.countries))
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

    def find_systems(self, text: str) -> list[ApplicationSystem]:
        """Application systems named in `text` (UCAS, Studielink), in order of first mention."""
        return self._systems.find(text)

    def name_words(self, sections: tuple[str, ...] = ("countries", "universities", "tests", "systems")) -> frozenset[str]:
        """The lowercase single words that name an entity of these sections (a country, a university, a test, an
        application system)."""
        cache = self.__dict__.setdefault("_name_words", {})
        if sections not in cache:
            names = [n for section in sections for e in getattr(self, section)
                     for n in (e.name, *e.aliases, *getattr(e, "demonyms", ()))]
            cache[sections] = frozenset(n.lower() for n in names if " " not in n)
        return cache[sections]

    def name_of(self, ident: str) -> str:
        """The name of the country, university or level with this code or id (the id itself when none has it)."""
        return self._name_of.get(ident, ident)

    def find_named(self, kind: str, text: str) -> list[Any]:
        """Levels or fields (`vocabulary[kind]`) whose words occur in `text`."""
        index = self._vocabulary.get(kind)
        return index.find(text) if index is not None else []

    def degree_structure(self, country: str, field_name: str) -> DegreeStructure | None:
        """How `field_name` is entered in `country`, or None when the KB does not say."""
        return self._structures.get((country, field_name))

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
        if text not in TOKEN_CACHE and len(texts) > 1:
            parts = [text_tokens(t) for t in texts]
            remember_tokens(text, TextTokens(frozenset().union(*(p.words for p in parts)),
                                    b" " + b" ".join(w for p in parts if (w := p.joined.strip())) + b" "))
        return text

    def words(self, text: str) -> frozenset[bytes]:
        """The lowercase word tokens of `text` (UTF-8), split once and shared with `find_*` and `rules_in`."""
        return text_tokens(text).words

    def rules_in(self, text: str) -> list[Rule]:
        """Rules whose keywords occur in `text`: the only ones whose trigger can match it. Much cheaper than running
        every trigger, since the words of a text are split once and shared with `find_*`."""
        words = text_tokens(text).words
        return [rule for rule, keywords in self._rule_keywords if not keywords.isdisjoint(words)]

    def home_country_span(self, text: str) -> tuple[Country, int, int] | None:
        """`home_country` and where the text names it."""
        return self._home.find_span(text)

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
