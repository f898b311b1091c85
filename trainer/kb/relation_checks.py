"""The relation checks that need a computation, each registered under the name relations.yaml gives in `check:`.

Everything a check reads about its kind (cue vocabulary, facts with their sources) is declared in the relation's
YAML section; what stays here is the arithmetic or lookup a template cannot express: a number against a limit, a
year against a validity period, a programme against a university's list, an entry route against a country's
degree structure, a citizenship against a tuition rule, the order of "apply" and "before" around a document.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from trainer.kb.mentions import Mention, Named, Question, names_of, spans
from trainer.kb.relations import COMPARISON, NEGATED, Relation, correction, relation_check

_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
                 "ten": 10, "twelve": 12, "eighteen": 18, "twenty": 20, "thirty": 30, "forty": 40}
_NUMBER = r"(\d+(?:\.\d+)?|" + "|".join(_NUMBER_WORDS) + r")"


def _number(text: str) -> float:
    return float(_NUMBER_WORDS.get(text.lower(), text) if not text[0].isdigit() else text)


def _slug(name: str) -> str:
    """An id made of a name: `Graduate Route` -> `graduate-route`."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _site(name: str, entity, term: str = "") -> Mention:
    """A mention built by a check for a fact the question names only indirectly (a scheme, a rule)."""
    return Mention(name, entity, 0, 0, term or entity.name)


@dataclass(frozen=True)
class SchemeFact:
    """A named scheme with a length: a post-study work route."""

    country: str
    name: str
    aliases: tuple[str, ...]
    max_months: int
    """The longest the scheme runs for the graduates this fact is about."""
    fact: str
    source: str
    as_of: str
    longer_months: int = 0
    """A longer length for some graduates (PhD, STEM)."""
    longer_when: str = ""
    """A regex naming those graduates in the question ("PhD", "STEM")."""
    by_level: Mapping[str, int] = field(default_factory=dict)
    """The length by the level of the degree the question names (Stamp 1G: 12 months after a bachelor's)."""

    @property
    def id(self) -> str:
        return _slug(self.name)


@relation_check("duration_limit", facts=SchemeFact, cues=("duration", "post_study"))
def duration_limit(relation: Relation, question: Question, kb) -> list:
    """A scheme said to run longer than it does ("the 5-year Graduate Route"); a scheme is named by its name, or by
    its country and words for post-study job hunting ("Germany gives graduates three years to look for a job")."""
    out = []
    for sentence in question.sentences:
        text = sentence.text
        if COMPARISON.search(text):
            continue
        for scheme, term in _schemes(relation, question, sentence):
            limit = _scheme_limit(question, scheme)
            for m in relation.cue("duration").finditer(text):
                months = _number(m.group(1)) * (12 if m.group(2).lower().startswith("y") else 1)
                if months <= limit or NEGATED.search(text[max(0, m.start() - 12):m.start()]):
                    continue
                out.append(correction(relation, kb, _site("scheme", scheme, term),
                                      _site("place", kb.country(scheme.country)), claimed=m.group(0),
                                      fact_text=scheme.fact, cited=scheme))
                break
    return out


def _schemes(relation: Relation, question: Question, sentence) -> list[tuple[SchemeFact, str]]:
    """The schemes a sentence is about, with the words that name each."""
    named = [(f, sentence.text[a:b]) for f in relation.named_facts(sentence.text)
             for a, b in spans(sentence.text, (f.name, *f.aliases))[:1]]
    if named or not relation.cue("post_study").search(sentence.text):
        return named
    places = {m.key: m.text for m in question.mentions("place", sentence)}
    return [(f, places[f.country]) for f in relation.facts if f.country in places]


def _scheme_limit(question: Question, scheme: SchemeFact) -> float:
    """The longest the scheme runs for the graduate the question describes: by the one level it names, and longer
    where it names the graduates who get more (unless it says they are not: "isn't STEM", "non-STEM")."""
    limit = scheme.max_months
    levels = {m.key for m in question.mentions("level")}
    if len(levels) == 1 and levels & set(scheme.by_level):
        limit = scheme.by_level[levels.pop()]
    if scheme.longer_months:
        for m in re.finditer(scheme.longer_when, question.text, re.IGNORECASE):
            before = question.text[max(0, m.start() - 14):m.start()]
            if not NEGATED.search(before) and not re.search(r"non[\s-]?$", before, re.IGNORECASE):
                return max(limit, scheme.longer_months)
    return limit


@dataclass(frozen=True)
class TestNumbers:
    """What numbers a test's results can be: its scale and how many years a result stays valid."""

    test: str
    low: float
    high: float
    fact: str
    source: str
    as_of: str
    valid_years: int = 0
    """0 where results do not expire."""
    also: tuple[float, ...] = ()
    """A second scale (low, high) the test reports on (GRE sections 130-170, the total 260-340)."""


@relation_check("test_numbers", facts=TestNumbers, cues=("score_context", "validity", "valid_for", "still_valid"))
def test_numbers(relation: Relation, question: Question, kb) -> list:
    """A score off the test's scale ("175 on GRE verbal"), or a result said to be valid longer than it is ("IELTS
    lasts 5 years", "my 2021 IELTS is still valid")."""
    numbers = {f.test: f for f in relation.facts}
    this_year = int(kb.version.get("as_of", "2026")[:4])
    out = []
    for sentence in question.sentences:
        text = sentence.text
        for m in question.mentions("test", sentence):
            facts = numbers.get(m.entity.id)
            if facts is None:
                continue
            claimed = _off_scale(relation, text, m, sentence, facts) or _expired(relation, text, facts, this_year)
            if claimed:
                out.append(correction(relation, kb, m, m, claimed=claimed, fact_text=facts.fact, cited=facts))
                break
    return out


def _off_scale(relation: Relation, text: str, mention: Mention, sentence, facts: TestNumbers) -> str | None:
    a, b = mention.start - sentence.start, mention.end - sentence.start
    window = text[max(0, a - 30):a] + " " * (b - a) + text[b:b + 30]
    for m in re.finditer(r"(?<![\d.,])(\d{1,4}(?:\.\d)?)(?![\d,]|\.\d)(?!\s*(?:%|percent|hours?|h\b|weeks?|years?|"
                         r"months?|days?|euros?|€|\$|usd|gbp|students?|times?|attempts?|universit|schools?|"
                         r"points? (?:more|higher|lower|less)))", window, re.IGNORECASE):
        value = float(m.group(1))
        if 1900 <= value <= 2100:  # a year
            continue
        if not relation.cue("score_context").search(window) and value > facts.high * 2:
            continue
        scales = [(facts.low, facts.high)] + ([tuple(facts.also)] if len(facts.also) == 2 else [])
        if not any(low <= value <= high for low, high in scales):
            return f"a score of {m.group(1)}"
    return None


def _expired(relation: Relation, text: str, facts: TestNumbers, this_year: int) -> str | None:
    if not facts.valid_years or not relation.cue("validity").search(text):
        return None
    for m in relation.cue("valid_for").finditer(text):
        years = _number(m.group(1)) / (12 if m.group(2).lower().startswith("m") else 1)
        if years != facts.valid_years:
            return f"results valid for {m.group(0)}"
    if relation.cue("still_valid").search(text):
        for m in re.finditer(r"\b(19\d\d|20\d\d)\b", text):
            if this_year - int(m.group(1)) > facts.valid_years:
                return f"a result from {m.group(1)} still valid"
    return None


@dataclass(frozen=True)
class VisaDocument:
    """A document a destination's student visa cannot be applied for without."""

    country: str
    document: str
    aliases: tuple[str, ...]
    fact: str
    source: str
    as_of: str

    @property
    def name(self) -> str:
        return self.document

    @property
    def id(self) -> str:
        return f"{self.country.lower()}-{_slug(self.document)}"


@relation_check("prerequisite", facts=VisaDocument, cues=("apply", "before_document", "after_document", "after_visa"))
def prerequisite(relation: Relation, question: Question, kb) -> list:
    """Applying for the visa before or without the document it needs ("apply for my F-1 before the I-20 comes")."""
    out = []
    for sentence in question.sentences:
        text = sentence.text
        for doc in relation.named_facts(text):
            found = spans(text, (doc.document, *doc.aliases))
            if not found:
                continue
            a, b = found[0]
            before = relation.cue("apply").search(text) and relation.cue("before_document").search(text[max(0, a - 60):a])
            after = (relation.cue("after_document").search(text[b:b + 60]) and relation.cue("apply").search(text[:a])
                     or relation.cue("after_visa").search(text[b:b + 80]))
            if not (before or after):
                continue
            place = kb.country(doc.country)
            out.append(correction(relation, kb, _site("document", doc, text[a:b]), _site("place", place),
                                  fact_text=doc.fact, cited=doc))
            break
    return out


@dataclass(frozen=True)
class TuitionRule:
    """Who pays tuition at public universities of a country, a state or one university."""

    id: str
    country: str
    fact: str
    source: str
    as_of: str
    free_for: tuple[str, ...] = ("eea",)
    """Citizenships that pay no tuition: country codes, or `eea` for every EU/EEA country."""
    regions: tuple[str, ...] = ()
    """State or region names the rule is limited to (Baden-Württemberg); empty: the whole country."""
    universities: tuple[str, ...] = ()
    """University ids the rule is limited to (or that lie in its regions)."""


@relation_check("tuition", facts=TuitionRule, cues=("free", "pays", "everyone", "all_places"))
def tuition(relation: Relation, question: Question, kb) -> list:
    """Free tuition claimed for citizens who pay it or for everyone where some pay it; or tuition claimed for
    citizens who pay none ("I'm Swiss, so I'll pay the non-EU fees at Karolinska")."""
    text = question.text
    free, pays = relation.cue("free").search(text), relation.cue("pays").search(text)
    if not (free or pays) or COMPARISON.search(text):
        return []
    home = question.mentions("nationality")
    country = kb.country(home[0].key) if home else None
    out = []
    for rule in relation.facts:
        where = _tuition_site(relation, question, kb, rule)
        if where is None:
            continue
        place = ("at " if where.type == "university" else "in ") + where.entity.name
        if free and relation.cue("everyone").search(text):
            claimed = f"Public universities {place} charge no tuition to anyone."
        elif free and country is not None and not _free_for(country, rule):
            claimed = f"Public universities {place} charge no tuition to citizens of {country.name}."
        elif pays and country is not None and _free_for(country, rule):
            claimed = f"Public universities {place} charge tuition to citizens of {country.name}."
        else:
            continue
        out.append(correction(relation, kb, where, _site("place", kb.country(rule.country)), claimed=claimed,
                              fact_text=rule.fact, cited=rule, entry=rule.id))
    return out


def _tuition_site(relation: Relation, question: Question, kb, rule: TuitionRule) -> Mention | None:
    """Where the question places the student that the rule covers (a university, a region, the country), or None."""
    universities = [m for m in question.mentions("university") if m.key in rule.universities]
    if universities:
        return universities[0]
    found = spans(question.text, rule.regions)
    if found:
        return Mention("region", Named(rule.id, rule.regions[0], rule.regions), *found[0], rule.regions[0])
    countries = [m for m in question.mentions("place") if m.key == rule.country and m.type == "place"]
    if countries and (not rule.regions and not rule.universities or relation.cue("all_places").search(question.text)):
        return countries[0]
    return None


def _free_for(home, rule: TuitionRule) -> bool:
    return home.code in rule.free_for or ("eea" in rule.free_for and home.eea_member)


@relation_check("work_limit", cues=("work", "unlimited", "weekly_hours", "break", "off_campus", "first_period"))
def work_limit(relation: Relation, question: Question, kb) -> list:
    """More work during term than the destination allows: unlimited, full-time, any job, or more weekly hours
    (`work_limits` in work.yaml; the fact is the country's `work_rights`)."""
    limits = {w.country: w for w in kb.work_limits}
    places = [m for m in question.mentions("place") if m.key in limits]
    places += [m for m in question.mentions("document") if m.entity.country in limits]
    codes = {getattr(m.entity, "country", None) if m.type == "document" else m.key for m in places}
    if len(codes) != 1 or not relation.cue("work").search(question.text):
        return []
    code = codes.pop()
    limit, place = limits[code], kb.country(code)
    for sentence in question.sentences:
        text = sentence.text
        hours = relation.cue("weekly_hours").search(text)
        if not (relation.cue("work").search(text) or hours) or relation.cue("break").search(text) or \
                COMPARISON.search(text):
            continue
        claimed = None
        if limit.off_campus_after_months and relation.cue("off_campus").search(text) and \
                relation.cue("first_period").search(text) and not NEGATED.search(text):
            claimed = "off campus in their first academic year"
        if (m := relation.cue("unlimited").search(text)) and not NEGATED.search(text[:m.start()]):
            words = m.group(0)  # the visitor's own words stay in the claim (an answer repeating them restates it)
            claimed = f"with {words}" if words.lower().startswith("no ") else \
                "unlimited hours" if words.lower() == "unlimited" else words
        for m in relation.cue("weekly_hours").finditer(text):
            weekly = int(m.group(1)) / (2 if m.group(2).lower() == "fortnight" else 1)
            if limit.hours_per_week is not None and weekly > limit.hours_per_week:
                claimed = f"{m.group(1)} hours a {m.group(2).lower()}"
        if claimed is not None:
            work = Named(limit.id, "work")
            return [correction(relation, kb, _site("work", work), _site("place", place), claimed=claimed,
                               fact_text=place.work_rights.text, cited=place.work_rights, entry=limit.id)]
    return []


@relation_check("programme", cues=("school:medicine", "school:law", "school:business administration", "held"))
def programme(relation: Relation, question: Question, kb) -> list:
    """A programme a named university does not offer (the audit's `programme_not_offered`, on the question); a
    school it does not have ("Princeton's medical school") is every programme of its field."""
    from trainer.kb.claims import programme_pattern

    out = []
    for m in question.mentions("university"):
        university = m.entity
        for n in university.not_offered:
            school = relation.cue(f"school:{n.field.lower()}")
            if _unheld(relation, kb, university, programme_pattern(n.degree, n.field), question.text, n.field) or (
                    school is not None and school.search(question.text)
                    and not any(p.field.lower() == n.field.lower() for p in university.programmes)):
                offer = Named(f"{n.degree} in {n.field}", f"{n.degree} in {n.field}", (n.degree, n.field))
                out.append(correction(relation, kb, m, _site("programme", offer), fact_text=n.correction,
                                      cited=n))
    return out


@relation_check("degree_entry", cues=("undergraduate", "graduate_route"))
def degree_entry(relation: Relation, question: Question, kb) -> list:
    """Undergraduate entry to a field that the country enters only after a first degree (medicine in the US)."""
    text = question.text
    if not relation.cue("undergraduate").search(text) or relation.cue("graduate_route").search(text):
        return []
    out = []
    for subject in {m.key: m for m in question.mentions("field")}.values():
        for place in _places(question):
            structure = kb.degree_structure(place.key, subject.key)
            if structure is not None and structure.entry == "graduate":
                out.append(correction(relation, kb, _site("structure", structure, subject.text), place,
                                      field=subject.key, fact_text=structure.fact, cited=structure,
                                      subjects=((subject.key, *structure.degrees),)))
    return out


@relation_check("field_test")
def field_test(relation: Relation, question: Question, kb) -> list:
    """A field's admission test that the country (or the named school's country) does not use."""
    out = []
    fields = {m.key for m in question.mentions("field")}
    for test in question.mentions("test"):
        if test.entity.field is None or test.entity.field not in fields:
            continue
        for place in _places(question):
            structure = kb.degree_structure(place.key, test.entity.field)
            if structure is None or test.key in structure.tests:
                continue
            used = " or ".join(kb.test(t).name for t in structure.tests) or "no common admission test"
            out.append(correction(relation, kb, test, place, field=test.entity.field, used=used,
                                  fact_text=structure.fact, cited=structure, entry=structure.id,
                                  subjects=(names_of(test.entity),)))
    return out


def _unheld(relation: Relation, kb, university, pattern: re.Pattern, text: str, field_name: str) -> bool:
    """Whether `pattern` names a programme the student wants, not one they have ("finish my biology bachelor's"), nor
    one the university does offer ("Toronto's MD", where the pattern for the MBBS also reads "MD")."""
    for m in pattern.finditer(text):
        degree = re.sub(r"(?:'s|[^\w.])+$", "", m.group(0).split()[0])
        if not relation.cue("held").search(text[max(0, m.start() - 40):m.start()]) and \
                kb.offers(university, degree, field_name) is not True:
            return True
    return False


def _places(question: Question) -> list[Mention]:
    """The destinations a question names, each once (a university stands for its country)."""
    return list({m.key: m for m in question.mentions("place") if m.entity.destination}.values())
