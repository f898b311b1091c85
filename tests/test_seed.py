"""The hand-written seed dialogues in data/seed: shape, coverage, false-premise corrections, ingestion and audit."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from trainer.kb.audit import MARKDOWN, Auditor, PLACEHOLDER
from trainer.kb.audit_report import AuditSettings
from trainer.kb.claims import FAIL
from trainer.train.config import DatasetSettings
from trainer.data.conversations import load_conversations, prepare_stage_data

REPO = Path(__file__).parent.parent
SEED = REPO / "data" / "seed"
STAGE1 = SEED / "stage1_grounded.jsonl"
STAGE2 = SEED / "stage2_student.jsonl"
KB = REPO / "data" / "kb"

TOPICS = ("admissions", "sop", "documents", "tests", "scholarships", "visas", "costs", "housing",
          "health insurance", "work rights", "culture", "careers", "language")
# Wording that shows the first answer corrects the premise before helping.
CORRECTION = re.compile(
    r"\b(?:isn't|is not|aren't|are not|doesn't|does not|don't|do not|not eligible|isn't available|no longer|"
    r"not available|not offered|isn't offered|however|actually|not the case|not true|not correct|not free|"
    r"isn't free|cannot|can't|wrong|unfortunately|has no|have no|there is no)\b", re.IGNORECASE)
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def stage1() -> list[dict]:
    return _rows(STAGE1)


@pytest.fixture(scope="module")
def stage2() -> list[dict]:
    return _rows(STAGE2)


def _answers(row: dict) -> list[str]:
    return [m["content"] for m in row["messages"] if m["role"] == "assistant"]


def test_counts(stage1, stage2):
    assert len(stage1) >= 60
    assert len(stage2) >= 30


@pytest.mark.parametrize("name, prefix, turns, answer_chars", [
    ("stage1", "seed", (8, 12), (400, 1500)),
    ("stage2", "student", (4, 8), (200, 900)),
])
def test_shape(name, prefix, turns, answer_chars, stage1, stage2):
    rows = stage1 if name == "stage1" else stage2
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]
    topics = set(TOPICS)
    for row in rows:
        assert set(row) == {"id", "topic", "false_premise", "messages"}, row["id"]
        assert re.fullmatch(rf"{prefix}-\d{{3}}", row["id"]), row["id"]
        assert row["topic"] in topics, (row["id"], row["topic"])
        assert isinstance(row["false_premise"], bool), row["id"]
        messages = row["messages"]
        assert turns[0] <= len(messages) <= turns[1], (row["id"], len(messages))
        for i, message in enumerate(messages):
            assert set(message) == {"role", "content"}, (row["id"], i)
            assert message["role"] == ("user" if i % 2 == 0 else "assistant"), (row["id"], i)
            assert isinstance(message["content"], str) and message["content"].strip(), (row["id"], i)
            assert message["content"] == message["content"].strip(), (row["id"], i)
        for answer in _answers(row):
            assert answer_chars[0] <= len(answer) <= answer_chars[1], (row["id"], len(answer))
            assert not PLACEHOLDER.search(answer), (row["id"], PLACEHOLDER.search(answer).group(0))
        for message in messages:
            assert not EMAIL.search(message["content"]), (row["id"], "no personal data, no e-mail addresses")


def test_ids_unique_across_files(stage1, stage2):
    ids = [r["id"] for r in stage1 + stage2]
    assert len(ids) == len(set(ids))


def test_false_premises_are_corrected_first(stage1):
    premises = [r for r in stage1 if r["false_premise"]]
    assert len(premises) >= 12
    for row in premises:
        first = _answers(row)[0]
        # The correction comes before the help: a cue in the heading or the first paragraphs.
        opening = first[:600]
        assert CORRECTION.search(opening), (row["id"], opening[:200])


def test_all_topics_in_stage1(stage1):
    counts = Counter(r["topic"] for r in stage1)
    assert set(counts) == set(TOPICS), set(TOPICS) - set(counts)
    assert min(counts.values()) >= 4, counts  # covered evenly, not one token dialogue per topic


def test_topics_match_the_generator(stage1):
    from trainer.jobs import synth

    assert set(TOPICS) == set(synth.TOPICS)
    exemplars = synth.load_exemplars(STAGE1)
    assert len(exemplars) == len(stage1)


def test_stage1_answers_have_markdown_structure(stage1):
    for row in stage1:
        for i, answer in enumerate(_answers(row)):
            assert MARKDOWN.search(answer), (row["id"], i)
            # A heading or bold lead at the top, and a list below it.
            first_line = answer.splitlines()[0]
            assert first_line.startswith("### ") or first_line.startswith("**"), (row["id"], i, first_line)
            assert re.search(r"^(?:[-*] |\d+\. )", answer, re.MULTILINE), (row["id"], i)


def test_stage1_answers_name_an_official_source(stage1):
    # Every dialogue points the student to an official page for what changes (visa rules, fees, work hours).
    source = re.compile(r"official|gov\.uk|canada\.ca|\.gov|\.go\.|\.org|\.de\b|\.ie\b|\.nl\b|\.fr\b|website|page",
                        re.IGNORECASE)
    for row in stage1:
        assert any(source.search(a) for a in _answers(row)), row["id"]


@pytest.mark.parametrize("path", [STAGE1, STAGE2], ids=["stage1", "stage2"])
def test_trainer_ingests_without_a_bad_row(path):
    conversations, report = load_conversations(DatasetSettings(path=str(path), strict=True, eval_fraction=0))
    assert report.schema == "messages"
    assert report.bad == 0, [str(e) for e in report.errors]
    assert report.duplicates == 0
    assert report.kept == report.rows_read == len(_rows(path))
    data = prepare_stage_data(DatasetSettings(path=str(path), eval_fraction=0.15), seed=3407, max_length=2048)
    assert data.train and data.eval


@pytest.fixture(scope="module")
def kb():
    from trainer.kb import loader as kb_module

    if not KB.is_dir():
        pytest.skip("no knowledge base at data/kb")
    return kb_module.load_kb(KB)


@pytest.mark.parametrize("path", [STAGE1, STAGE2], ids=["stage1", "stage2"])
def test_audit_against_the_kb(path, kb):
    rows = _rows(path)
    report = Auditor(kb, AuditSettings(min_messages=4, max_messages=12)).audit([r["messages"] for r in rows])
    failed = {rows[r.index]["id"]: [str(f) for f in r.flags if f.severity == FAIL] for r in report.rows if r.failed}
    assert not failed, failed
    # Flags to verify (numbers or award names the KB does not carry) stay rare.
    flagged = [rows[r.index]["id"] for r in report.rows if r.flags]
    assert len(flagged) <= len(rows) // 10, flagged


def test_dialogues_fit_the_demo_budget(stage1, stage2):
    """Under ~1,200 tokens each with the demo model's chat template, so the demo trains on them on a CPU."""
    from trainer.train.demo_model import DEMO_MODEL_NAME, cache_root

    folder = cache_root() / "models" / DEMO_MODEL_NAME
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("the demo model is not converted yet (python -m trainer train --config configs/demo.yaml)")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = stage1 + stage2
    texts = tokenizer.apply_chat_template([r["messages"] for r in rows], tokenize=False)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    too_long = {r["id"]: n for r, n in zip(rows, lengths) if n > 1200}
    assert not too_long, too_long
