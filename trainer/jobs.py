"""The settings of `generate` and `eval`: one typed, frozen dataclass per command, the source of truth for each
option. `python -m trainer` builds each command's flags from these fields: `--field-name`, typed by the annotation,
its help the field's docstring; a bool is a `--x/--no-x` switch. A field made with `flag(...)` adds what its flag
needs beyond that (`name`, `metavar`, `choices`).

A run is a YAML file (`configs/synth/*.yaml`, `configs/eval/*.yaml`) read through `trainer.typed_yaml`, so a new
experiment is a file, not a longer command line. Precedence, lowest first: the defaults below, the file, `--set
key=value`, then the flags typed on the command line. Relative paths are taken from the working directory, as
the flags' are.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from trainer.eval.gate import DEFAULT_MARGIN
from trainer.inference.model import GenerationSettings
from trainer.train.demo_model import DEMO_MODEL_NAME
from trainer.typed_yaml import ConfigError, load_typed


def flag(default: Any, **options: Any) -> Any:
    """A field's default plus what its command-line flag needs beyond the field's name, type and docstring:
    `name` (the flag's stem, when it is not the field's name), `metavar` or `choices` (as argparse takes them)."""
    return field(default=default, metadata={"flag": options})


@dataclass(frozen=True)
class SynthJob:
    """`python -m trainer generate`: grounded synthetic dialogues for stage 1."""

    n: int = 50
    """Conversations to generate."""
    out: str = "data/synth/run"
    """Output folder; re-running the same settings resumes it."""
    kb: str = "data/kb"
    """Knowledge base folder: the facts each conversation is grounded in."""
    exemplars: str | None = "data/seed/stage1_grounded.jsonl"
    """Hand-written seed dialogues shown as few-shot style examples (null or '' for none)."""
    base_url: str | None = None
    """OpenAI-compatible endpoint; null runs the local model in-process, offline."""
    model: str | None = None
    """Model name at the endpoint, or a local model for the offline provider (null: the demo model)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's API key (only its name is ever written)."""
    timeout: float = 120.0
    """Seconds per request to the endpoint."""
    concurrency: int | None = None
    """Parallel requests (null: 4); local model: conversations per batch (null: 8)."""
    max_tokens: int | None = None
    """Tokens per answer (null: 400 at an endpoint, 160 for the local model)."""
    temperature: float = 0.7
    """Sampling temperature of the generator."""
    exchanges: tuple[int, ...] = flag((4, 6), metavar=("MIN", "MAX"))
    """Fewest and most question-answer exchanges per conversation (4 6, like StudyAbroadGPT)."""
    false_premise_share: float = 0.1
    """Share of deliberate false-premise questions, built from the KB's negatives."""
    eval_fraction: float = 0.1
    """Share of the conversations that pass the audit held out as the eval split."""
    seed: int = 3407
    """Seed of the prompt plan and the split."""
    price_in: float = 0.0
    """Price per million prompt tokens, for the cost estimate."""
    price_out: float = 0.0
    """Price per million completion tokens, for the cost estimate."""
    judge: bool = False
    """Also ask the provider to judge each answer against its KB facts."""
    source: str | None = None
    """File the settings were read from (set by the loader, not by YAML)."""

    def resolved(self) -> SynthJob:
        """The settings with each null filled in for where the answers come from, as the fields above say: at an
        endpoint (`base_url`) 4 requests in flight and 400 tokens per answer; locally the demo model, 8
        conversations per batch and 160 tokens per answer."""
        if self.base_url:
            return replace(self, concurrency=self.concurrency or 4, max_tokens=self.max_tokens or 400)
        return replace(self, model=self.model or DEMO_MODEL_NAME, concurrency=self.concurrency or 8,
                       max_tokens=self.max_tokens or 160)


EVAL_ENGINES = ("local", "openai")
"""Who writes the eval's answers: the models loaded in-process, or an OpenAI-compatible server."""


@dataclass(frozen=True)
class EvalJob:
    """`python -m trainer eval`: every adapter of a run against its base."""

    questions: str | None = None
    """Rubric YAML, or an outside prompt set (CSV/JSONL/JSON/Parquet with a `prompt` or `question` column) that is
    judged but not scored (null: the shipped data/eval/questions.yaml)."""
    held_out: bool | None = None
    """Also answer one prompt per assistant turn of every stage's eval split and measure its loss (null: yes with a
    rubric; no with an outside prompt set, so its report is about those prompts alone)."""
    limit: int | None = None
    """Use at most N rubric questions (or prompts) and N held-out prompts, a quick check (null: all)."""
    max_new_tokens: int = GenerationSettings.max_new_tokens
    """Answer length cap (greedy decoding)."""
    batch_size: int = 8
    """Prompts per generate() call, left-padded (engine: local)."""
    engine: str = flag("local", choices=EVAL_ENGINES)
    """Who writes the answers: `local` loads the base and every adapter here; `openai` asks an OpenAI-compatible server
    (vLLM, TGI, `transformers serve`) at base_url, many requests at once. The held-out loss is computed here either
    way (the base loads here only for it)."""
    base_url: str | None = None
    """engine: openai: the server's OpenAI-compatible root, e.g. http://127.0.0.1:8000/v1."""
    api_key_env: str | None = None
    """engine: openai: environment variable holding the server's API key (null: no key; only its name is written)."""
    base_served_name: str | None = None
    """engine: openai: the base's `model` name on the server (null: the run's base as `serve` hands it to vLLM, the
    Hub id for the demo model)."""
    adapter_served_name: str = "{run}/{stage}"
    """engine: openai: each adapter's `model` name on the server; {run} is the run folder's name, {stage} the stage
    (as the app names a run's adapters and `vllm --lora-modules demo/stage1=...` serves them)."""
    concurrency: int = 16
    """engine: openai: requests in flight at once; the server batches them (more: faster, until the server is full)."""
    timeout: float = 600.0
    """engine: openai: seconds to wait for one answer before retrying it."""
    send_repetition_penalty: bool = True
    """engine: openai: send the local decoding's repetition penalty as the request's `repetition_penalty` (vLLM takes
    it; false leaves the server's default, for servers such as `transformers serve` that refuse unknown fields)."""
    load_in_4bit: bool | None = flag(None, name="4bit")
    """Load the base in 4-bit (null: as the run trained; false: unquantized even if the run trained in 4-bit)."""
    threads: int | None = None
    """CPU threads for PyTorch (null: the run's torch_threads)."""
    out: str | None = None
    """Output folder (null: <run>/eval)."""
    judge_base_url: str | None = None
    """OpenAI-compatible endpoint of the blind pairwise judge (null: no judge)."""
    judge_model: str | None = None
    """Model name at the judge endpoint."""
    judge_api_key_env: str = "JUDGE_API_KEY"
    """Environment variable holding the judge's API key (only its name is ever written)."""
    judge_max_tokens: int = 96
    """Room for the judge's verdict and reason."""
    margin: float = DEFAULT_MARGIN
    """Non-inferiority margin of the gate: how much worse than the base (on rates, 0.05 = five points) an adapter
    may be and still pass."""
    contamination: bool = True
    """Check every eval question and held-out conversation against every stage's training rows, and report the
    metrics with the contaminated ones excluded too."""
    contamination_threshold: float = 0.8
    """Estimated Jaccard similarity (byte 8-grams) from which an item counts as a near-copy of a training row."""
    grounded: bool = False
    """Also answer every question with the knowledge base's retrieved passages in the prompt, for base and every
    adapter, and report whether grounding helped (and retrieval recall@k)."""
    retrieval_k: int = 5
    """Passages retrieved per question when grounded."""
    kb: str = "data/kb"
    """Knowledge base for the live answer check (and retrieval); relative paths are tried from the working
    directory, then from the tool's own folder."""
    seed: int = 3407
    """Seeds generation and the bootstrap."""
    source: str | None = None
    """File the settings were read from (set by the loader, not by YAML)."""


def _validate_synth(job: SynthJob) -> None:
    """Rules a type check cannot express; each error names the key."""
    if job.n < 1:
        raise ConfigError(f"n: must be at least 1, got {job.n}")
    if len(job.exchanges) != 2 or not 1 <= job.exchanges[0] <= job.exchanges[1] <= 6:
        raise ConfigError(f"exchanges: need 1 <= MIN <= MAX <= 6, got --exchanges "
                          f"{' '.join(str(e) for e in job.exchanges)}")
    if not 0 <= job.false_premise_share <= 1:
        raise ConfigError(f"false_premise_share: must be in [0, 1], got {job.false_premise_share}")
    if not 0 <= job.eval_fraction < 1:
        raise ConfigError(f"eval_fraction: must be in [0, 1), got {job.eval_fraction}")
    for key in ("concurrency", "max_tokens"):
        if getattr(job, key) is not None and getattr(job, key) < 1:
            raise ConfigError(f"{key}: must be at least 1 (or null for the default), got {getattr(job, key)}")
    if job.timeout <= 0:
        raise ConfigError(f"timeout: must be positive, got {job.timeout}")
    for key in ("temperature", "price_in", "price_out"):
        if getattr(job, key) < 0:
            raise ConfigError(f"{key}: must be 0 or more, got {getattr(job, key)}")


def _validate_eval(job: EvalJob) -> None:
    """Rules a type check cannot express; each error names the key."""
    for key in ("limit", "threads"):
        if getattr(job, key) is not None and getattr(job, key) < 1:
            raise ConfigError(f"{key}: must be at least 1 (or null for all), got {getattr(job, key)}")
    for key in ("max_new_tokens", "batch_size", "judge_max_tokens", "retrieval_k", "concurrency"):
        if getattr(job, key) < 1:
            raise ConfigError(f"{key}: must be at least 1, got {getattr(job, key)}")
    if job.engine not in EVAL_ENGINES:
        raise ConfigError(f"engine: {job.engine!r} must be one of {', '.join(EVAL_ENGINES)}")
    if job.engine == "openai" and not job.base_url:
        raise ConfigError("base_url: engine openai needs the server's address, e.g. --base-url "
                          "http://127.0.0.1:8000/v1")
    if job.timeout <= 0:
        raise ConfigError(f"timeout: must be positive, got {job.timeout}")
    try:
        job.adapter_served_name.format(run="run", stage="stage")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"adapter_served_name: {job.adapter_served_name!r} may name only {{run}} and {{stage}} "
                          f"({type(exc).__name__}: {exc})") from None
    if not 0 <= job.margin < 1:
        raise ConfigError(f"margin: must be in [0, 1), got {job.margin}")
    if not 0 < job.contamination_threshold <= 1:
        raise ConfigError(f"contamination_threshold: must be in (0, 1], got {job.contamination_threshold}")


def _then(flags: Mapping[str, Any] | None):
    """A `prepare` step that lays the typed flags over the file and the --set overrides (flags win)."""
    def prepare(raw: dict[str, Any]) -> None:
        raw.update(flags or {})
    return prepare


def load_synth_job(path: str | Path | None, overrides: Sequence[str] = (),
                   flags: Mapping[str, Any] | None = None) -> SynthJob:
    """`generate`'s settings: defaults, then the YAML at `path` (if any), `--set` overrides, then typed flags."""
    return load_typed(SynthJob, path, overrides, prepare=_then(flags), validate=_validate_synth,
                      what="generate settings")


def load_eval_job(path: str | Path | None, overrides: Sequence[str] = (),
                  flags: Mapping[str, Any] | None = None) -> EvalJob:
    """`eval`'s settings: defaults, then the YAML at `path` (if any), `--set` overrides, then typed flags."""
    return load_typed(EvalJob, path, overrides, prepare=_then(flags), validate=_validate_eval,
                      what="eval settings")
