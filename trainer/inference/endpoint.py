"""An engine over an OpenAI-compatible server: the eval's `--engine openai` (`trainer.eval.engine.ServerEngine`) and
the generator's endpoint (`python -m trainer generate --base-url ...`) answer through it.

The server holds the models, and each request's `model` field picks one: `models` maps the engine's names (`base`, an
adapter's stage) to the server's. Requests go through the one HTTP client of the tool (`trainer.providers`:
huggingface_hub's InferenceClient, retries on 429/5xx with the retries counted, the named server let through when
HF_HUB_OFFLINE is set), `concurrency` of them in flight so the server can batch them; the chat template is the
server's. A failure is one `ProviderError` line naming the server (a subclass words it for its command).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator, Sequence

from trainer.inference.engine import Progress, StreamStats, answer_concurrently
from trainer.inference.model import BASE, BatchAnswers, GenerationSettings
from trainer.providers import OpenAICompatibleProvider, ProviderError, Usage


class EndpointEngine:
    """The one engine interface over an OpenAI-compatible server, `concurrency` requests in flight."""

    kind = "openai-compatible"

    def __init__(self, base_url: str, models: dict[str, str | None], *, api_key: str | None = None,
                 concurrency: int = 4, timeout: float = 120.0, max_retries: int = 6,
                 send_repetition_penalty: bool = False, sleep: Callable[[float], None] = time.sleep):
        self.base_url, self.models = base_url.rstrip("/"), dict(models)
        self.concurrency, self.send_repetition_penalty = max(1, concurrency), send_repetition_penalty
        self._api_key, self._timeout = api_key, timeout
        self.providers = {name: OpenAICompatibleProvider(self.base_url, served, api_key, timeout=timeout,
                                                         max_retries=max_retries, sleep=sleep)
                          for name, served in self.models.items()}

    @property
    def name(self) -> str:
        return self.providers[BASE].name

    @property
    def base_model(self) -> str:
        return self.models[BASE] or "the server's default model"

    @property
    def adapter_names(self) -> list[str]:
        return [name for name in self.models if name != BASE]

    def answer_all(self, conversations: Sequence[Sequence[dict[str, str]]], adapter: str = BASE,
                   settings: GenerationSettings = GenerationSettings(), *,
                   progress: Progress | None = None) -> BatchAnswers:
        """The next answer of each conversation from model `adapter`, in order, with the server's token counts and
        each answer's retries (`seconds` is the wall time of the whole pass). The server receives the length and the
        temperature (and the repetition penalty where `send_repetition_penalty`: vLLM knows it, hosted APIs may
        refuse it)."""
        extra = {"repetition_penalty": settings.repetition_penalty} \
            if self.send_repetition_penalty and settings.repetition_penalty != 1.0 else None
        provider = self.providers[adapter]

        def one(messages) -> tuple[str, Usage]:
            return self._ask(provider, adapter, list(messages), settings.max_new_tokens, settings.temperature, extra)

        return answer_concurrently(one, conversations, self.concurrency, progress)

    def generate(self, messages: Sequence[dict[str, str]], adapter: str = BASE,
                 settings: GenerationSettings = GenerationSettings()) -> str:
        return self.answer_all([messages], adapter, settings).texts[0]

    def stream(self, messages: Sequence[dict[str, str]], adapter: str = BASE,
               settings: GenerationSettings = GenerationSettings(), stop: threading.Event | None = None,
               stats: StreamStats | None = None) -> Iterator[str]:
        """The answer at once: batch jobs ask for whole answers (the app's `OpenAIEngine` streams token by token)."""
        answers = self.answer_all([messages], adapter, settings)
        if stats is not None:
            stats.prompt_tokens, stats.new_tokens = answers.prompt_tokens[0], answers.new_tokens[0]
            stats.total_s = answers.seconds
        yield answers.texts[0]

    def _ask(self, provider: OpenAICompatibleProvider, name: str, messages: list[dict[str, str]], max_tokens: int,
             temperature: float, extra: dict | None) -> tuple[str, Usage]:
        try:
            return provider.complete(messages, max_tokens=max_tokens, temperature=temperature, extra_body=extra)
        except ProviderError as exc:
            detail = str(exc)
        except Exception as exc:  # a reply that is not a chat completion, a dropped connection: still one line
            detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if self._api_key:  # the API key never reaches an error
            detail = detail.replace(self._api_key, "***")
        raise self.failed(name, detail) from None

    def failed(self, name: str, detail: str) -> Exception:
        """The one-line error for a request to model `name` that failed (`detail`, the key already hidden, may
        already name the server)."""
        return ProviderError(detail if detail.startswith(self.base_url) else f"{self.base_url}: {detail}")
