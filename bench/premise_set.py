"""The premise check on questions it was not written with: a held-out set generated from the KB's relations by
templates, and what the check recognises on it and on the rubric.

    python bench/premise_set.py --write     # (re)generate data/eval/premise_heldout.jsonl from the KB (seeded)
    python bench/premise_set.py             # measure on the held-out set and the rubric; prints a markdown table

The templates below were written from the relations alone (a document of one country asked about for another, a
country or university placed in a set it is not in, a programme, an entry route or a test the country does not
use, an award asked about for another destination, university, level or nationality), in wordings of their own,
before the check was run on them. The rules (`data/kb/*.yaml` examples, `trainer/kb/premise.py`) are never tuned on
this file: tests/test_premise.py keeps its questions out of the KB's examples and checks it is what this script
writes, so an edit to make a number look better shows.

Each row has the question, whether its premise is false, and two answers written for it: one that agrees
(`affirming`: "Yes, that's right." then the claim, or the claim restated without a "yes") and one that corrects it
in its own words (`correcting`). Measured: recognition (a false premise gets a correction of the right kind), false
alarms (a true premise gets any correction), affirming answers flagged, and correcting answers flagged (a false
warning).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.eval.premise_sets import (HELD_OUT, SEALED, generate, load_held_out, measure,  # noqa: E402
                                       rubric_rows, visitor_rows)


def time_check(n: int) -> int:
    """Wall time of `python -m trainer check` (a fresh process: imports and KB load included) on an n-row CSV."""
    import csv
    import os
    import subprocess
    import tempfile

    rows = load_held_out()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "questions.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["question", "answer"])
            for i in range(n):
                r = rows[i % len(rows)]
                writer.writerow([r["question"], r[("affirming", "restating", "correcting")[i // len(rows) % 3]]])
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "trainer", "check", str(path)], cwd=REPO, capture_output=True,
                              text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return done.returncode
    print(f"| rows | wall time (s), process start to exit | summary |\n|---|---|---|\n"
          f"| {n} | {seconds:.2f} | {done.stdout.strip().splitlines()[-1]} |")
    print(f"\ncommand: python bench/premise_set.py --check-rows {n}  (cores: {os.cpu_count()})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"regenerate {HELD_OUT.relative_to(REPO)}")
    parser.add_argument("--json", action="store_true", help="print the full results (misses included) as JSON")
    parser.add_argument("--check-rows", type=int, metavar="N",
                        help="instead: time `python -m trainer check` on an N-row CSV of the held-out questions, each "
                             "with its affirming, restating or correcting answer in turn")
    args = parser.parse_args(argv)
    if args.check_rows:
        return time_check(args.check_rows)
    from trainer.kb.loader import load_kb
    from trainer.kb.premise import PremiseChecker

    kb = load_kb()
    if args.write:
        rows = generate(kb)
        HELD_OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"wrote {len(rows)} rows to {HELD_OUT.relative_to(REPO)}")
        return 0
    checker = PremiseChecker(kb)
    held_out = measure(load_held_out(), checker)
    visitors = measure(visitor_rows(), checker)
    sealed = measure(visitor_rows(SEALED), checker)
    rubric = measure(rubric_rows(), checker)
    if args.json:
        print(json.dumps({"held_out": held_out, "visitors": visitors, "sealed": sealed, "rubric": rubric}, indent=1))
        return 0
    print("| set | false premises | recognised | affirming answers flagged | restating answers flagged | "
          "correcting answers flagged | true premises | false alarms |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in (("held-out templates", held_out), ("visitors' voices", visitors), ("visitors' voices, sealed", sealed),
                    ("rubric", rubric)):
        f, t = r["false_premise"], r["true_premise"]
        restating = "-" if name.startswith("visitors") else r["restating_flagged"]
        print(f"| {name} | {f} | {r['recognised']} ({r['recognised'] / f:.0%}) | {r['affirming_flagged']} "
              f"({r['affirming_flagged'] / f:.0%}) | {restating} | {r['correcting_flagged']} | {t} | "
              f"{r['false_alarms']} ({r['false_alarms'] / max(t, 1):.1%}) |")
    print(f"\ncommand: python bench/premise_set.py  (held-out: {held_out['seconds']} s, visitors: "
          f"{visitors['seconds']} s, sealed: {sealed['seconds']} s, rubric: {rubric['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
