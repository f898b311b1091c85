"""The one engine interface: what writes a model's answers, whichever model and wherever it runs.

An engine answers for the base (`BASE`) or any adapter it serves, by name: `stream` yields one answer as it grows (the
app's chat), `generate` gives it whole, `answer_all` answers many conversations at once, in order, with their token
counts and time (the eval's pass over its questions; the app's engines too). The kinds are `ENGINE_KINDS`: `local`,
the models loaded in this process (`LocalEngine` here for a bare `AdapterModel`; the app's `space.engine.
InferenceEngine` adds its adapter registry, its lock and its worker thread), and `openai`, an OpenAI-compatible server
(the app's `space.remote_engine.OpenAIEngine`; the eval's `trainer.eval.engine.ServerEngine`). Each raises
`EngineUnavailable` when it cannot answer now and fills in `StreamStats` while it streams.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence, runtime_checkable

from trainer import UserError
from trainer.inference.model import BASE, BatchAnswers, GenerationSettings
from trainer.providers import Usage

ENGINE_KINDS = ("local", "openai")
"""Who writes the answers, in the app and the eval alike: the models loaded in-process (`local`), or an
OpenAI-compatible server (`openai`: vLLM, TGI, `transformers serve`)."""

Progress = Callable[[int, int], None]
"""`progress(done, total)`, called as answers of a pass are written."""


class EngineUnavailable(UserError, RuntimeError):
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


@runtime_checkable
class Engine(Protocol):
    """What the app, its tabs and the eval use of an engine (`engine: local` or `engine: openai`)."""

    base_model: str

    @property
    def adapter_names(self) -> list[str]: ...

    def stream(self, messages: Sequence[dict[str, str]], adapter: str = BASE,
               settings: GenerationSettings = GenerationSettings(), stop: threading.Event | None = None,
               stats: StreamStats | None = None) -> Iterator[str]: ...

    def generate(self, messages: Sequence[dict[str, str]], adapter: str = BASE,
                 settings: GenerationSettings = GenerationSettings()) -> str: ...

    def answer_all(self, conversations: Sequence[Sequence[dict[str, str]]], adapter: str = BASE,
                   settings: GenerationSettings = GenerationSettings(), *,
                   progress: Progress | None = None) -> BatchAnswers: ...


class LocalEngine:
    """An engine over an `AdapterModel` loaded in this process, without a lock: one caller at a time (the eval, the
    generator's local model)."""

    def __init__(self, served, batch_size: int = 8):
        self.served, self.batch_size = served, batch_size

    @property
    def base_model(self) -> str:
        return self.served.ref.name

    @property
    def adapter_names(self) -> list[str]:
        return self.served.adapter_names

    def stream(self, messages: Sequence[dict[str, str]], adapter: str = BASE,
               settings: GenerationSettings = GenerationSettings(), stop: threading.Event | None = None,
               stats: StreamStats | None = None) -> Iterator[str]:
        """Yield the answer as it grows, generated on a thread of its own."""
        stop = stop or threading.Event()
        stats = stats if stats is not None else StreamStats()
        answer = self.served.stream(messages, adapter, settings, stop)
        stats.prompt_tokens = answer.prompt_tokens
        worker = threading.Thread(target=answer.run, daemon=True)
        worker.start()
        yield from follow_stream(answer, worker.join, stop, stats, time.time())

    def generate(self, messages: Sequence[dict[str, str]], adapter: str = BASE,
                 settings: GenerationSettings = GenerationSettings()) -> str:
        return self.answer_all([messages], adapter, settings).texts[0]

    def answer_all(self, conversations: Sequence[Sequence[dict[str, str]]], adapter: str = BASE,
                   settings: GenerationSettings = GenerationSettings(), *, progress: Progress | None = None,
                   cache=None, keys: Sequence | None = None) -> BatchAnswers:
        """Left-padded batches of `batch_size` prompts (`AdapterModel.generate`). With a `TurnCache` and each row's
        conversation in `keys`, the earlier turns of a conversation answered turn by turn are not computed again."""
        return self.served.generate(conversations, adapter, settings, batch_size=self.batch_size, progress=progress,
                                    cache=cache, keys=keys)


def follow_stream(answer, wait: Callable[[], None], stop: threading.Event, stats: StreamStats,
                  started: float) -> Iterator[str]:
    """Yield a streamed answer's text (`AdapterModel.stream`) while another thread runs it, filling in `stats`; a
    consumer that leaves early stops the generation. `wait()` returns once that thread is done; an error the
    generation raised is raised here after it."""
    finished = False
    try:
        for text in answer:
            if stats.first_token_s is None:
                stats.first_token_s = time.time() - started
            yield text
        finished = True
    finally:
        if not finished:  # the consumer left early (stop button, closed page): end the generation now
            stop.set()
        stats.stopped = stop.is_set()
        wait()
        stats.new_tokens = answer.new_tokens
        stats.total_s = time.time() - started
    if answer.error is not None:
        raise answer.error


def answer_concurrently(answer_one: Callable[[Sequence[dict[str, str]]], tuple[str, Usage]],
                        conversations: Sequence[Sequence[dict[str, str]]], concurrency: int,
                        progress: Progress | None = None) -> BatchAnswers:
    """`answer_all` for an engine that answers one conversation per request: `concurrency` requests in flight,
    `answer_one(messages) -> (text, usage)`; the first failure ends the pass."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    total = len(conversations)
    texts, usages = [""] * total, [Usage()] * total
    started, done, step = time.time(), 0, max(1, concurrency)
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="engine")
    try:
        pending = {pool.submit(answer_one, list(messages)): i for i, messages in enumerate(conversations)}
        for future in as_completed(pending):
            i = pending[future]
            texts[i], usages[i] = future.result()
            done += 1
            if progress is not None and (done % step == 0 or done == total):
                progress(done, total)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return BatchAnswers(texts, [u.completion_tokens for u in usages], [u.prompt_tokens for u in usages],
                        time.time() - started, [u.retries for u in usages])
