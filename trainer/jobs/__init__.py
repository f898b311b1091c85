"""The jobs the command line runs across floors, and their settings: `generate` (`SynthJob`, and its run in
`trainer.jobs.synth`); `eval`'s settings live on the eval floor (`trainer.eval.job.EvalJob`) and are named here
too, so the two commands read alike. Each is one typed, frozen dataclass, the source of truth for each option:
`python -m trainer` builds each command's flags from its fields: `--field-name`, typed by the annotation, its help
the field's docstring; a bool is a `--x/--no-x` switch. A field made with `flag(...)` adds what its flag needs
beyond that (`name`, `metavar`, `choices`).

A run is a YAML file (`configs/synth/*.yaml`, `configs/eval/*.yaml`) read through `trainer.typed_yaml`, so a new
experiment is a file, not a longer command line. Precedence, lowest first: the defaults below, the file, `--set
key=value`, then the flags typed on the command line. Relative paths are taken from the working directory, as
the flags' are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from trainer.train.demo_model import DEMO_MODEL_NAME
from trainer.eval.job import EvalJob, load_eval_job  # noqa: F401  (eval's own settings)
from trainer.providers import JUDGE_MAX_TOKENS
from trainer.typed_yaml import ConfigError, flag, flags_last, load_typed


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
    followups: str = "data/seed/followups.yaml"
    """The follow-up questions conversations ask after the first, by topic and general: write them in your students'
    words."""
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


def load_synth_job(path: str | Path | None, overrides: Sequence[str] = (),
                   flags: Mapping[str, Any] | None = None) -> SynthJob:
    """`generate`'s settings: defaults, then the YAML at `path` (if any), `--set` overrides, then typed flags."""
    return load_typed(SynthJob, path, overrides, prepare=flags_last(flags), validate=_validate_synth,
                      what="generate settings")


# The other commands' settings: flags only (no settings file), each field one flag with its docstring as the help.

_SET = dict(name="set", action="append", metavar="KEY=VALUE")


@dataclass(frozen=True)
class TrainJob:
    """`python -m trainer train`: train one stage or the whole pipeline."""

    config: str = flag(None, required=True)
    """Pipeline YAML, e.g. configs/demo.yaml."""
    overrides: tuple[str, ...] = flag((), **_SET)
    """Dotted override, repeatable: --set stages.stage2.learning_rate=1e-4."""
    stage: str = "all"
    """Stage name from the config (stage1, stage2) or all."""
    resume: bool = False
    """Skip finished stages and continue an interrupted one from its last checkpoint."""


@dataclass(frozen=True)
class ValidateJob:
    """`python -m trainer validate`: check a config and its data without training."""

    config: str = flag(None, required=True)
    """Pipeline YAML, e.g. configs/demo.yaml."""
    overrides: tuple[str, ...] = flag((), **_SET)
    """Dotted override, repeatable: --set stages.stage2.learning_rate=1e-4."""


@dataclass(frozen=True)
class PlanJob:
    """`python -m trainer plan`: precision, kernels and peak memory of each stage, without loading a model."""

    config: str = flag(None, required=True)
    """Pipeline YAML, e.g. configs/demo.yaml."""
    overrides: tuple[str, ...] = flag((), **_SET)
    """Dotted override, repeatable: --set stages.stage2.learning_rate=1e-4."""
    gpu: str | None = flag(None, metavar="NAME")
    """Plan for this card instead of this machine's: t4, p100, v100, v100-32gb, l4, a10g, rtx3060, rtx4090,
    a100-40gb, a100-80gb, h100, h200, zero-gpu."""
    memory: float | None = flag(None, metavar="GB")
    """The device's memory in GB (GiB as torch reports it), e.g. for a card not in the table; with --gpu, overrides
    the table's."""
    fit: bool = False
    """Pick each stage's batch size and accumulation steps that keep its global batch and fit (as auto_fit: true does
    in train)."""
    json: bool = False
    """Print one JSON object."""


@dataclass(frozen=True)
class PushJob:
    """`python -m trainer push`: publish a run's adapters, datasets and Space to the Hugging Face Hub."""

    run: str = flag(None, required=True)
    """Run directory, e.g. runs/demo."""
    stage: tuple[str, ...] = flag((), action="append")
    """Stage to push, repeatable (none given: every finished stage)."""
    namespace: str | None = None
    """User or organisation (null: the token's user)."""
    private: bool = False
    """Create the repos as private."""
    revision: str | None = None
    """Branch to push to (created if missing; null: main)."""
    dry_run: bool = False
    """Write the exact folders and print the plan; no upload."""
    out: str | None = None
    """Where --dry-run (and the upload) stage the folders (null: <run>/push)."""
    force: bool = False
    """Publish adapters that failed evaluation (the card says so)."""
    no_datasets: bool = flag(False, action="store_true")
    """Do not export the training data."""
    no_space: bool = flag(False, action="store_true")
    """Do not push the Space."""
    endpoint: str | None = None
    """Hub endpoint (null: HF_ENDPOINT or huggingface.co)."""
    space_hardware: str = flag("t4-small", choices=("t4-small", "zero-gpu", "cpu-basic"))
    """The hardware the Space is written for: README header and requirements.txt (docs/publishing.md)."""


@dataclass(frozen=True)
class AuditJob:
    """`python -m trainer audit`: audit a dataset file against the rules and the knowledge base."""

    file: str = flag(None, positional=True)
    """JSONL/JSON/Parquet/CSV file (or .gz) or folder, any supported schema."""
    kb: str | None = None
    """Knowledge base folder (null: the one shipped with the tool, data/kb)."""
    no_kb: bool = flag(False, action="store_true")
    """Audit without the knowledge base (the report says so)."""
    out: str | None = None
    """Write audit.jsonl, audit.md and summary.json here."""
    near_duplicate: float = 0.8
    """Similarity threshold from which two rows count as near-duplicates."""
    against: str | None = flag(None, metavar="OTHER")
    """Also list the rows found, exactly or nearly, in OTHER (any data file or folder): whole conversations and user
    messages, with file:line on both sides."""
    judge_base_url: str | None = flag(None, name="judge", aliases=("--judge-base-url",), metavar="URL")
    """Ask an LLM judge at this OpenAI-compatible endpoint about every row, and report where it and the KB rules
    disagree."""
    judge_model: str | None = None
    """The judge's model name at that endpoint."""
    judge_api_key_env: str = "JUDGE_API_KEY"
    """Environment variable holding the judge's API key (only its name is ever written)."""
    judge_max_tokens: int = JUDGE_MAX_TOKENS
    """Tokens the judge may answer with."""


@dataclass(frozen=True)
class CheckJob:
    """`python -m trainer check`: the false premises the KB corrects in another system's questions, and whether each
    answer carries the correction."""

    file: str = flag(None, positional=True)
    """CSV (header `question`, optional `answer`) or JSONL ({"question", "answer"}) file."""
    kb: str | None = None
    """Knowledge base folder (null: the one shipped with the tool, data/kb)."""
    json: bool = False
    """Print one JSON object per row, then the summary object."""


@dataclass(frozen=True)
class ServeJob:
    """`python -m trainer serve`: print (or, with --start, run vLLM with) the command serving a run's adapters."""

    run: str = flag(None, required=True)
    """Run directory, e.g. runs/demo."""
    stage: tuple[str, ...] = flag((), action="append")
    """Stage to serve, repeatable (none given: every finished stage)."""
    gpu: str | None = flag(None, metavar="NAME")
    """The card the printed commands will run on (t4, p100, a100-80gb, ...: see `plan --gpu`): its dtype, float16
    before Ampere (null: bfloat16 with a note)."""
    start: bool = False
    """Start vLLM here (scripts/vllm.sh: the CPU build in .venv-vllm, made on first use) instead of printing the
    commands."""


@dataclass(frozen=True)
class ExportJob:
    """`python -m trainer export-feedback`: turn the app's labelled feedback into stage-2 data."""

    store: str = "data/feedback/feedback.sqlite"
    """Feedback SQLite file, or a folder of the JSONL records the Space pushed to the Hub."""
    out: str = "data/feedback/export"
    """Output folder (sft/kto/dpo JSONL and the card)."""
    no_system_prompt: bool = flag(False, action="store_true")
    """Leave the system prompt out of the rows (needed for KTO/DPO with Mistral-Instruct)."""
