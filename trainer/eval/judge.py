"""The blind pairwise judge: any OpenAI-compatible endpoint compares base and adapter answers in both orders."""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from trainer.eval import EvalError
from trainer.eval.stats import BOOTSTRAP_RESAMPLES, bootstrap_ci

JUDGE_API_KEY_ENV = "JUDGE_API_KEY"

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
    (`trainer.providers.OpenAICompatibleProvider`: huggingface_hub's InferenceClient, retries on 429/5xx, and the named
    endpoint let through when HF_HUB_OFFLINE is set). The API key is read from the named environment variable and
    never logged."""

    def __init__(self, settings: JudgeSettings, sleep: Callable[[float], None] = time.sleep):
        from trainer.providers import OpenAICompatibleProvider

        self.settings = settings
        self.provider = OpenAICompatibleProvider(settings.base_url, settings.model,
                                                 api_key=os.environ.get(settings.api_key_env) or None,
                                                 timeout=settings.timeout, max_retries=settings.max_retries,
                                                 sleep=sleep)

    def ask(self, question: str, answer_a: str, answer_b: str) -> str:
        """The judge's raw reply for one ordered pair (A shown first)."""
        from trainer.providers import ProviderError

        messages = [{"role": "system", "content": JUDGE_SYSTEM},
                    {"role": "user", "content": JUDGE_TEMPLATE.format(question=question, a=answer_a, b=answer_b)}]
        try:
            reply, _ = self.provider.complete(messages, max_tokens=self.settings.max_tokens, temperature=0.0)
        except ProviderError as exc:
            raise EvalError(f"judge {exc}") from None
        return reply


MIN_AGREEMENT = 2 / 3
"""A judge whose two orders (A/B swapped) agree on fewer than this share of items is reported as unreliable and does
not decide the gate: it disagrees with itself on more than a third of the questions."""


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
    agreement = consistent / both_valid if both_valid else None
    return summarize_judgements(outcomes, seed=seed, resamples=resamples) | {
        "judgements": len(jobs), "verdict_letters": {str(k): v for k, v in letters.items()},
        "agreement": agreement,
        "reliable": agreement is not None and agreement >= MIN_AGREEMENT,
        "outcomes": [{"adapter": 1, "base": -1, "tie": 0}.get(o) for o in outcomes],
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
