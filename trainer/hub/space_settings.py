"""The Space's settings (`space_config/space.yaml`): which base to serve, which adapters, the limits a public demo
needs, and the feedback store. Read through `trainer.typed_yaml` like every other settings file; `push` writes the
Space bundle's `space.yaml` from these same types (`space_config_yaml`), so what it writes always loads."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from trainer.data.settings import TOPICS
from trainer.inference.engine import ENGINE_KINDS
from trainer.inference.model import DECODE_MODES, DEFAULT_SYSTEM_PROMPT, GenerationSettings
from trainer.typed_yaml import ConfigError, dump_yaml, item_where, load_typed, to_plain



DEFAULT_EXAMPLES = (
    "Which documents do I need for a student visa application?",
    "How do I write a strong statement of purpose for a master's in data science?",
    "What scholarships can an international undergraduate apply for, and when?",
    "How much should I budget per month for living costs as a student in Germany?",
    "How do I find safe student housing before I arrive?",
    "Is health insurance compulsory for international students in Australia?",
    "How many hours can I work per week on a student visa in Canada?",
    "Which admission tests do US graduate programmes usually ask for?",
    "Will a degree from abroad help my career when I return home?",
)


@dataclass(frozen=True)
class AdapterEntry:
    """One adapter to offer, from a local folder or a Hub repo."""

    name: str
    """Label shown in the app; letters, digits, `-`, `_`, `.` and `/`."""
    path: str | None = None
    """Local adapter folder (e.g. runs/demo/stage2/adapter)."""
    repo: str | None = None
    """Hub model repo holding the adapter."""
    revision: str | None = None
    """Branch, tag or commit of `repo`."""
    subfolder: str | None = None
    """Folder inside `repo` that holds the adapter files."""
    description: str = ""
    """One line shown next to the adapter in the app."""
    ground: bool | None = None
    """Ground this adapter's answers in the knowledge base by default (null: `grounding.enabled`)."""
    served_name: str | None = None
    """With `engine: openai`: the `model` name the server serves this adapter under (null: `name`), e.g. the name
    in vLLM's `--lora-modules name=repo`. Without path and repo the adapter lives on the server only."""


@dataclass(frozen=True)
class LimitSettings:
    """What a public demo bounds: question length, history, concurrency, answer length."""

    max_input_chars: int = 2000
    """Longest question accepted; longer ones get a message, not a truncated answer."""
    max_history_turns: int = 6
    """Earlier question/answer pairs kept in the prompt; older ones are dropped with a notice."""
    concurrency: int = 1
    """Generations running at once (they share one base model, so 1 is right for one GPU or CPU)."""
    queue_size: int = 32
    """Visitors waiting beyond the running ones; more are turned away with a message."""
    max_new_tokens_limit: int = 1024
    """Upper bound of the answer-length slider (`generation.max_new_tokens` is where it starts)."""
    max_turn_chars: int = 20000
    """Longest message a client may send back in the history (a question, an answer or a note the app wrote); a longer
    one is refused in one line before anything is generated, so no client can hold the generation slot with it."""
    max_history_messages: int = 200
    """Most messages (questions, answers, notes) a client may send back as history."""
    max_system_prompt_chars: int = 4000
    """Longest system prompt a visitor's copy may have."""
    max_feedback_chars: int = 4000
    """Longest feedback comment, and longest suggested answer, that is stored."""
    max_prompt_chars: int = 48000
    """Longest whole prompt (system prompt, the history kept and the question), in characters, for every engine:
    older exchanges are dropped with the notice until it fits; a question that does not fit alone is refused."""
    max_prompt_tokens: int = 0
    """Most prompt tokens, where the engine can count them (`engine: local`); 0: the base model's context length minus
    the answer's max_new_tokens. Older exchanges are dropped with the notice until the prompt fits."""


DEFAULT_CONSENT = (
    "I agree that this conversation, with personal details such as emails, phone numbers, ID numbers and addresses "
    "removed, may be stored and reviewed to improve this counsellor. No name or account is attached to it."
)


@dataclass(frozen=True)
class FeedbackSettings:
    """Ratings and corrections from visitors: consent, where they are stored, who reviews them."""

    enabled: bool = True
    """Offer ratings, comments and suggested answers (stored only with consent)."""
    store: str = "data/feedback/feedback.sqlite"
    """SQLite file on local disk (on a Space with persistent storage, put it under /data)."""
    consent_text: str = DEFAULT_CONSENT
    """The consent checkbox's text; nothing is stored unless it is ticked."""
    hub_dataset: str | None = None
    """Private Hub dataset that receives every record as JSONL (via CommitScheduler), e.g. my-org/feedback."""
    every_minutes: float = 10.0
    """How often the JSONL files are committed to `hub_dataset`."""
    reviewers: tuple[str, ...] = ()
    """Hugging Face usernames allowed into the labelling tab (on a Space, through OAuth)."""
    token_env: str = "LABELLING_TOKEN"
    """Environment variable holding the local reviewer token (open the app with ?token=...)."""
    topics: tuple[str, ...] = TOPICS
    """Topic tags offered to reviewers."""


@dataclass(frozen=True)
class GroundingSettings:
    """Answers grounded in the knowledge base, with their sources, and checked against it before they are final."""

    enabled: bool = True
    """Put the KB passages retrieved for each question into the prompt and show them as numbered sources (visitors
    can switch it off; each adapter may set its own default with `ground`)."""
    kb: str = "data/kb"
    """Knowledge base folder; relative paths are tried from the working directory, then from the app's folder."""
    k: int = 5
    """Passages per question: more context and sources, longer prompts (slower first token)."""
    check_answers: bool = True
    """Run the audit's KB rules on every finished answer and show a warning naming the contradicted fact."""
    check_premises: bool = True
    """Find the false premises of each question in the KB (whenever it is loaded, grounded or not): show the correcting
    fact and its source under the answer, put it first in a grounded prompt, and (with `check_answers`) warn when the
    answer does not carry it."""



@dataclass(frozen=True)
class OpenAIEngineSettings:
    """`engine: openai`: answers stream from an OpenAI-compatible server (vLLM, TGI, `transformers serve`), the
    adapter chosen by the request's `model` field. The chat template is the server's."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """The server's OpenAI-compatible root (ending in /v1)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (null: no key). The key itself is never written to a
    file, a log or a feedback record."""
    base_served_name: str | None = None
    """The `model` name of the base without adapter (null: `base_model`, which must then not be `auto`)."""
    timeout_s: float = 60.0
    """Longest wait for the server: to connect, and between two tokens. Past it the visitor gets a message."""


@dataclass(frozen=True)
class SpaceConfig:
    """Everything the app reads from `space_config/space.yaml`."""

    engine: str = "local"
    """`local`: the base and adapters load in this process (transformers + PEFT); `openai`: an OpenAI-compatible
    server generates (settings under `openai`)."""
    openai: OpenAIEngineSettings = field(default_factory=OpenAIEngineSettings)
    """Where the `openai` engine's server is; ignored by `engine: local`."""
    base_model: str = "auto"
    """`auto` (Mistral-7B-Instruct-v0.3 on a GPU, the embedded demo model on a CPU), a Hub id, folder or demo name."""
    base_revision: str | None = None
    """Hub revision of the base model."""
    load_in_4bit: bool = True
    """Serve the base in 4-bit NF4 (GPU or CPU); false loads it unquantized: bf16 on Ampere and newer GPUs, fp16 on
    older ones (T4, V100, P100), fp32 on a CPU."""
    decode: str = "auto"
    """`engine: local`: `compiled` decodes with a static KV cache and a torch.compile'd step, adapters hot-swapped into
    one compiled slot (faster tokens; compiling adds a minute or two to start-up); `eager` op by op; `auto` compiled
    where Triton runs (a CUDA GPU of compute capability 7.0 or newer), eager elsewhere (a CPU, a P100, ZeroGPU,
    where nothing can be compiled before a visitor's call); `compiled` on a GPU below 7.0 decodes eagerly, saying
    why."""
    decode_cache_tokens: int = 2048
    """`decode: compiled`: prompt plus answer tokens the static KV cache holds; longer conversations decode eagerly
    (more memory per visitor on one side, more eager fallbacks on the other)."""
    runs_dir: str = "runs"
    """Folder searched for trained adapters (`<run>/<stage>/adapter`), offered as `<run>/<stage>`."""
    discover_runs: bool = True
    """Offer the adapters found in `runs_dir` too (`engine: local` only: a server does not have this machine's
    run folders)."""
    adapters: tuple[AdapterEntry, ...] = ()
    """Adapters to offer, from a local folder or a Hub repo."""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    """Counselling system prompt (visitors can edit their own copy)."""
    examples: tuple[str, ...] = DEFAULT_EXAMPLES
    """Example questions offered under the chat box."""
    limits: LimitSettings = field(default_factory=LimitSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    """Default decoding settings; visitors move temperature, top-p and the answer length within `limits`."""
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    grounding: GroundingSettings = field(default_factory=GroundingSettings)
    source: str | None = None
    """File the settings were read from."""


_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _validate_openai(cfg: SpaceConfig) -> None:
    """The `openai` engine's rules; each error names the key."""
    remote = cfg.openai
    if not re.match(r"^https?://[^/\s]+", remote.base_url):
        raise ConfigError(f"openai.base_url: {remote.base_url!r} is not an http(s) URL "
                          "(e.g. http://127.0.0.1:8000/v1)")
    if remote.api_key_env is not None and not _ENV_NAME.match(remote.api_key_env):
        # the value is not echoed: a key pasted here by mistake must not reach a log
        raise ConfigError("openai.api_key_env: must be the NAME of an environment variable (letters, digits, _; "
                          "e.g. VLLM_API_KEY), never the key itself")
    if remote.timeout_s <= 0:
        raise ConfigError(f"openai.timeout_s: must be positive, got {remote.timeout_s:g}")
    if remote.base_served_name is None and cfg.base_model == "auto":
        raise ConfigError("openai.base_served_name: set it (or base_model) to the base model's name on the server")


def _validate_space(cfg: SpaceConfig) -> None:
    """Rules a type check cannot express; each error names the key."""
    seen: set[str] = set()
    for i, entry in enumerate(cfg.adapters):
        where = item_where("adapters", i, {"name": entry.name})
        if not _ADAPTER_NAME.match(entry.name) or entry.name.lower() == "base":
            raise ConfigError(f"{where}.name: {entry.name!r} must be 1-64 letters, digits, - _ . / "
                              "and not 'base' (the base model's own entry)")
        if entry.name in seen:
            raise ConfigError(f"{where}.name: {entry.name!r} is used twice")
        seen.add(entry.name)
        both, neither = entry.path is not None and entry.repo is not None, entry.path is None and entry.repo is None
        if both or (neither and cfg.engine != "openai"):
            raise ConfigError(f"{where}: set exactly one of path (local folder) or repo (Hub repo)" + (
                ", or neither for an adapter that lives on the server only" if cfg.engine == "openai" else ""))
        if entry.served_name is not None and not entry.served_name.strip():
            raise ConfigError(f"{where}.served_name: must not be blank (null means the adapter's name)")
        if entry.path is not None and (entry.revision or entry.subfolder):
            raise ConfigError(f"{where}: revision and subfolder apply to a Hub repo, not to a local path")
    if cfg.engine not in ENGINE_KINDS:
        raise ConfigError(f"engine: {cfg.engine!r} must be one of {', '.join(ENGINE_KINDS)}")
    if cfg.engine == "openai":
        _validate_openai(cfg)
    if cfg.decode not in DECODE_MODES:
        raise ConfigError(f"decode: {cfg.decode!r} must be one of {', '.join(DECODE_MODES)}")
    if cfg.decode == "compiled" and cfg.decode_cache_tokens <= cfg.limits.max_new_tokens_limit:
        raise ConfigError(f"decode_cache_tokens: {cfg.decode_cache_tokens} must be larger than "
                          f"limits.max_new_tokens_limit ({cfg.limits.max_new_tokens_limit}): the cache holds the "
                          "prompt and the answer")
    if not 1 <= cfg.grounding.k <= 20:
        raise ConfigError(f"grounding.k: must be between 1 and 20, got {cfg.grounding.k}")
    lim = cfg.limits
    for key in ("max_input_chars", "concurrency", "queue_size", "max_new_tokens_limit"):
        if getattr(lim, key) < 1:
            raise ConfigError(f"limits.{key}: must be at least 1")
    if lim.max_history_turns < 0:
        raise ConfigError("limits.max_history_turns: must be 0 or more")
    if cfg.feedback.every_minutes <= 0:
        raise ConfigError("feedback.every_minutes: must be positive")
    if cfg.feedback.hub_dataset is not None and cfg.feedback.hub_dataset.count("/") != 1:
        raise ConfigError(f"feedback.hub_dataset: {cfg.feedback.hub_dataset!r} is not a Hub repo id (owner/name)")
    gen = cfg.generation
    if not 0 <= gen.temperature <= 2:
        raise ConfigError(f"generation.temperature: {gen.temperature:g} must be in [0, 2] (0 is greedy)")
    if not 0 < gen.top_p <= 1:
        raise ConfigError(f"generation.top_p: {gen.top_p:g} must be in (0, 1]")
    if not 1 <= gen.max_new_tokens <= lim.max_new_tokens_limit:
        raise ConfigError(f"generation.max_new_tokens: {gen.max_new_tokens} must be between 1 and "
                          f"limits.max_new_tokens_limit ({lim.max_new_tokens_limit})")


def load_space_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> SpaceConfig:
    """Read `space_config/space.yaml` (or defaults when `path` is None), with dotted overrides."""
    return load_typed(SpaceConfig, path, overrides, validate=_validate_space, what="space config")


def space_config_yaml(cfg: SpaceConfig, header: str = "") -> str:
    """The settings as a `space.yaml` that `load_space_config` reads back to an equal SpaceConfig."""
    plain = to_plain(cfg)
    plain.pop("source", None)
    return dump_yaml(plain, header)
