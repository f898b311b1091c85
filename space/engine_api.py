"""The engine interface: what the app and its tabs use of an engine, whichever generates.

`space.engine.InferenceEngine` (`engine: local`) and `space.remote_engine.OpenAIEngine` (`engine: openai`) both
implement `Engine`, fill in `StreamStats` and raise `EngineUnavailable`; they import this module, never each other,
and this module imports neither. `app.build_engine` picks one from the settings.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

from trainer.inference.model import BASE, GenerationSettings


class EngineUnavailable(RuntimeError):
    """The engine cannot answer right now (its server is down, busy or failing); the message is for the visitor."""


@dataclass
class StreamStats:
    """Filled in while a stream runs: what a benchmark or a log wants to know."""

    prompt_tokens: int = 0
    """Tokens of the rendered prompt (0 where the server renders it)."""
    new_tokens: int = 0
    """Tokens generated so far (an OpenAI-compatible stream counts its chunks)."""
    first_token_s: float | None = None
    """Seconds from the start of generation to the first token."""
    total_s: float = 0.0
    """Seconds the whole stream took."""
    waited_s: float = 0.0
    """Seconds spent waiting for the engine's lock before generating (`engine: local`)."""
    stopped: bool = False
    """The stream ended early (stop button, closed page)."""


class Engine(Protocol):
    """What the app and its tabs use of an engine (`engine: local` or `engine: openai`)."""

    base_model: str
    refused: dict[str, str]
    load_in_4bit: bool
    load_seconds: float

    @property
    def serving(self) -> str: ...

    @property
    def is_demo(self) -> bool: ...

    @property
    def adapter_names(self) -> list[str]: ...

    def load(self) -> "Engine": ...

    def adapter_revision(self, adapter: str) -> str | None: ...

    def stream(self, messages: Sequence[dict[str, str]], adapter: str = BASE,
               settings: GenerationSettings = GenerationSettings(), stop: threading.Event | None = None,
               stats: StreamStats | None = None) -> Iterator[str]: ...

    def generate(self, messages: Sequence[dict[str, str]], adapter: str = BASE,
                 settings: GenerationSettings = GenerationSettings()) -> str: ...

    # Optional, where the engine renders the prompt itself (`engine: local`): `prompt_tokens(messages, adapter)`,
    # the prompt's length in tokens, and `context_length`, the model's window; the app bounds the prompt with them.
