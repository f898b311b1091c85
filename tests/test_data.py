"""trainer/data/conversations.py: every schema and file format becomes validated `messages`; each bad row is reported by file,
line and rule; duplicates go; the train/eval split depends only on content and seed."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from helpers import DATA, build_mistral_tokenizer, write_jsonl

from trainer.train.config import DatasetSettings
from trainer.data.conversations import (RULE_EMPTY, RULE_EMPTY_CONVERSATION, RULE_MISSING_FIELD, RULE_NO_ASSISTANT,
                                        RULE_NON_STRING, RULE_NON_TEXT, RULE_ORDER, RULE_ROLE, RULE_SCHEMA,
                                        RULE_TOO_LONG, check_turns, load_conversations, normalize_row,
                                        prepare_stage_data, split_train_eval)
from trainer.data.readers import RULE_ENCODING, RULE_INVALID_JSON, resolve_source
from trainer.data.readers import RULE_NOT_OBJECT, DataError


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


def chat(i: int) -> dict:
    """A distinct, valid row in `messages` schema."""
    return {"messages": [user(f"Question {i}?"), assistant(f"Answer {i}.")]}


def load(path: Path, **settings):
    return load_conversations(DatasetSettings(path=str(path), **settings))


def messages_of(conversations) -> list[list[dict[str, str]]]:
    return [list(c.messages) for c in conversations]


def locations(report) -> set[tuple[str, str]]:
    return {(e.location, e.rule) for e in report.errors}


# Schemas

# case: (schema, raw row, expected messages)
SCHEMA_CASES = {
    "messages": (
        "messages",
        {"messages": [user("Hi"), assistant("Hello")]},
        [user("Hi"), assistant("Hello")],
    ),
    "messages_with_system": (
        "messages",
        {"messages": [system("Be kind."), user("Hi"), assistant("Hello"), user("Visa?"), assistant("Apply early.")]},
        [system("Be kind."), user("Hi"), assistant("Hello"), user("Visa?"), assistant("Apply early.")],
    ),
    "sharegpt_human_gpt": (
        "sharegpt",
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        [user("Hi"), assistant("Hello")],
    ),
    "sharegpt_user_assistant_model_system": (
        "sharegpt",
        {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "user", "value": "Hi"},
                           {"from": "assistant", "value": "Hello"}, {"from": "human", "value": "Visa?"},
                           {"from": "model", "value": "Apply early."}]},
        [system("Be kind."), user("Hi"), assistant("Hello"), user("Visa?"), assistant("Apply early.")],
    ),
    "alpaca_with_input": (
        "alpaca",
        {"instruction": "Summarise.", "input": "Long text", "output": "Short"},
        [user("Summarise.\n\nLong text"), assistant("Short")],
    ),
    "alpaca_without_input": (
        "alpaca",
        {"instruction": "Say hi.", "input": "", "output": "Hi"},
        [user("Say hi."), assistant("Hi")],
    ),
    "alpaca_no_input_key": (
        "alpaca",
        {"instruction": "Say hi.", "output": "Hi"},
        [user("Say hi."), assistant("Hi")],
    ),
    "alpaca_system_history": (
        "alpaca",
        {"system": "Be kind.", "history": [["Q1", "A1"], ["Q2", "A2"]], "instruction": "Q3", "output": "A3"},
        [system("Be kind."), user("Q1"), assistant("A1"), user("Q2"), assistant("A2"), user("Q3"), assistant("A3")],
    ),
    "prompt_completion_strings": (
        "prompt_completion",
        {"prompt": "Hi", "completion": "Hello"},
        [user("Hi"), assistant("Hello")],
    ),
    "prompt_completion_conversational": (
        "prompt_completion",
        {"prompt": [system("Be kind."), user("Hi")], "completion": [assistant("Hello")]},
        [system("Be kind."), user("Hi"), assistant("Hello")],
    ),
}


@pytest.mark.parametrize("setting", ["auto", "forced"])
@pytest.mark.parametrize("case", SCHEMA_CASES)
def test_schema_is_detected_and_normalized(tmp_path, case, setting):
    schema, row, expected = SCHEMA_CASES[case]
    path = write_jsonl(tmp_path / "rows.jsonl", [row])
    conversations, report = load(path, schema="auto" if setting == "auto" else schema)
    assert report.schema == schema
    assert report.summary() == f"{path}: 1 rows read ({schema}), 1 kept, 0 bad, 0 exact duplicates removed"
    assert (report.rows_read, report.kept, report.bad) == (1, 1, 0)
    assert messages_of(conversations) == [expected]
    assert conversations[0].location == f"{path}:1"
    assert conversations[0].as_row() == {"messages": expected}


@pytest.mark.parametrize("case", SCHEMA_CASES)
def test_normalize_row_with_the_schema_named(case):
    schema, row, expected = SCHEMA_CASES[case]
    assert normalize_row(row, schema) == expected


def test_forced_schema_overrides_detection(tmp_path):
    sharegpt = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    path = write_jsonl(tmp_path / "rows.jsonl", [sharegpt, chat(1), chat(2)])

    # Auto: the first row decides (sharegpt), so the two `messages` rows are rejected.
    conversations, report = load(path, max_bad_fraction=1.0)
    assert report.schema == "sharegpt"
    assert messages_of(conversations) == [[user("Hi"), assistant("Hello")]]
    assert locations(report) == {(f"{path}:2", RULE_SCHEMA), (f"{path}:3", RULE_SCHEMA)}

    # Forced: the sharegpt row is the one rejected.
    conversations, report = load(path, schema="messages", max_bad_fraction=1.0)
    assert messages_of(conversations) == [chat(1)["messages"], chat(2)["messages"]]
    assert locations(report) == {(f"{path}:1", RULE_SCHEMA)}
    assert "expected messages fields, found sharegpt" in str(report.errors[0])


@pytest.mark.parametrize("schema", ["alpaca", "auto"])
def test_alpaca_row_without_output_is_named_missing_field_output(tmp_path, schema):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"instruction": "Q", "output": "A"}, {"instruction": "Q2"},
                                                 {"instruction": "Q3", "output": None}])
    conversations, report = load(path, schema=schema, max_bad_fraction=1.0)
    assert messages_of(conversations) == [[user("Q"), assistant("A")]]
    assert locations(report) == {(f"{path}:2", RULE_MISSING_FIELD), (f"{path}:3", RULE_MISSING_FIELD)}
    assert str(report.errors[0]) == f"{path}:2: missing field: output (an alpaca row needs instruction and output)"


def test_an_empty_conversation_is_named_as_such(tmp_path):
    rows = [chat(1), {"messages": []}, {"conversations": []}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    _conversations, report = load(path, max_bad_fraction=1.0, system_prompt="You are a counsellor.")
    assert locations(report) == {(f"{path}:2", RULE_EMPTY_CONVERSATION), (f"{path}:3", RULE_SCHEMA)}
    sharegpt = write_jsonl(tmp_path / "sharegpt.jsonl", [{"conversations": []}, {"conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}])
    _conversations, report = load(sharegpt, max_bad_fraction=1.0)
    assert [str(e) for e in report.errors] == [f"{sharegpt}:1: {RULE_EMPTY_CONVERSATION}: the row holds no messages"]


def test_openai_and_gradio_content_parts_are_read_and_a_non_text_part_is_named(tmp_path):
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Which visa do I need"},
                                                       {"type": "text", "text": "for Canada?"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "A study permit."}],
                           "metadata": None}]}
    image = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this form?"},
                                                       {"type": "image_url", "image_url": {"url": "x.png"}}]},
                          assistant("It is a CAS.")]}
    untyped = {"messages": [{"role": "user", "content": [{"text": "Hi"}]}, assistant("Hello")]}
    path = write_jsonl(tmp_path / "rows.jsonl", [parts, image, untyped])
    conversations, report = load(path, max_bad_fraction=1.0)
    assert messages_of(conversations) == [[user("Which visa do I need\nfor Canada?"), assistant("A study permit.")]]
    assert [str(e) for e in report.errors] == [
        f"{path}:2: {RULE_NON_TEXT}: message 1 (user) part 2 is 'image_url'; only text parts can be trained on",
        f"{path}:3: {RULE_SCHEMA}: message 1 (user) part 1 needs a 'type' (e.g. {{\"type\": \"text\", \"text\": ...}})"]
    # the prompt/completion schema takes the same lists of messages
    assert normalize_row({"prompt": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                          "completion": [assistant("Hello")]}, "prompt_completion") == [user("Hi"), assistant("Hello")]


# File formats

def test_json_array_reports_each_item_by_line(tmp_path):
    rows = [chat(1), chat(2), {"messages": [user("No answer")]}, chat(3)]
    path = tmp_path / "rows.json"
    # One item per line after the opening bracket: item i starts on line i + 1.
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n", encoding="utf-8")
    conversations, report = load(path, max_bad_fraction=1.0)
    assert messages_of(conversations) == [chat(1)["messages"], chat(2)["messages"], chat(3)["messages"]]
    assert [c.location for c in conversations] == [f"{path}:2 (item 1)", f"{path}:3 (item 2)", f"{path}:5 (item 4)"]
    assert locations(report) == {(f"{path}:4 (item 3)", RULE_NO_ASSISTANT)}


def test_json_array_with_multiline_items_keeps_line_numbers(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([chat(1), {"messages": [assistant("first")]}], indent=2), encoding="utf-8")
    _conversations, report = load(path, max_bad_fraction=1.0)
    # indent=2: item 1 spans lines 2-13, item 2 starts on line 14.
    assert locations(report) == {(f"{path}:14 (item 2)", RULE_ORDER)}


def test_json_invalid_file_is_one_error_with_its_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('{"messages": [\n  {"role": "user"}\n}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:3: {RULE_INVALID_JSON}"):
        load(path)


def test_a_bad_item_in_a_json_array_is_named_and_the_others_are_kept(tmp_path):
    good = [json.dumps(chat(i)) for i in range(1, 6)]
    path = tmp_path / "rows.json"
    # one item per line: a missing value, a stray quote that leaves a string open, a double comma
    path.write_text("[\n" + ",\n".join([good[0], '{"messages": [1,}', good[1], '{"messages": "x}', good[2]])
                    + ",,\n" + good[3] + "\n]\n", encoding="utf-8")
    conversations, report = load(path, max_bad_fraction=1.0)
    assert messages_of(conversations) == [chat(i)["messages"] for i in (1, 2, 3, 4)]
    assert [(e.location, e.rule) for e in report.errors] == [
        (f"{path}:3 (item 2)", RULE_INVALID_JSON), (f"{path}:5 (item 4)", RULE_INVALID_JSON),
        (f"{path}:6 (item 6)", RULE_INVALID_JSON)]
    assert "the rest of the file" not in str(report.errors[0])
    # indented, with an item cut short: the next item in the same column is found again
    items = [json.dumps(chat(1), indent=2), json.dumps(chat(2), indent=2)[:-12], json.dumps(chat(3), indent=2)]
    path.write_text("[\n" + ",\n".join("\n".join("  " + line for line in item.splitlines()) for item in items)
                    + "\n]\n", encoding="utf-8")
    conversations, report = load(path, max_bad_fraction=1.0)
    assert messages_of(conversations) == [chat(1)["messages"], chat(3)["messages"]]
    assert [(e.location, e.rule) for e in report.errors] == [(f"{path}:14 (item 2)", RULE_INVALID_JSON)]
    # nothing to resynchronise on: the item says so, the rows before it stay
    path.write_text("[\n" + good[0] + ',\n{"messages": [{"role": "user", "content": "cut', encoding="utf-8")
    conversations, report = load(path, max_bad_fraction=1.0)
    assert messages_of(conversations) == [chat(1)["messages"]]
    assert str(report.errors[0]).endswith("; the rest of the file cannot be read")


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".json.gz", ".csv.gz"])
def test_gzipped_files_are_read_as_datasets_reads_them(tmp_path, suffix):
    import gzip

    rows = [chat(1), chat(2)]
    if suffix == ".jsonl.gz":
        data = "".join(json.dumps(r) + "\n" for r in rows)
    elif suffix == ".json.gz":
        data = "[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n"
    else:
        data = "messages\n" + "".join('"' + json.dumps(r["messages"]).replace('"', '""') + '"\n' for r in rows)
    path = tmp_path / f"rows{suffix}"
    path.write_bytes(gzip.compress(data.encode()))
    conversations, report = load(path)
    assert messages_of(conversations) == [r["messages"] for r in rows] and report.schema == "messages"
    assert conversations[1].location.startswith(f"{path}:")
    path.write_bytes(gzip.compress(data.encode())[:-20])  # cut short: one line naming the file
    with pytest.raises(DataError, match=rf"^{path}: cannot read the file"):
        load(path, max_bad_fraction=1.0)


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [chat(1), {"messages": [user("Hi"), assistant("")]}, chat(2)]
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    conversations, report = load(path, max_bad_fraction=1.0)
    assert report.schema == "messages"
    assert messages_of(conversations) == [chat(1)["messages"], chat(2)["messages"]]
    assert [c.location for c in conversations] == [f"{path}: row 1", f"{path}: row 3"]
    assert locations(report) == {(f"{path}: row 2", RULE_EMPTY)}


def test_parquet_alpaca_with_missing_input(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": "A?", "input": None, "output": "a"}, {"instruction": "B?", "input": "ctx", "output": "b"}]
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    conversations, report = load(path)
    assert report.schema == "alpaca"
    assert messages_of(conversations) == [[user("A?"), assistant("a")], [user("B?\n\nctx"), assistant("b")]]


def test_csv_with_messages_as_json_cells(tmp_path):
    path = tmp_path / "rows.csv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["messages"])
        writer.writerow([json.dumps(chat(1)["messages"])])
        writer.writerow(['[{"role": "user", "content": "Hi"'])  # truncated JSON in the cell
        writer.writerow([json.dumps(chat(2)["messages"])])
    conversations, report = load(path, max_bad_fraction=1.0)
    assert report.schema == "messages"
    assert messages_of(conversations) == [chat(1)["messages"], chat(2)["messages"]]
    assert [c.location for c in conversations] == [f"{path}:2 (row 1)", f"{path}:4 (row 3)"]
    assert locations(report) == {(f"{path}:3 (row 2)", RULE_INVALID_JSON)}
    assert "column 'messages'" in str(report.errors[0])


def test_csv_with_alpaca_columns(tmp_path):
    path = tmp_path / "rows.csv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["instruction", "input", "output"])
        writer.writerow(["Translate.", "Bonjour", "Hello"])
        writer.writerow(["Say hi.", "", "Hi"])
    conversations, report = load(path)
    assert report.schema == "alpaca"
    assert messages_of(conversations) == [[user("Translate.\n\nBonjour"), assistant("Hello")],
                                          [user("Say hi."), assistant("Hi")]]


def test_csv_prompt_text_starting_with_a_bracket_stays_text(tmp_path):
    path = tmp_path / "rows.csv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "completion"])
        writer.writerow(["[Urgent] How do I apply?", "Start on the university's admissions page."])
        writer.writerow([json.dumps([user("Hi")]), "[1] Check the official portal."])
    conversations, report = load(path)
    assert report.bad == 0
    assert messages_of(conversations) == [
        [user("[Urgent] How do I apply?"), assistant("Start on the university's admissions page.")],
        [user("Hi"), assistant("[1] Check the official portal.")],
    ]


def test_csv_wrong_encoding_row_is_reported_by_line(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b"instruction,input,output\n"
                     b"Q1,,A1\n"
                     b"Q2,caf\xe9,A2\n"  # Latin-1, not UTF-8
                     b"Q3,,A3\n")
    conversations, report = load(path, max_bad_fraction=1.0)
    assert messages_of(conversations) == [[user("Q1"), assistant("A1")], [user("Q3"), assistant("A3")]]
    assert locations(report) == {(f"{path}:3 (row 2)", RULE_ENCODING)}
    assert str(report.errors[0]) == f"{path}:3 (row 2): {RULE_ENCODING}: a cell is not UTF-8"


def test_jsonl_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(chat(1)).encode() + b"\n")
    conversations, report = load(path)
    assert messages_of(conversations) == [chat(1)["messages"]]


# Bad rows: one message per row naming file, line and rule

def test_every_rule_names_file_line_and_rule(tmp_path):
    lines: list[bytes] = []
    expected: dict[int, str] = {}

    def good(i):
        lines.append(json.dumps(chat(i)).encode())

    def bad(rule, raw):
        lines.append(raw if isinstance(raw, bytes) else json.dumps(raw).encode())
        expected[len(lines)] = rule

    good(1)
    good(2)
    lines.append(b"")  # a blank line is skipped but still counts for the line numbers below
    bad(RULE_INVALID_JSON, b'{"messages": [')
    bad(RULE_ENCODING, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}')
    bad(RULE_NOT_OBJECT, [chat(9)])
    bad(RULE_SCHEMA, {"text": "Hi"})
    bad(RULE_EMPTY, {"messages": [user("Hi"), assistant("   ")]})
    bad(RULE_ROLE, {"messages": [{"role": "bot", "content": "Hi"}, assistant("Hello")]})
    bad(RULE_ORDER, {"messages": [assistant("Hello"), user("Hi"), assistant("Bye")]})
    bad(RULE_ORDER, {"messages": [user("Hi"), user("Hi again"), assistant("Hello")]})
    bad(RULE_ORDER, {"messages": [user("Hi"), system("Be kind."), assistant("Hello")]})
    bad(RULE_ORDER, {"messages": [user("Hi"), assistant("Hello"), user("And?")]})
    bad(RULE_NO_ASSISTANT, {"messages": [system("Be kind."), user("Hi")]})
    bad(RULE_NON_TEXT, {"messages": [user([{"type": "input_audio", "input_audio": {}}]), assistant("Hello")]})
    bad(RULE_NON_STRING, {"messages": [user("Hi"), assistant(42)]})
    bad(RULE_EMPTY_CONVERSATION, {"messages": []})
    good(3)
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    conversations, report = load(path, max_bad_fraction=1.0)

    assert messages_of(conversations) == [chat(1)["messages"], chat(2)["messages"], chat(3)["messages"]]
    assert [c.location for c in conversations] == [f"{path}:1", f"{path}:2", f"{path}:{len(lines)}"]
    assert len(report.rule_counts()) == 11  # every rule but missing field (alpaca) and too long (a tokenizer)
    assert sorted((e.location, e.rule) for e in report.errors) == sorted(
        (f"{path}:{line}", rule) for line, rule in expected.items())
    for error in report.errors:
        assert str(error).startswith(f"{error.location}: {error.rule}: ")
    assert (report.rows_read, report.kept, report.bad) == (len(lines) - 1, 3, len(expected))
    assert report.rule_counts()[RULE_ORDER] == 4
    assert report.rule_counts()[RULE_NON_STRING] == 1


def test_order_rule_details_name_the_turn():
    def detail(messages):
        with pytest.raises(Exception) as info:
            check_turns(messages)
        return info.value.rule, info.value.detail

    assert detail([assistant("a"), user("b"), assistant("c")]) == (
        RULE_ORDER, "message 1 is 'assistant' where 'user' was expected")
    assert detail([user("a"), user("b"), assistant("c")]) == (
        RULE_ORDER, "message 2 is 'user' where 'assistant' was expected")
    assert detail([user("a"), system("b"), assistant("c")]) == (
        RULE_ORDER, "message 2 is a system turn; only the first message may be one")
    assert detail([user("a"), assistant("b"), user("c")]) == (
        RULE_ORDER, "the last message is 'user'; it must be an assistant answer")
    check_turns([system("s"), user("a"), assistant("b"), user("c"), assistant("d")])  # valid: no exception


def test_first_row_not_an_object_is_reported_as_such(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [["a", "list"], chat(1), chat(2)])
    conversations, report = load(path, max_bad_fraction=1.0)
    assert len(conversations) == 2
    assert locations(report) == {(f"{path}:1", RULE_NOT_OBJECT)}


def test_sharegpt_unknown_speaker_and_missing_value(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Beep"}]},
        {"conversations": [{"from": "human", "text": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    _conversations, report = load(path, max_bad_fraction=1.0)
    assert locations(report) == {(f"{path}:2", RULE_ROLE), (f"{path}:3", RULE_SCHEMA)}
    assert "turn 2 is from 'robot'" in str(report.errors[0])


def test_bad_rows_are_skipped_until_the_share_exceeds_the_limit(tmp_path):
    rows = [chat(i) for i in range(8)] + [{"messages": [user("Q")]}, {"messages": [user("Q2")]}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)

    conversations, report = load(path, max_bad_fraction=0.2)  # 2 of 10 bad: exactly at the limit
    assert (len(conversations), report.bad, report.rows_read) == (8, 2, 10)
    assert report.to_dict()["bad_by_rule"] == {RULE_NO_ASSISTANT: 2}

    with pytest.raises(DataError) as info:
        load(path, max_bad_fraction=0.1)
    message = str(info.value)
    assert message.startswith(f"{path}: 2 of 10 rows are bad (20%, limit 10%)")
    assert f"{path}:9: {RULE_NO_ASSISTANT}" in message
    assert f"{path}:10: {RULE_NO_ASSISTANT}" in message


def test_no_usable_row_fails_even_with_no_limit(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"messages": [user("Q")]}])
    with pytest.raises(DataError, match="1 of 1 rows are bad"):
        load(path, max_bad_fraction=1.0)


def test_strict_fails_at_the_first_bad_row(tmp_path):
    rows = [chat(1), {"messages": [user("Q"), assistant(" ")]}, {"messages": [user("Q")]}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError) as info:
        load(path, strict=True, max_bad_fraction=1.0)
    message = str(info.value)
    assert message.startswith(f"{path}:2: {RULE_EMPTY}: message 2 (assistant) is empty")
    assert f"{path}:3" not in message


# Duplicates and the system prompt

def test_exact_duplicates_are_removed_and_counted(tmp_path):
    near = {"messages": [user("Question 1?"), assistant("Answer 1. ")]}  # differs by a space: kept
    path = write_jsonl(tmp_path / "rows.jsonl", [chat(1), chat(2), chat(1), near, chat(1)])
    conversations, report = load(path)
    assert messages_of(conversations) == [chat(1)["messages"], chat(2)["messages"], near["messages"]]
    assert conversations[0].location == f"{path}:1"  # the first copy is the one kept
    assert (report.rows_read, report.kept, report.duplicates, report.bad) == (5, 3, 2, 0)
    assert "2 exact duplicates removed" in report.summary()
    assert report.duplicate_rows == [(f"{path}:3", f"{path}:1"), (f"{path}:5", f"{path}:1")]


def test_duplicates_across_schemas_in_one_folder(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"conversations": [{"from": "human", "value": "Question 1?"},
                                                        {"from": "gpt", "value": "Answer 1."}]}])
    write_jsonl(folder / "b.jsonl", [chat(1), chat(2)])
    (folder / "notes.txt").write_text("not data", encoding="utf-8")
    (folder / "old").mkdir()
    conversations, report = load(folder)
    assert messages_of(conversations) == [chat(1)["messages"], chat(2)["messages"]]
    assert conversations[0].location == f"{folder / 'a.jsonl'}:1"
    assert (report.rows_read, report.kept, report.duplicates) == (3, 2, 1)
    assert set(report.file_hashes) == {str(folder / "a.jsonl"), str(folder / "b.jsonl")}
    # every file's schema, and every entry not read, with the reason
    assert report.file_schemas == {str(folder / "a.jsonl"): "sharegpt", str(folder / "b.jsonl"): "messages"}
    assert [(Path(f).name, why.split(";")[0]) for f, why in report.skipped_files] == [
        ("notes.txt", "unsupported file type"), ("old", "a folder (folders inside the data folder are not read)")]
    assert report.summary().startswith(f"{folder}: 3 rows read (a.jsonl: sharegpt; b.jsonl: messages), 2 kept")
    assert "2 skipped (notes.txt: unsupported file type" in report.summary()
    assert report.to_dict()["skipped_files"][0]["path"] == str(folder / "notes.txt")


def test_system_prompt_is_added_only_when_missing(tmp_path):
    prompt = "You are a study-abroad counsellor."
    rows = [chat(1), {"messages": [system("Be brief."), user("Hi"), assistant("Hello")]}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    conversations, _report = load(path, system_prompt=prompt)
    assert messages_of(conversations) == [
        [system(prompt), *chat(1)["messages"]],
        [system("Be brief."), user("Hi"), assistant("Hello")],
    ]


def test_system_prompt_makes_rows_duplicates(tmp_path):
    prompt = "You are a study-abroad counsellor."
    path = write_jsonl(tmp_path / "rows.jsonl", [chat(1), {"messages": [system(prompt), *chat(1)["messages"]]}])
    conversations, report = load(path, system_prompt=prompt)
    assert len(conversations) == 1 and report.duplicates == 1


# Train/eval split

def many_rows(n: int = 200) -> list[dict]:
    return [chat(i) for i in range(n)]


def hashes(conversations) -> set[str]:
    return {c.content_hash for c in conversations}


def test_split_depends_only_on_content_and_seed(tmp_path):
    rows = many_rows()
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    first, _ = load(write_jsonl(tmp_path / "a.jsonl", rows))
    second, _ = load(write_jsonl(tmp_path / "b.jsonl", shuffled))

    train_a, eval_a = split_train_eval(first, 0.1, seed=3407)
    train_b, eval_b = split_train_eval(second, 0.1, seed=3407)
    assert hashes(eval_a) == hashes(eval_b)
    assert hashes(train_a) == hashes(train_b)
    assert len(eval_a) == 20 and len(train_a) == 180
    assert not hashes(train_a) & hashes(eval_a)
    assert hashes(train_a) | hashes(eval_a) == hashes(first)
    # Order within each split follows the input.
    assert [c.location for c in train_a] == sorted((c.location for c in train_a),
                                                   key=lambda loc: int(loc.rsplit(":", 1)[1]))

    _train_c, eval_c = split_train_eval(first, 0.1, seed=1)
    assert len(eval_c) == 20
    assert hashes(eval_c) != hashes(eval_a)


@pytest.mark.parametrize(("n", "fraction", "n_eval"), [(200, 0.25, 50), (5, 0.1, 1), (2, 0.9, 1), (1, 0.5, 0),
                                                        (10, 0.0, 0)])
def test_split_sizes(tmp_path, n, fraction, n_eval):
    conversations, _ = load(write_jsonl(tmp_path / "rows.jsonl", many_rows(n)))
    train, held = split_train_eval(conversations, fraction, seed=3407)
    assert (len(train), len(held)) == (n - n_eval, n_eval)


def test_prepare_stage_data_splits_and_uses_eval_path(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", many_rows(20))
    data = prepare_stage_data(DatasetSettings(path=str(path), eval_fraction=0.2), seed=3407, max_length=2048)
    assert (len(data.train), len(data.eval)) == (16, 4)
    assert data.split_record()["eval"] == [{"sha256": c.content_hash, "source": c.location} for c in data.eval]

    eval_path = write_jsonl(tmp_path / "eval.jsonl", [chat(100), chat(101)])
    data = prepare_stage_data(DatasetSettings(path=str(path), eval_fraction=0.2, eval_path=str(eval_path)),
                              seed=3407, max_length=2048)
    assert (len(data.train), len(data.eval)) == (20, 2)
    assert messages_of(data.eval) == [chat(100)["messages"], chat(101)["messages"]]
    assert [r.source for r in data.reports] == [str(path), str(eval_path)]


# The shared sample, sources and lengths

def test_studyabroadgpt_sample_ingests():
    conversations, report = load(DATA / "studyabroadgpt_sample.jsonl")
    assert report.schema == "sharegpt"
    assert (report.rows_read, report.kept, report.bad, report.duplicates) == (13, 13, 0, 0)
    for conv in conversations:
        assert [m["role"] for m in conv.messages] == ["user", "assistant"] * 3


def test_hub_id_and_missing_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_source("millat/StudyAbroadGPT-Dataset") == ("hub", [])
    with pytest.raises(DataError, match=r"^nope/missing\.jsonl: no such file or folder"):
        load(Path("nope/missing.jsonl"))
    (tmp_path / "rows.txt").write_text("Hi", encoding="utf-8")
    with pytest.raises(DataError, match=r"^rows\.txt: unsupported file type"):
        resolve_source("rows.txt")


def test_relative_path_is_tried_from_base_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "project" / "data").mkdir(parents=True)
    path = write_jsonl(tmp_path / "project" / "data" / "rows.jsonl", [chat(1)])
    assert resolve_source("data/rows.jsonl", base_dir=tmp_path / "project") == ("local", [path])


def test_too_long_rows_are_rejected_after_templating(tmp_path):
    tokenizer = build_mistral_tokenizer()
    short = many_rows(9)
    long = {"messages": [user("Tell me everything."), assistant("Study abroad visa " * 30)]}
    rows = short[:4] + [long] + short[4:]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)

    def n_tokens(row):
        text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    max_length = max(n_tokens(r) for r in short)
    assert n_tokens(long) > max_length

    spec = DatasetSettings(path=str(path), eval_fraction=0.2, max_bad_fraction=0.5)
    data = prepare_stage_data(spec, seed=3407, max_length=max_length, tokenizer=tokenizer,
                              chat_template=tokenizer.chat_template)
    kept = data.train + data.eval
    assert hashes(kept) == hashes(load(write_jsonl(tmp_path / "short.jsonl", short))[0])
    assert len(data.train_lengths) == len(data.train) and max(data.train_lengths) <= max_length
    (report,) = data.reports
    assert report.kept == 9
    assert [(e.location, e.rule) for e in report.errors] == [(f"{path}:5", RULE_TOO_LONG)]
    assert str(report.errors[0]) == f"{path}:5: {RULE_TOO_LONG}: {n_tokens(long)} tokens > max_length {max_length}"

    # The rejected row counts against max_bad_fraction like any other bad row: 1 of 5 is over the default 10%.
    few = write_jsonl(tmp_path / "few.jsonl", [long, *short[:4]])
    with pytest.raises(DataError) as info:
        prepare_stage_data(DatasetSettings(path=str(few), eval_fraction=0.2), seed=3407, max_length=max_length,
                           tokenizer=tokenizer, chat_template=tokenizer.chat_template)
    assert str(info.value).startswith(f"{few}: 1 of 5 rows are bad (20%, limit 10%):\n  {few}:1: {RULE_TOO_LONG}")


def test_a_huge_line_is_rejected_by_its_characters_before_it_is_tokenized(tmp_path):
    tokenizer = build_mistral_tokenizer()
    huge = {"messages": [user("Tell me everything."), assistant("visa " * 1_000_000)]}  # a 5 MB line
    path = write_jsonl(tmp_path / "rows.jsonl", [huge] + many_rows(19))
    handed: list[int] = []
    rendered = tokenizer.apply_chat_template

    def apply_chat_template(conversations, **kwargs):
        handed.extend(sum(len(m["content"]) for m in c) for c in conversations)
        return rendered(conversations, **kwargs)

    tokenizer.apply_chat_template = apply_chat_template
    data = prepare_stage_data(DatasetSettings(path=str(path), eval_fraction=0.1), seed=3407, max_length=2048,
                              tokenizer=tokenizer, chat_template=tokenizer.chat_template)
    (report,) = data.reports
    assert [(e.location, e.rule) for e in report.errors] == [(f"{path}:1", RULE_TOO_LONG)]
    assert str(report.errors[0]).startswith(f"{path}:1: {RULE_TOO_LONG}: 5,000,019 characters, more than "
                                            "max_length 2048 tokens can hold")
    assert len(handed) == 19 and max(handed) < 100  # the huge row was never rendered nor tokenized
