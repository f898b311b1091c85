"""The one inference path: the base loaded once with every adapter (`AdapterModel`), one activated at a time, answers
generated as a left-padded batch or a stream (`AnswerStream`); the app, the eval and the local generator all use it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from trainer.inference.decode import COMPILED_SLOT, CompiledDecode, TurnCache, growing_kv_cache, left_pad
from trainer.train.config import QuantizationSettings
from trainer.providers import Usage
from trainer.train.model import BaseModelRef, ModelError, load_base_model, load_tokenizer


DEFAULT_SYSTEM_PROMPT = (
    "You are a careful study-abroad counsellor for international students. Answer in clear markdown with short "
    "sections and concrete next steps. Say when something depends on the country, the university or the year, point "
    "to the official source (university admissions pages, government visa and immigration sites) and never invent "
    "deadlines, fees or requirements. If a question rests on a false premise (for example a programme a university "
    "does not offer), say so politely and suggest what does exist."
)
"""The counsellor persona: the system prompt the app, the eval and the generator start from."""

BASE = "base"
"""The name that means no adapter: the base model as it is."""
DECODE_MODES = ("auto", "eager", "compiled")
"""How streamed answers decode: `eager` (PyTorch op by op), `compiled` (a static KV cache and a `torch.compile`d decode
step; adapters are hot-swapped into one compiled LoRA slot), `auto` (compiled on a CUDA GPU, eager elsewhere)."""


@dataclass(frozen=True)
class GenerationSettings:
    """How an answer is decoded: the one generation-settings type of the app, the eval and the local generator."""

    max_new_tokens: int = 384
    """Answer length cap in new tokens."""
    temperature: float = 0.7
    """0 means greedy decoding (deterministic)."""
    top_p: float = 0.9
    """Nucleus sampling cut-off (ignored when greedy)."""
    repetition_penalty: float = 1.1
    """Above 1 discourages repeating the same phrases (small models loop without it)."""

    def generate_kwargs(self) -> dict[str, Any]:
        """The matching `model.generate` arguments."""
        sampling = self.temperature > 0
        return {"max_new_tokens": self.max_new_tokens, "do_sample": sampling,
                "temperature": self.temperature if sampling else None, "top_p": self.top_p if sampling else None,
                "top_k": None, "repetition_penalty": self.repetition_penalty}


@dataclass(frozen=True)
class AdapterSource:
    """An adapter to serve: a local folder or a Hub repo, loaded under `name`."""

    name: str
    location: str
    """A local adapter folder or a Hub repo id."""
    revision: str | None = None
    subfolder: str | None = None
    template: str | None = None
    """The chat template it was trained with; None reads the one saved with it (else the base's is used)."""

    def hub_kwargs(self) -> dict[str, str]:
        """What PEFT and transformers receive besides the location."""
        kwargs = {"revision": self.revision} if self.revision else {}
        if self.subfolder:
            kwargs["subfolder"] = self.subfolder
        return kwargs


@dataclass(frozen=True)
class BatchAnswers:
    """What a batch generation gives back, in prompt order."""

    texts: list[str]
    new_tokens: list[int]
    """Tokens generated per answer, its end-of-sequence token included."""
    prompt_tokens: list[int]
    """Tokens of each rendered prompt."""
    seconds: float
    """Time spent in `generate` (rendering and decoding excluded)."""
    retries: list[int] = field(default_factory=list)
    """Retries each answer took (an OpenAI-compatible server's 429s and 5xx); empty where nothing retries."""

    def usage(self, i: int) -> Usage:
        """Answer `i`'s tokens as one request with its retries: the unit the generator's cost report adds up."""
        return Usage(self.prompt_tokens[i], self.new_tokens[i], 1, self.retries[i] if self.retries else 0)

    def throughput(self) -> dict[str, Any]:
        """Answers and new tokens, in all and per second (as the eval's results record them)."""
        samples, tokens = len(self.texts), sum(self.new_tokens)
        return {"samples": samples, "new_tokens": tokens, "seconds": round(self.seconds, 2),
                "samples_per_second": round(samples / self.seconds, 4) if self.seconds else None,
                "tokens_per_second": round(tokens / self.seconds, 2) if self.seconds else None}


class AdapterModel:
    """A base model loaded once for inference with any number of LoRA adapters in one PeftModel. `activate` picks
    what the next forward pass uses (`base`: adapters off); prompts are rendered with each adapter's own template.
    Not thread-safe: a caller that serves several threads holds its own lock for a whole generation."""

    def __init__(self, model, tokenizer, ref: BaseModelRef, *, decode: str = "eager", cache_tokens: int = 2048):
        if decode not in DECODE_MODES:
            raise ModelError(f"decode: {decode!r} must be one of {', '.join(DECODE_MODES)}")
        self.model, self.tokenizer, self.ref = model, tokenizer, ref
        self.templates: dict[str, str] = {BASE: tokenizer.chat_template}
        self._active: str | None = BASE
        self._tuner_layers: list | None = None
        self._fast_switch = False
        cuda = next(model.parameters()).device.type == "cuda"
        if decode == "auto":
            decode = "compiled" if cuda else "eager"
        quantized = getattr(getattr(getattr(model, "hf_quantizer", None), "quantization_config", None),
                            "load_in_4bit", False)
        if decode == "compiled" and quantized and not cuda:
            # Measured on the demo model (BENCHMARKS.md): compiled, bitsandbytes' CPU 4-bit path decoded at 0.64x
            # the eager speed, with logits up to 0.75 apart from the eager ones (greedy answers changed).
            raise ModelError("decode: compiled with a 4-bit base needs a CUDA GPU: on a CPU the compiled bitsandbytes "
                             "4-bit step was slower than eager and its logits differed from eager ones; use decode: "
                             "auto or eager, or load_in_4bit: false")
        self.compiled = CompiledDecode(self, cache_tokens) if decode == "compiled" else None

    @property
    def decode(self) -> str:
        """`compiled` or `eager`: how `stream` decodes (`auto` resolved for this device)."""
        return "compiled" if self.compiled is not None else "eager"

    @property
    def adapter_names(self) -> list[str]:
        """The loaded adapters, in load order."""
        return [name for name in self.templates if name != BASE]

    @property
    def pad_id(self) -> int:
        """The tokenizer's pad id, else its EOS id."""
        # `is not None`: a pad id of 0 is a real id (a falsy test would silently pad with the EOS instead)
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id

    @property
    def eos_ids(self) -> set[int]:
        """The ids `generate` stops at (the generation config's, else the tokenizer's EOS)."""
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, list) else [eos])

    def add_adapter(self, source: AdapterSource) -> None:
        """Load one more adapter under `source.name` (the first one wraps the base in a PeftModel)."""
        from peft import PeftModel

        self._active, self._tuner_layers = None, None  # the layers change (even if this fails): reset every switch
        kwargs = source.hub_kwargs()
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(source.location, adapter_name=source.name, **kwargs)
        else:
            self.model = PeftModel.from_pretrained(self.model, source.location, adapter_name=source.name, **kwargs)
        self.model.eval()
        if self.compiled is not None:
            try:
                self.compiled.check(source.name)
            except ModelError:
                self.model.delete_adapter(source.name)
                raise
        self.templates[source.name] = source.template or self._saved_template(source)

    def _saved_template(self, source: AdapterSource) -> str:
        """The chat template saved with the adapter (the one it was trained with), else the base's."""
        from trainer.train.rundir import saved_chat_template

        template = saved_chat_template(source.location, subfolder=source.subfolder, revision=source.revision)
        return template or self.templates[BASE]

    def activate(self, adapter: str) -> None:
        """Make `adapter` (or the base) what the next forward pass uses.

        PEFT's model-wide `set_adapter` / `disable_adapter()` walk every module and reset `requires_grad` on every
        adapter weight on each call: 10-45 ms for the demo model on a CPU. Inference never trains, so the LoRA layers
        are collected once and only their two switches are set (the state PEFT's own `set_adapter` and
        `enable_adapters` end by setting): about half a millisecond. Where a PEFT release renames them, the public
        per-layer calls are used instead; tests/test_engine.py checks the answers either way."""
        if adapter == self._active:
            return
        if adapter not in self.templates:
            raise KeyError(f"adapter {adapter!r} is not loaded; available: base, {', '.join(self.adapter_names)}")
        if not self.adapter_names:  # a plain base model: nothing to switch
            self._active = adapter
            return
        if self._tuner_layers is None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            self._tuner_layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
            self._fast_switch = all(isinstance(getattr(m, "_active_adapter", None), (str, list))
                                    and isinstance(getattr(m, "_disable_adapters", None), bool)
                                    for m in self._tuner_layers)
        enabled = adapter != BASE
        if enabled and self.compiled is not None and self.compiled.ready:
            self.compiled.swap_in(adapter)  # the compiled graph runs the slot: only tensor values change
            adapter_layer = COMPILED_SLOT
        else:
            adapter_layer = adapter
        if self._fast_switch:
            for layer in self._tuner_layers:
                layer._disable_adapters = not enabled
                if enabled:
                    layer._active_adapter = adapter_layer
        else:
            for layer in self._tuner_layers:
                layer.enable_adapters(enabled)
                if enabled:
                    layer.set_adapter(adapter_layer, inference_mode=True)
        if enabled:
            self.model.active_adapter = adapter_layer
        self._active = adapter

    def prompt_ids(self, messages: Sequence[dict[str, str]], adapter: str = BASE) -> list[int]:
        """Token ids of the prompt for the next answer, rendered with the adapter's own chat template."""
        if adapter not in self.templates:
            raise KeyError(f"adapter {adapter!r} is not loaded; available: base, {', '.join(self.adapter_names)}")
        return self.tokenizer.apply_chat_template(list(messages), chat_template=self.templates[adapter],
                                                  add_generation_prompt=True, tokenize=True, return_dict=False)

    def generate(self, conversations: Sequence[Sequence[dict[str, str]]], adapter: str = BASE,
                 settings: GenerationSettings = GenerationSettings(), *, batch_size: int = 8,
                 cache: TurnCache | None = None, keys: Sequence[Any] | None = None,
                 progress=None) -> BatchAnswers:
        """The next answer of each conversation, batched with left padding: longest prompts first, `batch_size` per
        `generate` call, each answer cut at its first end-of-sequence id. With a `cache` (and each row's
        conversation in `keys`) all conversations go in one batch, in order, and their earlier turns are not
        computed again: pass the same cache for every turn of a group. `progress(done, total)` after each batch."""
        import torch

        prompts = [self.prompt_ids(c, adapter) for c in conversations]
        self.activate(adapter)
        pad, eos, device = self.pad_id, self.eos_ids, next(self.model.parameters()).device
        texts, counts, seconds, done = [""] * len(prompts), [0] * len(prompts), 0.0, 0
        if cache is not None:
            keys = list(range(len(prompts)) if keys is None else keys)
            chunks = [list(range(len(prompts)))]  # rows stay in the cache's order
        else:
            order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
            chunks = [order[start:start + max(1, batch_size)] for start in range(0, len(order), max(1, batch_size))]
        for chunk in chunks:
            rows = [prompts[i] for i in chunk]
            kv = None
            if cache is not None and cache.keys is not None:
                cache.select(keys)
                ids, mask = cache.extend(rows, pad)
                kv = cache.cache
            else:
                ids, mask = left_pad(rows, pad, device)
                if cache is not None:
                    kv = growing_kv_cache(self.model.config)
            extra = {"cache": kv, "return_dict_in_generate": True} if kv is not None else {}
            started = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad,
                                          **settings.generate_kwargs(), **extra)
            seconds += time.perf_counter() - started
            sequences = out.sequences if kv is not None else out
            width = ids.shape[1]
            if cache is not None:
                cache.keep(keys, kv, sequences, mask, width, pad, eos)
            for row, i in enumerate(chunk):
                new = sequences[row, width:].tolist()
                counts[i] = next((k + 1 for k, t in enumerate(new) if t in eos), len(new))
                texts[i] = self.tokenizer.decode(new[:counts[i]], skip_special_tokens=True).strip()
            done += len(chunk)
            if progress is not None:
                progress(done, len(prompts))
        return BatchAnswers(texts, counts, [len(p) for p in prompts], seconds)

    def stream(self, messages: Sequence[dict[str, str]], adapter: str = BASE,
               settings: GenerationSettings = GenerationSettings(), stop: threading.Event | None = None
               ) -> AnswerStream:
        """A streamed answer, ready to `run()` (on any thread) while the caller iterates its text."""
        return AnswerStream(self, adapter, self.prompt_ids(messages, adapter), settings, stop or threading.Event())


class _StopOnEvent:
    """A StoppingCriteria that ends generation when `event` is set (a stop button, an abandoned stream)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class AnswerStream:
    """One answer generated token by token: `run()` generates; iterating yields the whole text so far, as it grows,
    until `run()` ends (setting `stop` ends it early). An error in `run()` ends the iteration and is kept in
    `error` for the caller to raise."""

    def __init__(self, owner: AdapterModel, adapter: str, ids: list[int], settings: GenerationSettings,
                 stop: threading.Event):
        from transformers import TextIteratorStreamer

        self.owner, self.adapter, self.ids, self.settings, self.stop = owner, adapter, ids, settings, stop
        self.streamer = TextIteratorStreamer(owner.tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.prompt_tokens, self.new_tokens = len(ids), 0
        self.error: BaseException | None = None

    def run(self) -> None:
        """Generate the answer; blocks until it ends (the caller's thread choice, the caller's lock)."""
        import torch

        try:
            compiled = self.owner.compiled
            extra = {}
            if compiled is not None and compiled.fits(len(self.ids), self.settings.max_new_tokens):
                extra = compiled.generate_kwargs()  # prepares the slot first, so before activate()
            self.owner.activate(self.adapter)
            model = self.owner.model
            input_ids = torch.tensor([self.ids], device=next(model.parameters()).device)
            with torch.inference_mode():
                out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                     streamer=self.streamer, pad_token_id=self.owner.pad_id,
                                     stopping_criteria=[_StopOnEvent(self.stop)], **self.settings.generate_kwargs(),
                                     **extra)
            self.new_tokens = int(out.shape[1] - input_ids.shape[1])
        except BaseException as exc:  # surfaced to the consumer by its caller
            self.error = exc
            self.streamer.end()

    def __iter__(self) -> Iterator[str]:
        text = ""
        for piece in self.streamer:
            if piece:
                text += piece
                yield text


def load_adapter_model(ref: BaseModelRef, quantization: QuantizationSettings, adapters: Sequence[AdapterSource] = (),
                       *, attn_implementation: str = "sdpa", trust_remote_code: bool = False, decode: str = "eager",
                       cache_tokens: int = 2048) -> AdapterModel:
    """The base (4-bit when configured) and its tokenizer loaded once for inference, then every adapter in `adapters`
    into one PeftModel. A caller that vets adapters one by one passes none here and calls `add_adapter` itself.
    `decode` / `cache_tokens`: how streamed answers decode (see `DECODE_MODES` and `CompiledDecode`)."""
    tokenizer = load_tokenizer(ref, trust_remote_code)
    if tokenizer.chat_template is None:
        raise ModelError(f"{ref.name}: the tokenizer has no chat template; use an instruct model")
    model = load_base_model(ref, quantization, attn_implementation=attn_implementation,
                            trust_remote_code=trust_remote_code, for_training=False)
    model.eval()
    served = AdapterModel(model, tokenizer, ref, decode=decode, cache_tokens=cache_tokens)
    for source in adapters:
        served.add_adapter(source)
    return served
