"""Outside prompt sets for the eval: CSV/JSONL files of prompts, bad rows named with file, line and rule."""

from __future__ import annotations

import json

import pytest

from trainer.eval import EvalError
from trainer.eval.prompts import is_prompt_file, load_prompt_set


def test_a_csv_of_50_prompts_with_some_references_loads_in_order(tmp_path):
    path = tmp_path / "office.csv"
    lines = ["question,reference,topic"]
    for i in range(50):
        ref = f"Reference answer {i}." if i % 2 == 0 else ""
        lines.append(f'"Question {i}: how do I apply, step by step?",{ref},visas')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prompts = load_prompt_set(path)
    assert len(prompts.items) == 50 and prompts.skipped == []
    assert prompts.items[0].prompt == "Question 0: how do I apply, step by step?"
    assert prompts.items[0].reference == "Reference answer 0." and prompts.items[1].reference is None
    assert prompts.with_references == 25 and prompts.items[3].id == "row-4" and prompts.items[0].topic == "visas"


def test_malformed_csv_rows_are_named_with_file_line_and_rule_and_the_rest_kept(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b'prompt,reference\n'
                     b'"Good question one?",ref\n'
                     b'""\n'
                     b'"Bad bytes \xff here",x\n'
                     b'"Good question two?"\n')
    prompts = load_prompt_set(path)
    assert [i.prompt for i in prompts.items] == ["Good question one?", "Good question two?"]
    assert prompts.skipped == [f"{path}:3 (row 2): empty content: prompt is empty",
                               f"{path}:4 (row 3): wrong encoding: a cell is not UTF-8"]


def test_jsonl_prompts_with_ids_and_bad_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join([json.dumps({"id": "a", "prompt": "First?", "answer": "Yes."}),
                               "{broken",
                               json.dumps({"id": "a", "prompt": "Again?"}),
                               json.dumps({"text": "no prompt column"}),
                               json.dumps({"prompt": ["a", "list"]})]) + "\n", encoding="utf-8")
    prompts = load_prompt_set(path)
    assert [(i.id, i.reference) for i in prompts.items] == [("a", "Yes.")]
    assert [s.split(": ", 2)[1] for s in prompts.skipped] == [
        "invalid JSON", "duplicate id 'a' (first at " + f"{path}:1)", "missing field prompt",
        "non-string content"]


def test_a_file_without_usable_prompts_is_one_error(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("name\nx\n", encoding="utf-8")
    with pytest.raises(EvalError, match=r"empty.csv: no usable prompt in 1 rows\n  .*missing field prompt"):
        load_prompt_set(path)
    with pytest.raises(EvalError, match="prompt file not found"):
        load_prompt_set(tmp_path / "absent.csv")
    (tmp_path / "x.txt").write_text("q", encoding="utf-8")
    with pytest.raises(EvalError, match="not a prompt file"):
        load_prompt_set(tmp_path / "x.txt")
    assert is_prompt_file("a.csv") and not is_prompt_file("questions.yaml")
