"""Data ingestion and the rule audit at 1k, 10k and 200k conversations: seconds, per-row cost, linearity.

The data is the StudyAbroadGPT sample (13 ShareGPT conversations, ~9.8 KB each) repeated with a per-copy suffix on
the first question, so every row is distinct (exact dedup keeps them all) but each copy is a near-duplicate of its
original: 200k rows is a ~2 GB JSONL file. Each measurement runs in its own process (peak RSS is per process), after
the imports, and is repeated on the smaller sizes (the fastest run counts).

- `ingest`: `trainer.data.conversations.prepare_stage_data` as a stage calls it before a model loads: read the JSONL,
  apply every row rule, exact dedup by content hash, seeded hash split (eval_fraction 0.1), file hashes for the lineage.
- `length`: the remaining row rule, "too long after templating": render with the chat template and tokenize
  (`check_lengths`, demo model's tokenizer). It runs only where a tokenizer is loaded and costs per token, so it is
  reported separately and only on the smaller sizes.
- `audit`: `trainer.kb.audit.Auditor().audit(...)`: structure, length, language, placeholder, markdown, MinHash
  near-duplicates; `audit+kb` adds the knowledge-base rules (`trainer.kb.loader.load_kb("data/kb")`) when that module
  and folder exist.
- `audit-2676`: the audit on 2,676 conversations (the size of the full StudyAbroadGPT dataset), in two shapes:
  `suffix` (copies: every row a near-duplicate of one of 13) and `mixed` (each row recombines question/answer pairs
  from different sample rows, so few are near-duplicates and the MinHash index keeps growing: the harder case).
  `--styles suffix mixed` runs the sized tasks in both shapes too.

Each row reports wall seconds and CPU seconds (user + system, of the process and of any it forked: the audit splits
its per-row rules over 2 processes from 1,000 conversations up). `--workers 1` keeps the audit in one process;
`--code` measures another checkout (`git worktree add /tmp/audit-base <commit>`) under the same conditions.

    python bench/scaling.py --out bench/results/scaling.jsonl
    python bench/scaling.py --sizes 1000 10000 --tasks ingest audit
    python bench/scaling.py --tasks audit-2676 --repeats 5 --no-memory-probe [--workers 1] [--code /tmp/audit-base]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import answer_child, append_results, spawn_child  # noqa: E402

SAMPLE = REPO / "tests" / "data" / "studyabroadgpt_sample.jsonl"
TASKS = ("ingest", "length", "audit", "audit-2676")
MARK = "\u2063MARK\u2063"


def _sample_rows() -> list[dict]:
    source = SAMPLE if SAMPLE.is_file() else REPO.parent / "shared" / "data" / "studyabroadgpt_sample.jsonl"
    return [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]


def synthesize(n: int, style: str, folder: Path) -> Path:
    """A JSONL file of n distinct conversations (cached by size and style)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{style}-{n}.jsonl"
    if path.is_file():
        return path
    rows = _sample_rows()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        if style == "suffix":
            # Serialise each sample once around a marker, then splice the per-copy question in.
            parts = []
            for row in rows:
                first = row["conversations"][0]["value"]
                marked = {"conversations": [dict(t) for t in row["conversations"]]}
                marked["conversations"][0]["value"] = MARK
                head, tail = json.dumps(marked, ensure_ascii=False).split(json.dumps(MARK, ensure_ascii=False)[1:-1])
                parts.append((head, first, tail))
            for i in range(n):
                head, first, tail = parts[i % len(parts)]
                question = json.dumps(f"{first} (request {i // len(parts)})", ensure_ascii=False)[1:-1]
                fh.write(head + question + tail + "\n")
        elif style == "mixed":
            pairs = [(c[k], c[k + 1]) for row in rows for c in [row["conversations"]] for k in range(0, len(c) - 1, 2)]
            rng, seen = random.Random(0), set()
            while len(seen) < n:
                picks = tuple(rng.sample(range(len(pairs)), rng.choice((1, 2, 3))))
                if picks in seen:
                    continue
                seen.add(picks)
                fh.write(json.dumps({"conversations": [t for p in picks for t in pairs[p]]}, ensure_ascii=False)
                         + "\n")
        else:
            raise SystemExit(f"unknown style {style!r}")
    tmp.rename(path)
    return path


def _peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def _cpu_seconds() -> tuple[float, float]:
    """User + system CPU of this process, and of its reaped children (forked workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _timed(fn, repeats: int, cpu: list[tuple[float, float]] | None = None) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        started, (own, children) = time.perf_counter(), _cpu_seconds()
        result = fn()
        times.append(time.perf_counter() - started)
        if cpu is not None:
            now_own, now_children = _cpu_seconds()
            cpu.append((now_own - own, now_children - children))
        if repeats > 1:
            result = None if len(times) < repeats else result  # free it before the next run
    return times, result


def first_touch_seconds_per_gb(gb: float = 1.5) -> float:
    """Seconds per GB to fault in fresh memory, past the first ~0.6 GB (on this VM it is ~20x slower than reusing
    memory, which is what makes the largest size's first run slower per row than its second)."""
    import numpy as np

    warm = np.ones(int(0.6 * 2**30) // 8)  # noqa: F841 - held so the timed pages are beyond it
    started = time.perf_counter()
    cold = np.ones(int(gb * 2**30) // 8)
    elapsed = time.perf_counter() - started
    del cold
    return round(elapsed / gb, 2)


def _load_kb():
    from trainer.kb.loader import load_kb

    kb_dir = REPO / "data" / "kb"
    if not kb_dir.exists():
        return None, "data/kb not found"
    return load_kb(kb_dir), None


def run_child(task: str, n: int, path: Path, repeats: int, kb: bool, workers: int = 0) -> dict:
    """One measurement in this process."""
    from trainer.train.config import DatasetSettings
    from trainer.data.conversations import load_conversations, prepare_stage_data

    spec = DatasetSettings(path=str(path), eval_fraction=0.1)
    result: dict = {"task": task, "rows": n, "file_mb": round(path.stat().st_size / 2**20, 1)}
    cpu: list[tuple[float, float]] = []
    if task == "ingest":
        times, data = _timed(lambda: prepare_stage_data(spec, seed=3407, max_length=2048), repeats, cpu)
        report = data.reports[0]
        result.update(kept=report.kept, bad=report.bad, duplicates=report.duplicates, train=len(data.train),
                      eval=len(data.eval))
    elif task == "length":
        from trainer.data.conversations import check_lengths
        from trainer.train.model import load_tokenizer, resolve_base_model
        from trainer.train.templates import select_training_template

        tokenizer = load_tokenizer(resolve_base_model("smollm2-135m-instruct"))
        template = select_training_template(tokenizer, "auto")
        conversations, report = load_conversations(spec)
        times, (kept, lengths) = _timed(
            lambda: check_lengths(conversations, tokenizer, template.text, 2048, report, spec), repeats, cpu)
        result.update(kept=len(kept), tokens=sum(lengths))
    else:  # audit / audit-2676
        import dataclasses

        from trainer.kb.audit import Auditor
        from trainer.kb.audit_report import AuditSettings

        conversations = [list(c.messages) for c in load_conversations(spec)[0]]
        knowledge, why = _load_kb() if kb else (None, "not asked")
        if kb and knowledge is None:
            return {**result, "kb": False, "skipped": why}
        has_workers = any(f.name == "workers" for f in dataclasses.fields(AuditSettings))
        auditor = Auditor(knowledge, AuditSettings(workers=workers) if has_workers else AuditSettings())
        times, report = _timed(lambda: auditor.audit(conversations), repeats, cpu)
        summary = report.summary()
        result.update(kb=knowledge is not None, failed=summary["failed"], flags=summary["conversations_per_flag"],
                      workers=workers if has_workers else "n/a")
    seconds = min(times)
    own, forked = min(cpu, key=sum)
    # With forked workers, `cpu_own_seconds` (this process: its share of the rows, then the global passes) is about
    # the wall time on otherwise idle cores.
    result.update(seconds=round(seconds, 3), seconds_first_run=round(times[0], 3), cpu_seconds=round(own + forked, 3),
                  cpu_own_seconds=round(own, 3), cpu_forked_seconds=round(forked, 3),
                  us_per_row=round(seconds / n * 1e6, 1), repeats=repeats, peak_rss_gb=_peak_rss_gb(),
                  load_average=round(os.getloadavg()[0], 2))
    return result


def _run_spec(task: str, spec: dict) -> dict:
    """A child's measurement (`bench.common.answer_child`), the measured checkout's trainer/ first on the path."""
    sys.path.insert(0, spec["code"])
    return run_child(task, spec["n"], Path(spec["path"]), spec["repeats"], spec["kb"], spec["workers"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 200000])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--length-sizes", type=int, nargs="+", default=[1000, 10000],
                        help="sizes for the tokenizer length check (it costs per token)")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/scaling-data"), help="cache of synthetic files")
    parser.add_argument("--code", type=Path, default=REPO,
                        help="checkout whose trainer/ is measured (e.g. a `git worktree` of an older commit)")
    parser.add_argument("--out", type=Path, help="append results as JSON lines to this file")
    parser.add_argument("--no-memory-probe", action="store_true", help="skip the fresh-memory cost note (1.5 GB)")
    parser.add_argument("--styles", nargs="+", choices=("suffix", "mixed"), default=["suffix"],
                        help="data shapes for the sized tasks (audit-2676 always runs both)")
    parser.add_argument("--repeats", type=int, help="runs per measurement, the fastest counts (default 3 up to 10k "
                                                    "rows, fewer above)")
    parser.add_argument("--workers", type=int, default=0, help="AuditSettings.workers (0: automatic, 1: one process)")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if answer_child(args, _run_spec):
        return 0

    # Synthesise first, so no measurement includes writing its input
    plan: list[tuple[str, int, str, bool]] = []  # task, size, style, kb
    for task in args.tasks:
        if task == "audit-2676":
            plan += [("audit-2676", 2676, style, kb) for style in ("suffix", "mixed") for kb in (False, True)]
            continue
        sizes = args.length_sizes if task == "length" else args.sizes
        plan += [(task, n, style, kb) for style in args.styles for n in sizes
                 for kb in ((False, True) if task == "audit" else (False,))]
    files = {(n, style): synthesize(n, style, args.data_dir) for _, n, style, _ in plan}

    results = []
    for task, n, style, kb in plan:
        # Small sizes: best of 3 (timer noise); the largest: best of 2 for ingestion, whose first run also pays
        # for faulting in ~2.6 GB of fresh memory (reported as seconds_first_run); one audit run (its input is
        # already loaded, untimed).
        repeats = args.repeats or (3 if n <= 10000 else (2 if task == "ingest" else 1))
        r = spawn_child(task, {"work": str(args.data_dir), "code": str(args.code.resolve()), "n": n,
                               "path": str(files[(n, style)]), "repeats": repeats, "kb": kb,
                               "workers": args.workers}, False, __file__)
        if "error" in r:
            raise SystemExit(f"child {task} {n} failed: {r['error']}")
        r.update(style=style, label=task + ("+kb" if kb else ""), code=str(args.code))
        if "skipped" in r:
            print(f"{r['label']:>12} {style:6s} {n:>7,} rows: skipped ({r['skipped']})", flush=True)
            continue
        results.append(r)
        print(f"{r['label']:>12} {style:6s} {n:>7,} rows: {r['seconds']:8.2f} s  CPU {r['cpu_seconds']:6.2f} s "
              f"(own {r['cpu_own_seconds']:.2f})  "
              f"{r['us_per_row']:8.1f} us/row  (first run {r['seconds_first_run']:.2f} s)  peak RSS "
              f"{r['peak_rss_gb']:.2f} GB  load {r['load_average']}", flush=True)

    # Linearity: per-row cost at the largest size over the smallest, per task
    print("\n| task | " + " | ".join(f"{n:,} rows" for n in args.sizes) + " | per-row cost, largest / smallest |")
    print("|---|" + "---|" * (len(args.sizes) + 1))
    for label, style in dict.fromkeys((r["label"], r["style"]) for r in results if r["task"] != "audit-2676"):
        rows = {r["rows"]: r for r in results if r["label"] == label and r["style"] == style}
        cells = [f"{rows[n]['seconds']:.2f} s ({rows[n]['us_per_row']:.0f} us/row)" if n in rows else "-"
                 for n in args.sizes]
        ratio = rows[max(rows)]["us_per_row"] / rows[min(rows)]["us_per_row"] if len(rows) > 1 else None
        name = label if args.styles == ["suffix"] else f"{label} ({style})"
        print(f"| {name} | " + " | ".join(cells) + (f" | {ratio:.2f} |" if ratio else " | - |"))
        for r in rows.values():
            r["per_row_ratio_vs_smallest"] = round(r["us_per_row"] / rows[min(rows)]["us_per_row"], 3)
    for r in results:
        if r["task"] == "audit-2676":
            print(f"audit of 2,676 conversations ({r['style']}, {'with' if r['kb'] else 'without'} KB): "
                  f"{r['seconds']:.3f} s wall, {r['cpu_seconds']:.3f} s CPU, of which {r['cpu_own_seconds']:.3f} s in "
                  "the main process (target < 2 s)")
    if not args.no_memory_probe:
        touch = first_touch_seconds_per_gb()
        print(f"machine note: faulting in fresh memory costs {touch} s/GB here (past the first 0.6 GB)")
        for r in results:
            r["first_touch_s_per_gb"] = touch
    append_results(args.out, results, command=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
