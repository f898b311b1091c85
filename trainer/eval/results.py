"""results.json as types: what the phases of `trainer.eval.run` produce, what the report and the charts read.

Every record writes the keys results.json has always had, in the same order (`to_dict`), and reads them back
(`from_dict`), ignoring unknown keys; a key written only when it applies (a grounded throughput, the metrics without
contaminated items) is None here when absent. Metrics, intervals and paired comparisons stay dicts keyed by metric."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from trainer.eval import EvalError
from trainer.inference.model import BASE
from trainer.train.lineage import Record, known_fields


def _plain(value: Any) -> Any:
    """A record, or a dict or list holding records, as JSON values."""
    if isinstance(value, JsonRecord):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _one(cls) -> Callable[[Any, bool], Any]:
    return lambda data, strict=False: None if data is None else cls.from_dict(data, strict)


def _each(cls) -> Callable[[Any, bool], Any]:
    return lambda data, strict=False: {k: cls.from_dict(v, strict) for k, v in data.items()}


def _every(cls) -> Callable[[Any, bool], Any]:
    return lambda data, strict=False: [cls.from_dict(v, strict) for v in data]


class JsonRecord(Record):
    """A results.json part: a `Record` (the lineage's JSON records: fields in the declared order, unknown keys
    ignored) that leaves out the fields in OPTIONAL when unset, turns the records it holds into their types (NESTED)
    and can refuse a key it has no field for (`strict`)."""

    OPTIONAL: tuple[str, ...] = ()
    NESTED: dict[str, Callable[[Any, bool], Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)
                if f.name not in self.OPTIONAL or getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], strict: bool = False):
        """The record from its JSON. A file written by another version may hold keys this one does not know: they
        are ignored. With `strict` (a phase's own dict, as the eval builds results.json) such a key is an error, so
        a key added where a phase's dict is made cannot silently miss results.json (keys starting with `_` are the
        phase's own and never written)."""
        known = known_fields(cls, data)
        unknown = sorted(k for k in data if k not in known and not k.startswith("_"))  # `_x`: the phase's own
        if strict and unknown:
            raise TypeError(f"{cls.__name__} has no field for {unknown}: add it to trainer/eval/results.py")
        return cls(**{k: cls.NESTED[k](v, strict) if k in cls.NESTED else v for k, v in known.items()})


@dataclass
class Quantization(JsonRecord):
    """How the base was loaded here: 4-bit (its type, double quantization, compute dtype) or unquantized."""

    load_in_4bit: bool
    quant_type: str | None = None
    double_quant: bool | None = None
    compute_dtype: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() if self.load_in_4bit else {"load_in_4bit": False}


@dataclass
class Engine(JsonRecord):
    """What wrote the answers: the models loaded here (`local`) or a server (`openai`), with its served names."""

    name: str
    base_url: str | None = None
    models: dict[str, str] = field(default_factory=dict)
    api_key_env: str | None = None
    """The variable's name, never the key."""
    concurrency: int | None = None
    timeout_s: float | None = None
    repetition_penalty: str | None = None
    chat_template: str | None = None
    device: str | None = None
    """Where the models ran (local only)."""
    batch_size: int | None = None
    """Prompts per batch (local only)."""

    @property
    def local(self) -> bool:
        return self.name == "local"

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.local:
            return {k: out[k] for k in ("name", "device", "batch_size") if k == "name" or out[k] is not None}
        return {k: v for k, v in out.items() if k not in ("device", "batch_size")}


@dataclass
class Gate(JsonRecord):
    """One adapter's verdict (`trainer.eval.gate.gate_decision`, with the eval's notes in its summary)."""

    verdict: str
    passed: bool | None
    """True, False or None (inconclusive or not gated)."""
    summary: str
    failed: list[str] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)
    checks: dict[str, str | None] = field(default_factory=dict)
    margin: float | None = None
    n: int = 0
    items_needed: dict[str, int | None] = field(default_factory=dict)


@dataclass
class SplitLoss(JsonRecord):
    """One model's held-out loss on one stage's eval split."""

    loss: float
    perplexity: float
    conversations: int
    tokens: int


@dataclass
class Throughput(JsonRecord):
    """Answers and new tokens of one model's pass, in all and per second."""

    samples: int
    new_tokens: int
    seconds: float
    samples_per_second: float | None
    tokens_per_second: float | None


@dataclass
class LossReduction(JsonRecord):
    """A stage's training and eval loss, first to last logged, with the curves."""

    train_loss_first: float | None = None
    train_loss_last: float | None = None
    train_loss_reduction_pct: float | None = None
    eval_loss_first: float | None = None
    eval_loss_last: float | None = None
    eval_loss_reduction_pct: float | None = None
    optimizer_steps: int | None = None
    source: str = ""
    train_curve: list = field(default_factory=list)
    """[step, loss] pairs."""
    eval_curve: list = field(default_factory=list)


@dataclass
class ModelResult(JsonRecord):
    """The base's (or an adapter's) entry: template hash, held-out loss by split, throughput, metrics."""

    chat_template_sha256: str | None = None
    """Of the template the held-out loss was scored with (None when nothing loaded here)."""
    eval_loss_by_split: dict[str, SplitLoss] = field(default_factory=dict)
    throughput: Throughput | None = None
    throughput_grounded: Throughput | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, list[float]] = field(default_factory=dict)
    metrics_uncontaminated: dict[str, float] | None = None
    intervals_uncontaminated: dict[str, list[float]] | None = None

    OPTIONAL = ("chat_template_sha256", "throughput_grounded", "metrics_uncontaminated", "intervals_uncontaminated")
    NESTED = {"eval_loss_by_split": _each(SplitLoss), "throughput": _one(Throughput),
              "throughput_grounded": _one(Throughput)}

    def measured(self, clean: bool = False) -> tuple[dict[str, float], dict[str, list[float]]]:
        """(metrics, intervals) on every item, or on the uncontaminated ones."""
        if clean:
            return self.metrics_uncontaminated or {}, self.intervals_uncontaminated or {}
        return self.metrics, self.intervals


@dataclass
class AdapterResult(ModelResult):
    """An adapter's entry: its model result, the paired comparison with the base, its hash and loss reduction."""

    paired: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Adapter - base per metric, on the same items."""
    paired_uncontaminated: dict[str, dict[str, Any]] | None = None
    adapter_sha256: str | None = None
    loss_reduction: LossReduction = field(default_factory=LossReduction)

    OPTIONAL = ModelResult.OPTIONAL + ("paired_uncontaminated",)
    NESTED = {**ModelResult.NESTED, "loss_reduction": LossReduction.from_dict}

    def comparison(self, clean: bool = False) -> dict[str, dict[str, Any]] | None:
        """The paired comparison on every item, or on the uncontaminated ones."""
        return self.paired_uncontaminated if clean else self.paired


@dataclass
class SplitInfo(JsonRecord):
    """One stage's eval split: its size, its hash, and why it could not be measured (None when it was)."""

    conversations: int
    tokens: int
    sha256: str | None
    unavailable: str | None = None


@dataclass
class JudgeSummary(JsonRecord):
    """The pairwise judge on one adapter (`trainer.eval.judge.judge_pairs`): counts, rates, every verdict."""

    n: int
    wins: int
    ties: int
    losses: int
    invalid: int
    win_rate: float | None
    tie_rate: float | None
    loss_rate: float | None
    net: float | None
    win_rate_ci: list[float] | None
    loss_rate_ci: list[float] | None
    net_ci: list[float] | None
    judgements: int = 0
    verdict_letters: dict[str, int] = field(default_factory=dict)
    agreement: float | None = None
    """Share of items where both orders agree."""
    reliable: bool = False
    outcomes: list[int | None] = field(default_factory=list)
    per_question: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class JudgeResults(JsonRecord):
    """The judge's settings and its summary per adapter."""

    settings: dict[str, Any]
    per_adapter: dict[str, JudgeSummary] = field(default_factory=dict)

    NESTED = {"per_adapter": _each(JudgeSummary)}


@dataclass
class Contamination(JsonRecord):
    """Items and held-out conversations found in some stage's training rows (`check_contamination`)."""

    checked: bool
    threshold: float
    training_rows: int
    unchecked_stages: dict[str, str] = field(default_factory=dict)
    """Why a stage's training rows could not be re-read, by stage."""
    matches: list[dict[str, Any]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    conversations: list[str] = field(default_factory=list)


@dataclass
class GroundedModel(JsonRecord):
    """One model's metrics with KB passages in its prompt, and their paired difference with its plain answers."""

    metrics: dict[str, float]
    intervals: dict[str, list[float]]
    vs_ungrounded: dict[str, dict[str, Any]]


@dataclass
class Recall(JsonRecord):
    """Retrieval recall@k on the rubric questions that name KB entries."""

    k: int
    n: int
    recall: float | None
    per_question: list = field(default_factory=list)
    misses: list = field(default_factory=list)


@dataclass
class Grounded(JsonRecord):
    """With --grounded: the retrieval settings, the KB, and every model's grounded metrics."""

    settings: dict[str, Any]
    kb_version: dict[str, Any]
    index_seconds: float
    models: dict[str, GroundedModel]
    recall: Recall

    NESTED = {"models": _each(GroundedModel), "recall": Recall.from_dict}


@dataclass
class Counts(JsonRecord):
    """How many questions, prompts, conversations and answers the evaluation used (`n`)."""

    questions: int = 0
    false_premise_questions: int = 0
    prompts: int = 0
    prompts_with_reference: int = 0
    held_out_asked: bool = True
    eval_conversations: int = 0
    reference_prompts: int = 0
    answers_per_model: int = 0
    contaminated_items: int = 0
    judged_questions: int = 0


@dataclass
class Bootstrap(JsonRecord):
    """The intervals' bootstrap."""

    resamples: int
    confidence: float
    method: str


@dataclass
class GateRule(JsonRecord):
    """The gate's margin and rule, in words."""

    margin: float
    rule: str


@dataclass
class KBInfo(JsonRecord):
    """The knowledge base the live check (and retrieval) used."""

    path: str
    version: dict[str, Any]


@dataclass
class EvalSettings(JsonRecord):
    """What the evaluation ran with: decoding, bootstrap, gate, questions, KB, system prompt and the job."""

    generation: dict[str, Any]
    seed: int
    bootstrap: Bootstrap
    gate: GateRule
    pass_threshold: float
    markdown_rule: str
    questions_file: str
    questions_sha256: str
    questions_kind: str
    """`rubric` or `prompts` (an outside prompt set)."""
    questions_in_file: int
    limit: int | None
    skipped_prompt_rows: list[str]
    topics: list[str]
    kb: KBInfo
    system_prompt: str
    system_prompt_sha256: str
    job: dict[str, Any]

    NESTED = {"bootstrap": Bootstrap.from_dict, "gate": GateRule.from_dict, "kb": KBInfo.from_dict}


@dataclass
class RubricScore(JsonRecord):
    """One model's score on one rubric question."""

    score: float
    passed: bool
    claims: list[str]
    corrected: bool | None


@dataclass
class RubricRow(JsonRecord):
    """One rubric question and every model's score on it."""

    id: str
    topic: str
    false_premise: bool
    contaminated: bool
    scores: dict[str, RubricScore]

    NESTED = {"scores": _each(RubricScore)}


@dataclass
class EvalResults(JsonRecord):
    """The whole evaluation, as results.json holds it and report.md renders it."""

    run: str
    run_dir: str
    created: str
    base_model: str
    quantization: Quantization | None
    """None: nothing loaded here (a server's answers only)."""
    device: str
    engine: Engine | None
    gate: dict[str, Gate]
    base: ModelResult
    adapters: dict[str, AdapterResult]
    splits: dict[str, SplitInfo]
    judge: JudgeResults | None
    contamination: Contamination | None
    """None: not checked (--no-contamination)."""
    grounded: Grounded | None
    kb_check: dict[str, int]
    """Answers the live KB check flagged, per model."""
    n: Counts
    settings: EvalSettings
    rubric_by_question: list[RubricRow]
    load_seconds: float
    wall_seconds: float | None = None

    NESTED = {"quantization": _one(Quantization), "engine": _one(Engine), "gate": _each(Gate),
              "base": ModelResult.from_dict, "adapters": _each(AdapterResult), "splits": _each(SplitInfo),
              "judge": _one(JudgeResults), "contamination": _one(Contamination), "grounded": _one(Grounded),
              "n": Counts.from_dict, "settings": EvalSettings.from_dict, "rubric_by_question": _every(RubricRow)}

    @property
    def models(self) -> list[tuple[str, ModelResult]]:
        """The base, then every adapter, with their names."""
        return [(BASE, self.base), *self.adapters.items()]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], strict: bool = False) -> EvalResults:
        try:
            return super().from_dict(data, strict)
        except (AttributeError, KeyError, TypeError) as exc:
            raise EvalError(f"not an evaluation's results.json: {exc}") from None

    @classmethod
    def read(cls, path: str | Path) -> EvalResults:
        """A results.json on disk (EvalError naming the file when it is not one)."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, EvalError) as exc:
            raise EvalError(f"{path}: {exc}") from None
