"""The premise check: false premises found from the KB's relations, answers that must carry the correction, the
held-out template set it is measured on, the KB entries' own examples, and `trainer check`."""

from __future__ import annotations

import difflib
import json
import re
import shutil

import pytest

from trainer.kb.audit import Auditor
from trainer.kb.schema import KBError
from trainer.kb.loader import SHIPPED_KB, load_kb
from trainer.kb.premise import PremiseChecker, answer_verdict

from trainer.eval import premise_sets as premise_set


@pytest.fixture(scope="module")
def kb():
    return load_kb()


@pytest.fixture(scope="module")
def checker(kb):
    return PremiseChecker(kb)


def kinds(checker, question):
    return {(c.kind, c.entry) for c in checker.check(question)}


@pytest.mark.parametrize("question, kind, entry", [
    ("Health insurance is optional for students in Germany, right?", "rule", "de-health-insurance-optional"),
    ("My I-20 from the University of Amsterdam hasn't arrived; is that normal for the Netherlands?", "document",
     "NL"),
    ("Will the Technical University of Munich send me my CAS?", "document", "DE"),
    ("Since Norway is an EU member, are fees lower there?", "membership", "eu"),
    ("MIT is an Ivy League school, so how do I apply?", "membership", "ivy-league"),
    ("Which department runs the MBA at Caltech?", "programme", "caltech"),
    ("Can I start law at Yale right after high school?", "degree_entry", "us-law"),
    ("What MCAT score do I need for medicine at the University of Edinburgh?", "admission_test", "gb-medicine"),
    ("Can Chevening pay for my master's in Canada?", "scholarship_host", "chevening"),
    ("Can I take my Rhodes Scholarship to Cambridge?", "scholarship_university", "rhodes"),
    ("Does the Swiss Government Excellence Scholarship fund a bachelor's degree?", "scholarship_level",
     "swiss-government-excellence"),
    ("I'm from Nepal; how do I apply for a Commonwealth Scholarship?", "scholarship_nationality",
     "commonwealth-scholarships"),
    ("While studying in Canada I can take any job I like, as many hours as I want, right?", "work_limit", "work-ca"),
    ("Is working 35 hours a week during the semester fine for students in the UK?", "work_limit", "work-gb"),
    ("How good is the law school at MIT?", "programme", "mit"),
])
def test_each_kind_of_false_premise_is_recognised_from_the_kb_relations(checker, question, kind, entry):
    assert (kind, entry) in kinds(checker, question)


@pytest.mark.parametrize("question", [
    "Health insurance is mandatory in Germany, isn't it?",
    "How long does my I-20 take for studying in the United States?",
    "Is the F-1 visa easier to get than a German national visa?",  # compared, not assumed
    "Norway is not in the EU, so what are the fees there?",
    "Since Columbia is an Ivy League school, how competitive is it?",
    "I'm from Nigeria and want to study in an EU country like Germany.",
    "I have a bachelor's in biology; can I apply to medical school in the US?",
    "Can Chevening fund my master's in the United Kingdom?",
    "I'm from India; how do I apply for a Commonwealth Scholarship?",
    "What is the best city for students?",
    "Can I work full-time in Canada during the winter break?",
    "Is 20 hours a week the limit for students in the UK?",
    "How good is the law school at Yale?",
])
def test_true_premises_and_comparisons_are_left_alone(checker, question):
    assert checker.check(question) == []


def test_a_conversation_names_the_turn_that_made_the_claim(checker):
    turns = [{"role": "user", "content": "Hi, I want to study in Europe."},
             {"role": "assistant", "content": "Happy to help."},
             {"role": "user", "content": "Switzerland is in the EU, right?"}]
    (correction,) = checker.check(turns)
    assert correction.message == 2 and correction.source.startswith("https://")
    assert "not in the European Union" in correction.fact


@pytest.mark.parametrize("answer, verdict", [
    ("Yes! Health insurance is optional, so you can skip it.", "affirmed"),
    ("Absolutely, many students go without it.", "affirmed"),
    ("Health insurance is optional for students in Germany. Enjoy your studies!", "restated"),
    ("German universities have great libraries and low fees.", "ignored"),
    ("No. You must have health insurance to enrol in Germany.", "corrected"),
    ("Actually, every student needs cover.", "corrected"),
    ("In Germany health insurance is not optional: you need it to enrol.", "corrected"),
])
def test_an_answer_must_carry_the_correction(checker, answer, verdict):
    (correction,) = checker.check("Health insurance is optional for students in Germany, right?")
    assert answer_verdict(correction, answer) == verdict
    flags = checker.check_answer([correction], answer)
    assert (flags[0].rule if flags else None) == {"affirmed": "premise_affirmed", "restated": "premise_affirmed",
                                                  "ignored": "premise_ignored", "corrected": None}[verdict]


def test_the_live_check_warns_about_an_answer_that_agrees_with_a_false_premise(kb):
    auditor = Auditor(kb)
    question = {"role": "user", "content": "Do I need an I-20 to study in Germany?"}
    flags = auditor.check_answer([question, {"role": "assistant", "content": "Yes! Ask your university for it."}])
    assert [f.rule for f in flags] == ["premise_affirmed"] and flags[0].message == 1
    assert "make-it-in-germany" in flags[0].source
    assert auditor.check_answer([question, {"role": "assistant", "content":
                                            "No, the I-20 is a US form; for Germany you need a national visa."}]) == []


def test_held_out_set_is_what_the_templates_write_and_stays_out_of_the_kb_examples(kb):
    rows = premise_set.load_held_out()
    assert rows == premise_set.generate(kb), "stale held-out file: python bench/premise_set.py --write"
    assert sum(r["false_premise"] for r in rows) >= 60 and sum(not r["false_premise"] for r in rows) >= 30
    examples = {q for e in (*kb.groups, *kb.degree_structures) for q in (*e.examples_flag, *e.examples_pass)}
    examples |= {q for r in kb.rules for q in (*r.examples_false, *r.examples_corrected)}
    assert not examples & {r["question"] for r in rows}


def test_on_the_held_out_set_premises_are_recognised_and_affirming_answers_flagged(checker):
    result = premise_set.measure(premise_set.load_held_out(), checker)
    assert result["recognised"] / result["false_premise"] >= 0.9, result["misses"]
    assert result["affirming_flagged"] / result["false_premise"] >= 0.9
    assert result["restating_flagged"] / result["false_premise"] >= 0.9
    assert result["false_alarms"] / result["true_premise"] <= 0.05, result["alarms"]
    assert result["correcting_flagged"] / result["false_premise"] <= 0.05, result["wrong_warnings"]


def test_on_the_rubric_no_true_premise_is_corrected(checker):
    result = premise_set.measure(premise_set.rubric_rows(), checker)
    assert result["false_alarms"] == 0, result["alarms"]
    assert result["recognised"] >= 22  # measured; BENCHMARKS.md lists what is still missed


# The visitor-voice set: questions written by someone who could not see the checker

KINDS = {"membership", "document", "visa_prerequisite", "application_system", "programme", "degree_entry",
         "admission_test", "scholarship_host", "scholarship_university", "scholarship_level", "scholarship_nationality",
         "work_limit", "post_study_work", "test_rule", "tuition", "universal"}


def _words(text):
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def test_the_visitor_set_covers_every_kind_and_no_kb_example_or_rule_copies_its_questions(kb):
    rows = premise_set.load_held_out(premise_set.VISITORS)
    assert len({r["id"] for r in rows}) == len(rows)
    false, true = [r for r in rows if r["false_premise"]], [r for r in rows if not r["false_premise"]]
    assert len(false) >= 100 and len(true) >= 50
    assert {r["kind"] for r in false} == KINDS and {r["kind"] for r in true} == KINDS
    sealed = premise_set.load_held_out(premise_set.SEALED)
    assert sum(r["false_premise"] for r in sealed) >= 60 and sum(not r["false_premise"] for r in sealed) >= 30
    questions = [_words(r["question"]) for r in (*rows, *sealed)]
    examples = [q for e in (*kb.groups, *kb.degree_structures, *kb.work_limits) for q in (*e.examples_flag,
                                                                                         *e.examples_pass)]
    examples += [q for r in kb.rules for q in (*r.examples_false, *r.examples_corrected)]
    examples += [q for r in kb.relations for q in (*r.spec.examples.get("flag", ()), *r.spec.examples.get("pass", ()))]
    rule_text = [p.pattern for r in kb.rules for p in (*r.patterns, *([r.unless] if r.unless else []))]
    rule_text += [p.pattern for r in kb.relations for p in r.cues.values()]
    for example in map(_words, examples):
        close = [q for q in questions if difflib.SequenceMatcher(None, example, q).ratio() > 0.75]
        assert not close, f"a KB example copies a visitor question: {example!r} ~ {close[0]!r}"
    for question in questions:  # no rule spells out a visitor's sentence (eight words or more in a row)
        grams = {" ".join(question.split()[i:i + 8]) for i in range(max(0, len(question.split()) - 7))}
        assert not any(g in _words(text) for text in rule_text for g in grams if len(g.split()) == 8)


def test_on_the_visitor_set_false_premises_are_recognised_and_true_ones_left_alone(checker):
    result = premise_set.measure(premise_set.visitor_rows(), checker)
    assert result["recognised"] / result["false_premise"] >= 0.9, result["misses"]
    assert result["affirming_flagged"] / result["false_premise"] >= 0.9
    assert result["false_alarms"] / result["true_premise"] <= 0.03, result["alarms"]
    assert result["correcting_flagged"] / result["false_premise"] <= 0.03, result["wrong_warnings"]


@pytest.fixture
def kb_copy(tmp_path):
    folder = tmp_path / "kb"
    shutil.copytree(SHIPPED_KB, folder)
    return folder


def test_a_group_example_the_check_does_not_correct_fails_the_load_naming_file_and_entry(kb_copy):
    path = kb_copy / "groups.yaml"
    path.write_text(path.read_text().replace("Trinity College Dublin is a Russell Group university, isn't it?",
                                             "Trinity College Dublin is lovely, isn't it?"))
    with pytest.raises(KBError, match=r"groups\.yaml: groups\[5\] \(russell-group\)\.examples\.flag: the premise "
                                      r"check does not correct \"Trinity College Dublin is lovely"):
        load_kb(kb_copy)


def test_a_pass_example_the_check_would_correct_fails_the_load(kb_copy):
    path = kb_copy / "degrees.yaml"
    path.write_text(path.read_text().replace("Which UCAT score do UK medical schools expect?",
                                             "Which MCAT score do UK medical schools expect?"))
    with pytest.raises(KBError, match=r"degrees\.yaml: degree_structures\[4\] \(gb-medicine\)\.examples\.pass"):
        load_kb(kb_copy)


def test_group_members_and_flags_are_checked(kb_copy):
    path = kb_copy / "groups.yaml"
    text = path.read_text()
    path.write_text(text.replace("members: [harvard, harvard-medical-school,",
                                 "members: [harvrd, harvard-medical-school,"))
    with pytest.raises(KBError, match=r"\(ivy-league\)\.members: 'harvrd' is not a university in the "
                                      r"knowledge base \(did you mean 'harvard'\?\)"):
        load_kb(kb_copy)
    path.write_text(text.replace("members: [GB, CA, AU, NZ, SG,", "members: [GB, CA, AU, NZ, SG, IE,"))
    with pytest.raises(KBError, match=r"commonwealth\)\.members: differs from the countries' commonwealth_member "
                                      r"\(only in members: \['IE'\]"):
        load_kb(kb_copy)


EXTRA_KINDS = """
relations:
  - id: award-campus
    about: An award that is held at one university asked about for another (declared in YAML only).
    subject: scholarship
    object: university
    holds: university
    claim: "{subject.name} pays for study at {object.name}."
    fact: "{subject.name} is held at {related} only."
    examples:
      flag: ["Knight-Hennessy would fund me at Yale, wouldn't it?"]
      pass: ["Knight-Hennessy would fund me at Stanford, wouldn't it?"]
  - id: minimum-age
    check: too_young
    about: A visitor younger than the youngest age a destination gives a student visa to.
    subject: place
    object: place
    cues:
      age: '\\b(?:i am|i''m|aged?) (\\d{1,2})\\b'
    claim: "A {age}-year-old can get a student visa for {object.name}."
    fact: "{fact_text}"
    facts:
      - {country: JP, years: 16, fact: "Japan's student visa needs a guardian under 16.",
         source: "https://www.mofa.go.jp/j_info/visit/visa/", as_of: "2026-11"}
    examples:
      flag: ["I'm 12 and want to study alone in Japan next year."]
      pass: ["I'm 19 and want to study in Japan next year."]
"""


def test_a_new_relation_kind_needs_only_a_yaml_section_and_at_most_one_registered_function(kb_copy):
    from dataclasses import dataclass

    from trainer.kb.relations import CHECKS, correction, relation_check

    @dataclass(frozen=True)
    class MinimumAge:
        country: str
        years: int
        fact: str
        source: str
        as_of: str

    def too_young(relation, question, kb):
        """The one function of the new kind: an age in the question against the destination's minimum."""
        found = [(m, int(age.group(1))) for m in question.mentions("place") for age in
                 relation.cue("age").finditer(question.text)]
        return [correction(relation, kb, m, m, age=age, fact_text=f.fact, cited=f)
                for m, age in found for f in relation.facts if f.country == m.key and age < f.years]

    (kb_copy / "extra_kinds.yaml").write_text(EXTRA_KINDS)
    with pytest.raises(KBError, match=r"extra_kinds\.yaml: relations\[1\] \(minimum-age\)\.check: 'too_young' is neither "
                                      r"`pair` nor a registered check"):
        load_kb(kb_copy)
    relation_check("too_young", facts=MinimumAge, cues=("age",))(too_young)
    try:
        checker = PremiseChecker(load_kb(kb_copy))  # the load ran both kinds' flag and pass examples
        campus = checker.check("Could Knight-Hennessy pay for my master's at MIT?")
        assert [(c.kind, c.entry, c.claim) for c in campus if c.kind == "award-campus"] == [
            ("award-campus", "knight-hennessy", "Knight-Hennessy Scholars pays for study at Massachusetts Institute of "
                                                "Technology.")]
        age = [c for c in checker.check("I am 14; can I go to university in Japan?") if c.kind == "minimum-age"]
        assert [(c.claim, c.fact, c.source) for c in age] == [
            ("A 14-year-old can get a student visa for Japan.", "Japan's student visa needs a guardian under 16.",
             "https://www.mofa.go.jp/j_info/visit/visa/")]
        broken = EXTRA_KINDS.replace("years: 16", "years: sixteen")
        (kb_copy / "extra_kinds.yaml").write_text(broken)
        with pytest.raises(KBError, match=r"relations\[1\] \(minimum-age\)\.facts\[0\]\.years: expected an integer"):
            load_kb(kb_copy)
    finally:
        CHECKS.pop("too_young", None)


# trainer check

def test_check_reads_csv_and_reports_each_row_with_sources(tmp_path, capsys):
    from trainer.__main__ import main

    path = tmp_path / "faq.csv"
    path.write_text('question,answer\n"Is Switzerland in the EU?","Yes, it is."\n'
                    '"How do I apply to TU Munich?",\n'
                    '"Do I need an I-20 for Germany?","No, that is a US form; Germany issues a national visa."\n')
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}:2" in out and "premise_affirmed" in out and "https://european-union.europa.eu" in out
    assert f"{path}:3" not in out  # nothing to say about it
    assert out.strip().splitlines()[-1] == ("3 rows: 2 with a false premise the KB corrects; 2 answered, 1 answers "
                                            "flagged (1 leave a false premise uncorrected)")


def test_check_json_output_and_jsonl_input(tmp_path, capsys):
    from trainer.__main__ import main

    path = tmp_path / "transcript.jsonl"
    path.write_text(json.dumps({"question": "Can I get Chevening for my PhD?"}) + "\n\n"
                    + json.dumps({"question": "Where is Oxford?", "answer": "In England."}) + "\n")
    assert main(["check", str(path), "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[0]["where"] == f"{path}:1" and lines[0]["corrections"][0]["kind"] in ("rule", "scholarship_level")
    assert lines[1]["where"] == f"{path}:3" and lines[1]["flags"] == []
    assert lines[-1]["summary"].startswith("2 rows: 1 with a false premise")


@pytest.mark.parametrize("name, content, message", [
    ("a.csv", "prompt,answer\nhi,there\n", r"a\.csv:1: missing field: the header has no `question` column"),
    ("b.jsonl", '{"question": "ok?"}\n{"question": \n', r"b\.jsonl:2: invalid JSON"),
    ("c.jsonl", '{"question": ""}\n', r"c\.jsonl:1: missing field: no `question` text"),
    ("d.txt", "hello\n", r"d\.txt: unsupported file type \.txt"),
])
def test_check_names_the_file_row_and_rule_of_bad_input(tmp_path, capsys, name, content, message):
    import re

    from trainer.__main__ import main

    (tmp_path / name).write_text(content)
    assert main(["check", str(tmp_path / name)]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_the_note_shows_each_premise_once_in_sentences_and_the_answer_check_keeps_every_correction(checker):
    from trainer.kb.premise import distinct

    found = checker.check("I'm from India and choosing Germany because all public universities there are free for "
                          "everyone. Which one should I pick?")
    shown = distinct(found)
    assert len(shown) < len(found) and len({c.claim for c in shown}) == len(shown)
    assert any(c.kind == "rule" for c in shown) and not any(c.kind == "tuition" and c.source in
                                                            {r.source for r in shown if r.kind == "rule"} for c in shown)
    (entry,) = [c for c in checker.check("Can I start medicine in the US right after high school?")
                if c.kind == "degree_entry"]
    assert entry.claim.startswith("Medicine in the United States can be entered straight after school")
