"""`python -m trainer eval`: every adapter of a run against its base model, measured as the paper's revision (v4) did.

The paper's first version reported a falling training loss, "92% domain accuracy" and "95% markdown formatting"
without a protocol; measured properly, its adapter was worse than the base. This module measures every run the
honest way, by default:

- **Held-out loss**: assistant-token cross-entropy and perplexity of the base and each adapter on every stage's
  eval split (exactly the rows `split.json` recorded as held out), rendered with the stage's training template.
- **Loss reduction** per stage, first vs last logged loss (train and eval), from `metrics.json` and the Trainer's
  log history, reported as what it is: evidence of fitting, not of quality.
- **Answers** to the eval splits' prompts and to a domain rubric (`data/eval/questions.yaml`), generated greedily
  (fixed seed, batched with left padding) by the base and each adapter, each with the chat template saved with it.
- **Reference metrics** against the eval splits' answers: ROUGE-L F1 (`rouge-score`) and corpus BLEU (`sacrebleu`).
- **Markdown rate**: share of answers with a heading, or with at least two list items (`is_markdown`).
- **Rubric**: per question, the share of `must_mention` points an answer satisfies, zeroed when a `must_not_claim`
  error fires; it passes at >= 0.5. False-premise questions count their `correction` as one more point, and the
  false-premise correction rate is the share of them whose answer corrects the premise without a listed error.
- **Blind pairwise judge** (optional): any OpenAI-compatible endpoint compares base and adapter answers in both
  orders; win/tie/loss with 95% percentile-bootstrap intervals.
- **Gate**: an adapter passes when its rubric accuracy and false-premise correction rate are at least the base's
  and, where a judge ran, the judge's interval does not favour the base (`gate_decision`).

The base loads once (4-bit when the run trained in 4-bit); every adapter loads into the same PeftModel and is
switched with `set_adapter` (the base: `disable_adapter()`). Output: `runs/<name>/eval/` with `report.md`,
`results.json` (read by `trainer.hub` for the gate and the model card), `answers.jsonl`, `metrics.png` and
`loss_curves.png`; the verdict is also written into each stage's `lineage.json` under `evaluation`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import yaml

from trainer.config import DEFAULT_SYSTEM_PROMPT, TOPICS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_QUESTIONS = REPO_ROOT / "data" / "eval" / "questions.yaml"
RUBRIC_TOPICS = tuple(t for t in TOPICS if t != "other")
BASE = "base"

PASS_THRESHOLD = 0.5
"""A rubric question passes when its score (share of points satisfied, zero on a listed error) is at least this."""
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
JUDGE_API_KEY_ENV = "JUDGE_API_KEY"

MARKDOWN_RULE = ("an answer counts as markdown-formatted when it has at least one ATX heading line (`#` to `######` "
                 "then text) or at least two list-item lines (`-`, `*`, `+` or `1.` / `1)` then text)")
_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+\S", re.MULTILINE)
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d{1,3}[.)])[ \t]+\S", re.MULTILINE)
_QUESTION_KEYS = ("id", "topic", "question", "false_premise", "must_mention", "must_not_claim", "correction",
                  "source", "kb", "notes")
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,79}$")


class EvalError(RuntimeError):
    """An evaluation problem a user can fix; the message names the file, question or run and the rule."""


# The rubric

@dataclass(frozen=True)
class Claim:
    """A false claim: fires when `pattern` matches the answer and `unless` (a correcting cue) does not."""

    pattern: re.Pattern
    unless: re.Pattern | None = None

    def fires(self, text: str) -> bool:
        return bool(self.pattern.search(text)) and not (self.unless is not None and self.unless.search(text))


@dataclass(frozen=True)
class Question:
    """One rubric question with the deterministic rules that score an answer to it."""

    id: str
    topic: str
    question: str
    false_premise: bool
    must_mention: tuple[tuple[re.Pattern, ...], ...]
    """Points the answer must make; each point is a tuple of alternatives (any one satisfies it)."""
    must_not_claim: tuple[Claim, ...]
    correction: tuple[re.Pattern, ...]
    """False-premise questions: cues that the answer corrects the premise (any one counts)."""
    source: str
    kb: tuple[str, ...] = ()
    """Knowledge-base entries (data/kb ids or country codes) the rules were drawn from."""

    def points(self) -> tuple[tuple[re.Pattern, ...], ...]:
        """What the score counts: the correction (for a false premise) and then every must_mention point."""
        return ((self.correction,) if self.false_premise else ()) + self.must_mention


@dataclass(frozen=True)
class QuestionScore:
    id: str
    score: float
    passed: bool
    points: tuple[bool, ...]
    claims: tuple[str, ...]
    """Patterns of the false claims that fired."""
    corrected: bool | None
    """False-premise questions: a correction cue is present and no listed error fired; None otherwise."""


def _normalise(text: str) -> str:
    """Typographic quotes and dashes as ASCII, so `doesn't` matches `doesn’t`."""
    return (text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
            .replace("\u00a0", " ").translate({c: "-" for c in range(0x2010, 0x2015)}))


def score_answer(question: Question, answer: str) -> QuestionScore:
    """Score one answer: share of points satisfied (each point: any alternative matches, case-insensitive),
    zero when any must_not_claim fires; passes at >= PASS_THRESHOLD."""
    text = _normalise(answer)
    points = tuple(any(p.search(text) for p in alternatives) for alternatives in question.points())
    claims = tuple(c.pattern.pattern for c in question.must_not_claim if c.fires(text))
    score = 0.0 if claims or not points else sum(points) / len(points)
    corrected = None
    if question.false_premise:
        corrected = any(p.search(text) for p in question.correction) and not claims
    return QuestionScore(question.id, round(score, 4), score >= PASS_THRESHOLD, points, claims, corrected)


def _compile(pattern: Any, where: str) -> re.Pattern:
    if not isinstance(pattern, str) or not pattern.strip():
        raise EvalError(f"{where}: expected a non-empty regex string, got {pattern!r}")
    try:
        compiled = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise EvalError(f"{where}: regex {pattern!r} does not compile: {exc}") from None
    if compiled.search(""):
        raise EvalError(f"{where}: regex {pattern!r} matches the empty string, so it would always be satisfied")
    return compiled


def _alternatives(value: Any, where: str) -> tuple[re.Pattern, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise EvalError(f"{where}: expected at least one pattern")
    return tuple(_compile(p, f"{where}[{i}]" if isinstance(value, list) else where) for i, p in enumerate(items))


def parse_question(raw: Any, path: str | Path, index: int) -> Question:
    """One question from YAML (the `index`-th in `path`); raises EvalError naming the file, the question id (or
    its position, before an id is known) and the rule broken."""
    if not isinstance(raw, dict):
        raise EvalError(f"{path}: question #{index}: expected a mapping with id, topic, question, ...")
    qid = raw.get("id")
    if not isinstance(qid, str) or not _ID.match(qid):
        raise EvalError(f"{path}: question #{index}: id: must be 1-80 lowercase letters, digits, - _ . "
                        f"(got {qid!r})")
    where = f"{path}: question {qid}"
    unknown = [k for k in raw if k not in _QUESTION_KEYS]
    if unknown:
        raise EvalError(f"{where}: {unknown[0]}: unknown key (allowed: {', '.join(_QUESTION_KEYS)})")
    for key in ("topic", "question", "false_premise", "must_mention", "source"):
        if key not in raw:
            raise EvalError(f"{where}: {key}: required key is missing")
    if raw["topic"] not in RUBRIC_TOPICS:
        raise EvalError(f"{where}: topic: {raw['topic']!r} is not one of {', '.join(RUBRIC_TOPICS)}")
    if not isinstance(raw["question"], str) or not raw["question"].strip():
        raise EvalError(f"{where}: question: must be non-empty text")
    if not isinstance(raw["false_premise"], bool):
        raise EvalError(f"{where}: false_premise: must be true or false")
    kb = raw.get("kb") or []
    if not isinstance(kb, list) or not all(isinstance(k, str) and k for k in kb):
        raise EvalError(f"{where}: kb: expected a list of knowledge-base ids (data/kb)")
    source = raw["source"]
    if not isinstance(source, str) or not re.match(r"^https?://[^\s/]+\.[^\s]+$", source):
        raise EvalError(f"{where}: source: must be an http(s) URL of the official page, got {source!r}")
    mentions = raw["must_mention"]
    if not isinstance(mentions, list) or not mentions:
        raise EvalError(f"{where}: must_mention: expected a non-empty list of points")
    points = tuple(_alternatives(p, f"{where}: must_mention[{i}]") for i, p in enumerate(mentions))
    claims_raw = raw.get("must_not_claim") or []
    if not isinstance(claims_raw, list):
        raise EvalError(f"{where}: must_not_claim: expected a list")
    claims = []
    for i, c in enumerate(claims_raw):
        cw = f"{where}: must_not_claim[{i}]"
        if isinstance(c, str):
            claims.append(Claim(_compile(c, cw)))
            continue
        if not isinstance(c, dict) or "claim" not in c or set(c) - {"claim", "unless"}:
            raise EvalError(f"{cw}: expected a regex or a mapping with `claim` and optional `unless`")
        claims.append(Claim(_compile(c["claim"], f"{cw}.claim"),
                            _compile(c["unless"], f"{cw}.unless") if c.get("unless") is not None else None))
    question_text = _normalise(raw["question"])
    for i, alternatives in enumerate(points):
        if any(p.search(question_text) for p in alternatives):
            raise EvalError(f"{where}: must_mention[{i}]: the question itself satisfies this point, so it cannot "
                            "tell an answer from an echo of the question")
    correction_raw = raw.get("correction")
    if raw["false_premise"]:
        if not correction_raw:
            raise EvalError(f"{where}: correction: a false-premise question needs correction patterns")
        correction = _alternatives(correction_raw, f"{where}: correction")
        if any(p.search(question_text) for p in correction):
            raise EvalError(f"{where}: correction: the question itself matches a correction cue, so it cannot tell "
                            "a correction from an echo of the question")
        if not claims:
            raise EvalError(f"{where}: must_not_claim: a false-premise question must list the false claim")
    else:
        if correction_raw:
            raise EvalError(f"{where}: correction: only false-premise questions take correction patterns")
        correction = ()
    return Question(qid, raw["topic"], raw["question"].strip(), raw["false_premise"], points, tuple(claims),
                    correction, source, tuple(kb))


def load_questions(path: str | Path) -> list[Question]:
    """Read and validate a rubric file. Every error names the file, the question id and the rule."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalError(f"{path}: questions file not found") from None
    except yaml.YAMLError as exc:
        raise EvalError(f"{path}: not valid YAML: {exc}") from None
    items = raw.get("questions") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise EvalError(f"{path}: expected a `questions:` list")
    questions, seen = [], set()
    for i, item in enumerate(items, start=1):
        question = parse_question(item, path, i)
        if question.id in seen:
            raise EvalError(f"{path}: question {question.id}: id: used twice")
        seen.add(question.id)
        questions.append(question)
    return questions


def select_questions(questions: Sequence[Question], limit: int | None) -> list[Question]:
    """At most `limit` questions, alternating false-premise and ordinary ones (in file order) so a quick check
    still measures both rates."""
    if limit is None or limit >= len(questions):
        return list(questions)
    fp = [q for q in questions if q.false_premise]
    other = [q for q in questions if not q.false_premise]
    out: list[Question] = []
    while len(out) < limit and (fp or other):
        for pool in (fp, other):
            if pool and len(out) < limit:
                out.append(pool.pop(0))
    return out


def rubric_rates(questions: Sequence[Question], scores: Sequence[QuestionScore]) -> dict[str, Any]:
    """Rubric accuracy (pass rate), mean score and false-premise correction rate, with per-question indicators."""
    passed = [1.0 if s.passed else 0.0 for s in scores]
    corrected = [1.0 if s.corrected else 0.0 for q, s in zip(questions, scores) if q.false_premise]
    return {
        "rubric_accuracy": sum(passed) / len(passed) if passed else None,
        "rubric_mean_score": sum(s.score for s in scores) / len(scores) if scores else None,
        "false_premise_correction": sum(corrected) / len(corrected) if corrected else None,
        "passed": passed, "corrected": corrected,
    }


def is_markdown(answer: str) -> bool:
    """See MARKDOWN_RULE: a heading, or at least two list items."""
    return bool(_HEADING.search(answer)) or len(_LIST_ITEM.findall(answer)) >= 2


def markdown_rate(answers: Sequence[str]) -> float | None:
    return sum(is_markdown(a) for a in answers) / len(answers) if answers else None


# Statistics

def bootstrap_ci(data: Sequence[Any], statistic: Callable[[Any], float] | None = None, *,
                 resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE,
                 seed: int = 3407) -> tuple[float, float] | None:
    """Percentile bootstrap interval of `statistic` (default: the mean) over items resampled with replacement.
    `data` is a sequence of numbers or of equal-length rows (a statistic then gets an (n, k) array). Seeded:
    the same data and seed give the same interval. None for no data."""
    import numpy as np

    values = np.asarray(data, dtype=float)
    n = len(values)
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(resamples, n))
    if statistic is None:
        stats = values[index].mean(axis=1)
    else:
        stats = np.array([statistic(values[i]) for i in index])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F1 per answer (rouge-score, Porter stemming; no model download)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]


def bleu_statistics(hypotheses: Sequence[str], references: Sequence[str]) -> list[list[float]]:
    """Per-answer BLEU sufficient statistics [sys_len, ref_len, correct 1-4, total 1-4] (sacrebleu's 13a
    tokenizer), so corpus BLEU and its bootstrap are sums of rows."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU()
    rows = []
    for hyp, ref in zip(hypotheses, references):
        s = bleu.corpus_score([hyp], [[ref]])
        rows.append([s.sys_len, s.ref_len, *s.counts, *s.totals])
    return rows


def bleu_from_statistics(rows) -> float:
    """Corpus BLEU (0-100, sacrebleu's default exponential smoothing) from summed per-answer statistics."""
    import numpy as np
    from sacrebleu.metrics import BLEU

    total = np.asarray(rows, dtype=float).sum(axis=0)
    return float(BLEU.compute_bleu(correct=[int(x) for x in total[2:6]], total=[int(x) for x in total[6:10]],
                                   sys_len=int(total[0]), ref_len=int(total[1]), smooth_method="exp").score)


def pooled_loss(rows) -> float:
    """Token-weighted loss from per-conversation [nll_sum, tokens] rows."""
    import numpy as np

    total = np.asarray(rows, dtype=float).sum(axis=0)
    return float(total[0] / total[1]) if total[1] else float("nan")


# The pairwise judge

JUDGE_SYSTEM = (
    "You are an impartial judge of answers that a study-abroad counsellor gave to students. You compare two "
    "anonymous answers to the same question. Judge factual accuracy first (a wrong requirement, deadline, "
    "eligibility rule or a false premise left uncorrected is a serious fault), then helpfulness and clarity. Length "
    "alone is no merit, and the order in which the answers are shown must not influence you."
)
JUDGE_TEMPLATE = (
    "Question from a student:\n{question}\n\n[Answer A]\n{a}\n[End of answer A]\n\n[Answer B]\n{b}\n"
    "[End of answer B]\n\nWhich answer is better? Reply with one line, exactly `Verdict: A`, `Verdict: B` or "
    "`Verdict: tie`, then at most two sentences of reasons."
)
_VERDICT_WORDS = {"a": "A", "b": "B", "tie": "tie", "draw": "tie", "equal": "tie", "neither": "tie", "both": "tie"}
_VERDICT_TIERS = (
    re.compile(r"verdict\s*(?:is|:|=|-)?\s*[\[\(\*\"'`]*\s*(?:answer\s+)?(A|B|tie|draw|equal)\b", re.IGNORECASE),
    re.compile(r"\[\[\s*(A|B|tie)\s*\]\]", re.IGNORECASE),
    re.compile(r"^\W*(?:answer\s+|assistant\s+)?(A|B|tie|draw)\W*$", re.IGNORECASE),
    re.compile(r"^\W*(?:answer\s+|assistant\s+)?(A|B)[ \t]*(?:[.:!)\-]|\n|$)", re.IGNORECASE),
    re.compile(r"\b(?:answer|assistant|response)\s+(A|B)\s+is\s+(?:clearly\s+|slightly\s+|much\s+)?"
               r"(?:better|more accurate|superior|preferable|the better)", re.IGNORECASE),
    re.compile(r"\b(tie|draw)\b|\b(equal)ly good\b|\b(both)\s+(?:answers\s+)?are\s+equally\b", re.IGNORECASE),
)


def parse_verdict(text: str | None) -> str | None:
    """`A`, `B` or `tie` from a judge's reply, or None when it names none. Tried in order: an explicit
    `Verdict: X` (the last one wins), `[[X]]`, a reply that is just the letter, a reply starting with the letter
    and punctuation, `answer X is better`, and finally a plain `tie`/`draw`."""
    if not text:
        return None
    text = text.strip()
    for tier in _VERDICT_TIERS:
        hits = [next(g for g in m.groups() if g) for m in tier.finditer(text)]
        if hits:
            return _VERDICT_WORDS[hits[-1].lower()]
    return None


def combine_orders(first: str | None, second: str | None) -> str | None:
    """One outcome per question from both orders (`adapter`, `base`, `tie`, or None when both are unparseable).
    Agreeing verdicts stand; a tie and a preference give the preference; opposite preferences (position bias) give
    a tie; a single parseable verdict stands alone."""
    valid = [v for v in (first, second) if v is not None]
    if not valid:
        return None
    if len(valid) == 1 or valid[0] == valid[1]:
        return valid[0]
    if "tie" in valid:
        return next(v for v in valid if v != "tie")
    return "tie"


@dataclass(frozen=True)
class JudgeSettings:
    base_url: str
    """OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1."""
    model: str | None = None
    """Model name at the endpoint (None: the endpoint's default)."""
    api_key_env: str = JUDGE_API_KEY_ENV
    """Environment variable holding the API key; only its name is ever recorded."""
    max_tokens: int = 96
    """Room for the verdict line and a short reason."""
    concurrency: int = 4
    """Requests in flight at once."""
    timeout: float = 120.0
    max_retries: int = 4

    def describe(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model, "api_key_env": self.api_key_env,
                "max_tokens": self.max_tokens, "temperature": 0.0, "orders": "both (A/B swapped)",
                "prompt_sha256": hashlib.sha256((JUDGE_SYSTEM + JUDGE_TEMPLATE).encode()).hexdigest()}


class PairwiseJudge:
    """Asks an OpenAI-compatible endpoint which of two answers is better, through the generator's provider
    (`trainer.synth.OpenAICompatibleProvider`: huggingface_hub's InferenceClient, retries on 429/5xx, and the named
    endpoint let through when HF_HUB_OFFLINE is set). The API key is read from the named environment variable and
    never logged."""

    def __init__(self, settings: JudgeSettings, sleep: Callable[[float], None] = time.sleep):
        from trainer.synth import OpenAICompatibleProvider

        self.settings = settings
        self.provider = OpenAICompatibleProvider(settings.base_url, settings.model,
                                                 api_key=os.environ.get(settings.api_key_env) or None,
                                                 timeout=settings.timeout, max_retries=settings.max_retries,
                                                 sleep=sleep)

    def ask(self, question: str, answer_a: str, answer_b: str) -> str:
        """The judge's raw reply for one ordered pair (A shown first)."""
        from trainer.synth import GenerationError

        messages = [{"role": "system", "content": JUDGE_SYSTEM},
                    {"role": "user", "content": JUDGE_TEMPLATE.format(question=question, a=answer_a, b=answer_b)}]
        try:
            reply, _ = self.provider.complete(messages, max_tokens=self.settings.max_tokens, temperature=0.0)
        except GenerationError as exc:
            raise EvalError(f"judge {exc}") from None
        return reply


def judge_pairs(judge: PairwiseJudge, items: Sequence[tuple[str, str, str, str]], *,
                seed: int = 3407, resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """Judge (id, question, base answer, adapter answer) items blind in both orders: first with the base as A,
    then with the adapter as A. Returns counts, rates with bootstrap intervals, and every verdict."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = []
    for qid, question, base_answer, adapter_answer in items:
        jobs.append((qid, "base_first", question, base_answer, adapter_answer))
        jobs.append((qid, "adapter_first", question, adapter_answer, base_answer))
    with ThreadPoolExecutor(max_workers=max(1, judge.settings.concurrency)) as pool:
        replies = list(pool.map(lambda job: judge.ask(job[2], job[3], job[4]), jobs))
    per_question: dict[str, dict[str, Any]] = {qid: {"id": qid} for qid, *_ in items}
    letters = {"A": 0, "B": 0, "tie": 0, None: 0}
    for (qid, order, *_), reply in zip(jobs, replies):
        verdict = parse_verdict(reply)
        letters[verdict] += 1
        adapter_letter = "B" if order == "base_first" else "A"
        mapped = None if verdict is None else "tie" if verdict == "tie" else \
            "adapter" if verdict == adapter_letter else "base"
        per_question[qid][order] = {"verdict": verdict, "preferred": mapped, "reply": reply[:2000]}
    outcomes = []
    consistent = both_valid = 0
    for record in per_question.values():
        first, second = record["base_first"]["preferred"], record["adapter_first"]["preferred"]
        record["outcome"] = combine_orders(first, second)
        outcomes.append(record["outcome"])
        if first is not None and second is not None:
            both_valid += 1
            consistent += first == second
    return summarize_judgements(outcomes, seed=seed, resamples=resamples) | {
        "judgements": len(jobs), "verdict_letters": {str(k): v for k, v in letters.items()},
        "position_consistency": consistent / both_valid if both_valid else None,
        "per_question": list(per_question.values()),
    }


def summarize_judgements(outcomes: Sequence[str | None], *, seed: int = 3407,
                         resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """Win/tie/loss counts and rates (adapter's view) over the questions with a verdict, with percentile-bootstrap
    intervals for the win rate, the loss rate and their difference (`net` = adapter wins - base wins)."""
    valid = [o for o in outcomes if o is not None]
    n = len(valid)
    wins, losses, ties = valid.count("adapter"), valid.count("base"), valid.count("tie")
    win = [1.0 if o == "adapter" else 0.0 for o in valid]
    loss = [1.0 if o == "base" else 0.0 for o in valid]
    net = [won - lost for won, lost in zip(win, loss)]
    return {
        "n": n, "wins": wins, "ties": ties, "losses": losses, "invalid": len(outcomes) - n,
        "win_rate": wins / n if n else None, "tie_rate": ties / n if n else None,
        "loss_rate": losses / n if n else None, "net": (wins - losses) / n if n else None,
        "win_rate_ci": bootstrap_ci(win, seed=seed, resamples=resamples),
        "loss_rate_ci": bootstrap_ci(loss, seed=seed, resamples=resamples),
        "net_ci": bootstrap_ci(net, seed=seed, resamples=resamples),
    }


# The gate

GATE_RULE = (
    "An adapter passes when (1) its rubric accuracy is at least the base's, (2) its false-premise correction rate "
    "is at least the base's, and (3) where a judge ran, the judge does not favour the base: the upper bound of the "
    "95% bootstrap interval of `net` (share of questions the adapter won minus share the base won, both orders "
    "combined) is not below 0. A criterion that could not be measured (no false-premise question, no parseable "
    "verdict) is reported and does not decide."
)


def gate_decision(base: dict[str, Any], adapter: dict[str, Any], judge: dict[str, Any] | None) -> dict[str, Any]:
    """The verdict for one adapter from its metrics, the base's and the judge's summary (see GATE_RULE)."""
    checks: dict[str, Any] = {}
    parts, failed = [], []

    def compare(key: str, label: str) -> None:
        a, b = adapter.get(key), base.get(key)
        if a is None or b is None:
            checks[key] = None
            parts.append(f"{label} not measured")
            return
        ok = a >= b
        checks[key] = ok
        parts.append(f"{label} {a:.2f} vs base {b:.2f}" + ("" if ok else " (worse)"))
        if not ok:
            failed.append(label)

    compare("rubric_accuracy", "rubric accuracy")
    compare("false_premise_correction", "false-premise correction")
    if judge is None:
        checks["judge"] = None
        parts.append("no judge configured")
    elif not judge.get("n") or judge.get("net_ci") is None:
        checks["judge"] = None
        parts.append(f"judge gave no parseable verdict ({judge.get('invalid', 0)} unparseable)")
    else:
        low, high = judge["net_ci"]
        ok = high >= 0
        checks["judge"] = ok
        parts.append(f"judge {judge['wins']}-{judge['ties']}-{judge['losses']} (win-tie-loss, n={judge['n']}), "
                     f"net {judge['net']:+.2f} [{low:+.2f}, {high:+.2f}]" + ("" if ok else " (favours the base)"))
        if not ok:
            failed.append("judge")
    passed = not failed
    summary = "; ".join(parts)
    return {"passed": passed, "summary": summary, "failed": failed, "checks": checks}


# The run

@dataclass
class StageInfo:
    name: str
    dir: Path
    adapter_dir: Path
    cfg: Any
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    split: dict[str, Any]
    template: str = ""
    eval_rows: list = field(default_factory=list)
    split_problem: str | None = None
    """Why the held-out rows could not be re-read (data moved or changed since training), if so."""


def read_run(run_dir: Path) -> list[StageInfo]:
    """The run's finished stages, in pipeline order, with their config, metrics, lineage, split and template."""
    from trainer.hub import HubError, finished_stages, read_stage

    if not run_dir.is_dir():
        raise EvalError(f"{run_dir}: no such run directory")
    try:
        names = finished_stages(run_dir)
        runs = [read_stage(run_dir, s) for s in names]
    except HubError as exc:
        raise EvalError(str(exc).replace("no finished stage", "no adapters to evaluate")) from None
    stages = []
    for r in runs:
        info = StageInfo(r.name, r.dir, r.dir / "adapter", r.cfg, r.metrics, r.lineage, r.split)
        info.template = adapter_template(info.adapter_dir)
        stages.append(info)
    base = {s.cfg.model.name for s in stages}
    if len(base) > 1:
        raise EvalError(f"{run_dir}: stages were trained on different base models ({', '.join(sorted(base))}); "
                        "evaluate them separately")
    return stages


def adapter_template(adapter_dir: Path) -> str:
    """The chat template saved with an adapter (the one it was trained with)."""
    path = adapter_dir / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    config = adapter_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    raise EvalError(f"{adapter_dir}: no chat template saved with the adapter (chat_template.jinja)")


def eval_split(stage: StageInfo) -> list:
    """Exactly the conversations the stage held out: its data re-read with trainer.data and selected by the
    content hashes in split.json (the seeded hash split is recomputed when split.json lists none)."""
    import dataclasses

    from trainer.data import DataError, load_conversations, split_train_eval

    spec = dataclasses.replace(stage.cfg.stages[stage.name].dataset, max_bad_fraction=1.0, strict=False)
    try:
        conversations, _ = load_conversations(spec, REPO_ROOT)
        if spec.eval_path:
            held, _ = load_conversations(spec, REPO_ROOT, path=spec.eval_path)
            conversations = conversations + held
    except DataError as exc:
        raise EvalError(f"{stage.dir}: cannot re-read the stage's data: {exc}") from None
    wanted = [r["sha256"] for r in stage.split.get("eval", [])]
    if not wanted and not spec.eval_path:
        _, held = split_train_eval(conversations, spec.eval_fraction, stage.cfg.seed)
        return held
    by_hash = {c.content_hash: c for c in conversations}
    missing = [h for h in wanted if h not in by_hash]
    if missing:
        raise EvalError(f"{stage.dir / 'split.json'}: {len(missing)} held-out rows are no longer in {spec.path} "
                        "(the data changed since training)")
    return [by_hash[h] for h in wanted]


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


def read_log_history(stage_dir: Path) -> list[dict[str, Any]]:
    """The Trainer's log history from the stage's latest checkpoint, if any is left."""
    def step(path: Path) -> int:
        suffix = path.parent.name.rsplit("-", 1)[-1]
        return int(suffix) if suffix.isdigit() else -1

    states = sorted((stage_dir / "checkpoints").glob("checkpoint-*/trainer_state.json"), key=step)
    if not states:
        return []
    try:
        return list(json.loads(states[-1].read_text(encoding="utf-8")).get("log_history", []))
    except (OSError, ValueError):
        return []


def loss_reduction(stage: StageInfo) -> dict[str, Any]:
    """First vs last logged loss, train and eval: from the log history where it is kept, else metrics.json."""
    m = stage.metrics
    history = read_log_history(stage.dir)
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

@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 384
    """Answer length cap."""
    repetition_penalty: float = 1.1
    """As in the app; small models loop under plain greedy decoding. Deterministic either way."""
    batch_size: int = 8
    """Prompts per generate() call (left-padded)."""
    seed: int = 3407

    def describe(self) -> dict[str, Any]:
        return {"decoding": "greedy (do_sample=False)", "max_new_tokens": self.max_new_tokens,
                "repetition_penalty": self.repetition_penalty, "batch_size": self.batch_size,
                "padding": "left", "seed": self.seed}


@contextlib.contextmanager
def active(model, name: str):
    """Run the PeftModel as the base (adapters disabled) or with one adapter."""
    if name == BASE:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(name)
        yield


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


@dataclass
class GenerationStats:
    samples: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "new_tokens": self.new_tokens, "seconds": round(self.seconds, 2),
                "samples_per_second": round(self.samples / self.seconds, 4) if self.seconds else None,
                "tokens_per_second": round(self.new_tokens / self.seconds, 2) if self.seconds else None}


def generate_answers(model, tokenizer, template: str, prompts: Sequence[Sequence[dict[str, str]]],
                     settings: GenerationConfig, progress: Callable[[int, int], None] | None = None
                     ) -> tuple[list[str], list[int], GenerationStats]:
    """Greedy answers to each prompt, rendered with `template`, batched with left padding (longest prompts
    first). Returns the answers, their new-token counts and throughput."""
    import torch
    from transformers import set_seed

    set_seed(settings.seed)
    encoded = [tokenizer.apply_chat_template(list(p), chat_template=template, add_generation_prompt=True,
                                             tokenize=True, return_dict=False) for p in prompts]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None \
        else tokenizer.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    answers, counts = [""] * len(encoded), [0] * len(encoded)
    stats = GenerationStats()
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    for start in range(0, len(order), settings.batch_size):
        chunk = order[start:start + settings.batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            attention[row, width - len(encoded[i]):] = 1
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=attention.to(device),
                                 max_new_tokens=settings.max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, repetition_penalty=settings.repetition_penalty,
                                 pad_token_id=pad)
        stats.seconds += time.perf_counter() - started
        for row, i in enumerate(chunk):
            new = out[row, width:].tolist()
            end = next((k + 1 for k, t in enumerate(new) if t in eos_ids), len(new))
            counts[i] = end
            answers[i] = tokenizer.decode(new[:end], skip_special_tokens=True).strip()
        stats.samples += len(chunk)
        stats.new_tokens += sum(counts[i] for i in chunk)
        if progress is not None:
            progress(stats.samples, len(encoded))
    return answers, counts, stats


def load_models(stages: Sequence[StageInfo], load_in_4bit: bool | None):
    """The base once (4-bit as the run trained, unless overridden) and every adapter in one PeftModel."""
    import dataclasses

    from peft import PeftModel

    from trainer.modeling import ModelError, load_base_model, load_tokenizer, read_adapter_config, \
        resolve_base_model

    cfg = stages[-1].cfg
    quant = cfg.quantization if load_in_4bit is None else dataclasses.replace(cfg.quantization,
                                                                               load_in_4bit=load_in_4bit)
    ref = resolve_base_model(cfg.model.name, cfg.model.revision)
    tokenizer = load_tokenizer(ref, cfg.model.trust_remote_code)
    if tokenizer.chat_template is None:
        raise EvalError(f"{cfg.model.name}: the base tokenizer has no chat template")
    for stage in stages:
        trained_on = read_adapter_config(stage.adapter_dir).get("base_model_name_or_path")
        if trained_on and trained_on != cfg.model.name:
            raise ModelError(f"{stage.adapter_dir}: trained on {trained_on!r}, but the run's base is "
                             f"{cfg.model.name!r}")
    model = load_base_model(ref, quant, attn_implementation=cfg.model.attn_implementation,
                            trust_remote_code=cfg.model.trust_remote_code, for_training=False)
    model = PeftModel.from_pretrained(model, str(stages[0].adapter_dir), adapter_name=stages[0].name)
    for stage in stages[1:]:
        model.load_adapter(str(stage.adapter_dir), adapter_name=stage.name)
    model.eval()
    return model, tokenizer, ref, quant


# Report

def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _with_ci(value: Any, ci: Sequence[float] | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return _fmt(value, digits) + (f" [{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]" if ci else "")


TABLE_COLUMNS = (
    ("eval_loss", "eval loss", 3), ("eval_perplexity", "perplexity", 2), ("rouge_l", "ROUGE-L", 3),
    ("bleu", "BLEU", 2), ("markdown_rate", "markdown rate", 2), ("rubric_accuracy", "rubric accuracy", 2),
    ("false_premise_correction", "false-premise correction", 2), ("judge_win_rate", "judge win rate", 2),
)


def render_report(results: dict[str, Any]) -> str:
    """results.json as a markdown report, with the paper-style table first."""
    models = [(BASE, results["base"])] + list(results["adapters"].items())
    n = results["n"]
    ns = {"eval_loss": f"n={n['eval_conversations']} conv.", "eval_perplexity": "",
          "rouge_l": f"n={n['reference_prompts']}", "bleu": f"n={n['reference_prompts']}",
          "markdown_rate": f"n={n['answers_per_model']}", "rubric_accuracy": f"n={n['questions']}",
          "false_premise_correction": f"n={n['false_premise_questions']}",
          "judge_win_rate": f"n={n.get('judged_questions', 0)}"}
    q = results["quantization"]
    precision = f"4-bit {q.get('quant_type', '')}" if q.get("load_in_4bit") else "unquantized"
    lines = [f"# Evaluation of run `{results['run']}`", "",
             f"{results['created']} · base `{results['base_model']}` ({precision}) · {results['device']}", "",
             "## Verdict", ""]
    for stage, gate in results["gate"].items():
        lines.append(f"- **{stage}: {'PASSED' if gate['passed'] else 'FAILED'}** — {gate['summary']}")
    lines += ["", f"Gate rule: {GATE_RULE}", "", "## Base vs adapters", "",
              "Point estimates with 95% percentile-bootstrap intervals "
              f"({results['settings']['bootstrap']['resamples']} resamples, seed {results['settings']['seed']}); "
              "n is the number of items resampled.", ""]
    columns = [c for c in TABLE_COLUMNS if c[0] != "judge_win_rate" or results.get("judge")]
    header = ["model"] + [f"{label} ({ns[key]})" if ns[key] else label for key, label, _ in columns]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for name, entry in models:
        m, ci = entry["metrics"], entry.get("intervals", {})
        cells = [name] + [_with_ci(m.get(key), ci.get(key), digits) if key != "judge_win_rate" or name != BASE
                          else "—" for key, _, digits in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "- eval loss: assistant-token cross-entropy over every stage's held-out conversations, pooled "
              "by token; perplexity = exp(eval loss).",
              "- ROUGE-L: F1, rouge-score with stemming; BLEU: corpus SacreBLEU (13a tokenizer); both against the "
              "held-out answers, one prompt per assistant turn.",
              f"- markdown rate: {MARKDOWN_RULE}.",
              f"- rubric accuracy: share of questions scoring >= {PASS_THRESHOLD} (score = share of `must_mention` "
              "points matched, the correction counting as one point on false-premise questions; 0 when a "
              "`must_not_claim` error fires and its `unless` cue is absent).",
              "- false-premise correction: share of false-premise questions whose answer has a correction cue and "
              "no listed error.",
              "- judge win rate: share of questions the adapter won against the base (both orders combined)."
              if results.get("judge") else "- judge: none configured (`--judge-base-url`).", ""]

    lines += ["## Held-out loss per split", "", "| model | " + " | ".join(
        f"{s} split (n={d['conversations']}, {d['tokens']} tok.)" for s, d in results["splits"].items()) + " |",
        "|---|" + "---|" * len(results["splits"])]
    for name, entry in models:
        cells = [name]
        for split in results["splits"]:
            d = entry.get("eval_loss_by_split", {}).get(split)
            cells.append(f"{_fmt(d['loss'])} (ppl {_fmt(d['perplexity'], 2)})" if d else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    recorded = [f"{s}: {_fmt(results['adapters'][s]['loss_reduction'].get('eval_loss_last'))}"
                for s in results["adapters"]]
    lines += ["", "Recorded at the end of training (own split, TRL): " + ", ".join(recorded) + "."]
    lines += [f"\n**{s} split not measured**: {d['unavailable']}" for s, d in results["splits"].items()
              if d.get("unavailable")]
    lines.append("")

    lines += ["## Loss reduction per stage", "",
              "| stage | train loss first → last | train reduction | eval loss first → last | eval reduction | "
              "steps | source |", "|---|---|---|---|---|---|---|"]
    for stage, entry in results["adapters"].items():
        r = entry["loss_reduction"]
        lines.append(f"| {stage} | {_fmt(r['train_loss_first'])} → {_fmt(r['train_loss_last'])} | "
                     f"{_fmt(r['train_loss_reduction_pct'], 1)}% | {_fmt(r['eval_loss_first'])} → "
                     f"{_fmt(r['eval_loss_last'])} | {_fmt(r['eval_loss_reduction_pct'], 1)}% | "
                     f"{r['optimizer_steps']} | {r['source']} |")
    lines += ["", "A falling training loss shows that an adapter fits its training data; it says nothing about the "
              "quality of its answers (the paper's 52.7% reduction came with an adapter that lost to its base).",
              "", "![metrics](metrics.png)", "", "![loss curves](loss_curves.png)", ""]

    if results.get("judge"):
        j = results["judge"]
        lines += ["## Pairwise judge", "", f"Endpoint `{j['settings']['base_url']}`, model "
                  f"`{j['settings']['model'] or 'default'}`, temperature 0, each pair judged twice with the answers "
                  "swapped; agreeing verdicts stand, a tie and a preference give the preference, opposite "
                  "preferences give a tie.", "",
                  "| adapter | n | wins | ties | losses | unparseable | win rate | loss rate | net (win − loss) | "
                  "position consistency |", "|---|---|---|---|---|---|---|---|---|---|"]
        for stage, s in j["per_adapter"].items():
            lines.append(f"| {stage} | {s['n']} | {s['wins']} | {s['ties']} | {s['losses']} | {s['invalid']} | "
                         f"{_with_ci(s['win_rate'], s['win_rate_ci'], 2)} | "
                         f"{_with_ci(s['loss_rate'], s['loss_rate_ci'], 2)} | "
                         f"{_with_ci(s['net'], s['net_ci'], 2)} | {_fmt(s['position_consistency'], 2)} |")
        lines.append("")

    lines += ["## Throughput", "", "| model | answers | new tokens | seconds | answers/s | tokens/s |",
              "|---|---|---|---|---|---|"]
    for name, entry in models:
        t = entry["throughput"]
        lines.append(f"| {name} | {t['samples']} | {t['new_tokens']} | {t['seconds']} | {t['samples_per_second']} | "
                     f"{t['tokens_per_second']} |")

    lines += ["", "## Rubric by question", "", "Score per question (✓ passes at >= 0.5; ✗ a listed false claim "
              "fired).", "", "| question | topic | false premise | " + " | ".join(name for name, _ in models) + " |",
              "|---|---|---|" + "---|" * len(models)]
    for row in results["rubric_by_question"]:
        cells = []
        for name, _ in models:
            s = row["scores"][name]
            cells.append(f"{s['score']:.2f} {'✓' if s['passed'] else ''}{'✗' if s['claims'] else ''}".strip())
        lines.append(f"| {row['id']} | {row['topic']} | {'yes' if row['false_premise'] else ''} | "
                     + " | ".join(cells) + " |")

    s = results["settings"]
    lines += ["", "## Settings", "",
              f"- generation: {json.dumps(s['generation'])}",
              f"- seed: {s['seed']}; bootstrap: {s['bootstrap']['resamples']} resamples, percentile, "
              f"{int(s['bootstrap']['confidence'] * 100)}%",
              f"- questions: `{s['questions_file']}` (sha256 `{s['questions_sha256']}`), {n['questions']} used"
              + (f" (--limit {s['limit']})" if s["limit"] else ""),
              f"- rubric system prompt (sha256 `{s['system_prompt_sha256']}`): {s['system_prompt']}",
              "- chat templates (sha256): " + ", ".join(f"{name} `{entry['chat_template_sha256']}`"
                                                        for name, entry in models),
              f"- load: {results['load_seconds']} s; total: {results['wall_seconds']} s", ""]
    return "\n".join(lines)


def plot_metrics(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [(BASE, results["base"])] + list(results["adapters"].items())
    colors = ["#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    rates = [("rouge_l", "ROUGE-L", 1), ("bleu", "BLEU/100", 100), ("markdown_rate", "markdown", 1),
             ("rubric_accuracy", "rubric acc.", 1), ("false_premise_correction", "false-premise corr.", 1),
             ("judge_win_rate", "judge win", 1)]
    rates = [r for r in rates if any(r[0] in entry["metrics"] for _, entry in models)]
    fig, (ax_loss, ax_rates) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 3.2]})
    for k, (name, entry) in enumerate(models):
        value = entry["metrics"].get("eval_loss")
        ci = entry.get("intervals", {}).get("eval_loss")
        if value is not None:
            err = [[value - ci[0]], [ci[1] - value]] if ci else None
            ax_loss.bar(k, value, color=colors[k % len(colors)], yerr=err, capsize=3, label=name)
    ax_loss.set_xticks(range(len(models)), [name for name, _ in models])
    ax_loss.set_title("held-out loss (lower is better)")
    width = 0.8 / len(models)
    for k, (name, entry) in enumerate(models):
        xs, ys, errs = [], [[], []], []
        for j, (key, _, scale) in enumerate(rates):
            value = entry["metrics"].get(key)
            if value is None:
                continue
            ci = entry.get("intervals", {}).get(key)
            xs.append(j + (k - (len(models) - 1) / 2) * width)
            errs.append(value / scale)
            ys[0].append(value / scale - ci[0] / scale if ci else 0)
            ys[1].append(ci[1] / scale - value / scale if ci else 0)
        if xs:
            ax_rates.bar(xs, errs, width=width, color=colors[k % len(colors)], yerr=ys, capsize=2, label=name)
    ax_rates.set_xticks(range(len(rates)), [label for _, label, _ in rates])
    ax_rates.set_ylim(0, 1.05)
    ax_rates.set_title("answer metrics with 95% bootstrap intervals (higher is better)")
    ax_rates.legend(loc="upper right")
    ax_rates.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{results['run']}: base vs adapters")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss_curves(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(results["adapters"].items())
    fig, axes = plt.subplots(1, len(stages), figsize=(5.2 * len(stages), 3.8), squeeze=False)
    for ax, (stage, entry) in zip(axes[0], stages):
        r = entry["loss_reduction"]
        if r["train_curve"]:
            ax.plot(*zip(*r["train_curve"]), ".-", label="train loss", color="#1f77b4")
        if r["eval_curve"]:
            ax.plot(*zip(*r["eval_curve"]), "o-", label="eval loss", color="#d62728")
        ax.set_title(f"{stage}: train {_fmt(r['train_loss_reduction_pct'], 1)}%, eval "
                     f"{_fmt(r['eval_loss_reduction_pct'], 1)}%")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (assistant tokens)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def record_in_lineage(stage: StageInfo, gate: dict[str, Any], results_path: Path, created: str) -> None:
    """Write the verdict into the stage's lineage.json under `evaluation` (replacing an earlier one). Dropping that
    key and re-serialising gives back the file as trained, byte for byte, so its recorded sha256 stays checkable."""
    from trainer.lineage import write_json

    path = stage.dir / "lineage.json"
    lineage = json.loads(path.read_text(encoding="utf-8"))
    lineage["evaluation"] = {"passed": gate["passed"], "summary": gate["summary"],
                             "results": os.path.relpath(results_path, stage.dir), "date": created}
    write_json(path, lineage)


# The whole evaluation

@dataclass
class EvalPlan:
    """Everything an evaluation needs, checked before any weights load."""

    run_dir: Path
    out: Path
    stages: list[StageInfo]
    questions: list[Question]
    questions_path: Path
    questions_in_file: int
    held_out: list
    references: list[dict[str, Any]]
    limit: int | None
    judge: JudgeSettings | None
    generation: GenerationConfig
    load_in_4bit: bool | None
    system_prompt: str


def plan_evaluation(run_dir: str | Path, *, questions_path: str | Path | None = None, limit: int | None = None,
                    judge: JudgeSettings | None = None, generation: GenerationConfig = GenerationConfig(),
                    load_in_4bit: bool | None = None, out_dir: str | Path | None = None,
                    system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> EvalPlan:
    """Read the rubric, the run and its held-out rows; raise EvalError for anything a user can fix."""
    if limit is not None and limit < 1:
        raise EvalError(f"--limit: must be at least 1, got {limit}")
    if generation.max_new_tokens < 1 or generation.batch_size < 1:
        raise EvalError("--max-new-tokens and --batch-size must be at least 1")
    run_dir = Path(run_dir)
    questions_path = Path(questions_path) if questions_path else DEFAULT_QUESTIONS
    all_questions = load_questions(questions_path)
    stages = read_run(run_dir)
    for stage in stages:
        try:
            stage.eval_rows = eval_split(stage)
        except EvalError as exc:  # the rubric and the judge need no training data: measure what still can be
            stage.split_problem = str(exc)
    seen, held_out = set(), []
    for stage in stages:
        for conv in stage.eval_rows:
            if conv.content_hash not in seen:
                seen.add(conv.content_hash)
                held_out.append(conv)
    references = reference_prompts(held_out)
    return EvalPlan(run_dir=run_dir, out=Path(out_dir) if out_dir else run_dir / "eval", stages=stages,
                    questions=select_questions(all_questions, limit), questions_path=questions_path,
                    questions_in_file=len(all_questions), held_out=held_out,
                    references=references[:limit] if limit is not None else references, limit=limit, judge=judge,
                    generation=generation, load_in_4bit=load_in_4bit, system_prompt=system_prompt)


def run_evaluation(run_dir: str | Path, *, questions_path: str | Path | None = None, limit: int | None = None,
                   judge: JudgeSettings | None = None, generation: GenerationConfig = GenerationConfig(),
                   load_in_4bit: bool | None = None, out_dir: str | Path | None = None,
                   system_prompt: str = DEFAULT_SYSTEM_PROMPT, threads: int | None = None,
                   log: Callable[[str], None] = print) -> Path:
    """Evaluate every adapter of a run and its base; write the report, results, answers and charts. Returns the
    path of results.json."""
    started = time.time()
    if threads is not None and threads < 1:
        raise EvalError(f"--threads: must be at least 1, got {threads}")
    plan = plan_evaluation(run_dir, questions_path=questions_path, limit=limit, judge=judge, generation=generation,
                           load_in_4bit=load_in_4bit, out_dir=out_dir, system_prompt=system_prompt)
    judge_client = None
    if judge is not None:
        judge_client = PairwiseJudge(judge)
        judge_client.ask("Is this endpoint reachable?", "Yes.", "No.")  # fail now, not after hours of generation
    plan.out.mkdir(parents=True, exist_ok=True)
    for stage in plan.stages:
        if stage.split_problem:
            log(f"[eval] warning: no held-out loss or reference answers for {stage.name}: {stage.split_problem}")
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

    stages, questions, references, held_out = plan.stages, plan.questions, plan.references, plan.held_out
    generation, judge, system_prompt, out = plan.generation, plan.judge, plan.system_prompt, plan.out
    cfg = stages[-1].cfg
    seed = generation.seed

    # Load the base once and every adapter into the same PeftModel
    load_started = time.time()
    model, tokenizer, _, quant = load_models(stages, plan.load_in_4bit)
    load_seconds = round(time.time() - load_started, 2)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        f"cpu ({torch.get_num_threads()} threads)"
    log(f"[eval] loaded {cfg.model.name} ({'4-bit ' + quant.quant_type if quant.load_in_4bit else 'unquantized'}) "
        f"and {len(stages)} adapters in {load_seconds:.1f}s on {device}")
    templates = {BASE: tokenizer.chat_template, **{s.name: s.template for s in stages}}

    rubric_prompts = [[{"role": "system", "content": system_prompt}, {"role": "user", "content": q.question}]
                      for q in questions]
    prompts = rubric_prompts + [r["messages"] for r in references]
    home = {}  # each held-out conversation is scored with the template of the (first) stage that held it out
    for stage in stages:
        for conv in stage.eval_rows:
            home.setdefault(conv.content_hash, stage)
    models: dict[str, dict[str, Any]] = {}
    answers: dict[str, list[str]] = {}
    for name in [BASE] + [s.name for s in stages]:
        entry: dict[str, Any] = {"chat_template_sha256": hashlib.sha256(templates[name].encode()).hexdigest()}
        with active(model, name):
            loss_rows = []
            for stage in stages:
                mine = [c for c in held_out if home[c.content_hash] is stage]
                batch = stage.cfg.stages[stage.name].per_device_eval_batch_size
                loss_rows.extend(zip([c.content_hash for c in mine],
                                     conversation_losses(model, tokenizer, stage.template, mine, batch)))
            rows_by_hash = dict(loss_rows)
            entry["_loss_rows"] = [rows_by_hash[c.content_hash] for c in held_out]
            entry["eval_loss_by_split"] = {}
            for stage in stages:
                rows = [rows_by_hash[c.content_hash] for c in stage.eval_rows]
                if rows:
                    loss = pooled_loss(rows)
                    entry["eval_loss_by_split"][stage.name] = {
                        "loss": round(loss, 4), "perplexity": round(math.exp(loss), 4),
                        "conversations": len(rows), "tokens": int(sum(r[1] for r in rows))}
            log(f"[eval] {name}: held-out loss " + (", ".join(
                f"{s} {d['loss']:.4f}" for s, d in entry["eval_loss_by_split"].items()) or "n/a (no eval split)"))

            def progress(done: int, total: int, name: str = name) -> None:
                log(f"[eval] {name}: {done}/{total} answers")

            texts, counts, stats = generate_answers(model, tokenizer, templates[name], prompts, generation, progress)
        answers[name] = texts
        entry["_new_tokens"] = counts
        entry["throughput"] = stats.as_dict()
        models[name] = entry
        log(f"[eval] {name}: {stats.samples} answers in {stats.seconds:.1f}s "
            f"({stats.as_dict()['tokens_per_second']} new tokens/s)")
    del model

    # Score the answers
    n_q = len(questions)
    scores: dict[str, list[QuestionScore]] = {}
    for name, entry in models.items():
        texts = answers[name]
        scores[name] = [score_answer(q, a) for q, a in zip(questions, texts[:n_q])]
        metrics, intervals = answer_metrics(questions, scores[name], texts, texts[n_q:],
                                            [r["reference"] for r in references], entry.pop("_loss_rows"), seed)
        entry["metrics"], entry["intervals"] = metrics, intervals

    # The blind pairwise judge
    judge_results = None
    if judge_client is not None:
        judge_results = {"settings": judge.describe(), "per_adapter": {}}
        for stage in stages:
            log(f"[eval] judge: base vs {stage.name}, {n_q} questions x 2 orders")
            items = [(q.id, q.question, answers[BASE][i], answers[stage.name][i]) for i, q in enumerate(questions)]
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
        "splits": {s.name: {"conversations": len(s.eval_rows),
                            "tokens": models[BASE]["eval_loss_by_split"].get(s.name, {}).get("tokens", 0),
                            "sha256": s.lineage.get("split", {}).get("eval_sha256"),
                            "unavailable": s.split_problem} for s in stages},
        "judge": judge_results,
        "n": {"questions": n_q, "false_premise_questions": sum(q.false_premise for q in questions),
              "eval_conversations": len(held_out), "reference_prompts": len(references),
              "answers_per_model": len(prompts),
              "judged_questions": max((j["n"] for j in judge_results["per_adapter"].values()), default=0)
              if judge_results else 0},
        "settings": {
            "generation": generation.describe(), "seed": seed,
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
    _write_answers(out / "answers.jsonl", questions, references, answers, models, scores)
    from trainer.lineage import write_json

    write_json(results_path, results)
    plot_metrics(results, out / "metrics.png")
    plot_loss_curves(results, out / "loss_curves.png")
    (out / "report.md").write_text(render_report(results), encoding="utf-8")
    for stage in stages:
        record_in_lineage(stage, gates[stage.name], results_path, created)
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


def _write_answers(path: Path, questions, references, answers, models, scores) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for name, texts in answers.items():
            counts = models[name].pop("_new_tokens")
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
