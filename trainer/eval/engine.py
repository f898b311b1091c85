"""`eval --engine openai`: every model's answers from an OpenAI-compatible server (vLLM, TGI, `transformers serve`)
instead of the models loaded in this process.

The server holds the base and the run's adapters, and the request's `model` field picks one: the base under its
served name, each adapter as `adapter_served_name` spells it (`{run}/{stage}`, what the app's `engine: openai` sends
and `vllm --lora-modules demo/stage1=...` serves). The requests carry the messages the in-process eval renders (the
system prompt; with --grounded, the grounded system message), greedy with the same max_new_tokens, `concurrency` of
them in flight so the server can batch them. The chat template is the server's. Requests go through the client the
generator and the judge share (`trainer.providers`: retries on 429/5xx, the named server let through when
HF_HUB_OFFLINE is set; `trainer.inference.endpoint.EndpointEngine`, which the generator's endpoint answers through
too); a failure becomes one EvalError line naming the server and the model.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from trainer.eval import EvalError
from trainer.inference.endpoint import EndpointEngine
from trainer.inference.model import BASE, BatchAnswers, GenerationSettings
from trainer.train.rundir import adapter_name


def served_names(job, stages: Sequence[Any], run_name: str) -> dict[str, str]:
    """Each model's `model` name on the server: `base` first, then every stage's adapter."""
    if job.base_served_name:
        base = job.base_served_name
    else:
        from trainer.train.rundir import base_hub_id

        base = base_hub_id(stages[-1])[0]  # what `python -m trainer serve` starts vLLM with
    return {BASE: base, **{s.name: adapter_name(run_name, s.name, job.adapter_served_name) for s in stages}}


class ServerEngine(EndpointEngine):
    """The eval's answers from an OpenAI-compatible server: greedy, `concurrency` requests in flight, a failure one
    EvalError line naming the server and the model."""

    def __init__(self, base_url: str, models: dict[str, str], *, api_key: str | None = None, concurrency: int = 16,
                 timeout: float = 600.0, send_repetition_penalty: bool = True, max_retries: int = 4,
                 api_key_env: str | None = None):
        super().__init__(base_url, models, api_key=api_key, concurrency=concurrency, timeout=timeout,
                         max_retries=max_retries, send_repetition_penalty=send_repetition_penalty)
        self.api_key_env = api_key_env

    @classmethod
    def from_job(cls, job, stages: Sequence[Any], run_name: str) -> "ServerEngine":
        """The engine `engine: openai` describes, the key read from `api_key_env`."""
        api_key = None
        if job.api_key_env:
            api_key = os.environ.get(job.api_key_env) or None
            if api_key is None:
                raise EvalError(f"api_key_env: the environment variable {job.api_key_env} is not set")
        return cls(job.base_url, served_names(job, stages, run_name), api_key=api_key, concurrency=job.concurrency,
                   timeout=job.timeout, send_repetition_penalty=job.send_repetition_penalty,
                   api_key_env=job.api_key_env)

    def check(self) -> None:
        """One one-token request per model, without retries: a server that is down, or that does not serve one of
        the models, fails now in one line, not after the first model's answers."""
        from trainer.providers import OpenAICompatibleProvider

        for name, served in self.models.items():
            probe = OpenAICompatibleProvider(self.base_url, served, self._api_key, timeout=min(60.0, self._timeout),
                                             max_retries=0)
            self._ask(probe, name, [{"role": "user", "content": "Hello"}], 1, 0.0, None)

    def answer_all(self, conversations: Sequence[Sequence[dict[str, str]]], adapter: str = BASE,
                   settings: GenerationSettings = GenerationSettings(), *,
                   progress: Callable[[int, int], None] | None = None) -> BatchAnswers:
        """The next answer of each conversation from model `adapter`, as the in-process engine gives them (in order,
        with new-token counts from the server's usage; `seconds` is the wall time of the whole pass)."""
        if settings.temperature > 0:
            raise EvalError("the eval decodes greedily (temperature 0)")  # the eval's rule, not a server limit
        return super().answer_all(conversations, adapter, settings, progress=progress)

    def failed(self, name: str, detail: str) -> EvalError:
        served = self.models[name]
        detail = detail.removeprefix(f"{self.base_url}: ")
        hint = ""
        if "HTTP 404" in detail:
            hint = (" (is it served? vLLM: --lora-modules NAME=ADAPTER_DIR; or set base_served_name / "
                    "adapter_served_name)")
        return EvalError(f"engine openai: {self.base_url}, model {served!r} ({name}): {detail[:300]}{hint}")

    def describe(self) -> dict[str, Any]:
        """Which engine wrote the answers, as results.json records it (the key's variable name only)."""
        return {"name": "openai", "base_url": self.base_url, "models": dict(self.models),
                "api_key_env": self.api_key_env, "concurrency": self.concurrency, "timeout_s": self._timeout,
                "repetition_penalty": "sent" if self.send_repetition_penalty else "the server's default",
                "chat_template": "the server's"}
