"""The `openai` engine: answers stream from an OpenAI-compatible server (vLLM, TGI, `transformers serve`).

The server holds the base and the adapters; an adapter is the request's `model` field (its `served_name`), and the
chat template is the server's. There is no lock here: every visitor's request is its own HTTP stream, and batching
them is the server's job. A failure of the server (refused connection, timeout, 429, 5xx, an unknown model name)
becomes `EngineUnavailable` with one line a visitor can read; the next request tries the server again, so the app
recovers by itself when the server is back. The API key is read from the environment variable the settings name,
kept in memory only, and never printed.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from trainer.inference.model import BASE, BatchAnswers, GenerationSettings
from trainer.typed_yaml import ConfigError
from trainer.hub.space_settings import OpenAIEngineSettings, SpaceConfig

from trainer.inference.engine import EngineUnavailable, StreamStats, answer_concurrently
from trainer.providers import Usage
from space.registry import AdapterRegistry


def read_api_key(settings: OpenAIEngineSettings) -> str | None:
    """The key from the variable `api_key_env` names (None without one); a named but unset variable is an error."""
    if settings.api_key_env is None:
        return None
    key = os.environ.get(settings.api_key_env, "")
    if not key:
        raise ConfigError(f"openai.api_key_env: the environment variable {settings.api_key_env} is not set")
    return key


@dataclass
class OpenAIEngine:
    """Serve the registry's adapters from an OpenAI-compatible server. Nothing connects until the first request."""

    settings: OpenAIEngineSettings
    registry: AdapterRegistry
    base_model: str
    """The base's `model` name on the server (also shown in the banner and stored with feedback)."""
    base_revision: str | None = None
    api_key: str | None = field(default=None, repr=False)
    refused: dict[str, str] = field(default_factory=dict, init=False)
    load_seconds: float = field(default=0.0, init=False)
    load_in_4bit: bool = field(default=False, init=False)
    """Unknown here: the server decides how the base is stored."""
    _revisions: dict[str, str | None] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_config(cls, cfg: SpaceConfig, registry: AdapterRegistry) -> "OpenAIEngine":
        """The engine `engine: openai` describes, with the key read from `openai.api_key_env`."""
        base = cfg.openai.base_served_name or cfg.base_model
        return cls(cfg.openai, registry, base, cfg.base_revision, read_api_key(cfg.openai))

    @property
    def base_url(self) -> str:
        return self.settings.base_url.rstrip("/")

    @property
    def serving(self) -> str:
        return "on an OpenAI-compatible server"

    @property
    def is_demo(self) -> bool:
        """False: the app's demo banner speaks of the embedded model on this machine's CPU, not of a server."""
        return False

    @property
    def adapter_names(self) -> list[str]:
        """Every registered adapter: the server is asked only when a visitor picks one."""
        return self.registry.names()

    def load(self) -> "OpenAIEngine":
        """Nothing to load: the server may start after the app, and visitors are told while it is down."""
        return self

    def model_name(self, adapter: str) -> str:
        """The request's `model` field for an adapter (the base's served name for `base`)."""
        return self.base_model if adapter == BASE else self.registry.get(adapter).model_name

    def adapter_revision(self, adapter: str) -> str | None:
        """The Hub revision or local file hash when the settings name the adapter's weights, else None."""
        if adapter == BASE:
            return self.base_revision
        if adapter not in self._revisions:  # a local file is hashed once, not on every feedback record
            self._revisions[adapter] = self.registry.get(adapter).revision_id()
        return self._revisions[adapter]

    # Generation

    def stream(self, messages: Sequence[dict[str, str]], adapter: str = BASE,
               settings: GenerationSettings = GenerationSettings(), stop: threading.Event | None = None,
               stats: StreamStats | None = None) -> Iterator[str]:
        """Yield the answer as it grows (each item is the whole text so far). Closing the iterator, or setting
        `stop`, closes the HTTP stream, which ends the generation on the server. Raises EngineUnavailable."""
        from huggingface_hub import InferenceClient

        from trainer.providers import allow_endpoint_when_offline

        allow_endpoint_when_offline(self.base_url)  # HF_HUB_OFFLINE blocks the Hub, not the server named here
        stats = stats if stats is not None else StreamStats()
        model = self.model_name(adapter)
        client = InferenceClient(base_url=self.base_url, api_key=self.api_key, timeout=self.settings.timeout_s)
        started = time.time()
        text, chunks = "", None
        try:
            chunks = self._open_stream(client, messages, model, settings)
            for chunk in chunks:
                if stop is not None and stop.is_set():
                    stats.stopped = True
                    break
                delta = chunk.choices[0].delta.content if chunk.choices else None
                if not delta:
                    continue
                if stats.first_token_s is None:
                    stats.first_token_s = time.time() - started
                stats.new_tokens += 1
                text += delta
                yield text
        except EngineUnavailable:
            raise
        except Exception as exc:  # every failure of the server or the connection: one line for the visitor
            raise self._unavailable(exc, adapter, model) from None
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # the consumer left early (stop button, closed page): drop the stream
            stats.total_s = time.time() - started

    @staticmethod
    def _open_stream(client, messages: Sequence[dict[str, str]], model: str, settings: GenerationSettings):
        """The answer's stream, asked for once more when the first try could not connect: a kept-alive connection
        the server has since closed (as servers do after an error) fails before anything is sent or generated."""
        for attempt in (1, 2):
            try:
                # repetition_penalty is not an OpenAI field (some servers reject unknown fields): the server's default
                return client.chat_completion(list(messages), model=model, stream=True,
                                              max_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                              top_p=settings.top_p if settings.temperature > 0 else None)
            except Exception as exc:
                if attempt == 2 or _http_status(exc) is not None or _timed_out(exc):
                    raise

    def generate(self, messages: Sequence[dict[str, str]], adapter: str = BASE,
                 settings: GenerationSettings = GenerationSettings()) -> str:
        """The whole answer at once (the stream, read to its end)."""
        text = ""
        for text in self.stream(messages, adapter, settings):
            pass
        return text

    def answer_all(self, conversations: Sequence[Sequence[dict[str, str]]], adapter: str = BASE,
                   settings: GenerationSettings = GenerationSettings(), *, progress=None) -> BatchAnswers:
        """Many answers, a few requests in flight (the server batches them); token counts from the streams."""
        def one(messages) -> tuple[str, Usage]:
            stats, text = StreamStats(), ""
            for text in self.stream(messages, adapter, settings, stats=stats):
                pass
            return text, Usage(stats.prompt_tokens, stats.new_tokens, 1, 0)

        return answer_concurrently(one, conversations, 4, progress)

    def _unavailable(self, exc: Exception, adapter: str, model: str) -> EngineUnavailable:
        """The visitor's one line for a failure, and the operator's one line in the log (no key, no traceback)."""
        status = _http_status(exc)
        name = type(exc).__name__
        if status == 429:
            message = "The model server is busy right now (too many requests). Please try again in a minute."
        elif status == 404:
            message = (f"The model server does not serve {'the base model' if adapter == BASE else repr(adapter)} "
                       f"(no model named {model!r}). Please pick another adapter; the Space's operator has been told.")
        elif status is not None and status >= 500:
            message = f"The model server had an error (HTTP {status}). Please try again in a moment."
        elif status is not None:
            message = f"The model server refused this request (HTTP {status}). Please try again or change settings."
        elif _timed_out(exc):
            message = (f"The model server did not answer within {self.settings.timeout_s:g} s. Please try again in "
                       "a moment.")
        else:
            message = "The model server cannot be reached right now. Please try again in a moment."
        detail = str(exc).splitlines()[0] if str(exc) else name
        if self.api_key:
            detail = detail.replace(self.api_key, "***")
        print(f"[engine] {self.base_url} model {model!r}: {name}: {detail[:300]}", flush=True)
        return EngineUnavailable(message)


def _http_status(exc: Exception) -> int | None:
    """The HTTP status the server answered a failed request with (None: no answer came)."""
    return getattr(getattr(exc, "response", None), "status_code", None)


def _timed_out(exc: Exception) -> bool:
    """Whether the request failed by waiting too long (the client's timeout, of any HTTP library)."""
    return "Timeout" in type(exc).__name__ or isinstance(exc, TimeoutError)
