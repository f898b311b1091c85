"""The rule audit: every rule on a positive and a negative example, near-duplicates, and the CLI on the
StudyAbroadGPT sample."""

from __future__ import annotations

import json
import multiprocessing
import random

import pytest

from helpers import DATA, REPO
from trainer.kb.claims import FAIL, VERIFY
from trainer.kb.audit_report import AuditSettings
from trainer.kb.audit import Auditor
from trainer.data.near_dup import near_duplicates, sketch

GOOD = ("### Your next steps\n\n- Check the official admissions page of each university for its requirements.\n"
        "- Prepare your transcripts and a statement of purpose well ahead of the deadline.\n"
        "- Ask your referees early so they have time to write.")


@pytest.fixture(scope="module")
def kb():
    from trainer.kb.loader import load_kb

    return load_kb(REPO / "data" / "kb")


def conv(*answers: str, question: str = "How do I prepare my application?") -> list[dict[str, str]]:
    messages = []
    for i, answer in enumerate(answers):
        messages += [{"role": "user", "content": question if i == 0 else "And what else should I know?"},
                     {"role": "assistant", "content": answer}]
    return messages


def rules(auditor: Auditor, messages) -> dict[str, str]:
    """rule -> severity for one conversation."""
    return {f.rule: f.severity for f in auditor.audit([messages]).rows[0].flags}


# Rules that need no knowledge base

def test_structure_length_language_placeholder_markdown():
    auditor = Auditor(None, AuditSettings(min_messages=2, max_messages=6))
    assert rules(auditor, conv(GOOD)) == {}
    assert rules(auditor, [{"role": "assistant", "content": GOOD}])["structure"] == FAIL
    assert rules(auditor, [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}])["structure"] == FAIL
    assert rules(auditor, conv(GOOD, GOOD, GOOD, GOOD))["structure"] == FAIL  # 8 messages > 6
    assert rules(auditor, conv("- Too short."))["length"] == FAIL
    assert rules(auditor, conv("- " + "word " * 2000))["length"] == FAIL
    german = ("### Nächste Schritte\n\n- Prüfen Sie die Zulassungsvoraussetzungen der Hochschule sorgfältig und "
              "bereiten Sie Ihre Zeugnisse, Ihren Lebenslauf sowie Ihr Motivationsschreiben rechtzeitig vor, "
              "damit Ihre Bewerbung vollständig ist und pünktlich eingeht.")
    assert rules(auditor, conv(german))["language"] == FAIL
    assert rules(auditor, conv(GOOD + "\n- Apply to [University Name] before the deadline."))["placeholder"] == FAIL
    assert rules(auditor, conv(GOOD + "\n- XYZ University is a good choice."))["placeholder"] == FAIL
    assert "placeholder" not in rules(auditor, conv(GOOD + "\n- See [the official page](https://www.gov.uk)."))
    for slot in ("[Your University]", "[your country]", "[Insert University Name]", "[Target University]",
                 "[Student's Name]"):
        assert rules(auditor, conv(GOOD + f"\n- Write to {slot} today."))["placeholder"] == FAIL, slot
    assert "placeholder" not in rules(auditor, conv(GOOD + "\n- Read [the university's admissions page]"
                                                           "(https://www.ox.ac.uk/admissions)."))
    plain = "Check the official admissions page of each university for its requirements, and prepare early."
    assert rules(auditor, conv(plain)) == {"no_markdown": VERIFY}


def test_near_duplicates_minhash():
    base = GOOD + "\n- Budget for living costs in the city where you will study, and keep savings aside."
    texts = [base, base.replace("savings", "some savings"), "### Housing\n\n- Book university halls early; "
             "compare private rentals only through trusted platforms and never pay before a viewing."]
    found = near_duplicates(texts, 0.8)
    assert set(found) == {1} and found[1][0] == 0 and found[1][1] >= 0.8
    auditor = Auditor(None, AuditSettings())
    report = auditor.audit([conv(t) for t in texts])
    assert [r.failed for r in report.rows] == [False, True, False]
    assert report.summary()["conversations_per_flag"] == {"near_duplicate": 1}


def _near_duplicates_brute_force(texts, threshold, k=64):
    """The near-duplicate rule in plain Python sets: each text against every earlier one in the index."""
    sketches = [set(sketch(t, k).tolist()) for t in texts]
    index, found = [], {}
    for i, mine in enumerate(sketches):
        shared = [(len(mine & sketches[j]), min(mine & sketches[j], default=0), j) for j in index]
        candidates = sorted((-n, first, j) for n, first, j in shared if n and n >= threshold * k * 0.5)[:5]
        best = None
        for _, _, j in candidates:
            union = sorted(mine | sketches[j])[:k]
            estimate = len(set(union) & mine & sketches[j]) / len(union)
            if estimate >= threshold and (best is None or estimate > best[1]):
                best = (j, round(estimate, 3))
        if best is None:
            index.append(i)
        else:
            found[i] = best
    return found


def test_near_duplicates_match_a_brute_force_over_the_sketches():
    rows = [json.loads(line) for line in (DATA / "studyabroadgpt_sample.jsonl").read_text().splitlines()]
    texts = ["\n".join(t["value"] for t in row["conversations"]) for row in rows]
    lines = [line for text in texts for line in text.split("\n") if len(line) > 40]
    rng = random.Random(0)
    variants = []
    for n in range(60):  # copies with 0 to 400 words replaced, then texts x, y and x + y (ties between x and y)
        words = texts[n % len(texts)].split()
        for _ in range(rng.choice((0, 3, 30, 120, 400))):
            words[rng.randrange(len(words))] = rng.choice(words)
        variants.append(" ".join(words))
    for _ in range(120):
        x, y = " ".join(rng.sample(lines, 3)), " ".join(rng.sample(lines, 3))
        variants += [x, y, x + " " + y]
    variants += ["", "short", "ab" * 30] * 2
    for threshold in (0.3, 0.8):
        expected = _near_duplicates_brute_force(variants, threshold)
        assert near_duplicates(variants, threshold) == expected and len(expected) > 20


def test_forked_audit_equals_the_single_process_audit(kb, monkeypatch):
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    monkeypatch.setattr("trainer.kb.audit.CHUNK_ROWS", 4)  # many chunks, claimed by three processes in turn
    rows = [json.loads(line) for line in (DATA / "studyabroadgpt_sample.jsonl").read_text().splitlines()]
    convs = [[{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
              for t in row["conversations"]] for row in rows] * 3
    one = Auditor(kb, AuditSettings(workers=1)).audit(convs)
    three = Auditor(kb, AuditSettings(workers=3)).audit(convs)
    assert [r.to_dict() for r in three.rows] == [r.to_dict() for r in one.rows]
    assert one.counts()["near_duplicate"] == 26


# Knowledge-base rules: each on a conversation that breaks it and one that does not

def test_kb_contradiction_medicare(kb):
    auditor = Auditor(kb, AuditSettings())
    wrong = GOOD + "\n- As an international student in Australia you can use Medicare for your doctor visits."
    right = GOOD + ("\n- International students in Australia are not covered by Medicare; Overseas Student Health "
                    "Cover (OSHC) is a condition of the student visa.")
    assert rules(auditor, conv(wrong, question="Do I need health insurance in Australia?")).get(
        "kb_contradiction") == FAIL
    assert "kb_contradiction" not in rules(auditor, conv(right, question="Do I need health insurance in Australia?"))


def _shipped_rules():
    from trainer.kb.loader import load_kb

    return load_kb(REPO / "data" / "kb").rules


@pytest.mark.parametrize("rule", _shipped_rules(), ids=lambda r: r.id)
def test_every_kb_rule_fires_on_its_false_example_only(kb, rule):
    """Through the whole audit (keyword gate, country gate, sentence split), not just the rule's regexes."""
    assert rule.examples["false"] and (rule.unless is None or rule.examples["corrected"])
    auditor = Auditor(kb, AuditSettings())
    country = kb.country(rule.country).name if rule.country else "abroad"
    question = f"I have a question about studying in {country}."
    for sentence in rule.examples["false"]:
        flags = auditor.audit([conv(GOOD + "\n- " + sentence, question=question)]).rows[0].flags
        assert any(f.rule == "kb_contradiction" and f.detail.startswith(rule.id) for f in flags), sentence
    for sentence in rule.examples["corrected"]:
        flags = auditor.audit([conv(GOOD + "\n- " + sentence, question=question)]).rows[0].flags
        assert not any(f.rule == "kb_contradiction" and f.detail.startswith(rule.id) for f in flags), sentence


def test_lowercase_twins_find_what_the_case_insensitive_patterns_find(kb):
    from trainer.kb.audit import NEGATION, PLACEHOLDER
    from trainer.kb.caseless import CaselessPattern as _Twin, lowered as _lowered

    patterns = [NEGATION, PLACEHOLDER] + [p for r in kb.rules for p in (*r.patterns, r.unless) if p is not None]
    sentences = [s for r in kb.rules for s in r.examples_false + r.examples_corrected]
    sentences += ["Apply to [University Name] by {deadline}.", "See [the page](https://x.org) <insert date>.",
                  "XYZ College and abc university, Lorem Ipsum; it is not free, but no longer closed."]
    rng = random.Random(0)
    texts = []
    for s in sentences:  # as written, in other cases, and with characters Unicode case folding treats specially
        chars = list(s)
        for _ in range(6):
            chars.insert(rng.randrange(len(chars) + 1), rng.choice("KÅİıſßẞΣςǅⅠⓐ’\u0307ﬁ"))
        texts += [s, s.upper(), s.swapcase(), "".join(chars), s.replace("s", "ſ").replace("i", "ı"), s + " " + s]
    twins = [_Twin(p) for p in patterns]
    assert sum(bool(t.starts) for t in twins) > len(twins) // 2  # most are searched from their literals
    for text in texts:
        lowered = _lowered(text)
        for pattern, twin in zip(patterns, twins):
            found = pattern.search(text)
            assert twin.span(text, lowered) == (found and found.span()), (pattern.pattern, text)


def test_joined_text_splits_like_the_text_itself(kb):
    from trainer.kb import names

    texts = ["I’m from Nigeria — can I study at MIT?", "", "Yes: see mit.edu/admissions (2026).", "ok"]
    joined = kb.joined(texts)
    cached = names.TOKEN_CACHE.pop(joined)
    assert joined == " ".join(texts) and cached == names.text_tokens(joined)


def test_programme_not_offered_must_be_corrected(kb):
    stanford = next(u for u in kb.universities if u.name.startswith("Stanford"))
    negative = next(n for n in stanford.not_offered if "medic" in (n.field + n.degree).lower())
    question = "I want to apply for the Bachelor of Medicine at Stanford University. What are the requirements?"
    answered = GOOD.replace("Your next steps", "Applying to Stanford medicine")
    corrected = ("### A correction first\n\nStanford University does not offer an undergraduate Bachelor of "
                 "Medicine: in the United States medicine is studied as a graduate MD after a first degree.\n"
                 "- Consider a bachelor's degree with pre-med courses, then the MD.")
    auditor = Auditor(kb, AuditSettings())
    assert rules(auditor, conv(answered, question=question)).get("programme_not_offered") == FAIL
    assert "programme_not_offered" not in rules(auditor, conv(corrected, question=question))
    assert negative.correction and negative.source.startswith("http")
    # Asking about a programme it does offer is fine.
    offered = stanford.programmes[0]
    ok = f"How do I apply for the {offered.degree} in {offered.field} at {stanford.name}?"
    assert "programme_not_offered" not in rules(auditor, conv(answered, question=ok))


def test_scholarship_eligibility_discontinued_and_unknown(kb):
    commonwealth = next(s for s in kb.scholarships if "Commonwealth" in s.name)
    auditor = Auditor(kb, AuditSettings())
    recommend = GOOD + f"\n- Apply for the {commonwealth.name}: it fits your plans well."
    correct = GOOD + (f"\n- Brazil is not a Commonwealth member, so you are not eligible for the "
                      f"{commonwealth.name}; look at open schemes instead.")
    brazil = "I'm from Brazil and want a master's in the UK. Which scholarships can I get?"
    india = "I'm from India and want a master's in the UK. Which scholarships can I get?"
    assert rules(auditor, conv(recommend, question=brazil)).get("scholarship_ineligible") == FAIL
    assert "scholarship_ineligible" not in rules(auditor, conv(correct, question=brazil))
    assert "scholarship_ineligible" not in rules(auditor, conv(recommend, question=india))

    discontinued = [s for s in kb.scholarships if s.discontinued]
    if discontinued:
        s = discontinued[0]
        assert rules(auditor, conv(GOOD + f"\n- The {s.name} is open for applications now."))[
            "scholarship_discontinued"] == FAIL
        assert "scholarship_discontinued" not in rules(auditor, conv(GOOD + f"\n- The {s.name} is no longer offered."))

    invented = GOOD + "\n- Apply for the Global Horizons Excellence Scholarship, which covers everything."
    assert rules(auditor, conv(invented))["unknown_scholarship"] == VERIFY
    strict = Auditor(kb, AuditSettings(unknown_scholarship=FAIL))
    assert rules(strict, conv(invented))["unknown_scholarship"] == FAIL
    assert "unknown_scholarship" not in rules(strict, conv(recommend, question=india))


def test_unverified_numbers(kb):
    auditor = Auditor(kb, AuditSettings())
    flags = auditor.audit([conv(GOOD + "\n- UK tuition is about £23,456 a year and you may work 37 hours per week.")])
    detail = next(f.detail for f in flags.rows[0].flags if f.rule == "unverified_number")
    assert "£23,456" in detail and "37 hours" in detail
    country = next(c for c in kb.countries if c.work_rights is not None and " hours" in c.work_rights.text)
    number = next(w for w in country.work_rights.text.split() if w.isdigit())
    ok = auditor.audit([conv(GOOD + f"\n- In {country.name} you may work up to {number} hours during term.")])
    assert not any(f.rule == "unverified_number" for f in ok.rows[0].flags), country.work_rights.text


def numbers_flagged(auditor, answer: str, question: str = "How do I prepare my application?") -> str:
    flags = auditor.audit([conv(GOOD + "\n- " + answer, question=question)]).rows[0].flags
    return next((f.detail for f in flags if f.rule == "unverified_number"), "")


def test_a_number_is_verified_only_by_facts_of_the_same_entity(kb):
    auditor = Auditor(kb, AuditSettings())
    # Japan's insurance fact carries 70%: it verifies a Japanese sentence, not a British one
    assert numbers_flagged(auditor, "In Japan, National Health Insurance covers 70% of most medical costs.") == ""
    assert "70%" in numbers_flagged(auditor, "In the UK, the NHS covers 70% of most medical costs.")
    # a sentence naming nothing is checked against what the conversation is about
    plain = "Insurance covers 70% of most medical costs."
    assert numbers_flagged(auditor, plain, question="I will study in Japan next year.") == ""
    assert "70%" in numbers_flagged(auditor, plain, question="I will study in the UK next year.")
    # the same kind only: 20 hours (UK work) is not £20
    assert numbers_flagged(auditor, "In the UK you can work 20 hours a week in term.") == ""
    assert "£20" in numbers_flagged(auditor, "In the UK, the Immigration Health Surcharge is £20 a year.")
    # a university's facts count with its country's: Oxford students work under UK rules
    assert numbers_flagged(auditor, "Oxford students can work 20 hours a week in term.") == ""


def test_only_figures_for_an_attribute_the_kb_knows_are_to_verify(kb):
    auditor = Auditor(kb, AuditSettings())
    au = next(c for c in kb.countries if c.code == "AU")
    assert "48 hours per fortnight" in au.work_rights.text
    # work hours, fees, a visa's length, a test score, an insurance share: about an entity the KB describes so
    assert numbers_flagged(auditor, "Students in Australia can work 48 hours per fortnight.") == ""
    assert "40 hours" in numbers_flagged(auditor, "Students in Australia can work 40 hours per fortnight.")
    assert "£50,000" in numbers_flagged(auditor, "UK tuition is £50,000.")
    assert "5 years" in numbers_flagged(auditor, "The UK Graduate Route lets you stay for 5 years.")
    assert numbers_flagged(auditor, "IELTS results are valid for two years.") == ""
    assert "3 years" in numbers_flagged(auditor, "IELTS results are valid for 3 years.")
    assert "700" in numbers_flagged(auditor, "The average GMAT score of students admitted to Oxford is 700.")
    # rates, ranks, counts, a student's GPA, a lead time, money no KB attribute is about: not the KB's to verify
    for answer in ("95% of graduates find jobs within six months.", "In the UK, 95% of graduates find jobs.",
                   "Students in the top 5% of the class at Oxford are admitted.",
                   "Universities in Canada offer over 200 programmes.",
                   "A GPA of 3.7 is typical for admitted IELTS takers.",
                   "Apply for your Canadian study permit 6-8 weeks before the term.",
                   "My startup in Canada made $1 million in revenue."):
        assert numbers_flagged(auditor, answer) == "", answer
    # the StudyAbroadGPT sample: test scores are flagged, its many percentages are not
    from trainer.train.config import DatasetSettings
    from trainer.data.conversations import load_conversations

    rows, _ = load_conversations(DatasetSettings(path=str(DATA / "studyabroadgpt_sample.jsonl"), eval_fraction=0))
    flagged = [r for r in auditor.audit([list(c.messages) for c in rows]).rows
               if any(f.rule == "unverified_number" for f in r.flags)]
    details = " ".join(f.detail for r in flagged for f in r.flags if f.rule == "unverified_number")
    assert len(flagged) <= 4 and "%" not in details, details


def test_unknown_names_of_apps_portals_agencies_and_surveys(kb):
    auditor = Auditor(kb, AuditSettings())

    def names(answer: str) -> list[str]:
        flags = auditor.audit([conv(GOOD + "\n- " + answer)]).rows[0].flags
        return [f.detail for f in flags if f.rule == "unknown_name" and f.severity == VERIFY]

    for invented in ("UniMatch Pro app", "Global Education Survey", "XYZ Agency", "International Student Visa Portal"):
        assert [f"{invented!r} is not in the knowledge base"] == names(f"Contact the {invented} for help."), invented
    # real bodies, a KB source's organisation, a KB entity with describing words, awards (unknown_scholarship's)
    for real in ("Apply through the UCAS portal or the Common App, and ask the British Council.",
                 "The DAAD Portal and Campus France list programmes.",
                 "Join the Oxford MBA Program or your university's Buddy Program.",
                 "The Graduate Management Admission Council runs the GMAT.",
                 "The Chevening Scholarship Programme is prestigious.", "Cultural Fit and Program Values matter."):
        assert names(real) == [], real


def test_rules_apply_to_a_country_named_only_by_its_own_terms(kb):
    auditor = Auditor(kb, AuditSettings())
    answer = GOOD + "\n- On an F-1 visa you can work unlimited hours off campus."
    flags = auditor.audit([conv(answer, question="Can I work while I study?")]).rows[0].flags
    assert [f.detail.split(":")[0] for f in flags if f.rule == "kb_contradiction"] == ["us-f1-unlimited-hours"]


def test_a_negation_in_another_clause_does_not_correct_the_claim(kb):
    auditor = Auditor(kb, AuditSettings())
    question = "Do I need health insurance in Australia?"
    wrong = GOOD + "\n- International students can use Medicare for free, so you do not need any insurance."
    right = GOOD + "\n- International students cannot use Medicare, so you need OSHC."
    assert rules(auditor, conv(wrong, question=question)).get("kb_contradiction") == FAIL
    assert "kb_contradiction" not in rules(auditor, conv(right, question=question))
    hospitals = GOOD + ("\n- Public hospitals treat emergencies free of charge for all residents, including "
                        "international students.")
    assert rules(auditor, conv(hospitals, question=question)).get("kb_contradiction") == FAIL
    nhs = GOOD + ("\n- The NHS provides free or low-cost healthcare to all UK residents, including international "
                  "students.")
    assert rules(auditor, conv(nhs, question="Is healthcare free in the UK?")).get("kb_contradiction") == FAIL
    # the live check sees it too
    messages = conv(hospitals, question=question)
    assert [f.rule for f in auditor.check_answer(messages)] == ["kb_contradiction"]


def test_judge_runs_only_on_rows_that_pass_the_rules(kb):
    calls = []

    def judge(messages, facts):
        calls.append(facts)
        return False, "contradicts a fact"

    report = Auditor(kb, AuditSettings(), judge).audit([conv(GOOD), conv("- short")])
    assert len(calls) == 1 and [r.failed for r in report.rows] == [True, True]
    assert report.rows[0].flags[-1].rule == "llm_judge"


# The CLI on the StudyAbroadGPT sample

def test_audit_cli_on_the_studyabroadgpt_sample(tmp_path, capsys):
    from trainer.__main__ import main

    out = tmp_path / "audit"
    assert main(["audit", str(DATA / "studyabroadgpt_sample.jsonl"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["conversations"] == 13 and summary["kb_version"]
    assert summary["failed"] >= 3 and summary["conversations_per_flag"].get("placeholder", 0) >= 3
    assert f"{summary['conversations']} conversations" in printed and "| placeholder |" in printed
    rows = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert len(rows) == 13 and all(r["source"].startswith(str(DATA)) or ":" in r["source"] for r in rows)


def test_audit_cli_error_names_the_file(tmp_path, capsys):
    from trainer.__main__ import main

    assert main(["audit", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


# The live check: the same KB rules on one served answer

def test_check_answer_flags_the_last_answer_with_the_kb_fact_and_its_source(kb):
    auditor = Auditor(kb)
    messages = [{"role": "user", "content": "I'm from India and want a master's in the UK. Which scholarships?"},
                {"role": "assistant", "content": "### Options\n\n- The Marshall Scholarship funds your master's."}]
    flags = auditor.check_answer(messages)
    assert [f.rule for f in flags] == ["scholarship_ineligible"]
    assert flags[0].message == 1 and flags[0].source == kb.scholarship("marshall").source
    # the same code as `trainer audit`: the audit finds the same flag on the same conversation
    assert "scholarship_ineligible" in rules(auditor, messages)


def test_check_answer_catches_an_uncorrected_programme_and_lets_a_correction_through(kb):
    auditor = Auditor(kb)
    asked = {"role": "user", "content": "How do I apply for the Bachelor of Medicine at Stanford?"}
    wrong = auditor.check_answer([asked, {"role": "assistant", "content": "Apply through the Common App by January."}])
    assert [f.rule for f in wrong] == ["programme_not_offered"] and wrong[0].source.startswith("https://")
    right = auditor.check_answer([asked, {"role": "assistant", "content":
                                          "Stanford does not offer an undergraduate medicine degree; in the US "
                                          "medicine is a graduate MD after a bachelor's."}])
    assert right == []


def test_check_answer_looks_only_at_the_last_answer_and_needs_a_kb(kb):
    earlier = [{"role": "user", "content": "Tell me about the Marshall Scholarship. I'm from India."},
               {"role": "assistant", "content": "The Marshall Scholarship is a great fit for you."},
               {"role": "user", "content": "What about housing in London?"},
               {"role": "assistant", "content": "Look at university halls first and apply early."}]
    assert Auditor(kb).check_answer(earlier) == []
    assert Auditor(None).check_answer(earlier[:2]) == []
    assert Auditor(kb).check_answer(earlier[:1]) == []


def test_audit_output_keeps_its_shape_for_flags_without_a_source(kb):
    row = Auditor(kb).audit([conv("too short")]).rows[0].to_dict()
    assert all("source" not in f for f in row["flags"] if f["rule"] == "length")


# `trainer audit` on files nobody here wrote: the KB it used, what ingestion dropped, other files

MEDICARE = ("### Health cover\n\n- As an international student in Australia you can use Medicare for your doctor "
            "visits, so budget nothing for insurance.")


def _short_rows() -> list[dict]:
    return [json.loads(line) for line in (DATA / "short_dialogues.jsonl").read_text().splitlines()]


def test_a_kb_folder_that_does_not_exist_is_an_error_naming_it(tmp_path, capsys):
    from trainer.__main__ import main

    sample = str(DATA / "studyabroadgpt_sample.jsonl")
    assert main(["audit", sample, "--kb", str(tmp_path / "data" / "kbb")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'data' / 'kbb'}: knowledge base folder not found"
    assert main(["audit", sample, "--kb", ""]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--kb ''" in err and "--no-kb" in err


def test_the_default_kb_is_the_shipped_one_from_any_folder_and_the_report_names_it(tmp_path, capsys, monkeypatch):
    from trainer.__main__ import main
    from trainer.kb.loader import SHIPPED_KB

    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Do I need insurance in Australia?"},
                                             {"role": "assistant", "content": MEDICARE}]}) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # data/kb is not here
    assert main(["audit", str(data), "--out", "out"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["kb"]["path"] == str(SHIPPED_KB) and summary["kb"]["version"]["version"]
    assert summary["conversations_per_flag"].get("kb_contradiction") == 1
    version = summary["kb"]["version"]["version"]
    assert f"Knowledge base: version {version} (as of " in capsys.readouterr().out
    assert main(["audit", str(data), "--no-kb", "--out", "plain"]) == 0
    assert "Knowledge base: none (--no-kb): the KB rules did not run." in capsys.readouterr().out
    plain = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert plain["kb"] is None and "kb_contradiction" not in plain["conversations_per_flag"]


def test_the_report_lists_what_ingestion_dropped_by_file_line_and_names_rows_by_file_line(tmp_path, capsys):
    from trainer.__main__ import main

    rows = _short_rows()
    lines = [json.dumps(rows[0]), '{"messages": [', json.dumps(rows[1]) + json.dumps(rows[2]),
             json.dumps(rows[3]), json.dumps(rows[0]),
             json.dumps({"messages": [{"role": "user", "content": "Visa?"},
                                      {"role": "assistant", "content": GOOD + "\n- Apply at [Your University]."}]})]
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["audit", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "## Rows ingestion rejected (2)" in printed
    assert f"- {data}:2: invalid JSON: Expecting value at column 15" in printed
    assert f"- {data}:3: invalid JSON: Extra data at column " in printed  # two objects on one line
    assert f"## Exact duplicates removed (1)\n\n- {data}:5: same as {data}:1" in printed
    assert f"- {data}:6: fail:placeholder (message 2): template slot left in: '[Your University]'" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["location"], r["rule"]) for r in summary["ingestion"]["rejected"]] == [
        (f"{data}:2", "invalid JSON"), (f"{data}:3", "invalid JSON")]
    assert summary["ingestion"]["duplicate_rows"] == [{"location": f"{data}:5", "same_as": f"{data}:1"}]
    assert summary["rows_per_flag"]["placeholder"] == [f"{data}:6"]
    audited = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert [r["source"] for r in audited] == [f"{data}:{n}" for n in (1, 4, 6)]
    assert audited[2]["flags"][0]["message"] == 2  # numbered from 1, as ingestion numbers messages


def test_an_unwritable_out_is_one_line(tmp_path, capsys):
    from trainer.__main__ import main

    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    assert main(["audit", str(DATA / "short_dialogues.jsonl"), "--out", str(blocker / "audit")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {blocker / 'audit'}: cannot write the audit report there (")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_against_lists_rows_found_in_another_file_with_locations_on_both_sides(tmp_path, capsys):
    from trainer.__main__ import main

    rows = _short_rows()
    other = tmp_path / "train.json"  # any file ingestion reads: here a JSON array
    question = ("I am from Nigeria and I want to study a master's in public health in the UK next year; which "
                "scholarships can I apply for, and when are the deadlines?")
    other.write_text(json.dumps(rows[:4] + [{"messages": [{"role": "user", "content": question},
                                                          {"role": "assistant", "content": GOOD}]}], indent=1),
                     encoding="utf-8")
    near = {"messages": [{"role": "user", "content": question.replace("; which", ", which")},
                         {"role": "assistant", "content": rows[5]["messages"][1]["content"]}]}
    mine = tmp_path / "eval.jsonl"
    mine.write_text("".join(json.dumps(r) + "\n" for r in [rows[10], rows[2], near]), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["audit", str(mine), "--against", str(other), "--out", str(out)]) == 0
    against = json.loads((out / "summary.json").read_text())["against"]
    found = {(m["row"], m["what"], m["how"]) for m in against["matches"]}
    assert (f"{mine}:2", "conversation", "exact") in found and (f"{mine}:2", "message 1", "exact") in found
    assert (f"{mine}:3", "message 1", "near") in found
    assert not any(m["row"] == f"{mine}:1" for m in against["matches"]) and against["rows"] == 2
    by_row = {(m["row"], m["what"]): m["other"] for m in against["matches"]}
    assert by_row[(f"{mine}:2", "conversation")].startswith(f"{other}:") and "(item 3)" in by_row[
        (f"{mine}:2", "conversation")]
    assert "(item 5)" in by_row[(f"{mine}:3", "message 1")]
    assert f"## Rows also in {other} (2 rows)" in capsys.readouterr().out


# The judge beside the rules: where they disagree, per row

def test_the_judge_is_asked_about_every_row_and_disagreements_are_listed(kb, tmp_path):
    from trainer.kb.audit import audit_file

    rows = [{"messages": conv(MEDICARE, question="Do I need insurance in Australia?")},  # a rule fires
            {"messages": conv(GOOD)},                                                     # no rule fires
            {"messages": conv(GOOD.replace("early", "soon"), question="When should I start?")}]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    verdicts = iter([(True, "looks fine"), (False, "claims a deadline the facts do not give"),
                     (None, "judge reply held no verdict: 'Sure!'")])
    asked = []

    def judge(messages, facts):
        asked.append(messages[0]["content"])
        return next(verdicts)

    report = audit_file(data, settings=AuditSettings(judge_all=True), out_dir=tmp_path / "out", judge=judge)
    assert len(asked) == 3  # the row the rules failed too
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["judge"]
    assert (summary["asked"], summary["ok"], summary["error"], summary["no verdict"]) == (3, 1, 1, 1)
    assert [(d["row"], d["kind"], d["verdict"]) for d in summary["disagreements"]] == [
        (f"{data}:1", "rules only", "ok"), (f"{data}:2", "judge only", "error")]
    assert summary["disagreements"][0]["rules"][0].startswith("fail:kb_contradiction (message 2): au-medicare")
    markdown = (tmp_path / "out" / "audit.md").read_text()
    assert "## Judge and rules disagree (2 of 3 rows)" in markdown
    assert f"- {data}:2: judge only: judge error ('claims a deadline the facts do not give')" in markdown
    assert [r.judge["verdict"] for r in report.rows] == ["ok", "error", "no verdict"]
    assert [f.rule for f in report.rows[2].flags] == []  # no verdict flags nothing


def test_audit_with_a_judge_against_transformers_serve(transformers_serve, tmp_path, monkeypatch, capsys):
    """`trainer audit --judge` against a real OpenAI-compatible server: every row judged, each verdict recorded,
    and the disagreements are exactly the rows where the verdict and the KB rules differ."""
    from trainer.__main__ import main

    url, model = transformers_serve
    monkeypatch.setenv("AUDIT_TEST_JUDGE_KEY", "sk-never-written")
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"messages": conv(MEDICARE, question="Do I need insurance in Australia?")}) + "\n"
                    + json.dumps({"messages": conv(GOOD)}) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["audit", str(data), "--judge", url, "--judge-model", model, "--judge-api-key-env",
                 "AUDIT_TEST_JUDGE_KEY", "--judge-max-tokens", "24", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert summary["judge"]["asked"] == 2 and all(r["judge"]["verdict"] in ("ok", "error", "no verdict")
                                                  for r in rows)
    expected = []
    for r in rows:
        ruled = any(f["rule"] == "kb_contradiction" for f in r["flags"])
        kind = {("error", False): "judge only", ("ok", True): "rules only"}.get((r["judge"]["verdict"], ruled))
        if kind:
            expected.append((r["source"], kind))
    assert [(d["row"], d["kind"]) for d in summary["judge"]["disagreements"]] == expected
    assert "## Judge and rules disagree" in capsys.readouterr().out
    for path in out.iterdir():
        assert "sk-never-written" not in path.read_text()
