"""Feedback store throughput with 32 concurrent writers, every record durable before it is acknowledged.

    python bench/feedback_store.py [--writers 32] [--per-writer 100] [--out bench/results/feedback_store.jsonl]

Side by side in one run, on the same disk:
- `FeedbackStore`: one writer thread, group commit (all waiting records in one transaction, one fsync);
- baseline: the straightforward version, each visitor's request opening its own connection (WAL,
  synchronous=FULL) and committing its own INSERT.
Both count what is on disk afterwards against what was acknowledged (lost = acknowledged but absent).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import append_results, run_together  # noqa: E402
from trainer.data.feedback import SCHEMA, FeedbackRecord, FeedbackStore  # noqa: E402

MESSAGES = [{"role": "user", "content": "Which documents do I need for a student visa?"},
            {"role": "assistant", "content": "## Documents\n\n- Passport\n- Offer letter\n- Proof of funds\n" * 8}]


def make(w: int, i: int) -> FeedbackRecord:
    return FeedbackRecord(session_id=f"w{w}", base_model="smollm2-135m-instruct", adapter="demo/stage2",
                          system_prompt="You are a counsellor.", messages=MESSAGES, consent=True, ratings={1: 1},
                          request_id=f"{w}-{i}", redactions={"email": 0, "phone": 0, "id_number": 0, "address": 0})


def run(writers: int, per_writer: int, write) -> tuple[float, list[str]]:
    acked: list[str] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        for i in range(per_writer):
            write(make(w, i))
            with lock:
                acked.append(f"{w}-{i}")

    return run_together(writer, writers), acked


def on_disk(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT request_id FROM records")}
    finally:
        conn.close()


def naive_writer(path: Path):
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    conn.close()

    def write(r: FeedbackRecord) -> None:
        c = sqlite3.connect(path, timeout=60, isolation_level=None)
        c.execute("PRAGMA synchronous=FULL")
        try:
            FeedbackStore._insert(c, r)  # autocommit: one transaction (and one fsync) per record
        finally:
            c.close()

    return write


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--per-writer", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = {"command": " ".join(sys.argv), "writers": args.writers, "records": args.writers * args.per_writer}
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:  # the disk the app would use, not a tmpfs
        path = Path(tmp) / "naive.sqlite"
        seconds, acked = run(args.writers, args.per_writer, naive_writer(path))
        results["baseline"] = {"seconds": round(seconds, 3), "records_per_s": round(len(acked) / seconds, 1),
                               "lost": len(set(acked) - on_disk(path))}
        path = Path(tmp) / "store.sqlite"
        store = FeedbackStore(path)
        seconds, acked = run(args.writers, args.per_writer, store.add)
        store.close()
        results["store"] = {"seconds": round(seconds, 3), "records_per_s": round(len(acked) / seconds, 1),
                            "lost": len(set(acked) - on_disk(path))}
    results["speedup"] = round(results["store"]["records_per_s"] / results["baseline"]["records_per_s"], 2)
    print(json.dumps(results, indent=2))
    append_results(args.out, [results])
    return 0


if __name__ == "__main__":
    sys.exit(main())
