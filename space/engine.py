"""One base model, many adapters, many visitors: what the app adds to `trainer.inference.model`'s inference path.

`InferenceEngine` here is `engine: local`; it implements `trainer.inference.engine.Engine`, as
`space.remote_engine.OpenAIEngine` (`engine: openai`, an OpenAI-compatible server generates) does.

`trainer.inference.model.AdapterModel` loads the base once (4-bit NF4 by default, on GPU or CPU) with every adapter
in one PeftModel, switches between them and streams answers rendered with each adapter's own chat template. The engine
decides which registered adapters to serve (refusing one trained on another base, or unreadable), and serialises
requests: a request switches adapters while holding the engine's lock for the whole generation, so two visitors can
never get each other's adapter.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from trainer.train.config import QuantizationSettings
from trainer.train.demo_model import DEMO_MODEL_NAME, is_demo_model
from trainer.train.device import DeviceInfo, Precision, check_torch_build, detect_device, resolve_precision, triton_ok
from trainer.inference.model import (BASE, AdapterModel, AdapterSource, BatchAnswers, GenerationSettings,
                                     load_adapter_model)
from trainer.train.model import BaseModelRef, ModelError, resolve_base_model

from trainer.inference.engine import StreamStats, follow_stream
from space.registry import AdapterRegistry, RegisteredAdapter

GPU_DEFAULT_BASE = "mistralai/Mistral-7B-Instruct-v0.3"


class AdapterRefused(ModelError):
    """An adapter that cannot be served on this base (or cannot be loaded at all)."""


def choose_base_model(setting: str = "auto") -> str:
    """`BASE_MODEL` wins; `auto` means Mistral-7B-Instruct-v0.3 on a GPU and the embedded demo model on a CPU."""
    chosen = os.environ.get("BASE_MODEL") or setting
    if chosen != "auto":
        return chosen
    import torch

    return GPU_DEFAULT_BASE if torch.cuda.is_available() else DEMO_MODEL_NAME


def choose_decode(setting: str, device: DeviceInfo) -> tuple[str, str | None]:
    """The decode mode for `setting` on this device, and a line saying why when an explicit `compiled` is overridden.

    The compiled decode is a `torch.compile`d step whose GPU kernels are Triton's, which needs compute capability 7.0:
    `auto` is compiled only where Triton runs (`trainer.train.device.triton_ok`), eager elsewhere (a CPU, a P100);
    `compiled` on a GPU below 7.0 decodes eagerly instead of failing at the first answer."""
    if setting == "auto":
        return ("compiled" if triton_ok(device) else "eager"), None
    if setting == "compiled" and device.kind == "cuda" and not triton_ok(device):
        cap = ".".join(map(str, device.capability)) if device.capability else "unknown"
        return "eager", (f"decode: compiled needs Triton, which needs compute capability 7.0 or newer; the "
                         f"{device.name} is {cap}, so answers decode eagerly")
    return setting, None


def same_base(a: str | None, b: str) -> bool:
    if a is None:
        return True  # nothing recorded: cannot be told apart (PEFT still checks every tensor shape on load)
    if is_demo_model(a) or is_demo_model(b):
        return is_demo_model(a) and is_demo_model(b)
    return a.rstrip("/").lower() == b.rstrip("/").lower()


@dataclass
class InferenceEngine:
    """Serve a base model and its adapters. Construct cheaply; `load()` does the heavy work once."""

    base_model: str
    registry: AdapterRegistry
    load_in_4bit: bool = True
    base_revision: str | None = None
    decode: str = "auto"
    """`compiled`, `eager` or `auto` (compiled where Triton runs, `choose_decode`): see
    `trainer.inference.decode.CompiledDecode`."""
    cache_tokens: int = 2048
    """The compiled decode's static KV cache length (prompt plus answer)."""
    served: AdapterModel | None = field(default=None, init=False)
    ref: BaseModelRef | None = field(default=None, init=False)
    precision: Precision | None = field(default=None, init=False)
    """What the base computes in (`precision: auto` on this device, the rule training uses), set by `load()`."""
    refused: dict[str, str] = field(default_factory=dict, init=False)
    load_seconds: float = field(default=0.0, init=False)
    _revisions: dict[str, str] = field(default_factory=dict, init=False)

    def __post_init__(self):
        self._lock = threading.Lock()
        # Every generation runs on one long-lived thread: a fresh thread per request starts a cold OpenMP team,
        # which on a 2-core CPU made each answer ~40% slower than the same generate() on a warm thread.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")

    # Loading

    @property
    def is_demo(self) -> bool:
        return is_demo_model(self.base_model)

    @property
    def serving(self) -> str:
        """How the base is served, for the app's banner."""
        how = "4-bit NF4" if self.load_in_4bit else "unquantized"
        how += f", {self.precision.name}" if self.precision is not None else ""
        return how + (", compiled decode" if self.served is not None and self.served.decode == "compiled" else "")

    @property
    def model(self):
        """The PeftModel (or the bare base when no adapter loaded)."""
        return self.served.model

    @property
    def tokenizer(self):
        return self.served.tokenizer

    @property
    def templates(self) -> dict[str, str]:
        """The chat template of the base (`base`) and of each adapter ready to serve."""
        return self.served.templates

    @property
    def adapter_names(self) -> list[str]:
        """Adapters ready to serve, in registry order (the base is always available as `base`)."""
        return self.served.adapter_names if self.served is not None else []

    def load(self) -> "InferenceEngine":
        """Load the base once, then every registered adapter this base can serve into the same PeftModel."""
        started = time.time()
        self.ref = resolve_base_model(self.base_model, self.base_revision)
        device = detect_device()
        check_torch_build(device)  # a torch without kernels for this GPU is named in one line, before the base loads
        # The loader resolves `precision: auto` on the same device by the same rule; this says which and why.
        self.precision = resolve_precision("auto", device)
        print(f"[engine] precision {self.precision.name} ({self.precision.reason})", flush=True)
        decode, why = choose_decode(self.decode, device)
        if why:
            print(f"[engine] {why}", flush=True)
        self.served = load_adapter_model(self.ref, QuantizationSettings(load_in_4bit=self.load_in_4bit),
                                         decode=decode, cache_tokens=self.cache_tokens)
        for adapter in self.registry:
            try:
                self._load_adapter(adapter)
            except (AdapterRefused, ModelError, OSError, ValueError) as exc:
                self.refused[adapter.name] = str(exc).splitlines()[0]
                print(f"[engine] adapter {adapter.name!r} refused: {self.refused[adapter.name]}", flush=True)
        self.served.activate(BASE)
        if self.served.decode == "compiled":
            self._compile_now()
        self.load_seconds = time.time() - started
        return self

    def _compile_now(self) -> None:
        """Compile the decode graphs (the base's and the adapter slot's) before the first visitor waits for them."""
        started = time.time()
        short = GenerationSettings(max_new_tokens=4, temperature=0)
        try:
            for name in [BASE, *self.adapter_names[:1]]:
                for _ in self.stream([{"role": "user", "content": "Hello"}], name, short):
                    pass
        except Exception as exc:  # a compiler or device that cannot do it: the app still serves, eagerly
            self.served.compiled = None
            self.served.activate(BASE)
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            print(f"[engine] compiled decode failed ({type(exc).__name__}: {reason}); decoding eagerly", flush=True)
            return
        print(f"[engine] compiled decode ready in {time.time() - started:.0f} s", flush=True)

    def _load_adapter(self, adapter: RegisteredAdapter) -> None:
        """Refuse an adapter that is unreadable or trained on another base; load the others."""
        from peft import PeftConfig

        source = AdapterSource(adapter.name, adapter.location, adapter.revision, adapter.subfolder)
        try:
            peft_config = PeftConfig.from_pretrained(adapter.location, **source.hub_kwargs())
        except Exception as exc:  # PEFT raises ValueError/OSError/HTTP errors for a missing or unreachable repo
            raise AdapterRefused(f"cannot read its adapter_config.json ({exc})") from None
        trained_on = adapter.trained_base or peft_config.base_model_name_or_path
        if not same_base(trained_on, self.base_model):
            raise AdapterRefused(f"it was trained on {trained_on!r}, but this app serves {self.base_model!r}")
        self.served.add_adapter(source)

    def adapter_revision(self, adapter: str) -> str | None:
        """What identifies the served weights: the Hub revision, or the sha256 of a local adapter file."""
        if adapter == BASE:
            return self.base_revision
        if adapter not in self._revisions:
            self._revisions[adapter] = self.registry.get(adapter).revision_id()
        return self._revisions[adapter]

    # Generation

    def prompt_ids(self, messages: Sequence[dict[str, str]], adapter: str = BASE) -> list[int]:
        """Token ids of the prompt for the next answer, rendered with the adapter's own chat template."""
        return self.served.prompt_ids(messages, adapter)

    def prompt_tokens(self, messages: Sequence[dict[str, str]], adapter: str = BASE) -> int:
        """How many tokens the prompt for the next answer takes (what must fit the context with the answer)."""
        return len(self.prompt_ids(messages, adapter))

    @property
    def context_length(self) -> int | None:
        """The base model's context window in tokens (`max_position_embeddings`), when its config says."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def stream(self, messages: Sequence[dict[str, str]], adapter: str = BASE,
               settings: GenerationSettings = GenerationSettings(), stop: threading.Event | None = None,
               stats: StreamStats | None = None) -> Iterator[str]:
        """Yield the answer as it grows (each item is the whole text so far). Closing the iterator, or setting
        `stop`, ends the generation early."""
        stop = stop or threading.Event()
        stats = stats if stats is not None else StreamStats()
        answer = self.served.stream(messages, adapter, settings, stop)
        stats.prompt_tokens = answer.prompt_tokens
        waited = time.time()
        self._lock.acquire()  # held until this generation ends: the adapter choice is model-wide state
        stats.waited_s = time.time() - waited
        started = time.time()

        def run() -> None:
            try:
                answer.run()
            finally:
                self._lock.release()

        try:
            done = self._worker.submit(run)
        except BaseException:
            self._lock.release()
            raise
        yield from follow_stream(answer, done.result, stop, stats, started)

    def generate(self, messages: Sequence[dict[str, str]], adapter: str = BASE,
                 settings: GenerationSettings = GenerationSettings()) -> str:
        """The whole answer at once (the batch generator with one prompt, on the generation thread)."""
        return self.answer_all([messages], adapter, settings).texts[0]

    def answer_all(self, conversations: Sequence[Sequence[dict[str, str]]], adapter: str = BASE,
                   settings: GenerationSettings = GenerationSettings(), *, progress=None,
                   batch_size: int = 8) -> BatchAnswers:
        """Many answers in left-padded batches, on the generation thread, holding the lock for the whole pass."""
        with self._lock:
            return self._worker.submit(self.served.generate, conversations, adapter, settings,
                                       batch_size=batch_size, progress=progress).result()
