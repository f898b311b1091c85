"""ZeroGPU: the app on a free ZeroGPU Space, where CUDA exists only inside calls decorated with `spaces.GPU`.

On ZeroGPU (`SPACES_ZERO_GPU=true`, the variable the `spaces` package itself reads) the `spaces` package is imported
before anything touches torch, so the base loads "onto CUDA" at start-up as the package arranges (its tensors are
packed and moved to a real GPU when a call gets one); each answer then streams from a generator decorated with
`spaces.GPU`, which `spaces` runs in a worker process holding a GPU for the call. That worker keeps the one loaded
base with every adapter (the engine switches adapters per request, nothing reloads), and what comes back are plain
strings, so streaming works as anywhere else.

The GPU time a call asks for is `gpu_duration(max_new_tokens)`: a fixed overhead plus the answer's tokens at a
conservative speed, capped. A visitor whose daily quota is used up (or who asked for more than ZeroGPU allows) gets
the `spaces` package's own message as one line under the answer (`trainer.inference.engine.EngineUnavailable`), never a
traceback.

Off ZeroGPU nothing changes: `serve_on_zerogpu` returns the engine as it is and `spaces` is never imported (it need
not be installed).
"""

from __future__ import annotations

import math
import os
import time
from typing import Iterator, Sequence

from trainer.inference.engine import EngineUnavailable, StreamStats
from trainer.inference.model import BASE, GenerationSettings

OVERHEAD_S = 15
"""Seconds a call needs besides its tokens: the worker taking the GPU (the base's weights moved onto it on a cold
call) and the prompt's prefill."""
TOKENS_PER_S = 10
"""A conservative decode speed for the 4-bit 7B base decoding eagerly on half an H200 (bitsandbytes' NF4 kernels);
a faster base only finishes early, and the unused time is not charged."""
MAX_DURATION_S = 120
"""The most one call asks for: longer requests wait longer in ZeroGPU's queue and a visitor's quota runs out sooner."""
TRUE = ("1", "t", "true")


def on_zerogpu(environ=None) -> bool:
    """Whether this process runs on a ZeroGPU Space: `SPACES_ZERO_GPU` true, as `spaces.config` reads it."""
    environ = os.environ if environ is None else environ
    return (environ.get("SPACES_ZERO_GPU") or "").lower() in TRUE


def gpu_duration(max_new_tokens: int) -> int:
    """Seconds of GPU one answer asks ZeroGPU for: `OVERHEAD_S + max_new_tokens / TOKENS_PER_S`, at most
    `MAX_DURATION_S` (384 tokens: 54 s; the 1,024-token limit: 118 s)."""
    return min(MAX_DURATION_S, OVERHEAD_S + math.ceil(max(0, max_new_tokens) / TOKENS_PER_S))


def call_duration(messages, adapter: str = BASE, settings: GenerationSettings = GenerationSettings()) -> int:
    """`spaces.GPU`'s `duration`: called by `spaces` with the arguments of each call, before it asks for a GPU."""
    return gpu_duration(settings.max_new_tokens)


def prepare() -> None:
    """First thing on ZeroGPU: import `spaces`, which must patch torch before anything touches CUDA."""
    import spaces  # noqa: F401  (imported for its effect: ZeroGPU's torch patching)


def decode_mode(decode: str) -> str:
    """The decode mode on ZeroGPU: eager. The compiled decode compiles and captures its graphs at start-up, where
    ZeroGPU lends no GPU; said in one line when `compiled` was asked for."""
    if decode == "compiled":
        print("[zerogpu] decode: compiled needs a GPU at start-up, which ZeroGPU only lends inside a call; "
              "answers decode eagerly", flush=True)
    return "eager"


def visitor_line(exc: BaseException) -> str:
    """One line for the visitor from an error the `spaces` package raised (its title, then its text)."""
    title = getattr(exc, "title", "") or "ZeroGPU"
    # str() of the message: `spaces`' HTML messages are str subclasses whose str() is their plain-text twin
    text = " ".join(str(getattr(exc, "message", exc)).split())
    return f"{title}: {text}" if text else title


def is_zerogpu_error(exc: BaseException) -> bool:
    """An error `spaces` raised for the visitor (quota, duration, queue, worker), not one of the app's own."""
    return str(getattr(exc, "title", "") or "").startswith("ZeroGPU")


class ZeroGPUEngine:
    """An engine whose answers stream from inside `spaces.GPU`; everything else is the wrapped engine's."""

    def __init__(self, engine):
        import spaces

        self.engine = engine
        # Decorated once, before the app launches: `spaces` reports its decorated functions at launch.
        self._on_gpu = spaces.GPU(duration=call_duration)(self._answer_on_gpu)

    def __getattr__(self, name):  # only for what this class does not define: the wrapped engine's
        if name == "engine":
            raise AttributeError(name)
        return getattr(self.engine, name)

    @property
    def serving(self) -> str:
        return f"{self.engine.serving}, on ZeroGPU"

    def _answer_on_gpu(self, messages, adapter: str = BASE, settings: GenerationSettings = GenerationSettings()):
        """Runs in `spaces`' GPU worker: yields (answer so far, None), then (answer, its StreamStats) at the end."""
        stats = StreamStats()
        text = ""
        for text in self.engine.stream(messages, adapter, settings, stats=stats):
            yield text, None
        yield text, stats

    def stream(self, messages: Sequence[dict[str, str]], adapter: str = BASE,
               settings: GenerationSettings = GenerationSettings(), stop=None,
               stats: StreamStats | None = None) -> Iterator[str]:
        """Yield the answer as it grows, generated on a GPU ZeroGPU lends for this call. A refusal from ZeroGPU
        (quota used up, duration too long, no GPU in time) is an EngineUnavailable with its one line."""
        started = time.time()
        calls = self._on_gpu([dict(m) for m in messages], adapter, settings)
        try:
            for text, final in calls:
                if final is not None:
                    if stats is not None:
                        stats.prompt_tokens, stats.new_tokens = final.prompt_tokens, final.new_tokens
                        stats.first_token_s, stats.waited_s = final.first_token_s, final.waited_s
                    continue
                if stop is not None and stop.is_set():
                    if stats is not None:
                        stats.stopped = True
                    break
                yield text
        except Exception as exc:
            if is_zerogpu_error(exc):
                raise EngineUnavailable(visitor_line(exc)) from None
            raise
        finally:
            calls.close()  # a visitor who left: `spaces` tells its worker to stop generating
            if stats is not None:
                stats.total_s = time.time() - started


def serve_on_zerogpu(engine):
    """The engine the app serves with: on ZeroGPU, its answers generated inside `spaces.GPU`; elsewhere, itself."""
    if not on_zerogpu():
        return engine
    print(f"[zerogpu] answers run inside spaces.GPU, asking for {OVERHEAD_S} s + max new tokens / {TOKENS_PER_S} "
          f"per second (at most {MAX_DURATION_S} s) per call", flush=True)
    return ZeroGPUEngine(engine)
