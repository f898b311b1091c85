"""The feedback store: every consented dialogue, rating and correction, durable before it is acknowledged.

SQLite in WAL mode with `synchronous=FULL` on local disk. One writer thread owns the connection and commits whatever
is waiting as one transaction (group commit): `add()` returns only after the transaction holding its record is
synced to disk, so an acknowledged record survives `kill -9` of the app, while 32 concurrent visitors share each
fsync instead of queueing behind one fsync each.

With a Hub dataset configured, each durable record is also appended as one JSON line to a file that
`huggingface_hub.CommitScheduler` pushes every few minutes (appends happen under the scheduler's lock). The store
remembers which records reached a JSONL file; on restart it reconciles with the files on disk, so a record is
neither lost nor written twice.
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainer import UserError

REVIEW_STATUSES = ("unreviewed", "accepted", "rejected")
KB_CHECKS = ("flagged", "premise", "clean")
"""The labelling queue's filters on the live KB check's flags stored with each record (`FeedbackStore.records`)."""
PREMISE_RULES = ("premise_affirmed", "premise_ignored")
"""The flags of an answer that does not carry the correction of the question's false premise (`trainer.kb.premise`)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    request_id TEXT UNIQUE,
    session_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    base_model TEXT NOT NULL,
    adapter TEXT NOT NULL,
    adapter_revision TEXT,
    system_prompt TEXT NOT NULL,
    settings TEXT NOT NULL,
    messages TEXT NOT NULL,
    ratings TEXT NOT NULL,
    edited_index INTEGER,
    edited_answer TEXT,
    comment TEXT,
    consent INTEGER NOT NULL,
    redactions TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'unreviewed',
    topic TEXT,
    reviewer TEXT,
    decided_at REAL,
    review_edits TEXT NOT NULL DEFAULT '{}',
    synced INTEGER NOT NULL DEFAULT 0,
    decision_synced INTEGER NOT NULL DEFAULT 1,
    kb_flags TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS records_status ON records(status, created_at);
"""


class FeedbackError(UserError, ValueError):
    """A submission or decision that cannot be stored; the message says why."""


@dataclass
class FeedbackRecord:
    """One consented dialogue snapshot with its feedback. Text fields are already redacted."""

    session_id: str
    base_model: str
    adapter: str
    system_prompt: str
    messages: list[dict[str, str]]
    consent: bool
    settings: dict[str, Any] = field(default_factory=dict)
    ratings: dict[int, int] = field(default_factory=dict)
    """Message index -> +1 (liked) or -1 (disliked)."""
    adapter_revision: str | None = None
    edited_index: int | None = None
    """Index of the assistant message the visitor suggested a better answer for."""
    edited_answer: str | None = None
    comment: str | None = None
    redactions: dict[str, int] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    request_id: str | None = None
    created_at: float = field(default_factory=time.time)
    status: str = "unreviewed"
    topic: str | None = None
    reviewer: str | None = None
    decided_at: float | None = None
    review_edits: dict[int, str] = field(default_factory=dict)
    """Assistant message index -> the reviewer's corrected text."""
    kb_flags: list[dict[str, Any]] = field(default_factory=list)
    """The live KB check's findings on the answers: {message, rule, detail, source} each (reviewers filter on it)."""

    def validate(self) -> None:
        if not self.consent:
            raise FeedbackError("nothing is stored without consent")
        if not self.messages or not any(m.get("role") == "assistant" for m in self.messages):
            raise FeedbackError("there is no answer to give feedback on yet")
        for m in self.messages:
            if m.get("role") not in ("user", "assistant") or not isinstance(m.get("content"), str):
                raise FeedbackError("messages must be user/assistant turns with text")
        for index, value in self.ratings.items():
            if value not in (-1, 1) or not 0 <= index < len(self.messages) \
                    or self.messages[index]["role"] != "assistant":
                raise FeedbackError(f"rating {value!r} for message {index} is not a like/dislike of an answer")
        if self.edited_answer is not None:
            if self.edited_index is None or not 0 <= self.edited_index < len(self.messages) \
                    or self.messages[self.edited_index]["role"] != "assistant":
                raise FeedbackError("a suggested answer must name the assistant message it replaces")
        if self.status not in REVIEW_STATUSES:
            raise FeedbackError(f"unknown review status {self.status!r}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratings"] = {str(k): v for k, v in self.ratings.items()}
        data["review_edits"] = {str(k): v for k, v in self.review_edits.items()}
        return data

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "FeedbackRecord":
        return cls(
            id=row["id"], request_id=row["request_id"], session_id=row["session_id"], created_at=row["created_at"],
            base_model=row["base_model"], adapter=row["adapter"], adapter_revision=row["adapter_revision"],
            system_prompt=row["system_prompt"], settings=json.loads(row["settings"]),
            messages=json.loads(row["messages"]),
            ratings={int(k): v for k, v in json.loads(row["ratings"]).items()},
            edited_index=row["edited_index"], edited_answer=row["edited_answer"], comment=row["comment"],
            consent=bool(row["consent"]), redactions=json.loads(row["redactions"]), status=row["status"],
            topic=row["topic"], reviewer=row["reviewer"], decided_at=row["decided_at"],
            review_edits={int(k): v for k, v in json.loads(row["review_edits"]).items()},
            kb_flags=json.loads(row["kb_flags"]),
        )


@dataclass
class _Pending:
    record: FeedbackRecord
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    stored_id: str | None = None


class FeedbackStore:
    """SQLite-backed, group-committed, durable-before-acknowledged feedback records."""

    def __init__(self, path: str | Path, *, jsonl_dir: str | Path | None = None, scheduler=None,
                 max_batch: int = 256):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.jsonl_dir = Path(jsonl_dir) if jsonl_dir else None
        self.scheduler = scheduler
        self.max_batch = max_batch
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._read_lock = threading.Lock()
        self._reader = self._connect()
        self._jsonl_file: Path | None = None
        self._jsonl_lock = threading.Lock()
        if self.jsonl_dir is not None:
            self.jsonl_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl_file = self.jsonl_dir / f"records-{uuid.uuid4().hex}.jsonl"
            self._reconcile_jsonl()
        self._writer = threading.Thread(target=self._write_loop, name="feedback-writer", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # the WAL is synced at every commit: durable once acknowledged
        conn.executescript(SCHEMA)
        columns = {r["name"] for r in conn.execute("PRAGMA table_info(records)")}
        if "kb_flags" not in columns:  # a store written before the live KB check: add the column, keep every row
            try:
                conn.execute("ALTER TABLE records ADD COLUMN kb_flags TEXT NOT NULL DEFAULT '[]'")
            except sqlite3.OperationalError:  # another connection added it first
                pass
        return conn

    # Writing

    def add(self, record: FeedbackRecord, timeout: float = 30.0) -> str:
        """Store a record; returns its id once it is on disk. A repeated `request_id` returns the first id."""
        record.validate()
        pending = _Pending(record)
        self._queue.put(pending)
        if not pending.done.wait(timeout):
            raise FeedbackError("the feedback store did not confirm the write in time; please retry")
        if pending.error is not None:
            raise pending.error
        return pending.stored_id

    def _write_loop(self) -> None:
        conn = self._connect()
        while True:
            first = self._queue.get()
            if first is None:
                conn.close()
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            try:
                conn.execute("BEGIN IMMEDIATE")
                for pending in batch:
                    pending.stored_id = self._insert(conn, pending.record)
                conn.execute("COMMIT")
            except BaseException as exc:  # report to every waiter; nothing of the batch was acknowledged
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                for pending in batch:
                    pending.error = FeedbackError(f"could not store feedback: {exc}")
                    pending.done.set()
                continue
            for pending in batch:
                pending.done.set()
            if self._jsonl_file is not None:
                self._append_jsonl(conn, [p.stored_id for p in batch])

    @staticmethod
    def _insert(conn: sqlite3.Connection, r: FeedbackRecord) -> str:
        if r.request_id:
            row = conn.execute("SELECT id FROM records WHERE request_id = ?", (r.request_id,)).fetchone()
            if row is not None:
                return row["id"]  # a retried submission: already stored, do not duplicate
        conn.execute(
            "INSERT INTO records (id, request_id, session_id, created_at, base_model, adapter, adapter_revision,"
            " system_prompt, settings, messages, ratings, edited_index, edited_answer, comment, consent, redactions,"
            " status, topic, reviewer, decided_at, review_edits, kb_flags) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (r.id, r.request_id, r.session_id, r.created_at, r.base_model, r.adapter, r.adapter_revision,
             r.system_prompt, json.dumps(r.settings), json.dumps(r.messages, ensure_ascii=False),
             json.dumps({str(k): v for k, v in r.ratings.items()}), r.edited_index, r.edited_answer, r.comment,
             int(r.consent), json.dumps(r.redactions), r.status, r.topic, r.reviewer, r.decided_at,
             json.dumps({str(k): v for k, v in r.review_edits.items()}, ensure_ascii=False),
             json.dumps(r.kb_flags, ensure_ascii=False)))
        return r.id

    # The Hub copy: JSONL files pushed by CommitScheduler

    def _append_jsonl(self, conn: sqlite3.Connection, ids: list[str]) -> None:
        rows = [r for r in (self._get(conn, i) for i in dict.fromkeys(ids)) if r is not None]
        marks = conn.execute(f"SELECT id FROM records WHERE synced = 1 AND id IN ({','.join('?' * len(rows))})",
                             [r.id for r in rows]).fetchall() if rows else []
        done = {m["id"] for m in marks}
        lines = "".join(json.dumps({"kind": "record", **r.to_json()}, ensure_ascii=False) + "\n"
                        for r in rows if r.id not in done)
        if not lines:
            return
        self._write_lines(lines)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("UPDATE records SET synced = 1 WHERE id = ?", [(r.id,) for r in rows])
        conn.execute("COMMIT")

    def _write_lines(self, lines: str) -> None:
        lock = self.scheduler.lock if self.scheduler is not None else self._jsonl_lock
        with lock:  # never while the scheduler is reading the folder for a commit
            with open(self._jsonl_file, "a", encoding="utf-8") as fh:
                fh.write(lines)
                fh.flush()
                os.fsync(fh.fileno())

    def _append_decision(self, conn: sqlite3.Connection, record: FeedbackRecord) -> None:
        line = {"kind": "decision", "id": record.id, "status": record.status, "reviewer": record.reviewer,
                "decided_at": record.decided_at, "topic": record.topic,
                "review_edits": {str(k): v for k, v in record.review_edits.items()}}
        self._write_lines(json.dumps(line, ensure_ascii=False) + "\n")
        conn.execute("UPDATE records SET decision_synced = 1 WHERE id = ?", (record.id,))

    def _reconcile_jsonl(self) -> None:
        """After a restart: records already in a JSONL file are marked synced; the others are appended."""
        seen: set[str] = set()
        for path in sorted(self.jsonl_dir.glob("*.jsonl")):
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        seen.add(json.loads(line)["id"])
                    except (ValueError, KeyError):
                        continue  # a torn last line from a crash: its record is still unsynced in SQLite
        conn = self._reader
        with self._read_lock:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("UPDATE records SET synced = 1 WHERE id = ?", [(i,) for i in seen])
            conn.execute("COMMIT")
            missing = [r["id"] for r in conn.execute("SELECT id FROM records WHERE synced = 0 ORDER BY created_at")]
            if missing:
                self._append_jsonl(conn, missing)
            # Decisions made after their record was copied, whose line may not have reached the file.
            for row in conn.execute("SELECT id FROM records WHERE decision_synced = 0").fetchall():
                self._append_decision(conn, self._get(conn, row["id"]))

    # Reading and reviewing

    @staticmethod
    def _get(conn: sqlite3.Connection, record_id: str) -> FeedbackRecord | None:
        row = conn.execute("SELECT * FROM records WHERE id = ?", (record_id,)).fetchone()
        return FeedbackRecord.from_row(row) if row is not None else None

    def get(self, record_id: str) -> FeedbackRecord | None:
        with self._read_lock:
            return self._get(self._reader, record_id)

    def count(self) -> int:
        with self._read_lock:
            return self._reader.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def records(self, *, status: str | None = None, adapter: str | None = None, rating: str | None = None,
                topic: str | None = None, since: float | None = None, until: float | None = None,
                kb_check: str | None = None, limit: int | None = None) -> list[FeedbackRecord]:
        """Records, oldest first, filtered. `rating` is `liked`, `disliked`, `unrated` or None for all; `kb_check`
        is `flagged` (the live KB check warned on an answer), `premise` (an answer left the question's false premise
        uncorrected: a `premise_affirmed` or `premise_ignored` flag), `clean` or None for all."""
        sql, args = "SELECT * FROM records WHERE 1=1", []
        for column, value in (("status", status), ("adapter", adapter), ("topic", topic)):
            if value:
                sql += f" AND {column} = ?"
                args.append(value)
        if kb_check == "flagged":
            sql += " AND kb_flags != '[]'"
        elif kb_check == "premise":
            sql += (" AND EXISTS (SELECT 1 FROM json_each(kb_flags) WHERE json_extract(value, '$.rule') IN"
                    f" ({', '.join('?' * len(PREMISE_RULES))}))")
            args += PREMISE_RULES
        elif kb_check == "clean":
            sql += " AND kb_flags = '[]'"
        elif kb_check is not None:
            raise ValueError(f"kb_check: {kb_check!r} must be one of {', '.join(KB_CHECKS)} (or None for all)")
        if since is not None:
            sql += " AND created_at >= ?"
            args.append(since)
        if until is not None:
            sql += " AND created_at < ?"
            args.append(until)
        sql += " ORDER BY created_at, id"
        with self._read_lock:
            rows = [FeedbackRecord.from_row(r) for r in self._reader.execute(sql, args)]
        if rating == "liked":
            rows = [r for r in rows if 1 in r.ratings.values()]
        elif rating == "disliked":
            rows = [r for r in rows if -1 in r.ratings.values()]
        elif rating == "unrated":
            rows = [r for r in rows if not r.ratings]
        return rows[:limit] if limit else rows

    def decide(self, record_id: str, *, status: str, reviewer: str, topic: str | None = None,
               edits: dict[int, str] | None = None) -> FeedbackRecord:
        """A reviewer's decision: accept or reject, optional topic and corrected assistant turns (redacted by the
        caller). Durable when it returns."""
        if status not in ("accepted", "rejected", "unreviewed"):
            raise FeedbackError(f"unknown decision {status!r}")
        record = self.get(record_id)
        if record is None:
            raise FeedbackError(f"no feedback record {record_id!r}")
        for index in (edits or {}):
            if not 0 <= index < len(record.messages) or record.messages[index]["role"] != "assistant":
                raise FeedbackError(f"message {index} is not an assistant turn of {record_id}")
        merged = {**record.review_edits, **(edits or {})}
        conn = self._connect()
        try:
            conn.execute("UPDATE records SET status = ?, reviewer = ?, decided_at = ?, topic = COALESCE(?, topic),"
                         " review_edits = ?, decision_synced = ? WHERE id = ?",
                         (status, reviewer, time.time(), topic,
                          json.dumps({str(k): v for k, v in merged.items()}, ensure_ascii=False),
                          0 if self._jsonl_file is not None else 1, record_id))
            decided = self._get(conn, record_id)
            if self._jsonl_file is not None:
                self._append_decision(conn, decided)
        finally:
            conn.close()
        return decided

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join(timeout=30)
        with self._read_lock:
            self._reader.close()
