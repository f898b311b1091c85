"""The settings of `eval` (`EvalJob`): one typed, frozen dataclass, the source of truth for each option.
`python -m trainer eval` builds its flags from these fields (`trainer.typed_yaml.flag` adds what a flag needs
beyond the field's name, type and docstring). A run is a YAML file (`configs/eval/*.yaml`); precedence, lowest
first: the defaults below, the file, `--set key=value`, then the flags typed on the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from trainer.eval.gate import DEFAULT_MARGIN
from trainer.inference.engine import ENGINE_KINDS
from trainer.inference.model import GenerationSettings
from trainer.providers import JUDGE_MAX_TOKENS
from trainer.train.rundir import ADAPTER_NAME
from trainer.typed_yaml import ConfigError, flag, flags_last, load_typed


@dataclass(frozen=True)
class EvalJob:
    """`python -m trainer eval`: every adapter of a run against its base."""

    run: str | None = flag(None, required=True)
    """Run directory, e.g. runs/demo."""
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
    engine: str = flag("local", choices=ENGINE_KINDS)
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
    adapter_served_name: str = ADAPTER_NAME
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
    judge_max_tokens: int = JUDGE_MAX_TOKENS
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


def _validate_eval(job: EvalJob) -> None:
    """Rules a type check cannot express; each error names the key."""
    for key in ("limit", "threads"):
        if getattr(job, key) is not None and getattr(job, key) < 1:
            raise ConfigError(f"{key}: must be at least 1 (or null for all), got {getattr(job, key)}")
    for key in ("max_new_tokens", "batch_size", "judge_max_tokens", "retrieval_k", "concurrency"):
        if getattr(job, key) < 1:
            raise ConfigError(f"{key}: must be at least 1, got {getattr(job, key)}")
    if job.engine not in ENGINE_KINDS:
        raise ConfigError(f"engine: {job.engine!r} must be one of {', '.join(ENGINE_KINDS)}")
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


def load_eval_job(path: str | Path | None, overrides: Sequence[str] = (),
                  flags: Mapping[str, Any] | None = None) -> EvalJob:
    """`eval`'s settings: defaults, then the YAML at `path` (if any), `--set` overrides, then typed flags."""
    return load_typed(EvalJob, path, overrides, prepare=flags_last(flags), validate=_validate_eval,
                      what="eval settings")
