"""The whole evaluation: read the run, plan, generate, score, judge, gate, and write the outputs."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from trainer.train.model import base_dtypes
from trainer.data.conversations import file_sha256
from trainer.eval import EvalError
from trainer.eval.gate import GATE_RULE, gate_decision
from trainer.eval.items import AnswerItem, answer_items, check_contamination, keep_masks, measure
from trainer.eval.judge import JudgeSettings, PairwiseJudge, judge_pairs
from trainer.eval.metrics import Measures, judge_comparison, model_metrics, paired_metrics
from trainer.eval.models import (GREEDY, conversation_losses, describe_generation, load_models, loss_reduction,
                                 read_run, reference_prompts)
from trainer.eval.prompts import PromptSet, is_prompt_file, load_prompt_set
from trainer.eval.report import plot_loss_curves, plot_metrics, render_report
from trainer.eval.results import (AdapterResult, Bootstrap, Contamination, Counts, Engine, EvalResults, EvalSettings,
                                  Gate, GateRule, Grounded, JudgeResults, JudgeSummary, KBInfo, LossReduction,
                                  ModelResult, Quantization, RubricRow, RubricScore, SplitInfo, SplitLoss, Throughput)
from trainer.eval.rubric import (DEFAULT_QUESTIONS, MARKDOWN_RULE, PASS_THRESHOLD, Question, load_questions,
                                 select_questions)
from trainer.eval.stats import BOOTSTRAP_RESAMPLES, CONFIDENCE, pooled_loss
from trainer.eval.job import EvalJob
from trainer.inference.model import BASE, GenerationSettings
from trainer.train.lineage import now_iso
from trainer.train.rundir import RunError, StageRun
from trainer.inference.model import DEFAULT_SYSTEM_PROMPT


@dataclass
class EvalPlan:
    """Everything an evaluation needs, checked before any weights load."""

    run_dir: Path
    out: Path
    job: EvalJob
    stages: list[StageRun]
    questions: list[Question]
    """Rubric questions (empty when an outside prompt set is evaluated instead)."""
    prompt_set: PromptSet | None
    questions_path: Path
    questions_in_file: int
    held_out: list
    """The held-out conversations every model is scored on (loss) and answers turn by turn (empty when not asked)."""
    references: list[dict[str, Any]]
    items: list[AnswerItem]
    generation: GenerationSettings
    judge: JudgeSettings | None
    system_prompt: str
    kb: Any
    kb_path: Path
    eval_rows: dict[str, list] = field(default_factory=dict)
    """Each stage's held-out conversations, as split.json lists them (empty when they could not be re-read)."""
    split_problems: dict[str, str] = field(default_factory=dict)
    """Why a stage's held-out rows could not be re-read (data moved or changed since training), by stage."""
    held_out_asked: bool = True
    """Whether the held-out conversations are part of this evaluation (`held_out`; by default not with an outside
    prompt set, so its report is about those prompts alone)."""


def _check_kb_ids(questions: Sequence[Question], path: Path, kb) -> None:
    """Every KB id a rubric question names (its `kb` list) must exist, so recall@k measures what it claims."""
    from trainer.typed_yaml import suggest

    known = {c.code for c in kb.countries} | {u.id for u in kb.universities} | {s.id for s in kb.scholarships} \
        | {t.id for t in kb.tests} | {r.id for r in kb.rules}
    for i, q in enumerate(questions):
        for entry in q.kb:
            if entry not in known:
                raise EvalError(f"{path}: questions[{i}] ({q.id}).kb: {entry!r} is not a knowledge-base id (a "
                                f"country code or a university, scholarship, test or rule id){suggest(entry, known)}")


def plan_evaluation(run_dir: str | Path, job: EvalJob = EvalJob(), *, generation: GenerationSettings | None = None,
                    system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> EvalPlan:
    """Read the questions (a rubric or an outside prompt set), the run, its held-out rows and the KB; raise
    EvalError (or KBError) for anything a user can fix, before any weights load."""
    from dataclasses import replace

    from trainer.kb.loader import load_kb, resolve_kb_folder

    generation = generation or replace(GREEDY, max_new_tokens=job.max_new_tokens)
    if generation.max_new_tokens < 1 or job.batch_size < 1:
        raise EvalError("--max-new-tokens and --batch-size must be at least 1")
    run_dir = Path(run_dir)
    questions_path = Path(job.questions) if job.questions else DEFAULT_QUESTIONS
    kb_path = resolve_kb_folder(job.kb)
    kb = load_kb(kb_path)
    prompt_set, all_questions = None, []
    if is_prompt_file(questions_path):
        prompt_set = load_prompt_set(questions_path)
        in_file = len(prompt_set.items)
    else:
        all_questions = load_questions(questions_path)
        _check_kb_ids(all_questions, questions_path, kb)
        in_file = len(all_questions)
    stages = read_run(run_dir)
    held_out_asked = job.held_out if job.held_out is not None else prompt_set is None
    eval_rows: dict[str, list] = {stage.name: [] for stage in stages}
    split_problems: dict[str, str] = {}
    for stage in stages if held_out_asked else ():
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
    limit = job.limit
    questions = select_questions(all_questions, limit)
    prompts = prompt_set.items[:limit] if prompt_set is not None else []
    references = references[:limit] if limit is not None else references
    judge = None
    if job.judge_base_url:
        judge = JudgeSettings(base_url=job.judge_base_url, model=job.judge_model, api_key_env=job.judge_api_key_env,
                              max_tokens=job.judge_max_tokens)
    return EvalPlan(run_dir=run_dir, out=Path(job.out) if job.out else run_dir / "eval", job=job, stages=stages,
                    questions=questions, prompt_set=prompt_set, questions_path=questions_path,
                    questions_in_file=in_file, held_out=held_out, references=references,
                    items=answer_items(questions, prompts, references, system_prompt), generation=generation,
                    judge=judge, system_prompt=system_prompt, kb=kb, kb_path=kb_path, eval_rows=eval_rows,
                    split_problems=split_problems, held_out_asked=held_out_asked)


def run_evaluation(run_dir: str | Path, job: EvalJob = EvalJob(), *, generation: GenerationSettings | None = None,
                   system_prompt: str = DEFAULT_SYSTEM_PROMPT, log: Callable[[str], None] = print) -> Path:
    """Evaluate every adapter of a run and its base; write the report, results, answers and charts. Returns the
    path of results.json."""
    started = time.time()
    plan = plan_evaluation(run_dir, job, generation=generation, system_prompt=system_prompt)
    judge_client = None
    if plan.judge is not None:
        judge_client = PairwiseJudge(plan.judge)
        judge_client.ask("Is this endpoint reachable?", "Yes.", "No.")  # fail now, not after hours of generation
    engine = None
    if job.engine == "openai":
        from trainer.eval.engine import ServerEngine

        engine = ServerEngine.from_job(job, plan.stages, plan.run_dir.resolve().name)
        engine.check()  # every model answers one token now, or the eval stops here in one line
    plan.out.mkdir(parents=True, exist_ok=True)
    for stage, problem in plan.split_problems.items():
        log(f"[eval] warning: no held-out loss or reference answers for {stage}: {problem}")
    asked = (f"{len(plan.questions)} rubric questions ({sum(q.false_premise for q in plan.questions)} false premise)"
             if plan.prompt_set is None else f"{sum(i.kind == 'prompt' for i in plan.items)} prompts from "
             f"{plan.questions_path} ({len(plan.prompt_set.skipped)} rows skipped)")
    held = (f"{len(plan.held_out)} held-out conversations ({len(plan.references)} reference answers)"
            if plan.held_out_asked else "no held-out turns (--held-out adds them)")
    log(f"[eval] {plan.run_dir}: base + {', '.join(s.name for s in plan.stages)}; {asked}, {held}"
        + (f", judge {plan.judge.base_url}" if plan.judge else "") + (", grounded too" if job.grounded else "")
        + (f"; answers from {engine.base_url} ({', '.join(engine.models.values())}), {engine.concurrency} at once"
           if engine else ""))
    for skipped in (plan.prompt_set.skipped if plan.prompt_set else [])[:20]:
        log(f"[eval]   skipped {skipped}")

    import torch

    threads_before = torch.get_num_threads()
    wanted = job.threads or plan.stages[-1].cfg.torch_threads
    if wanted and not torch.cuda.is_available():
        torch.set_num_threads(wanted)
    try:
        return _evaluate(plan, judge_client, engine, started, log)
    finally:
        torch.set_num_threads(threads_before)


@dataclass
class Screening:
    """Contamination: which items and held-out conversations some stage trained on (checked before weights load)."""

    report: dict[str, Any] | None
    keep: list[bool]
    keep_conversations: list[bool]

    @property
    def clean(self) -> bool:
        """Whether some items were seen in training, so metrics are also reported on the clean ones."""
        return not all(self.keep) or not all(self.keep_conversations)


@dataclass
class Loaded:
    """The base and every adapter loaded here (None when a server answers and there is no held-out loss)."""

    served: Any
    quant: Any
    seconds: float
    device: str


@dataclass
class Answers:
    """Every model's answers (and grounded answers), new-token counts and per-conversation held-out losses, with
    each model's results so far (`models`: template hash, held-out loss by split, throughput; an AdapterResult for
    each stage)."""

    models: dict[str, ModelResult] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)
    grounded_texts: dict[str, list[str | None]] = field(default_factory=dict)
    new_tokens: dict[str, list[int]] = field(default_factory=dict)
    losses: dict[str, list[list[float]]] = field(default_factory=dict)


@dataclass
class Scores:
    """Per-item measures, live-check flags and rubric scores per model, and the grounded comparison when asked."""

    measures: dict[str, Measures]
    flags: dict[str, list]
    rubric: dict[str, list]
    grounded: dict[str, Any] | None = None


def _evaluate(plan: EvalPlan, judge_client: PairwiseJudge | None, engine, started: float,
              log: Callable[[str], None]) -> Path:
    """The phases in order: screen, load, answer, score, judge, gate, write."""
    from trainer.kb.audit import Auditor

    screening = _screen(plan, log)
    retriever, grounded_prompts = _grounded_prompts(plan)
    loaded = _load(plan, engine, log)
    answers = _answer(plan, loaded, engine, grounded_prompts, log)
    scores = _score(plan, answers, screening, Auditor(plan.kb), retriever)
    judge_results = _judge(plan, judge_client, answers, log)
    gates = _gate(plan, answers, scores, screening, judge_results)
    return _write(plan, loaded, engine, screening, answers, scores, judge_results, gates, started, log)


def _screen(plan: EvalPlan, log: Callable[[str], None]) -> Screening:
    """Contamination, checked against exactly what each stage trained on."""
    report = None
    if plan.job.contamination:
        report = check_contamination(plan.items, plan.held_out, plan.stages, plan.job.contamination_threshold)
        log(f"[eval] contamination: {len(report['items'])} questions and {len(report['conversations'])}"
            f" held-out conversations found in {report['training_rows']} training rows"
            + "".join(f"; {s} not checked: {p}" for s, p in report["unchecked_stages"].items()))
    keep, keep_conversations = keep_masks(plan.items, plan.held_out, report)
    return Screening(report, keep, keep_conversations)


def _grounded_prompts(plan: EvalPlan):
    """With --grounded: the retriever and each judged item's prompt with the KB passages retrieved for it."""
    if not plan.job.grounded:
        return None, None
    from trainer.kb.retrieve import RetrievalSettings, Retriever, grounded_messages

    retriever = Retriever(plan.kb, RetrievalSettings(k=plan.job.retrieval_k))
    return retriever, [grounded_messages(item.messages, retriever.search(item.text)) if item.judged else None
                       for item in plan.items]


def _load(plan: EvalPlan, engine, log: Callable[[str], None]) -> Loaded:
    """The base once and every adapter into the same PeftModel: to answer, and for the held-out loss (with --engine
    openai the server answers, and without held-out conversations nothing loads here)."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        f"cpu ({torch.get_num_threads()} threads)"
    if engine is not None and not plan.held_out:
        return Loaded(None, None, 0.0, device)
    load_started = time.time()
    served, quant = load_models(plan.stages, plan.job.load_in_4bit)
    seconds = round(time.time() - load_started, 2)
    log(f"[eval] loaded {plan.stages[-1].cfg.model.name} ("
        f"{'4-bit ' + quant.quant_type if quant.load_in_4bit else 'unquantized'}) and {len(plan.stages)} adapters in "
        f"{seconds:.1f}s on {device}" + (" for the held-out loss" if engine else ""))
    return Loaded(served, quant, seconds, device)


def _answer(plan: EvalPlan, loaded: Loaded, engine, grounded_prompts, log: Callable[[str], None]) -> Answers:
    """Every model's held-out loss and answers (and grounded answers), each model seeded alike."""
    from transformers import set_seed

    from trainer.inference.engine import LocalEngine

    job, items, out = plan.job, plan.items, Answers()
    writer = engine if engine is not None else LocalEngine(loaded.served, job.batch_size)  # one interface either way

    def answer(conversations, name: str, progress=None):
        return writer.answer_all(conversations, name, plan.generation, progress=progress)

    home: dict[str, StageRun] = {}  # each held-out conversation is scored with the template of the stage holding it
    for stage in plan.stages:
        for conv in plan.eval_rows[stage.name]:
            home.setdefault(conv.content_hash, stage)
    for name in [BASE] + [s.name for s in plan.stages]:
        entry = out.models[name] = _held_out_loss(plan, loaded.served, name, home, out, log)

        def progress(done: int, total: int, name: str = name) -> None:
            log(f"[eval] {name}: {done}/{total} answers")

        set_seed(job.seed)
        generated = answer([list(i.messages) for i in items], name, progress)
        out.texts[name], out.new_tokens[name] = list(generated.texts), list(generated.new_tokens)
        entry.throughput = Throughput.from_dict(generated.throughput(), strict=True)
        log(f"[eval] {name}: {entry.throughput.samples} answers in {generated.seconds:.1f}s "
            f"({entry.throughput.tokens_per_second} new tokens/s)")
        if grounded_prompts is not None:
            asked = [i for i, p in enumerate(grounded_prompts) if p is not None]
            set_seed(job.seed)
            grounded = answer([grounded_prompts[i] for i in asked], name)
            out.grounded_texts[name] = [None] * len(items)
            for i, text in zip(asked, grounded.texts):
                out.grounded_texts[name][i] = text
            entry.throughput_grounded = Throughput.from_dict(grounded.throughput(), strict=True)
    loaded.served = None  # the model is not needed past here: free it before scoring
    return out


def _held_out_loss(plan: EvalPlan, served, name: str, home: dict[str, StageRun], out: Answers,
                   log: Callable[[str], None]) -> ModelResult:
    """One model's loss on every held-out conversation, each scored with the template of the (first) stage that held
    it out; its results so far (template hash, loss and perplexity by split)."""
    entry = ModelResult() if name == BASE else AdapterResult()
    loss_rows = []
    if served is not None:
        entry.chat_template_sha256 = hashlib.sha256(served.templates[name].encode()).hexdigest()
        served.activate(name)
        for stage in plan.stages:
            mine = [c for c in plan.held_out if home[c.content_hash] is stage]
            batch = stage.cfg.stages[stage.name].per_device_eval_batch_size
            loss_rows.extend(zip([c.content_hash for c in mine], conversation_losses(
                served.model, served.tokenizer, stage.template, mine, batch)))
    rows_by_hash = dict(loss_rows)
    out.losses[name] = [rows_by_hash[c.content_hash] for c in plan.held_out]
    for stage in plan.stages:
        rows = [rows_by_hash[c.content_hash] for c in plan.eval_rows[stage.name]]
        if rows:
            loss = pooled_loss(rows)
            entry.eval_loss_by_split[stage.name] = SplitLoss(round(loss, 4), round(math.exp(loss), 4), len(rows),
                                                             int(sum(r[1] for r in rows)))
    if plan.held_out_asked:
        log(f"[eval] {name}: held-out loss " + (", ".join(
            f"{s} {d.loss:.4f}" for s, d in entry.eval_loss_by_split.items()) or "n/a (no eval split)"))
    return entry


def _score(plan: EvalPlan, answers: Answers, screening: Screening, auditor, retriever) -> Scores:
    """Per-item measures, then metrics on all items and, where some were seen in training, on the clean ones; with
    --grounded, the grounded answers' too and their paired difference with the plain ones."""
    seed, items = plan.job.seed, plan.items
    scores = Scores({}, {}, {})
    for name, entry in answers.models.items():
        scores.measures[name], scores.flags[name], scores.rubric[name] = measure(items, answers.texts[name], auditor,
                                                                                answers.losses[name])
        entry.metrics, entry.intervals = model_metrics(scores.measures[name], seed=seed)
        if screening.clean:
            entry.metrics_uncontaminated, entry.intervals_uncontaminated = model_metrics(
                scores.measures[name], screening.keep, screening.keep_conversations, seed=seed)
    if retriever is not None:
        from trainer.kb.retrieve import recall_at_k

        scores.grounded = {"settings": retriever.settings.describe(), "kb_version": plan.kb.version,
                           "index_seconds": round(retriever.build_seconds, 4), "models": {},
                           "recall": recall_at_k(retriever, [(q.question, q.kb) for q in plan.questions],
                                                 plan.job.retrieval_k)}
        for name in answers.models:
            g, g_flags, g_scores = measure(items, answers.grounded_texts[name], auditor)
            metrics, intervals = model_metrics(g, seed=seed)
            scores.grounded["models"][name] = {
                "metrics": metrics, "intervals": intervals, "_flags": g_flags, "_scores": g_scores,
                "vs_ungrounded": paired_metrics(g, scores.measures[name], margin=plan.job.margin, seed=seed)}
    return scores


def _judge(plan: EvalPlan, judge_client: PairwiseJudge | None, answers: Answers,
           log: Callable[[str], None]) -> JudgeResults | None:
    """The blind pairwise judge, base against each adapter on the questions (or prompts); held-out turns have
    references instead. Its rates join each adapter's metrics."""
    if judge_client is None:
        return None
    items = plan.items
    judged = [i for i, item in enumerate(items) if item.judged]
    results = JudgeResults(plan.judge.describe())
    for stage in plan.stages:
        log(f"[eval] judge: base vs {stage.name}, {len(judged)} questions x 2 orders")
        pairs = [(items[i].id, items[i].text, answers.texts[BASE][i], answers.texts[stage.name][i]) for i in judged]
        summary = results.per_adapter[stage.name] = JudgeSummary.from_dict(
            judge_pairs(judge_client, pairs, seed=plan.job.seed), strict=True)
        m, ci = answers.models[stage.name].metrics, answers.models[stage.name].intervals
        for key, value, interval in (("win_rate", summary.win_rate, summary.win_rate_ci),
                                     ("loss_rate", summary.loss_rate, summary.loss_rate_ci),
                                     ("net", summary.net, summary.net_ci)):
            if value is not None:
                m[f"judge_{key}"], ci[f"judge_{key}"] = value, interval
        log(f"[eval] judge: {stage.name} {summary.wins}-{summary.ties}-{summary.losses} (win-tie-loss),"
            f" {summary.invalid} unparseable, both orders agree on {_pct(summary.agreement)}"
            + ("" if summary.reliable else ": UNRELIABLE, not used by the gate"))
    return results


def _gate(plan: EvalPlan, answers: Answers, scores: Scores, screening: Screening,
          judge_results: JudgeResults | None) -> dict[str, Gate]:
    """Each adapter's paired comparison with the base and the gate's verdict (on the clean items when some were seen
    in training)."""
    job, items, clean = plan.job, plan.items, screening.clean
    keep, keep_conversations = screening.keep, screening.keep_conversations
    clean_ids = {items[i].id for i, item in enumerate(items) if item.judged and keep[i]}
    gates = {}
    for stage in plan.stages:
        entry, mine, base = answers.models[stage.name], scores.measures[stage.name], scores.measures[BASE]
        entry.paired = paired_metrics(mine, base, margin=job.margin, seed=job.seed)
        if clean:
            entry.paired_uncontaminated = paired_metrics(mine, base, margin=job.margin, keep=keep,
                                                         keep_conversations=keep_conversations, seed=job.seed)
        judge_summary = judge_results.per_adapter[stage.name] if judge_results else None
        for paired, ids in ((entry.paired, None), (entry.paired_uncontaminated, clean_ids if clean else None)):
            comparison = judge_comparison(judge_summary and judge_summary.to_dict(), ids, margin=job.margin)
            if comparison is not None and paired is not None:
                paired["judge"] = comparison
        gate = gates[stage.name] = Gate.from_dict(gate_decision(entry.comparison(clean), job.margin), strict=True)
        if judge_summary is not None and not judge_summary.reliable:
            gate.summary += f"; judge unreliable (both orders agree on {_pct(judge_summary.agreement)}), not used"
        if clean:
            gate.summary += " (decided on the uncontaminated items)"
        if gate.verdict == "not gated" and plan.prompt_set is not None:
            gate.summary += "; an outside prompt set has no rubric: --judge-base-url gives it a verdict"
    return gates


def _write(plan: EvalPlan, loaded: Loaded, engine, screening: Screening, answers: Answers, scores: Scores,
           judge_results, gates, started: float, log: Callable[[str], None]) -> Path:
    """results.json (`_results`), answers.jsonl, the charts and report.md; each stage's lineage records its gate."""
    from trainer.train.lineage import write_json

    out, created = plan.out, now_iso()
    results_path = out / "results.json"
    results = _results(plan, loaded, engine, screening, answers, scores, judge_results, gates, created)
    results.wall_seconds = round(time.time() - started, 2)
    _write_answers(out / "answers.jsonl", plan.items, answers.texts, answers.new_tokens, scores.rubric, scores.flags,
                   screening.keep, answers.grounded_texts, scores.grounded)
    write_json(results_path, results.to_dict())
    plot_metrics(results, out / "metrics.png")
    plot_loss_curves(results, out / "loss_curves.png")
    (out / "report.md").write_text(render_report(results), encoding="utf-8")
    for stage in plan.stages:
        stage.record_evaluation(gates[stage.name].to_dict(), results_path, created)
    for stage, gate in gates.items():
        log(f"[eval] {stage}: {gate.verdict.upper()} — {gate.summary}")
    log(f"[eval] report: {out / 'report.md'} ({results.wall_seconds:.0f}s)")
    return results_path


def _results(plan: EvalPlan, loaded: Loaded, engine, screening: Screening, answers: Answers, scores: Scores,
             judge_results: JudgeResults | None, gates: dict[str, Gate], created: str) -> EvalResults:
    """The evaluation's results from the phases' (results.json is their `to_dict`)."""
    from dataclasses import replace

    job, stages, items, models, quant = plan.job, plan.stages, plan.items, answers.models, loaded.quant
    base_splits = models[BASE].eval_loss_by_split
    return EvalResults(
        run=stages[0].cfg.name, run_dir=str(plan.run_dir), created=created, base_model=stages[-1].cfg.model.name,
        quantization=None if quant is None else  # None: nothing loaded here (the server's answers only)
        Quantization(True, quant.quant_type, quant.double_quant, base_dtypes(quant)[1]) if quant.load_in_4bit
        else Quantization(False),
        device=loaded.device,
        engine=Engine.from_dict(engine.describe(), strict=True) if engine is not None else
        Engine("local", device=loaded.device, batch_size=job.batch_size),
        gate=gates,
        base=models[BASE],
        adapters={s.name: replace(models[s.name], adapter_sha256=s.lineage.adapter_sha256,
                                  loss_reduction=LossReduction.from_dict(loss_reduction(s), strict=True)) for s in stages},
        splits={s.name: SplitInfo(len(plan.eval_rows[s.name]),
                                  base_splits[s.name].tokens if s.name in base_splits else 0,
                                  s.lineage.split.eval_sha256, plan.split_problems.get(s.name)) for s in stages},
        judge=judge_results,
        contamination=None if screening.report is None else Contamination.from_dict(screening.report, strict=True),
        # the grounded answers' own scores and flags (`_scores`, `_flags`, for answers.jsonl) are not fields
        grounded=None if scores.grounded is None else Grounded.from_dict(scores.grounded, strict=True),
        kb_check={name: sum(1 for f in scores.flags[name] if f) for name in models},
        n=Counts(questions=len(plan.questions), false_premise_questions=sum(q.false_premise for q in plan.questions),
                 prompts=sum(i.kind == "prompt" for i in items),
                 prompts_with_reference=sum(1 for i in items if i.kind == "prompt" and i.reference),
                 held_out_asked=plan.held_out_asked, eval_conversations=len(plan.held_out),
                 reference_prompts=len(plan.references), answers_per_model=len(items),
                 contaminated_items=screening.keep.count(False),
                 judged_questions=max((j.n for j in judge_results.per_adapter.values()), default=0)
                 if judge_results else 0),
        settings=_settings(plan, engine),
        rubric_by_question=[
            RubricRow(item.id, item.question.topic, item.question.false_premise, not screening.keep[i],
                      {name: RubricScore(s.score, s.passed, list(s.claims), s.corrected)
                       for name in models for s in [scores.rubric[name][i]]})
            for i, item in enumerate(items) if item.kind == "rubric"],
        load_seconds=loaded.seconds)


def _settings(plan: EvalPlan, engine) -> EvalSettings:
    """What the evaluation was run with: decoding, bootstrap, gate, questions, KB and system prompt, the job."""
    job = plan.job
    return EvalSettings(
        generation=describe_generation(plan.generation, job.batch_size, job.seed, engine), seed=job.seed,
        bootstrap=Bootstrap(BOOTSTRAP_RESAMPLES, CONFIDENCE, "percentile"),
        gate=GateRule(job.margin, GATE_RULE.format(margin=job.margin)),
        pass_threshold=PASS_THRESHOLD, markdown_rule=MARKDOWN_RULE,
        questions_file=str(plan.questions_path), questions_sha256=file_sha256(plan.questions_path),
        questions_kind="prompts" if plan.prompt_set is not None else "rubric",
        questions_in_file=plan.questions_in_file, limit=job.limit,
        skipped_prompt_rows=plan.prompt_set.skipped if plan.prompt_set else [],
        topics=sorted({q.topic for q in plan.questions}),
        kb=KBInfo(str(plan.kb_path), plan.kb.version),
        system_prompt=plan.system_prompt,
        system_prompt_sha256=hashlib.sha256(plan.system_prompt.encode()).hexdigest(),
        job={k: v for k, v in vars(job).items() if k != "source"})


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _write_answers(path: Path, items: Sequence[AnswerItem], texts: dict[str, list[str]],
                   new_tokens: dict[str, list[int]], scores: dict[str, list], flags: dict[str, list],
                   keep: Sequence[bool], grounded_texts: dict[str, list[str | None]],
                   grounded: dict[str, Any] | None) -> None:
    """answers.jsonl: every answer of every model (and, with --grounded, every grounded answer), with its new-token
    count, its rubric score where it has one, the live KB check's flags and whether the item was seen in training."""
    def record(name: str, i: int, text: str, score, kb_flags, **extra) -> str:
        item = items[i]
        row: dict[str, Any] = {"model": name, "kind": item.kind, "id": item.id, "prompt": item.text, "answer": text,
                               **extra}
        if score is not None:
            row.update(score=score.score, passed=score.passed, claims=list(score.claims), corrected=score.corrected)
        if item.reference:
            row["reference"] = item.reference
        row["kb_flags"] = [{"rule": f.rule, "detail": f.detail, "source": f.source} for f in kb_flags]
        row["contaminated"] = not keep[i]
        return json.dumps(row, ensure_ascii=False) + "\n"

    with open(path, "w", encoding="utf-8") as fh:
        for name in texts:
            for i, text in enumerate(texts[name]):
                fh.write(record(name, i, text, scores[name][i], flags[name][i], new_tokens=new_tokens[name][i]))
            if grounded is not None:
                g = grounded["models"][name]
                for i, text in enumerate(grounded_texts[name]):
                    if text is not None:
                        fh.write(record(name, i, text, g["_scores"][i], g["_flags"][i], grounded=True))
