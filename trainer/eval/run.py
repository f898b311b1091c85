"""The whole evaluation: read the run, plan, generate, score, judge, gate, and write the outputs."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from trainer.eval import BASE, EvalError
from trainer.eval.gate import GATE_RULE, gate_decision
from trainer.eval.judge import JudgeSettings, PairwiseJudge, judge_pairs
from trainer.eval.report import plot_loss_curves, plot_metrics, render_report
from trainer.eval.rubric import (DEFAULT_QUESTIONS, MARKDOWN_RULE, PASS_THRESHOLD, Question, QuestionScore,
                                 is_markdown, load_questions, markdown_rate, rubric_rates, score_answer,
                                 select_questions)
from trainer.eval.stats import (BOOTSTRAP_RESAMPLES, CONFIDENCE, bleu_from_statistics, bleu_statistics, bootstrap_ci,
                                pooled_loss, rouge_l)
from trainer.modeling import AdapterModel, BatchAnswers, GenerationSettings
from trainer.rundir import RunError, StageRun, finished_stages, read_stage
from trainer.space_settings import DEFAULT_SYSTEM_PROMPT


# The run

def read_run(run_dir: Path) -> list[StageRun]:
    """The run's finished stages, in pipeline order, each with the chat template saved with its adapter."""
    if not run_dir.is_dir():
        raise EvalError(f"{run_dir}: no such run directory")
    try:
        stages = [read_stage(run_dir, s) for s in finished_stages(run_dir)]
        for stage in stages:
            _ = stage.template  # read now, so a missing one fails before any weights load
    except RunError as exc:
        raise EvalError(str(exc).replace("no finished stage", "no adapters to evaluate")) from None
    base = {s.cfg.model.name for s in stages}
    if len(base) > 1:
        raise EvalError(f"{run_dir}: stages were trained on different base models ({', '.join(sorted(base))}); "
                        "evaluate them separately")
    return stages


def reference_prompts(conversations: Iterable) -> list[dict[str, Any]]:
    """One prompt per assistant turn of each held-out conversation: the messages before it, and the answer.
    Ordered first answers first (every conversation's first answer, then every second one ...), so a `--limit`
    spreads over the conversations."""
    out = []
    for c, conv in enumerate(conversations):
        messages = list(conv.messages)
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        for t, i in enumerate(turns):
            out.append((t, c, {"id": f"{conv.content_hash[:12]}#{i}", "messages": messages[:i],
                               "reference": messages[i]["content"]}))
    return [item for _, _, item in sorted(out, key=lambda x: (x[0], x[1]))]


def loss_reduction(stage: StageRun) -> dict[str, Any]:
    """First vs last logged loss, train and eval: from the log history where it is kept, else metrics.json."""
    m = stage.metrics
    history = stage.log_history()
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if m.get("eval_loss_first") is not None and not any(s == 0 for s, _ in evals):
        evals.insert(0, (0, m["eval_loss_first"]))  # the pre-training eval is logged before train() starts
    if not train and m.get("train_loss_first") is not None:
        train = [(1, m["train_loss_first"]), (m.get("optimizer_steps") or 1, m["train_loss_last"])]
    if m.get("eval_loss_last") is not None and (not evals or evals[-1][1] != m["eval_loss_last"]):
        evals.append((m.get("optimizer_steps") or 1, m["eval_loss_last"]))  # the final eval, after the checkpoint

    def pct(first, last):
        return round((first - last) / first * 100, 2) if first and last is not None else None

    tf, tl = (train[0][1], train[-1][1]) if train else (None, None)
    ef, el = (evals[0][1], evals[-1][1]) if evals else (None, None)
    return {"train_loss_first": tf, "train_loss_last": tl, "train_loss_reduction_pct": pct(tf, tl),
            "eval_loss_first": ef, "eval_loss_last": el, "eval_loss_reduction_pct": pct(ef, el),
            "optimizer_steps": m.get("optimizer_steps"), "source": "trainer log history" if history else
            "metrics.json", "train_curve": train, "eval_curve": evals}


# Models

GREEDY = GenerationSettings(temperature=0)
"""The eval's decoding: greedy, so answers are reproducible (the repetition penalty is the app's, since small models
loop under plain greedy decoding)."""


def describe_generation(generation: GenerationSettings, batch_size: int, seed: int) -> dict[str, Any]:
    """How the answers were generated, as results.json records it."""
    decoding = "greedy (do_sample=False)" if generation.temperature <= 0 else \
        f"sampling (temperature={generation.temperature}, top_p={generation.top_p})"
    return {"decoding": decoding, "max_new_tokens": generation.max_new_tokens,
            "repetition_penalty": generation.repetition_penalty, "batch_size": batch_size, "padding": "left",
            "seed": seed}


def conversation_losses(model, tokenizer, template: str, conversations: Sequence, batch_size: int = 2
                        ) -> list[list[float]]:
    """[nll_sum, tokens] per conversation over its assistant tokens (as trained: TRL's assistant-only loss),
    rendered with `template`. Logits are computed only at the scored positions."""
    import torch
    import torch.nn.functional as F

    encoded = []
    for conv in conversations:
        enc = tokenizer.apply_chat_template(list(conv.messages), chat_template=template, tokenize=True,
                                            return_dict=True, return_assistant_tokens_mask=True)
        encoded.append((list(enc["input_ids"]), list(enc["assistant_masks"])))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[list[float]] = [[0.0, 0.0] for _ in encoded]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    for start in range(0, len(order), max(1, batch_size)):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i][0]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        targets = []
        for row, i in enumerate(chunk):
            tokens, mask = encoded[i]
            ids[row, :len(tokens)] = torch.tensor(tokens)
            attention[row, :len(tokens)] = 1
            targets.append([t for t in range(1, len(tokens)) if mask[t]])
        keep = sorted({t - 1 for ts in targets for t in ts})
        if not keep:
            continue
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device),
                           logits_to_keep=torch.tensor(keep, device=device)).logits
        column = {p: c for c, p in enumerate(keep)}
        for row, i in enumerate(chunk):
            if not targets[row]:
                continue
            cols = torch.tensor([column[t - 1] for t in targets[row]], device=logits.device)
            gold = ids[row, targets[row]].to(logits.device)
            nll = F.cross_entropy(logits[row, cols].float(), gold, reduction="sum")
            out[i] = [float(nll), float(len(targets[row]))]
    return out


def load_models(stages: Sequence[StageRun], load_in_4bit: bool | None) -> tuple[AdapterModel, Any]:
    """The base once (4-bit as the run trained, unless overridden) and every stage's adapter, with the template it
    was trained with, in one model. Returns it and the quantization used."""
    import dataclasses

    from trainer.modeling import (AdapterSource, ModelError, load_adapter_model, read_adapter_config,
                                  resolve_base_model)

    cfg = stages[-1].cfg
    quant = cfg.quantization if load_in_4bit is None else dataclasses.replace(cfg.quantization,
                                                                               load_in_4bit=load_in_4bit)
    for stage in stages:
        trained_on = read_adapter_config(stage.adapter_dir).get("base_model_name_or_path")
        if trained_on and trained_on != cfg.model.name:
            raise ModelError(f"{stage.adapter_dir}: trained on {trained_on!r}, but the run's base is "
                             f"{cfg.model.name!r}")
    served = load_adapter_model(resolve_base_model(cfg.model.name, cfg.model.revision), quant,
                                [AdapterSource(s.name, str(s.adapter_dir), template=s.template) for s in stages],
                                attn_implementation=cfg.model.attn_implementation,
                                trust_remote_code=cfg.model.trust_remote_code)
    return served, quant


# The whole evaluation

@dataclass
class EvalPlan:
    """Everything an evaluation needs, checked before any weights load."""

    run_dir: Path
    out: Path
    stages: list[StageRun]
    questions: list[Question]
    questions_path: Path
    questions_in_file: int
    held_out: list
    references: list[dict[str, Any]]
    limit: int | None
    judge: JudgeSettings | None
    generation: GenerationSettings
    batch_size: int
    """Prompts per generate() call (left-padded)."""
    seed: int
    """Seeds generation and the bootstrap."""
    load_in_4bit: bool | None
    system_prompt: str
    eval_rows: dict[str, list] = field(default_factory=dict)
    """Each stage's held-out conversations, as split.json lists them (empty when they could not be re-read)."""
    split_problems: dict[str, str] = field(default_factory=dict)
    """Why a stage's held-out rows could not be re-read (data moved or changed since training), by stage."""


def plan_evaluation(run_dir: str | Path, *, questions_path: str | Path | None = None, limit: int | None = None,
                    judge: JudgeSettings | None = None, generation: GenerationSettings = GREEDY,
                    batch_size: int = 8, seed: int = 3407, load_in_4bit: bool | None = None,
                    out_dir: str | Path | None = None, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> EvalPlan:
    """Read the rubric, the run and its held-out rows; raise EvalError for anything a user can fix."""
    if limit is not None and limit < 1:
        raise EvalError(f"--limit: must be at least 1, got {limit}")
    if generation.max_new_tokens < 1 or batch_size < 1:
        raise EvalError("--max-new-tokens and --batch-size must be at least 1")
    run_dir = Path(run_dir)
    questions_path = Path(questions_path) if questions_path else DEFAULT_QUESTIONS
    all_questions = load_questions(questions_path)
    stages = read_run(run_dir)
    eval_rows: dict[str, list] = {}
    split_problems: dict[str, str] = {}
    for stage in stages:
        try:
            eval_rows[stage.name] = stage.held_out_rows()
        except RunError as exc:  # the rubric and the judge need no training data: measure what still can be
            eval_rows[stage.name], split_problems[stage.name] = [], str(exc)
    seen, held_out = set(), []
    for stage in stages:
        for conv in eval_rows[stage.name]:
            if conv.content_hash not in seen:
                seen.add(conv.content_hash)
                held_out.append(conv)
    references = reference_prompts(held_out)
    return EvalPlan(run_dir=run_dir, out=Path(out_dir) if out_dir else run_dir / "eval", stages=stages,
                    questions=select_questions(all_questions, limit), questions_path=questions_path,
                    questions_in_file=len(all_questions), held_out=held_out,
                    references=references[:limit] if limit is not None else references, limit=limit, judge=judge,
                    generation=generation, batch_size=batch_size, seed=seed, load_in_4bit=load_in_4bit,
                    system_prompt=system_prompt, eval_rows=eval_rows, split_problems=split_problems)


def run_evaluation(run_dir: str | Path, *, questions_path: str | Path | None = None, limit: int | None = None,
                   judge: JudgeSettings | None = None, generation: GenerationSettings = GREEDY,
                   batch_size: int = 8, seed: int = 3407, load_in_4bit: bool | None = None,
                   out_dir: str | Path | None = None, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
                   threads: int | None = None,
                   log: Callable[[str], None] = print) -> Path:
    """Evaluate every adapter of a run and its base; write the report, results, answers and charts. Returns the
    path of results.json."""
    started = time.time()
    if threads is not None and threads < 1:
        raise EvalError(f"--threads: must be at least 1, got {threads}")
    plan = plan_evaluation(run_dir, questions_path=questions_path, limit=limit, judge=judge, generation=generation,
                           batch_size=batch_size, seed=seed, load_in_4bit=load_in_4bit, out_dir=out_dir,
                           system_prompt=system_prompt)
    judge_client = None
    if judge is not None:
        judge_client = PairwiseJudge(judge)
        judge_client.ask("Is this endpoint reachable?", "Yes.", "No.")  # fail now, not after hours of generation
    plan.out.mkdir(parents=True, exist_ok=True)
    for stage, problem in plan.split_problems.items():
        log(f"[eval] warning: no held-out loss or reference answers for {stage}: {problem}")
    log(f"[eval] {plan.run_dir}: base + {', '.join(s.name for s in plan.stages)}; {len(plan.questions)} rubric "
        f"questions ({sum(q.false_premise for q in plan.questions)} false premise), {len(plan.held_out)} held-out "
        f"conversations ({len(plan.references)} reference answers)" + (f", judge {judge.base_url}" if judge else ""))

    import torch

    threads_before = torch.get_num_threads()
    wanted = threads or plan.stages[-1].cfg.torch_threads
    if wanted and not torch.cuda.is_available():
        torch.set_num_threads(wanted)
    try:
        return _evaluate(plan, judge_client, started, log)
    finally:
        torch.set_num_threads(threads_before)


def _evaluate(plan: EvalPlan, judge_client: PairwiseJudge | None, started: float, log: Callable[[str], None]
              ) -> Path:
    import torch

    from transformers import set_seed

    stages, questions, references, held_out = plan.stages, plan.questions, plan.references, plan.held_out
    generation, judge, system_prompt, out = plan.generation, plan.judge, plan.system_prompt, plan.out
    cfg = stages[-1].cfg
    seed = plan.seed

    # Load the base once and every adapter into the same PeftModel
    load_started = time.time()
    served, quant = load_models(stages, plan.load_in_4bit)
    load_seconds = round(time.time() - load_started, 2)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        f"cpu ({torch.get_num_threads()} threads)"
    log(f"[eval] loaded {cfg.model.name} ({'4-bit ' + quant.quant_type if quant.load_in_4bit else 'unquantized'}) "
        f"and {len(stages)} adapters in {load_seconds:.1f}s on {device}")

    rubric_prompts = [[{"role": "system", "content": system_prompt}, {"role": "user", "content": q.question}]
                      for q in questions]
    prompts = rubric_prompts + [r["messages"] for r in references]
    home = {}  # each held-out conversation is scored with the template of the (first) stage that held it out
    for stage in stages:
        for conv in plan.eval_rows[stage.name]:
            home.setdefault(conv.content_hash, stage)
    # What goes into results.json (`models`) and what only the answers file and the scoring need (`answers`,
    # `losses`) are kept apart, so neither output depends on the other being written first.
    models: dict[str, dict[str, Any]] = {}
    answers: dict[str, BatchAnswers] = {}
    losses: dict[str, list[list[float]]] = {}
    for name in [BASE] + [s.name for s in stages]:
        entry: dict[str, Any] = {"chat_template_sha256": hashlib.sha256(served.templates[name].encode()).hexdigest()}
        served.activate(name)
        loss_rows = []
        for stage in stages:
            mine = [c for c in held_out if home[c.content_hash] is stage]
            batch = stage.cfg.stages[stage.name].per_device_eval_batch_size
            loss_rows.extend(zip([c.content_hash for c in mine],
                                 conversation_losses(served.model, served.tokenizer, stage.template, mine, batch)))
        rows_by_hash = dict(loss_rows)
        losses[name] = [rows_by_hash[c.content_hash] for c in held_out]
        entry["eval_loss_by_split"] = {}
        for stage in stages:
            rows = [rows_by_hash[c.content_hash] for c in plan.eval_rows[stage.name]]
            if rows:
                loss = pooled_loss(rows)
                entry["eval_loss_by_split"][stage.name] = {
                    "loss": round(loss, 4), "perplexity": round(math.exp(loss), 4),
                    "conversations": len(rows), "tokens": int(sum(r[1] for r in rows))}
        log(f"[eval] {name}: held-out loss " + (", ".join(
            f"{s} {d['loss']:.4f}" for s, d in entry["eval_loss_by_split"].items()) or "n/a (no eval split)"))

        def progress(done: int, total: int, name: str = name) -> None:
            log(f"[eval] {name}: {done}/{total} answers")

        set_seed(seed)
        answers[name] = served.generate(prompts, name, generation, batch_size=plan.batch_size, progress=progress)
        entry["throughput"] = answers[name].throughput()
        models[name] = entry
        log(f"[eval] {name}: {entry['throughput']['samples']} answers in {answers[name].seconds:.1f}s "
            f"({entry['throughput']['tokens_per_second']} new tokens/s)")
    del served

    # Score the answers
    n_q = len(questions)
    scores: dict[str, list[QuestionScore]] = {}
    for name, entry in models.items():
        texts = answers[name].texts
        scores[name] = [score_answer(q, a) for q, a in zip(questions, texts[:n_q])]
        metrics, intervals = answer_metrics(questions, scores[name], texts, texts[n_q:],
                                            [r["reference"] for r in references], losses[name], seed)
        entry["metrics"], entry["intervals"] = metrics, intervals

    # The blind pairwise judge
    judge_results = None
    if judge_client is not None:
        judge_results = {"settings": judge.describe(), "per_adapter": {}}
        for stage in stages:
            log(f"[eval] judge: base vs {stage.name}, {n_q} questions x 2 orders")
            items = [(q.id, q.question, answers[BASE].texts[i], answers[stage.name].texts[i])
                     for i, q in enumerate(questions)]
            summary = judge_pairs(judge_client, items, seed=seed)
            judge_results["per_adapter"][stage.name] = summary
            m, ci = models[stage.name]["metrics"], models[stage.name]["intervals"]
            for key in ("win_rate", "loss_rate", "net"):
                if summary[key] is not None:
                    m[f"judge_{key}"] = summary[key]
                    ci[f"judge_{key}"] = summary[f"{key}_ci"]
            log(f"[eval] judge: {stage.name} {summary['wins']}-{summary['ties']}-{summary['losses']} "
                f"(win-tie-loss), {summary['invalid']} unparseable")

    # The gate, the lineage and the files
    created = _now()
    gates = {s.name: gate_decision(models[BASE]["metrics"], models[s.name]["metrics"],
                                   judge_results["per_adapter"][s.name] if judge_results else None) for s in stages}
    results_path = out / "results.json"
    results = {
        "run": stages[0].cfg.name, "run_dir": str(plan.run_dir), "created": created, "base_model": cfg.model.name,
        "quantization": {"load_in_4bit": quant.load_in_4bit, "quant_type": quant.quant_type,
                         "double_quant": quant.double_quant, "compute_dtype": quant.compute_dtype}
        if quant.load_in_4bit else {"load_in_4bit": False},
        "device": device,
        "gate": gates,
        "base": models[BASE],
        "adapters": {s.name: {**models[s.name], "adapter_sha256": s.lineage.get("adapter_sha256"),
                              "loss_reduction": loss_reduction(s)} for s in stages},
        "splits": {s.name: {"conversations": len(plan.eval_rows[s.name]),
                            "tokens": models[BASE]["eval_loss_by_split"].get(s.name, {}).get("tokens", 0),
                            "sha256": s.lineage.get("split", {}).get("eval_sha256"),
                            "unavailable": plan.split_problems.get(s.name)} for s in stages},
        "judge": judge_results,
        "n": {"questions": n_q, "false_premise_questions": sum(q.false_premise for q in questions),
              "eval_conversations": len(held_out), "reference_prompts": len(references),
              "answers_per_model": len(prompts),
              "judged_questions": max((j["n"] for j in judge_results["per_adapter"].values()), default=0)
              if judge_results else 0},
        "settings": {
            "generation": describe_generation(generation, plan.batch_size, seed), "seed": seed,
            "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "confidence": CONFIDENCE, "method": "percentile"},
            "pass_threshold": PASS_THRESHOLD, "markdown_rule": MARKDOWN_RULE, "gate_rule": GATE_RULE,
            "questions_file": str(plan.questions_path), "questions_sha256": _file_sha256(plan.questions_path),
            "questions_in_file": plan.questions_in_file, "limit": plan.limit,
            "topics": sorted({q.topic for q in questions}),
            "system_prompt": system_prompt,
            "system_prompt_sha256": hashlib.sha256(system_prompt.encode()).hexdigest(),
        },
        "rubric_by_question": [
            {"id": q.id, "topic": q.topic, "false_premise": q.false_premise,
             "scores": {name: {"score": scores[name][i].score, "passed": scores[name][i].passed,
                               "claims": list(scores[name][i].claims), "corrected": scores[name][i].corrected}
                        for name in models}} for i, q in enumerate(questions)],
        "load_seconds": load_seconds,
    }
    results["wall_seconds"] = round(time.time() - started, 2)
    _write_answers(out / "answers.jsonl", questions, references, answers, scores)
    from trainer.lineage import write_json

    write_json(results_path, results)
    plot_metrics(results, out / "metrics.png")
    plot_loss_curves(results, out / "loss_curves.png")
    (out / "report.md").write_text(render_report(results), encoding="utf-8")
    for stage in stages:
        stage.record_evaluation(gates[stage.name], results_path, created)
    for stage, gate in gates.items():
        log(f"[eval] {stage}: {'PASSED' if gate['passed'] else 'FAILED'} — {gate['summary']}")
    log(f"[eval] report: {out / 'report.md'} ({results['wall_seconds']:.0f}s)")
    return results_path


def answer_metrics(questions: Sequence[Question], scores: Sequence[QuestionScore], all_answers: Sequence[str],
                   reference_answers: Sequence[str], references: Sequence[str], loss_rows: Sequence[Sequence[float]],
                   seed: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """One model's metrics (numbers only, as the model card reads them) and their bootstrap intervals."""
    metrics: dict[str, float] = {}
    intervals: dict[str, list[float]] = {}

    def put(key: str, value: float | None, ci: tuple[float, float] | None, digits: int = 4) -> None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        metrics[key] = round(float(value), digits)
        if ci is not None:
            intervals[key] = [round(ci[0], digits), round(ci[1], digits)]

    loss_rows = [r for r in loss_rows if r[1] > 0]
    if loss_rows:
        loss = pooled_loss(loss_rows)
        loss_ci = bootstrap_ci(loss_rows, pooled_loss, seed=seed)
        put("eval_loss", loss, loss_ci)
        put("eval_perplexity", math.exp(loss), (math.exp(loss_ci[0]), math.exp(loss_ci[1])))
    if references:
        rouge = rouge_l(reference_answers, references)
        put("rouge_l", sum(rouge) / len(rouge), bootstrap_ci(rouge, seed=seed))
        stats = bleu_statistics(reference_answers, references)
        put("bleu", bleu_from_statistics(stats), bootstrap_ci(stats, bleu_from_statistics, seed=seed), 2)
    markdown = [1.0 if is_markdown(a) else 0.0 for a in all_answers]
    put("markdown_rate", markdown_rate(all_answers), bootstrap_ci(markdown, seed=seed))
    rates = rubric_rates(questions, scores)
    put("rubric_accuracy", rates["rubric_accuracy"], bootstrap_ci(rates["passed"], seed=seed))
    put("rubric_mean_score", rates["rubric_mean_score"],
        bootstrap_ci([s.score for s in scores], seed=seed))
    put("false_premise_correction", rates["false_premise_correction"], bootstrap_ci(rates["corrected"], seed=seed))
    return metrics, intervals


def _write_answers(path: Path, questions: Sequence[Question], references: Sequence[dict[str, Any]],
                   answers: dict[str, BatchAnswers], scores: dict[str, list[QuestionScore]]) -> None:
    """answers.jsonl: every answer of every model, with its new-token count and, for rubric questions, its score."""
    with open(path, "w", encoding="utf-8") as fh:
        for name, generated in answers.items():
            texts, counts = generated.texts, generated.new_tokens
            for i, q in enumerate(questions):
                s = scores[name][i]
                fh.write(json.dumps({"model": name, "kind": "rubric", "id": q.id, "question": q.question,
                                     "answer": texts[i], "new_tokens": counts[i], "score": s.score,
                                     "passed": s.passed, "claims": list(s.claims), "corrected": s.corrected},
                                    ensure_ascii=False) + "\n")
            for j, r in enumerate(references):
                k = len(questions) + j
                fh.write(json.dumps({"model": name, "kind": "reference", "id": r["id"],
                                     "prompt": r["messages"][-1]["content"], "answer": texts[k],
                                     "new_tokens": counts[k], "reference": r["reference"]},
                                    ensure_ascii=False) + "\n")


def _file_sha256(path: Path) -> str:
    from trainer.data import file_sha256

    return file_sha256(path)


def _now() -> str:
    from trainer.lineage import now_iso

    return now_iso()
