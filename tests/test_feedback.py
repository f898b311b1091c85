"""The feedback store: consent, durability under kill -9, concurrency, idempotency, reviews, and the JSONL copy
that CommitScheduler pushes to a Hub dataset."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import REPO

from trainer.data.feedback import FeedbackError, FeedbackRecord, FeedbackStore

DIALOGUE = [{"role": "user", "content": "Do I need IELTS 7.0 for Edinburgh?"},
            {"role": "assistant", "content": "It depends on the programme; check its page."},
            {"role": "user", "content": "And for the visa?"},
            {"role": "assistant", "content": "The university's CAS states the English level."}]


def record(**overrides) -> FeedbackRecord:
    values = dict(session_id="s1", base_model="smollm2-135m-instruct", adapter="demo/stage2",
                  system_prompt="You are a counsellor.", messages=[dict(m) for m in DIALOGUE], consent=True,
                  ratings={1: 1, 3: -1}, settings={"temperature": 0.7})
    values.update(overrides)
    return FeedbackRecord(**values)


def test_a_stored_record_reads_back_exactly(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    original = record(edited_index=3, edited_answer="Check the CAS and UKVI's page.", comment="helpful",
                      redactions={"email": 1, "phone": 0, "id_number": 0, "address": 0})
    record_id = store.add(original)
    again = store.get(record_id)
    assert again.to_json() == original.to_json()
    assert store.count() == 1
    mode = sqlite3.connect(tmp_path / "fb.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    store.close()


@pytest.mark.parametrize("overrides, message", [
    ({"consent": False}, "nothing is stored without consent"),
    ({"messages": [{"role": "user", "content": "hi"}], "ratings": {}}, "no answer to give feedback on"),
    ({"ratings": {0: 1}}, "is not a like/dislike of an answer"),
    ({"ratings": {1: 5}}, "is not a like/dislike of an answer"),
    ({"edited_answer": "better", "edited_index": 0}, "must name the assistant message"),
    ({"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}], "ratings": {}},
     "user/assistant turns"),
])
def test_invalid_submissions_are_refused_and_not_stored(tmp_path, overrides, message):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    with pytest.raises(FeedbackError, match=message):
        store.add(record(**overrides))
    assert store.count() == 0
    store.close()


def test_32_concurrent_writers_store_every_record_once(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    ids: list[str] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        for i in range(50):
            record_id = store.add(record(session_id=f"w{w}", request_id=f"{w}-{i}"))
            with lock:
                ids.append(record_id)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == len(set(ids)) == 1600
    assert store.count() == 1600
    # a retried submission (same request id) is acknowledged with the first id, not stored twice
    assert store.add(record(session_id="w0", request_id="0-0")) in ids
    assert store.count() == 1600
    store.close()


WRITER = """
import sys, time
sys.path.insert(0, {repo!r})
from trainer.data.feedback import FeedbackRecord, FeedbackStore
store = FeedbackStore({path!r})
i = 0
while True:
    rid = store.add(FeedbackRecord(session_id="k", base_model="b", adapter="a", system_prompt="s",
                                   messages=[{{"role": "user", "content": "q"}}, {{"role": "assistant", "content": "a"}}],
                                   consent=True, request_id=f"req-{{i}}"))
    print(f"ACK req-{{i}} {{rid}}", flush=True)
    i += 1
"""


def test_acknowledged_records_survive_kill_9(tmp_path):
    path = tmp_path / "fb.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), path=str(path))],
                            stdout=subprocess.PIPE, text=True)
    acked: list[tuple[str, str]] = []
    deadline = time.time() + 60
    while len(acked) < 300 and time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("ACK "):
            acked.append(tuple(line.split()[1:3]))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(acked) >= 300
    store = FeedbackStore(path)
    for request_id, record_id in acked:
        stored = store.get(record_id)
        assert stored is not None and stored.request_id == request_id
    assert store.count() >= len(acked)
    store.close()


def test_reviews_are_recorded_with_who_decided(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    record_id = store.add(record())
    decided = store.decide(record_id, status="accepted", reviewer="ana", topic="visas",
                           edits={3: "Check UKVI's English-language rules."})
    assert (decided.status, decided.reviewer, decided.topic) == ("accepted", "ana", "visas")
    assert decided.review_edits == {3: "Check UKVI's English-language rules."} and decided.decided_at
    with pytest.raises(FeedbackError, match="not an assistant turn"):
        store.decide(record_id, status="accepted", reviewer="ana", edits={0: "x"})
    with pytest.raises(FeedbackError, match="no feedback record"):
        store.decide("nope", status="rejected", reviewer="ana")
    assert [r.id for r in store.records(status="accepted", topic="visas")] == [record_id]
    assert store.records(status="unreviewed") == []
    store.close()


def test_filters_by_rating_adapter_and_date(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    liked = store.add(record(ratings={1: 1}, adapter="demo/stage1", created_at=1_700_000_000))
    disliked = store.add(record(ratings={3: -1}, adapter="demo/stage2", created_at=1_800_000_000))
    unrated = store.add(record(ratings={}, adapter="base", created_at=1_900_000_000))
    assert [r.id for r in store.records(rating="liked")] == [liked]
    assert [r.id for r in store.records(rating="disliked")] == [disliked]
    assert [r.id for r in store.records(rating="unrated")] == [unrated]
    assert [r.id for r in store.records(adapter="base")] == [unrated]
    assert [r.id for r in store.records(since=1_750_000_000, until=1_850_000_000)] == [disliked]
    store.close()


def test_reviewers_filter_for_answers_that_left_a_false_premise_uncorrected(tmp_path):
    from trainer.data.feedback import KB_CHECKS, PREMISE_RULES
    from trainer.kb.premise import AFFIRMED, IGNORED

    assert PREMISE_RULES == (AFFIRMED, IGNORED)
    store = FeedbackStore(tmp_path / "fb.sqlite")

    def flag(rule):
        return {"message": 1, "rule": rule, "detail": f"{rule}: ...", "source": "https://example.org"}

    clean = store.add(record(kb_flags=[], created_at=1))
    contradiction = store.add(record(kb_flags=[flag("kb_contradiction")], created_at=2))
    affirmed = store.add(record(kb_flags=[flag("kb_contradiction"), flag("premise_affirmed")], created_at=3))
    ignored = store.add(record(kb_flags=[flag("premise_ignored")], created_at=4))
    assert [r.id for r in store.records(kb_check="premise")] == [affirmed, ignored]
    assert [r.id for r in store.records(kb_check="flagged")] == [contradiction, affirmed, ignored]
    assert [r.id for r in store.records(kb_check="clean")] == [clean]
    assert [r.id for r in store.records(kb_check="premise", status="accepted")] == []
    with pytest.raises(ValueError, match=f"kb_check: 'odd' must be one of {', '.join(KB_CHECKS)}"):
        store.records(kb_check="odd")
    store.close()


def read_jsonl(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]


def test_jsonl_copy_neither_loses_nor_duplicates_across_restarts(tmp_path):
    folder = tmp_path / "hub-jsonl"
    store = FeedbackStore(tmp_path / "fb.sqlite", jsonl_dir=folder)
    first = [store.add(record(request_id=f"a{i}")) for i in range(5)]
    store.decide(first[0], status="accepted", reviewer="ana")
    store.close()
    # A crash after the SQLite commit but before the JSONL append: the record is marked unsynced.
    conn = sqlite3.connect(tmp_path / "fb.sqlite")
    conn.execute("UPDATE records SET synced = 0 WHERE id = ?", (first[1],))  # its line exists: must not repeat
    conn.commit()
    conn.close()
    lines = read_jsonl(folder)
    lost = [l for l in lines if l.get("id") == first[2] and l["kind"] == "record"]
    for path in folder.glob("*.jsonl"):  # ... and one whose line never reached the file
        path.write_text("".join(json.dumps(l) + "\n" for l in lines if l not in lost))
    conn = sqlite3.connect(tmp_path / "fb.sqlite")
    conn.execute("UPDATE records SET synced = 0 WHERE id = ?", (first[2],))
    conn.commit()
    conn.close()

    store = FeedbackStore(tmp_path / "fb.sqlite", jsonl_dir=folder)
    second = [store.add(record(request_id=f"b{i}")) for i in range(3)]
    store.close()
    records = [l["id"] for l in read_jsonl(folder) if l["kind"] == "record"]
    assert sorted(records) == sorted(first + second)  # every record once
    decisions = [l for l in read_jsonl(folder) if l["kind"] == "decision"]
    assert [(d["id"], d["status"], d["reviewer"]) for d in decisions] == [(first[0], "accepted", "ana")]


def test_commit_scheduler_pushes_the_store_to_a_hub_dataset(tmp_path, hub, monkeypatch):
    import huggingface_hub.constants as constants
    from huggingface_hub import CommitScheduler, HfApi

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    folder = tmp_path / "hub-jsonl"
    folder.mkdir()
    scheduler = CommitScheduler(repo_id="tester/feedback", repo_type="dataset", folder_path=folder,
                                path_in_repo="records", every=10, private=True, allow_patterns=["*.jsonl"],
                                hf_api=HfApi(endpoint=hub.endpoint, token=hub.token))
    try:
        store = FeedbackStore(tmp_path / "fb.sqlite", jsonl_dir=folder, scheduler=scheduler)
        ids = [store.add(record(request_id=f"r{i}")) for i in range(20)]
        store.decide(ids[0], status="rejected", reviewer="ana")
        scheduler.trigger().result()
        pushed = [json.loads(line) for name, data in hub.files("dataset", "tester/feedback").items()
                  if name.startswith("records/") for line in data.decode().splitlines()]
        records = {p["id"]: p for p in pushed if p["kind"] == "record"}
        assert set(records) == set(ids)
        for record_id in ids:
            expected = store.get(record_id).to_json() if record_id != ids[0] else None
            if expected:
                assert {k: v for k, v in records[record_id].items() if k != "kind"} == expected
        assert [p["status"] for p in pushed if p["kind"] == "decision"] == ["rejected"]
        store.close()
    finally:
        scheduler.stop()
