"""One base model, many adapters: load once, switch per request, stream answers.

The base loads once (4-bit NF4 by default, on GPU or CPU). Every registered adapter is loaded into the same
PeftModel under its own name; a request switches with `set_adapter` (or `disable_adapter` for the base) while holding
the engine's lock for the whole generation, so two visitors can never get each other's adapter. Prompts are rendered
with the chat template stored with each adapter: the template it was trained with.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from trainer.config import QuantizationSettings
from trainer.demo_model import DEMO_MODEL_NAME, is_demo_model
from trainer.modeling import BaseModelRef, ModelError, load_base_model, load_tokenizer, resolve_base_model

from space.registry import AdapterRegistry, RegisteredAdapter

BASE = "base"
GPU_DEFAULT_BASE = "mistralai/Mistral-7B-Instruct-v0.3"


class AdapterRefused(ModelError):
    """An adapter that cannot be served on this base (or cannot be loaded at all)."""


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 384
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1


@dataclass
class StreamStats:
    """Filled in while a stream runs: what a benchmark or a log wants to know."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    first_token_s: float | None = None
    total_s: float = 0.0
    waited_s: float = 0.0
    stopped: bool = False


def choose_base_model(setting: str = "auto") -> str:
    """`BASE_MODEL` wins; `auto` means Mistral-7B-Instruct-v0.3 on a GPU and the embedded demo model on a CPU."""
    chosen = os.environ.get("BASE_MODEL") or setting
    if chosen != "auto":
        return chosen
    import torch

    return GPU_DEFAULT_BASE if torch.cuda.is_available() else DEMO_MODEL_NAME


def same_base(a: str | None, b: str) -> bool:
    if a is None:
        return True  # nothing recorded: cannot be told apart (PEFT still checks every tensor shape on load)
    if is_demo_model(a) or is_demo_model(b):
        return is_demo_model(a) and is_demo_model(b)
    return a.rstrip("/").lower() == b.rstrip("/").lower()


class _StopOnEvent:
    """A StoppingCriteria that ends generation when the visitor presses stop (or the stream is abandoned)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass
class InferenceEngine:
    """Serve a base model and its adapters. Construct cheaply; `load()` does the heavy work once."""

    base_model: str
    registry: AdapterRegistry
    load_in_4bit: bool = True
    base_revision: str | None = None
    model: object = field(default=None, init=False)
    tokenizer: object = field(default=None, init=False)
    ref: BaseModelRef | None = field(default=None, init=False)
    templates: dict[str, str] = field(default_factory=dict, init=False)
    refused: dict[str, str] = field(default_factory=dict, init=False)
    load_seconds: float = field(default=0.0, init=False)
    _active: str = field(default=BASE, init=False)
    _tuner_layers: list = field(default_factory=list, init=False)
    _fast_switch: bool = field(default=False, init=False)
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
    def adapter_names(self) -> list[str]:
        """Adapters ready to serve, in registry order (the base is always available as `base`)."""
        return [name for name in self.templates if name != BASE]

    def load(self) -> "InferenceEngine":
        """Load the base once, then every registered adapter into the same PeftModel."""
        started = time.time()
        self.ref = resolve_base_model(self.base_model, self.base_revision)
        self.tokenizer = load_tokenizer(self.ref)
        if self.tokenizer.chat_template is None:
            raise ModelError(f"{self.base_model}: the tokenizer has no chat template; serve an instruct model")
        self.templates[BASE] = self.tokenizer.chat_template
        quant = QuantizationSettings(load_in_4bit=self.load_in_4bit)
        self.model = load_base_model(self.ref, quant, for_training=False)
        self.model.eval()
        for adapter in self.registry:
            try:
                self._load_adapter(adapter)
            except (AdapterRefused, ModelError, OSError, ValueError) as exc:
                self.refused[adapter.name] = str(exc).splitlines()[0]
                print(f"[engine] adapter {adapter.name!r} refused: {self.refused[adapter.name]}", flush=True)
        if self.adapter_names:
            from peft.tuners.tuners_utils import BaseTunerLayer

            self._tuner_layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
            self._fast_switch = all(isinstance(getattr(m, "_active_adapter", None), (str, list))
                                    and isinstance(getattr(m, "_disable_adapters", None), bool)
                                    for m in self._tuner_layers)
            self._active = self.model.active_adapter
            self._activate(BASE)
        self.load_seconds = time.time() - started
        return self

    def _activate(self, adapter: str) -> None:
        """Make `adapter` (or the base) what the next forward pass uses. Call with the lock held.

        PEFT's model-wide `set_adapter` / `disable_adapter()` walk every module and reset `requires_grad` on every
        adapter weight on each call: 10-45 ms for the demo model on a CPU. Serving never trains, so the LoRA layers
        are collected once and only their two switches are set (the state PEFT's own `set_adapter` and
        `enable_adapters` end by setting): about half a millisecond. Where a PEFT release renames them, the public
        per-layer calls are used instead; tests/test_engine.py checks the answers either way."""
        if adapter == self._active:
            return
        enabled = adapter != BASE
        if self._fast_switch:
            for layer in self._tuner_layers:
                layer._disable_adapters = not enabled
                if enabled:
                    layer._active_adapter = adapter
        else:
            for layer in self._tuner_layers:
                layer.enable_adapters(enabled)
                if enabled:
                    layer.set_adapter(adapter, inference_mode=True)
        if enabled:
            self.model.active_adapter = adapter
        self._active = adapter

    def _load_adapter(self, adapter: RegisteredAdapter) -> None:
        from peft import PeftConfig, PeftModel

        kwargs = {"revision": adapter.revision} if adapter.revision else {}
        if adapter.subfolder:
            kwargs["subfolder"] = adapter.subfolder
        try:
            peft_config = PeftConfig.from_pretrained(adapter.location, **kwargs)
        except Exception as exc:  # PEFT raises ValueError/OSError/HTTP errors for a missing or unreachable repo
            raise AdapterRefused(f"cannot read its adapter_config.json ({exc})") from None
        trained_on = adapter.trained_base or peft_config.base_model_name_or_path
        if not same_base(trained_on, self.base_model):
            raise AdapterRefused(f"it was trained on {trained_on!r}, but this app serves {self.base_model!r}")
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(adapter.location, adapter_name=adapter.name, **kwargs)
        else:
            self.model = PeftModel.from_pretrained(self.model, adapter.location, adapter_name=adapter.name, **kwargs)
        self.model.eval()
        self.templates[adapter.name] = self._adapter_template(adapter, kwargs)

    def _adapter_template(self, adapter: RegisteredAdapter, kwargs: dict) -> str:
        """The chat template saved with the adapter (the one it was trained with), else the base's."""
        if adapter.is_local:
            path = Path(adapter.location) / "chat_template.jinja"
            if path.is_file():
                return path.read_text(encoding="utf-8")
        try:
            from transformers import AutoTokenizer

            template = AutoTokenizer.from_pretrained(adapter.location, **kwargs).chat_template
        except (OSError, ValueError):
            template = None
        return template or self.templates[BASE]

    def adapter_revision(self, adapter: str) -> str | None:
        """What identifies the served weights: the Hub revision, or the sha256 of a local adapter file."""
        if adapter == BASE:
            return self.base_revision
        if adapter not in self._revisions:
            entry = self.registry.get(adapter)
            if entry.is_local:
                from trainer.data import file_sha256

                self._revisions[adapter] = "sha256:" + file_sha256(Path(entry.location) / "adapter_model.safetensors")
            else:
                self._revisions[adapter] = entry.revision or "main"
        return self._revisions[adapter]

    # Generation

    def prompt_ids(self, messages: Sequence[dict[str, str]], adapter: str = BASE) -> list[int]:
        """Token ids of the prompt for the next answer, rendered with the adapter's own chat template."""
        if adapter not in self.templates:
            raise KeyError(f"adapter {adapter!r} is not loaded; available: base, {', '.join(self.adapter_names)}")
        return self.tokenizer.apply_chat_template(list(messages), chat_template=self.templates[adapter],
                                                  add_generation_prompt=True, tokenize=True, return_dict=False)

    def stream(self, messages: Sequence[dict[str, str]], adapter: str = BASE,
               settings: GenerationSettings = GenerationSettings(), stop: threading.Event | None = None,
               stats: StreamStats | None = None) -> Iterator[str]:
        """Yield the answer as it grows (each item is the whole text so far). Closing the iterator, or setting
        `stop`, ends the generation early."""
        import torch
        from transformers import TextIteratorStreamer

        stop = stop or threading.Event()
        stats = stats if stats is not None else StreamStats()
        ids = self.prompt_ids(messages, adapter)
        stats.prompt_tokens = len(ids)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = settings.temperature > 0
        gen_kwargs = dict(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
            max_new_tokens=settings.max_new_tokens, do_sample=sampling,
            temperature=settings.temperature if sampling else None, top_p=settings.top_p if sampling else None,
            top_k=None, repetition_penalty=settings.repetition_penalty, pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            stopping_criteria=[_StopOnEvent(stop)],
        )
        waited = time.time()
        self._lock.acquire()  # held until this generation ends: the adapter choice is model-wide state
        stats.waited_s = time.time() - waited
        started = time.time()
        error: list[BaseException] = []

        def run() -> None:
            try:
                if self.adapter_names:
                    self._activate(adapter)
                with torch.inference_mode():
                    out = self.model.generate(**gen_kwargs)
                stats.new_tokens = int(out.shape[1] - input_ids.shape[1])
            except BaseException as exc:  # surfaced to the consumer below
                error.append(exc)
                streamer.end()
            finally:
                self._lock.release()

        try:
            done = self._worker.submit(run)
        except BaseException:
            self._lock.release()
            raise
        text = ""
        finished = False
        try:
            for piece in streamer:
                if piece:
                    if stats.first_token_s is None:
                        stats.first_token_s = time.time() - started
                    text += piece
                    yield text
            finished = True
        finally:
            if not finished:  # the consumer left early (stop button, closed page): end the generation now
                stop.set()
            stats.stopped = stop.is_set()
            done.result()
            stats.total_s = time.time() - started
        if error:
            raise error[0]

    def generate(self, messages: Sequence[dict[str, str]], adapter: str = BASE,
                 settings: GenerationSettings = GenerationSettings()) -> str:
        """The whole answer at once."""
        text = ""
        for text in self.stream(messages, adapter, settings):
            pass
        return text
