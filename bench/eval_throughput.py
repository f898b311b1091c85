"""Evaluation throughput on the CPU: rubric questions per minute that `python -m trainer eval` answers with the demo
model, with the base in 4-bit NF4 and unquantized, and the wall time of a whole small evaluation.

    python bench/eval_throughput.py [--run runs/demo] [--questions 8] [--max-new-tokens 96] [--threads 1 2]
                                    [--out bench/results/eval_throughput.jsonl]

Needs a trained demo run (`python -m trainer train --config configs/demo.yaml`). For each base precision and thread
count it loads the base once with the run's adapters in one PeftModel (as the evaluation does), warms up, then has
each model (base, stage1, stage2) answer the first N rubric questions (alternating false-premise and ordinary ones,
as `--limit` picks them) greedily in left-padded batches, and reports questions per minute and new tokens per
second. Then it runs the whole evaluation (`--limit N`: loss on the held-out splits, N rubric questions and N
held-out prompts, three models, scoring, report) on a copy of the run, so the run's own files are not touched.
Prints a markdown table and the command.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import append_results, markdown_table  # noqa: E402


def answer_rate(stages, load_in_4bit: bool, questions, settings, batch_size: int) -> list[dict]:
    """Questions per minute and tokens per second for each model, on one loaded PeftModel."""
    from dataclasses import replace

    from trainer.eval.models import GREEDY, load_models
    from trainer.hub.space_settings import DEFAULT_SYSTEM_PROMPT

    started = time.perf_counter()
    served, _ = load_models(stages, load_in_4bit)
    load_s = time.perf_counter() - started
    prompts = [[{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": q.question}]
               for q in questions]
    for name in served.templates:  # warm-up: first calls pay one-off costs (bitsandbytes repacking, allocator)
        served.generate(prompts[:2], name, replace(GREEDY, max_new_tokens=4), batch_size=batch_size)
    rows = []
    for name in served.templates:
        answers = served.generate(prompts, name, settings, batch_size=batch_size)
        samples, tokens = len(answers.texts), sum(answers.new_tokens)
        rows.append({"model": name, "load_s": round(load_s, 2), "questions": samples,
                     "seconds": round(answers.seconds, 2),
                     "questions_per_min": round(samples / answers.seconds * 60, 2),
                     "new_tokens_per_s": round(tokens / answers.seconds, 2),
                     "mean_new_tokens": round(tokens / samples, 1)})
    del served
    gc.collect()
    return rows


def whole_evaluation(run: Path, load_in_4bit: bool, limit: int, settings, batch_size: int, threads: int) -> dict:
    """Wall time of `run_evaluation --limit N` on a copy of the run."""
    from trainer.eval.run import run_evaluation

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / run.name
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "push", "eval"))
        started = time.perf_counter()
        results_path = run_evaluation(copy, limit=limit, generation=settings, batch_size=batch_size,
                                      load_in_4bit=load_in_4bit, threads=threads, log=lambda line: None)
        wall = time.perf_counter() - started
        results = json.loads(results_path.read_text())
    answers = results["n"]["answers_per_model"] * (1 + len(results["adapters"]))
    return {"wall_s": round(wall, 1), "load_s": results["load_seconds"], "answers": answers,
            "questions_per_min": round(results["n"]["questions"] * (1 + len(results["adapters"])) / wall * 60, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-whole", action="store_true", help="skip the whole-evaluation timing")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--omp-wait-policy", default="PASSIVE",
                        help="OMP_WAIT_POLICY, as `python -m trainer eval` sets it ('' leaves the environment alone)")
    args = parser.parse_args(argv)
    if args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # before torch loads, as the CLI does
    if not (args.run / "stage2" / "adapter").is_dir():
        print(f"no demo adapters in {args.run}; run: python -m trainer train --config configs/demo.yaml")
        return 2
    import torch

    from trainer.eval.rubric import load_questions, select_questions
    from dataclasses import replace

    from trainer.eval.models import GREEDY, read_run

    stages = read_run(args.run)
    questions = select_questions(load_questions(REPO / "data" / "eval" / "questions.yaml"), args.questions)
    settings = replace(GREEDY, max_new_tokens=args.max_new_tokens)
    command = "python bench/eval_throughput.py " + " ".join(sys.argv[1:])
    records = []
    for load_in_4bit in (True, False):
        for threads in args.threads:
            torch.set_num_threads(threads)
            for row in answer_rate(stages, load_in_4bit, questions, settings, args.batch_size):
                records.append({"kind": "answers", "base": "4-bit NF4" if load_in_4bit else "fp32",
                                "threads": threads, **row})
                print(json.dumps(records[-1]), flush=True)
        if not args.no_whole:
            threads = min(args.threads)
            records.append({"kind": "whole", "base": "4-bit NF4" if load_in_4bit else "fp32", "threads": threads,
                            **whole_evaluation(args.run, load_in_4bit, args.questions, settings, args.batch_size,
                                               threads)})
            print(json.dumps(records[-1]), flush=True)

    print(f"\n`{command}` — demo model, {len(questions)} rubric questions "
          f"({sum(q.false_premise for q in questions)} false premise), greedy, max {args.max_new_tokens} new tokens, "
          f"batch {args.batch_size}, CPU, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}\n")
    print(markdown_table(["base", "threads", "model", "load (s)", "questions/min", "new tokens/s", "mean new tokens"],
                         [[r[k] for k in ("base", "threads", "model", "load_s", "questions_per_min", "new_tokens_per_s",
                                          "mean_new_tokens")] for r in records if r["kind"] == "answers"]))
    whole = [r for r in records if r["kind"] == "whole"]
    if whole:
        print(f"\nWhole evaluation, `--limit {args.questions}` (held-out loss, {args.questions} rubric questions and "
              f"up to {args.questions} held-out prompts, base + {len(stages)} adapters, scoring, report):\n")
        print(markdown_table(["base", "threads", "wall (s)", "load (s)", "answers", "rubric questions/min (all models)"],
                             [[r[k] for k in ("base", "threads", "wall_s", "load_s", "answers", "questions_per_min")]
                              for r in whole]))
    append_results(args.out, [{"command": command, **r} for r in records])
    return 0


if __name__ == "__main__":
    sys.exit(main())
