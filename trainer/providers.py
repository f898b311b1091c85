"""OpenAI-compatible chat endpoints: the one client the generator and the eval's judge share.

`OpenAICompatibleProvider(base_url, model, api_key)` talks to any OpenAI-compatible endpoint (vLLM, TGI,
`transformers serve`, Gemini's and OpenAI's APIs, Hugging Face Inference Providers) through huggingface_hub's
`InferenceClient`. 429 waits for `Retry-After`; 408, 5xx, timeouts and refused connections back off exponentially;
anything else is one `ProviderError` line. The API key is passed in by the caller (read from the environment variable
the user named) and is never logged or written.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from trainer import UserError


JUDGE_MAX_TOKENS = 96
"""Tokens an LLM judge may answer with (its verdict line and a short reason), in the eval and the audit alike."""


class ProviderError(UserError, RuntimeError):
    """An endpoint failed in a way retrying does not fix; the message names the endpoint and the HTTP status."""


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    retries: int = 0

    def add(self, other: "Usage") -> None:
        for key in ("prompt_tokens", "completion_tokens", "requests", "retries"):
            setattr(self, key, getattr(self, key) + getattr(other, key))


_OFFLINE_ALLOWED: set[tuple[str, int | None]] = set()
_OFFLINE_LOCK = threading.Lock()


def allow_endpoint_when_offline(base_url: str) -> None:
    """`HF_HUB_OFFLINE=1` makes huggingface_hub refuse every request, even to a local endpoint the user named
    (`transformers serve`, vLLM on 127.0.0.1). Keep the Hub blocked and let exactly this endpoint's host through."""
    import httpx2
    from huggingface_hub import is_offline_mode, set_client_factory
    from huggingface_hub.utils import _http

    if not is_offline_mode():
        return
    url = httpx2.URL(base_url)
    with _OFFLINE_LOCK:
        first = not _OFFLINE_ALLOWED
        _OFFLINE_ALLOWED.add((url.host, url.port))
        if first:
            def request_hook(request):
                if (request.url.host, request.url.port) in _OFFLINE_ALLOWED:
                    return None
                return _http.hf_request_event_hook(request)  # the Hub and anything else: still refused

            set_client_factory(lambda: httpx2.Client(event_hooks={"request": [request_hook]}, follow_redirects=True,
                                                     timeout=None))


class OpenAICompatibleProvider:
    """Any OpenAI-compatible chat endpoint, through huggingface_hub's InferenceClient."""

    kind = "openai-compatible"

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, timeout: float = 120,
                 max_retries: int = 6, sleep: Callable[[float], None] = time.sleep):
        from huggingface_hub import InferenceClient

        self.base_url, self.model = base_url.rstrip("/"), model
        allow_endpoint_when_offline(self.base_url)
        self.client = InferenceClient(base_url=self.base_url, api_key=api_key, timeout=timeout)
        self.max_retries, self.sleep = max_retries, sleep

    @property
    def name(self) -> str:
        return f"{self.base_url} ({self.model or 'default model'})"

    def complete(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float,
                 extra_body: dict | None = None) -> tuple[str, Usage]:
        """One chat completion and its token usage; `extra_body` adds fields a server knows beyond OpenAI's own
        (vLLM's `repetition_penalty`)."""
        import httpx2  # huggingface_hub's HTTP client
        from huggingface_hub.errors import HfHubHTTPError

        usage = Usage()
        for attempt in range(self.max_retries + 1):
            try:
                out = self.client.chat_completion(messages, model=self.model, max_tokens=max_tokens,
                                                  temperature=temperature, extra_body=extra_body)
                usage.requests += 1
                if out.usage is not None:
                    usage.prompt_tokens += out.usage.prompt_tokens or 0
                    usage.completion_tokens += out.usage.completion_tokens or 0
                return out.choices[0].message.content or "", usage
            except HfHubHTTPError as exc:
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if status not in (408, 429, 500, 502, 503, 504) or attempt == self.max_retries:
                    raise ProviderError(f"{self.base_url}: HTTP {status}: {str(exc).splitlines()[0]}") from None
                header = exc.response.headers.get("Retry-After", "") if exc.response is not None else ""
                wait = _retry_after(header, default=min(30.0, 0.5 * 2 ** attempt))
            except (TimeoutError, OSError, httpx2.TransportError) as exc:  # refused, reset, timed out: retry
                if attempt == self.max_retries:
                    raise ProviderError(f"{self.base_url}: {exc}") from None
                wait = min(30.0, 0.5 * 2 ** attempt)
            usage.retries += 1
            self.sleep(wait)
        raise ProviderError(f"{self.base_url}: gave up")  # pragma: no cover - loop always returns or raises


def _retry_after(header: str, default: float) -> float:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), capped at 5 minutes."""
    header = header.strip()
    if not header:
        return default
    try:
        return min(300.0, max(0.0, float(header)))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        return min(300.0, max(0.0, parsedate_to_datetime(header).timestamp() - time.time()))
    except (TypeError, ValueError):
        return default
