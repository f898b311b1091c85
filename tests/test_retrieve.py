"""Retrieval over the knowledge base: entity-aware ranking, the corrections a counsellor must give, recall on the
rubric's questions, and input that must not break it. Timings live in bench/retrieval.py, not here."""

from __future__ import annotations

import pytest
import yaml
from helpers import REPO

from trainer.kb.retrieve import Retriever, grounded_messages, grounding_text, kb_passages, recall_at_k


@pytest.fixture(scope="module")
def kb():
    from trainer.kb.loader import load_kb

    return load_kb(REPO / "data" / "kb")


@pytest.fixture(scope="module")
def retriever(kb):
    return Retriever(kb)


def ids(hits):
    return [h.passage.id for h in hits]


def test_every_kb_fact_is_a_passage_with_its_source_and_date(kb):
    passages = kb_passages(kb)
    assert len({p.id for p in passages}) == len(passages)
    assert all(p.source.startswith(("http://", "https://")) and p.as_of[:4].isdigit() for p in passages)
    kinds = {p.kind for p in passages}
    assert {"visa", "insurance", "work", "programmes", "not-offered", "scholarship", "test", "rule"} <= kinds
    # every university's "does not offer" entries and every rule are reachable
    assert sum(p.kind == "not-offered" for p in passages) == sum(len(u.not_offered) for u in kb.universities)
    assert sum(p.kind == "rule" for p in passages) == len(kb.rules)


def test_a_named_country_retrieves_its_own_facts_first(retriever):
    hits = retriever.search("How many hours can I work per week on a student visa in Canada?")
    assert "work:CA" in ids(hits)[:3] and "visa:CA" in ids(hits)
    assert all("CA" in h.passage.entities for h in hits)


def test_a_general_question_that_names_no_entity_gets_no_invented_source(retriever):
    assert retriever.search("Which documents do I need for a student visa application?") == []
    hits = retriever.search("How long is an English test score valid?")  # no entity, but a strong match
    assert hits and hits[0].passage.id == "rule:english-test-valid-for-life"


def test_two_named_countries_both_get_passages(retriever):
    hits = retriever.search("Is health insurance compulsory for students in Germany and in Australia?")
    entities = {e for h in hits for e in h.passage.entities}
    assert {"DE", "AU"} <= entities
    assert {"insurance:DE", "insurance:AU"} <= set(ids(hits))


def test_a_programme_the_university_does_not_offer_comes_first_as_a_correction(retriever, kb):
    hits = retriever.search("How do I apply for the Bachelor of Medicine at Stanford?")
    assert hits[0].why == "correction"
    assert hits[0].passage.kind == "not-offered" and "stanford" in hits[0].passage.entities


def test_a_scholarship_the_home_country_may_not_apply_for_is_a_correction(retriever):
    hits = retriever.search("I'm from Nigeria. Can I apply for the Marshall Scholarship to study in the UK?")
    assert hits[0].passage.id == "not-eligible:marshall:NG" and hits[0].why == "correction"
    assert "scholarship:marshall" in ids(hits)


def test_a_question_stating_a_known_false_claim_retrieves_the_rule(retriever):
    hits = retriever.search("International students in Australia are covered by Medicare, right?")
    assert hits[0].passage.id == "rule:au-medicare-international-students"


def test_an_unrelated_question_retrieves_nothing_and_the_prompt_says_so(retriever):
    assert retriever.search("What is the boiling point of water on Mars?") == []
    text = grounding_text([])
    assert "No entry of the knowledge base" in text and "do not invent a source" in text


def test_long_and_non_latin_questions_neither_crash_nor_lose_the_entity(retriever):
    long = "Which documents do I need for a UK Student visa? " + "please help " * 1500
    assert len(long) > 10_000
    assert any("GB" in h.passage.entities for h in retriever.search(long))
    assert isinstance(retriever.search("আমি কানাডায় পড়তে চাই, ভিসার জন্য কী লাগবে?"), list)
    assert retriever.search("   ") == [] and retriever.search("visa", k=0) == []


def test_recall_at_5_on_the_rubric_questions_that_name_kb_entries(retriever):
    questions = yaml.safe_load((REPO / "data" / "eval" / "questions.yaml").read_text(encoding="utf-8"))["questions"]
    result = recall_at_k(retriever, [(q["question"], q.get("kb") or []) for q in questions], k=5)
    assert result["n"] >= 40
    assert result["recall"] >= 0.97, result["misses"]


@pytest.mark.parametrize("question, country", [("What is Form I-20 and how do I get one?", "US"),
                                               ("How long does a CAS stay valid?", "GB"),
                                               ("Can I work on a PGWP after my diploma?", "CA")])
def test_a_country_is_found_by_the_terms_only_it_uses(retriever, question, country):
    hits = retriever.search(question)
    assert any(country in h.passage.entities and h.why == "entity" for h in hits), ids(hits)


def test_grounded_messages_add_numbered_sourced_facts_to_the_system_message(retriever):
    hits = retriever.search("Do I need health insurance as a student in Germany?")
    messages = [{"role": "system", "content": "You are a counsellor."}, {"role": "user", "content": "Question?"}]
    grounded = grounded_messages(messages, hits)
    assert messages[0]["content"] == "You are a counsellor."  # the caller's list is not changed
    system = grounded[0]["content"]
    assert system.startswith("You are a counsellor.") and "[1] " in system
    assert hits[0].passage.source in system and f"as of {hits[0].passage.as_of}" in system
    no_system = grounded_messages(messages[1:], hits)
    assert no_system[0]["role"] == "system" and no_system[1:] == messages[1:]


def test_a_false_premise_opens_the_grounded_system_message_before_the_facts(kb, retriever):
    from trainer.kb.premise import PremiseChecker

    question = "Health insurance is optional for students in Germany, right?"
    corrections = PremiseChecker(kb).check(question)
    messages = [{"role": "system", "content": "You are a counsellor."}, {"role": "user", "content": question}]
    system = grounded_messages(messages, retriever.search(question), corrections)[0]["content"]
    block = system[len("You are a counsellor."):]
    assert block.index("false premise") < block.index(corrections[0].fact) < block.index("[1] ")
    assert f"The question assumes: {corrections[0].claim}" in block and corrections[0].source in block
    alone = grounding_text([], corrections)  # no passage: the correction is the verified fact, no "no source" line
    assert corrections[0].fact in alone and "No entry of the knowledge base" not in alone
    assert grounding_text(retriever.search(question)) in system  # without corrections: the numbered facts as before
