"""What serving a QLoRA adapter on vLLM costs: the adapter was trained on the NF4 base, vLLM serves it on the
full-precision base.

    python bench/nf4_serving.py --run runs/demo [--limit 30] [--out bench/results/nf4_serving.json]

1. Held-out loss: each stage's held-out conversations (exactly the rows split.json held out) scored on the assistant
   tokens, as trained, by base + adapter with the base in NF4 (as trained) and unquantized (as vLLM serves it),
   paired per conversation: the difference of the pooled loss with a paired bootstrap interval.
2. Rubric: the first `--limit` rubric questions answered greedily by the base and each adapter in-process on the NF4
   base (`trainer eval`, local engine) and by vLLM on the full-precision base (`trainer eval --engine openai`, vLLM
   started here through scripts/vllm.sh), scored by the rubric; per model, the paired difference of the mean score
   (vLLM minus NF4) with a paired bootstrap interval, and how many answers are word-for-word the same.

Both evaluations run on a copy of the run, so its own verdicts are not touched. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def held_out_losses(run_dir: Path) -> dict:
    """Per stage: pooled held-out loss of its adapter on the NF4 and on the unquantized base, paired."""
    import gc

    from trainer.eval.models import conversation_losses, load_models
    from trainer.eval.stats import paired_bootstrap, pooled_loss
    from trainer.train.rundir import finished_stages, read_stage

    stages = [read_stage(run_dir, s) for s in finished_stages(run_dir)]
    rows: dict[str, dict[bool, list[list[float]]]] = {s.name: {} for s in stages}
    for four_bit in (True, False):
        served, _ = load_models(stages, four_bit)
        for stage in stages:
            served.activate(stage.name)
            rows[stage.name][four_bit] = conversation_losses(
                served.model, served.tokenizer, stage.template, stage.held_out_rows(),
                stage.cfg.stages[stage.name].per_device_eval_batch_size)
        del served
        gc.collect()
    out = {}
    for name, by in rows.items():
        nf4, full = by[True], by[False]
        out[name] = {"conversations": len(nf4), "tokens": int(sum(r[1] for r in nf4)),
                     "loss_nf4": round(pooled_loss(nf4), 4), "loss_full": round(pooled_loss(full), 4),
                     "difference": paired_bootstrap(full, nf4, statistic=pooled_loss)}
    return out


def rubric(run_dir: Path, limit: int, work: Path) -> dict:
    """The rubric answered in-process on the NF4 base and by vLLM on the full-precision base, paired per question."""
    from trainer.hub.local_server import VLLMServer
    from trainer.__main__ import main as trainer
    from trainer.train.rundir import base_hub_id
    from trainer.train.demo_model import demo_model_path, is_demo_model
    from trainer.eval.stats import paired_bootstrap
    from trainer.train.rundir import finished_stages, read_stage

    stages = [read_stage(run_dir, s) for s in finished_stages(run_dir)]
    name = stages[-1].cfg.model.name
    local = demo_model_path() if is_demo_model(name) else Path(name)
    common = ["--limit", str(limit), "--no-held-out", "--no-contamination"]
    timings = {}
    started = time.time()
    assert trainer(["eval", "--run", str(run_dir), "--out", str(work / "nf4"), *common]) == 0
    timings["nf4_in_process_s"] = round(time.time() - started, 1)
    adapters = {f"{run_dir.name}/{s.name}": s.adapter_dir for s in stages}
    server = VLLMServer(local, adapters, work / "vllm", max_lora_rank=max(16, stages[-1].cfg.lora.r)).start()
    try:
        started = time.time()
        assert trainer(["eval", "--run", str(run_dir), "--out", str(work / "vllm-eval"), "--engine", "openai",
                        "--base-url", server.base_url, "--base-served-name", server.model, *common]) == 0
        timings["vllm_s"] = round(time.time() - started, 1)
    finally:
        server.stop()

    def answers(folder: Path) -> dict:
        out: dict[str, dict[str, dict]] = {}
        for line in (folder / "answers.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row["kind"] == "rubric":
                out.setdefault(row["model"], {})[row["id"]] = row
        return out

    nf4, full = answers(work / "nf4"), answers(work / "vllm-eval")
    models = {}
    for model in nf4:
        ids = [i for i in nf4[model] if i in full.get(model, {})]
        a = [full[model][i]["score"] for i in ids]
        b = [nf4[model][i]["score"] for i in ids]
        models[model] = {"questions": len(ids), "mean_score_nf4": round(sum(b) / len(b), 4),
                         "mean_score_full": round(sum(a) / len(a), 4), "difference": paired_bootstrap(a, b),
                         "same_answer": sum(full[model][i]["answer"].strip() == nf4[model][i]["answer"].strip()
                                            for i in ids)}
    return {"base": base_hub_id(stages[-1])[0], "limit": limit, "timings": timings, "models": models}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "demo")
    ap.add_argument("--limit", type=int, default=30, help="rubric questions (default 30)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / args.run.name
        shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("checkpoints", "eval"))
        result = {"command": "python bench/nf4_serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "held_out_loss": held_out_losses(run), "rubric": rubric(run, args.limit, Path(tmp))}
    print(json.dumps(result, indent=1))
    print("\n| stage | held-out conversations | loss, NF4 base (as trained) | loss, full-precision base | "
          "difference (95% interval) |\n|---|---|---|---|---|")
    for name, r in result["held_out_loss"].items():
        d = r["difference"] or {}
        print(f"| {name} | {r['conversations']} | {r['loss_nf4']} | {r['loss_full']} | {d.get('difference')} "
              f"({d.get('interval')}) |")
    print("\n| model | rubric questions | mean score, NF4 in-process | mean score, vLLM full precision | "
          "difference (95% interval) | same answer |\n|---|---|---|---|---|---|")
    for name, r in result["rubric"]["models"].items():
        d = r["difference"] or {}
        print(f"| {name} | {r['questions']} | {r['mean_score_nf4']} | {r['mean_score_full']} | "
              f"{d.get('difference')} ({d.get('interval')}) | {r['same_answer']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
