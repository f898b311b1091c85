"""The knowledge base: the shipped KB validates, lookups find what a text names, and broken KBs fail clearly."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml
from helpers import REPO

from trainer.kb.schema import KBError
from trainer.kb.knowledge_base import KnowledgeBase
from trainer.kb.loader import AS_OF, URL, load_kb

KB_DIR = REPO / "data" / "kb"


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return load_kb(KB_DIR)


def all_facts(kb):
    """(where, source, as_of) for every sourced statement in the KB."""
    for c in kb.countries:
        for name in ("student_visa", "health_insurance", "work_rights"):
            fact = getattr(c, name)
            if fact is not None:
                yield f"{c.code}.{name}", fact.source, fact.as_of
        for i, fact in enumerate(c.notes):
            yield f"{c.code}.notes[{i}]", fact.source, fact.as_of
    for u in kb.universities:
        yield u.id, u.source, u.as_of
        for i, n in enumerate(u.not_offered):
            yield f"{u.id}.not_offered[{i}]", n.source, n.as_of
        for i, fact in enumerate(u.notes):
            yield f"{u.id}.notes[{i}]", fact.source, fact.as_of
    for entity in (*kb.scholarships, *kb.tests, *kb.rules):
        yield entity.id, entity.source, entity.as_of


# The shipped KB

def test_shipped_kb_loads_with_enough_of_everything(kb):
    assert kb.version["version"] == "2026.12" and kb.version["as_of"] == "2026-12"
    destinations = [c for c in kb.countries if c.destination]
    assert len(destinations) >= 15
    assert len([c for c in kb.countries if not c.destination]) >= 15
    assert len(kb.universities) >= 40
    assert sum(len(u.not_offered) for u in kb.universities) >= 25
    assert len(kb.scholarships) >= 20
    assert len(kb.rules) >= 15
    assert {t.id for t in kb.tests} >= {"ielts", "toefl-ibt", "pte-academic", "duolingo", "gre", "gmat"}
    assert all(c.student_visa is not None and c.student_visa.name for c in destinations)
    # the generator asks about admissions at a university of every destination
    assert all(any(u.country == c.code and u.programmes for u in kb.universities) for c in destinations)


def test_every_fact_has_an_official_url_and_a_date(kb):
    facts = list(all_facts(kb))
    assert len(facts) > 200
    for where, source, as_of in facts:
        assert URL.match(source) and source.startswith(("http://", "https://")), where
        assert AS_OF.match(as_of), where
    for fact in kb.facts_for(countries=kb.countries, universities=kb.universities, scholarships=kb.scholarships,
                             tests=kb.tests):
        assert fact.text and URL.match(fact.source) and AS_OF.match(fact.as_of)


def test_known_facts_are_stated_carefully(kb):
    assert kb.country("GB").student_visa.name == "Student visa"
    assert kb.country("AU").student_visa.name == "Student visa (subclass 500)"
    assert kb.country("CA").student_visa.name == "study permit"
    assert "not covered by Medicare" in kb.country("AU").health_insurance.text
    assert "48 hours per fortnight" in kb.country("AU").work_rights.text
    assert "24 hours a week" in kb.country("CA").work_rights.text
    commonwealth = {c.code for c in kb.countries if c.commonwealth_member}
    assert {"IN", "BD", "PK", "NG", "KE", "GH", "LK", "GB", "CA", "AU", "NZ", "SG", "RW"} <= commonwealth
    assert not {"BR", "MX", "US", "IE", "NP", "ET", "CN", "ZW"} & commonwealth
    assert kb.offers("eth-zurich", "Bachelor", "Human Medicine") is True  # since 2017: not a "no medicine" school


def test_kb_version_is_json_for_cards_and_reports(kb):
    import json

    assert json.loads(json.dumps(kb.version)) == kb.version


# Finding names

@pytest.mark.parametrize(("text", "codes"), [
    ("I want to study in the US next year.", ["US"]),
    ("Could you tell us more about it?", []),
    ("U.S. universities and the States", ["US"]),
    ("Is the UK or Australia better?", ["GB", "AU"]),
    ("Britain, then Germany", ["GB", "DE"]),
    ("Australian universities", ["AU"]),
    ("the states of Germany", ["DE"]),
    ("Northern Ireland", ["GB"]),
    ("UNSW is in New South Wales", []),
    ("UBC in British Columbia, Canada", ["CA"]),
    ("Latin American students", []),
    ("Türkiye, also called Turkey", ["TR"]),
])
def test_find_countries(kb, text, codes):
    assert [c.code for c in kb.find_countries(text)] == codes


@pytest.mark.parametrize(("text", "ids"), [
    ("How do I get into Stanford?", ["stanford"]),
    ("stanford university and MIT", ["stanford", "mit"]),
    ("a limit of submit and mit", []),
    ("MS in Data Science at Harvard Medical School", ["harvard-medical-school"]),
    ("Harvard Medical School or Harvard Law School", ["harvard", "harvard-medical-school"]),
    ("ETH Zurich, also called ETH", ["eth-zurich"]),
    ("King’s College London", ["kcl"]),
    ("University of California, Berkeley", ["berkeley"]),
    ("HEC Montréal", []),
    ("The London School of Economics (LSE)", ["lse"]),
])
def test_find_universities(kb, text, ids):
    assert [u.id for u in kb.find_universities(text)] == ids


def test_find_scholarships_and_tests(kb):
    assert [s.id for s in kb.find_scholarships("Apply for the Chevening Scholarship or Gates Cambridge.")] == \
        ["chevening", "gates-cambridge"]
    assert [s.id for s in kb.find_scholarships("Erasmus Mundus Action 2 was replaced")] == ["erasmus-mundus-action-2"]
    assert [s.id for s in kb.find_scholarships("the Fulbright U.S. Student Program")] == ["fulbright-us-student"]
    assert kb.find_scholarships("We visited the Eiffel Tower.") == []
    assert [t.id for t in kb.find_tests("Take the IELTS or TOEFL, then the GRE.")] == ["ielts", "toefl-ibt", "gre"]
    assert [t.id for t in kb.find_tests("my ielts score")] == ["ielts"]
    assert kb.find_tests("I sat in the act of reading.") == []


@pytest.mark.parametrize(("text", "code"), [
    ("Hi, I'm from Nigeria and want to study in Canada.", "NG"),
    ("I am Indian and I want to do an MBA.", "IN"),
    ("As a Brazilian, can I get a Commonwealth Scholarship?", "BR"),
    ("My home country is Nepal.", "NP"),
    ("I need an Australian student visa. I am from Ghana.", "GH"),
    ("I'm a Kenyan student.", "KE"),
    ("I come from the Philippines", "PH"),
    ("I'm from the US", "US"),
    ("I want an Australian student visa.", None),
    ("I am an American university student", None),
    ("What are the IELTS requirements for Cambridge?", None),
])
def test_home_country(kb, text, code):
    home = kb.home_country(text)
    assert (home.code if home else None) == code


# Questions

def test_offers(kb):
    assert kb.offers("stanford", "bachelor", "medicine") is False
    assert kb.offers("stanford", "MBBS", "Medicine") is False
    assert kb.offers("stanford", "MD", "Medicine") is True
    assert kb.offers(kb.university("mit"), "MBBS", "Medicine") is False  # no medical school at all
    assert kb.offers("harvard", "MS", "Data Science") is True
    assert kb.offers("harvard-medical-school", "MS", "Data Science") is False
    assert kb.offers("stanford", "PhD", "Physics") is None  # the KB does not say
    assert kb.offers("no-such-university", "BSc", "Physics") is None


def test_eligible(kb):
    assert kb.eligible("commonwealth-scholarships", "BR") is False
    assert kb.eligible("commonwealth-scholarships", "IN") is True
    assert kb.eligible("commonwealth-scholarships", "GB") is False
    assert kb.eligible("commonwealth-scholarships", "XX") is None
    assert kb.eligible("no-such-scholarship", "IN") is None
    assert kb.eligible("marshall", "US") is True and kb.eligible("marshall", "IN") is False
    assert kb.eligible("gates-cambridge", "GB") is False and kb.eligible("gates-cambridge", "VN") is True
    assert kb.eligible("holland-scholarship", "DE") is False and kb.eligible("holland-scholarship", "IN") is True
    assert kb.eligible("holland-scholarship", "CH") is None  # deliberately left undecided
    assert kb.eligible("daad", "IN") is None  # depends on the programme


def test_scholarship_host_any_is_none_and_discontinued_are_marked(kb):
    assert kb.scholarship("erasmus-mundus").host_country is None
    assert {s.id for s in kb.scholarships if s.discontinued} >= {"endeavour", "gates-millennium"}
    names = kb.known_scholarship_names()
    assert "Chevening Scholarships" in names and "Monbukagakusho" in names


def test_facts_for_reads_well_and_carries_corrections(kb):
    texts = [f.text for f in kb.facts_for(countries=[kb.country("AU")], universities=[kb.university("stanford")],
                                          scholarships=[kb.scholarship("commonwealth-scholarships")],
                                          tests=[kb.find_tests("IELTS")[0]])]
    assert any(t.startswith("Australia: International students are not covered by Medicare") for t in texts)
    assert any(t.startswith("Stanford University does not offer MBBS in Medicine") for t in texts)
    assert any(t.startswith("Commonwealth Scholarships (study in United Kingdom") and "Brazil" in t for t in texts)
    assert any(t.startswith("IELTS:") for t in texts)
    assert len(texts) == len(set(texts))


def test_entities_are_hashable(kb):
    assert len({*kb.countries, *kb.universities, *kb.scholarships, *kb.tests, *kb.rules}) == \
        len(kb.countries) + len(kb.universities) + len(kb.scholarships) + len(kb.tests) + len(kb.rules)


# Rules

@pytest.mark.parametrize("rule_id", [r.id for r in load_kb(KB_DIR).rules])
def test_rule_flags_its_false_examples_and_spares_corrected_ones(kb, rule_id):
    rule = next(r for r in kb.rules if r.id == rule_id)
    assert rule.examples_false and rule.keywords and (rule.trigger is None) == bool(rule.terms)
    for sentence in rule.examples_false:
        assert rule.states(sentence) and rule.claim_spans(sentence), sentence
        assert rule in kb.rules_in(sentence), sentence
    for sentence in rule.examples_corrected:
        assert not rule.states(sentence), sentence
    assert rule.country is None or kb.country(rule.country)


def test_rule_triggers_join_into_one_regex(kb):
    triggered = [r for r in kb.rules if r.trigger is not None]
    joined = re.compile("|".join(f"(?:{r.trigger.pattern})" for r in triggered), re.IGNORECASE)
    for rule in triggered:
        for sentence in rule.examples_false:
            assert joined.search(sentence)


# Rules by meaning: an entity and a claim in one sentence, in any wording; a negation only in the claim's clauses

@pytest.mark.parametrize(("rule_id", "sentence"), [
    # a negation in another clause used to excuse the claim
    ("au-medicare-international-students",
     "International students can use Medicare for free, so you do not need any insurance."),
    # "or low-cost" used to excuse it ("cost" was a correcting cue)
    ("uk-nhs-free-without-surcharge",
     "The NHS provides free or low-cost healthcare to all UK residents, including international students."),
    # no rule caught it: the Medicare rule needs the word "Medicare"
    ("au-public-health-free-for-international-students",
     "Public hospitals treat emergencies free of charge for all residents, including international students."),
    ("au-public-health-free-for-international-students",
     "Overseas students are treated at no cost in public hospitals."),
])
def test_rules_flag_paraphrases_and_claims_negated_only_elsewhere(kb, rule_id, sentence):
    rule = next(r for r in kb.rules if r.id == rule_id)
    assert rule.states(sentence)


@pytest.mark.parametrize(("rule_id", "sentence"), [
    ("au-medicare-international-students", "Medicare, the public scheme, does not cover international students."),
    ("au-medicare-international-students", "You do not need Medicare: international students buy OSHC instead."),
    ("uk-nhs-free-without-surcharge", "NHS treatment is free at the point of use once you have paid the IHS."),
    ("uk-nhs-free-without-surcharge", "The NHS is not free for international students."),
    ("au-public-health-free-for-international-students",
     "Public hospitals do not treat international students free of charge; OSHC pays part of the bill."),
    ("au-public-health-free-for-international-students",
     "Public hospitals treat everyone in an emergency. International students pay, and it is not free."),
])
def test_rules_spare_corrections_in_the_claims_own_clause(kb, rule_id, sentence):
    rule = next(r for r in kb.rules if r.id == rule_id)
    assert not rule.states(sentence)


def test_a_negation_in_the_claims_clause_still_corrects_a_trigger_rule(kb):
    medicare_like = next(r for r in kb.rules if r.id == "uk-tier-4-visa")
    assert not medicare_like.states("You will not apply for a Tier 4 visa; it was replaced in 2020.")
    erasmus = next(r for r in kb.rules if r.id == "erasmus-mundus-eu-only")
    assert erasmus.states("Erasmus Mundus scholarships are only available to EU citizens, so do not apply.")
    assert not erasmus.states("Erasmus Mundus scholarships are not only available to EU citizens.")


# Destinations named by their own terms

@pytest.mark.parametrize(("text", "code"), [
    ("On an F-1 visa you can work unlimited hours off campus.", "US"),
    ("Your school issues the I-20 and you pay the SEVIS fee.", "US"),
    ("Wait for your CAS before applying; the BRP comes later.", "GB"),
    ("OSHC is a condition of the subclass 500 visa.", "AU"),
    ("After graduating you can apply for a PGWP.", "CA"),
    ("Apply for the D-2 visa at the embassy.", "KR"),
    ("ICA issues the Student's Pass.", "SG"),
    ("You may need an MVV before you travel.", "NL"),
    ("Open a blocked account (Sperrkonto) first.", "DE"),
])
def test_find_destinations_knows_each_countrys_own_terms(kb, text, code):
    assert [c.code for c in kb.find_destinations(text)] == [code]
    assert kb.find_countries(text) == []  # names only: the markers are a sibling's business


def test_find_destinations_lists_named_countries_first_and_ignores_ordinary_words(kb):
    assert [c.code for c in kb.find_destinations("Canada or the UK? With a CAS and OPT...")] == ["CA", "GB", "US"]
    assert kb.find_destinations("You can opt out, or pass the test, and keep the account blocked.") == []


# Validation: broken copies of the shipped KB

def broken_copy(tmp_path, file: str, change):
    """Copy the KB to tmp_path, apply `change` to one file's parsed YAML, and return the folder."""
    folder = tmp_path / "kb"
    shutil.copytree(KB_DIR, folder)
    path = folder / file
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return folder


def entry(data, section, ident):
    return next(e for e in data[section] if e.get("id", e.get("code")) == ident)


@pytest.mark.parametrize(("file", "change", "message"), [
    ("universities.yaml", lambda d: entry(d, "universities", "stanford")["not_offered"][0].pop("source"),
     r"universities\.yaml: universities\[0\] \(stanford\)\.not_offered\[0\]\.source: required key is missing$"),
    ("universities.yaml", lambda d: entry(d, "universities", "mit").update(source="www.mit.edu"),
     r"universities\.yaml: universities\[\d+\] \(mit\)\.source: 'www\.mit\.edu' is not an http\(s\) URL$"),
    ("universities.yaml", lambda d: entry(d, "universities", "mit").update(source=""),
     r"universities\.yaml: universities\[\d+\] \(mit\)\.source: is empty; every fact needs the official"),
    ("tests.yaml", lambda d: entry(d, "tests", "ielts").update(as_of="Nov 2026"),
     r"tests\.yaml: tests\[0\] \(ielts\)\.as_of: 'Nov 2026' is not a YYYY-MM or YYYY-MM-DD date$"),
    ("tests.yaml", lambda d: entry(d, "tests", "gre").update(as_of="2026-13"),
     r"tests\.yaml: tests\[\d+\] \(gre\)\.as_of: '2026-13'"),
    ("countries.yaml", lambda d: entry(d, "countries", "AU")["work_rights"].update(as_of="2023-02-30"),
     r"countries\.yaml: countries\[\d+\] \(AU\)\.work_rights\.as_of: '2023-02-30' is not a real date$"),
    ("countries.yaml", lambda d: entry(d, "countries", "AU").update(destination="maybe"),
     r"countries\.yaml: countries\[\d+\] \(AU\)\.destination: expected true or false, got 'maybe'$"),
    ("universities.yaml", lambda d: entry(d, "universities", "tum").update(country="XX"),
     r"universities\.yaml: universities\[\d+\] \(tum\)\.country: 'XX' is not a country in the knowledge base$"),
    ("universities.yaml", lambda d: entry(d, "universities", "tum").update(aliases={"TUM": 1}),
     r"universities\.yaml: universities\[\d+\] \(tum\)\.aliases: expected a list, got \{'TUM': 1\}$"),
    ("scholarships.yaml", lambda d: entry(d, "scholarships", "chevening")["eligibility"]["countries"].append("QQ"),
     r"scholarships\.yaml: scholarships\[0\] \(chevening\)\.eligibility\.countries\[\d+\]: 'QQ' is neither a country"),
    ("scholarships.yaml", lambda d: d["scholarships"].append(dict(entry(d, "scholarships", "rhodes"))),
     r"scholarships\.yaml: scholarships\[\d+\] \(rhodes\)\.id: 'rhodes' is used twice \(first at "
     r".*scholarships\.yaml: scholarships\[\d+\] \(rhodes\)\)$"),
    ("rules.yaml", lambda d: entry(d, "rules", "uk-tier-4-visa").update(trigger=r"Tier (4"),
     r"rules\.yaml: rules\[\d+\] \(uk-tier-4-visa\)\.trigger: not a valid regex"),
    ("rules.yaml", lambda d: entry(d, "rules", "uk-tier-4-visa").update(trigger=r"\bTier 5\b"),
     r"rules\.yaml: rules\[\d+\] \(uk-tier-4-visa\)\.examples\.false: the trigger does not match"),
    ("rules.yaml", lambda d: entry(d, "rules", "uk-tier-4-visa").update(trigger=r"(?i)tier[\s-]?4"),
     r"rules: the triggers do not combine into one regex"),
    ("rules.yaml", lambda d: entry(d, "rules", "uk-tier-4-visa").update(terms=["Tier 4"]),
     r"rules\.yaml: rules\[\d+\] \(uk-tier-4-visa\): give either `trigger` \(one regex\) or `terms`"),
    ("rules.yaml", lambda d: entry(d, "rules", "uk-nhs-free-without-surcharge")["terms"].append(r"\bsurcharge\b"),
     r"rules\.yaml: rules\[\d+\] \(uk-nhs-free-without-surcharge\)\.examples\.false: not every term occurs in"),
    ("rules.yaml", lambda d: entry(d, "rules", "au-medicare-international-students")["examples"]["corrected"].append(
        "International students can use Medicare, so they do not buy insurance."),
     r"\(au-medicare-international-students\)\.examples\.corrected: the rule would flag the corrected sentence"),
    ("countries.yaml", lambda d: entry(d, "countries", "CA")["markers"].append("OSHC"),
     r"countries\.yaml: countries\[\d+\] \(AU\)\.markers: 'OSHC' already names CA$"),
    ("rules.yaml", lambda d: entry(d, "rules", "uk-tier-4-visa").update(examples={"flase": ["x"]}),
     r"rules\.yaml: rules\[\d+\] \(uk-tier-4-visa\)\.examples\.flase: unknown key \(did you mean 'false'\?\)$"),
    ("universities.yaml", lambda d: entry(d, "universities", "caltech").update(programs=[]),
     (r"universities\.yaml: universities\[\d+\] \(caltech\)\.programs: unknown key "
      r"\(did you mean 'programmes'\?\)$")),
    ("universities.yaml", lambda d: entry(d, "universities", "caltech").pop("country"),
     r"universities\.yaml: universities\[\d+\] \(caltech\)\.country: required key is missing$"),
    ("universities.yaml", lambda d: entry(d, "universities", "caltech")["programmes"].append("BS Physics"),
     r"universities\.yaml: universities\[\d+\] \(caltech\)\.programmes\[\d+\]: expected a mapping, got 'BS Physics'$"),
    ("universities.yaml", lambda d: entry(d, "universities", "yale")["aliases"].append("Stanford"),
     r"universities\.yaml: universities\[\d+\] \(yale\)\.aliases: 'Stanford' already names stanford$"),
    ("version.yaml", lambda d: d.update(versions={}),
     r"version\.yaml: versions: unknown key \(did you mean 'version'\?\)$"),
])
def test_broken_kb_names_file_entry_and_rule(tmp_path, file, change, message):
    folder = broken_copy(tmp_path, file, change)
    with pytest.raises(KBError, match=message):
        load_kb(folder)


def test_unquoted_norway_code_gets_a_hint(tmp_path):
    folder = tmp_path / "kb"
    shutil.copytree(KB_DIR, folder)
    path = folder / "countries.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace('code: "NO"', "code: NO"), encoding="utf-8")
    with pytest.raises(KBError, match=r"countries\.yaml: countries\[\d+\]\.code: .*quote it"):
        load_kb(folder)


def test_missing_folder_and_version_are_clear(tmp_path):
    with pytest.raises(KBError, match="knowledge base folder not found"):
        load_kb(tmp_path / "nowhere")
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "countries.yaml").write_text("countries: []\n", encoding="utf-8")
    with pytest.raises(KBError, match="no `version` block"):
        load_kb(tmp_path / "kb")


def test_load_is_cached_until_a_file_changes(tmp_path):
    folder = tmp_path / "kb"
    shutil.copytree(KB_DIR, folder)
    first = load_kb(folder)
    assert load_kb(folder) is first
    version = folder / "version.yaml"
    version.write_text(version.read_text(encoding="utf-8").replace('"2026.12"', '"2027.01"'), encoding="utf-8")
    import os

    os.utime(version, (version.stat().st_atime, version.stat().st_mtime + 5))
    assert load_kb(folder).version["version"] == "2027.01"


def test_cli_audit_uses_the_kb(capsys):
    from trainer.__main__ import main

    assert main(["audit", str(REPO / "tests" / "data" / "studyabroadgpt_sample.jsonl"), "--kb", str(KB_DIR)]) == 0
    out = capsys.readouterr().out
    assert "13 conversations" in out
    assert "kb_contradiction" not in out  # the sample states none of the KB's false claims
