"""Helpers the tests share (the fixtures are in conftest.py): the repo's paths, the tiny Mistral tokenizer, data
files, the app started as a real process and driven in headless Chromium, and visitors at once."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from trainer.hub import local_server as serve

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


_WATCH_ANSWER = """() => {
    const chat = document.querySelector('#chatbot');
    const seen = window.__answerLengths = [];
    new MutationObserver(() => {
        const bots = chat.querySelectorAll('[data-testid="bot"]');
        if (!bots.length) return;
        const length = bots[bots.length - 1].innerText.length;
        if (!seen.length || seen[seen.length - 1] !== length) seen.push(length);
    }).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


def watch_answer(page) -> None:
    """From now on, record the length of the chat's last answer at every change the page renders (a
    MutationObserver): a fast stream can grow several times between two looks, so polling alone may miss its steps.
    Call it before Send; `answer_lengths` then returns what it recorded."""
    page.evaluate(_WATCH_ANSWER)


def answer_lengths(page, bot, timeout: float) -> list[int]:
    """The length of the answer `bot` at each change the page rendered (with `watch_answer` first; else at each look),
    until it has text and the streaming event has ended.

    Gradio marks a streaming event's outputs `generating` until the event ends. A pause between tokens on a busy
    machine is no end: a second Send while the first answer streams is ignored."""
    lengths = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        lengths.append(len(bot.inner_text()))
        if lengths[-1] > 0 and page.locator('[data-testid="status-tracker"].generating').count() == 0:
            break
        time.sleep(0.2)
    return page.evaluate("window.__answerLengths || null") or lengths


DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent
# Mistral-7B-Instruct-v0.3's own chat template (from its tokenizer_config.json), used as the reference the
# training template must reproduce.
MISTRAL_TEMPLATE = (DATA / "mistral_v0.3_chat_template.jinja").read_text(encoding="utf-8")


def sample_texts() -> list[str]:
    """The test dialogues' texts (the StudyAbroadGPT sample and the short dialogues): the tokenizer's corpus."""
    from trainer.data.conversations import read_dialogues
    from trainer.train.tiny import dialogue_texts

    return dialogue_texts(read_dialogues(DATA / "studyabroadgpt_sample.jsonl")
                          + read_dialogues(DATA / "short_dialogues.jsonl"))


def build_mistral_tokenizer():
    """A small SentencePiece-style BPE tokenizer with Mistral's special tokens and chat template."""
    from trainer.train.tiny import mistral_like_tokenizer

    return mistral_like_tokenizer(sample_texts(), MISTRAL_TEMPLATE, 600, byte_fallback=False)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


DEMO_CONFIG = REPO / "configs" / "demo.yaml"


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


def make_adapter(base_dir: Path, out: Path, seed: int, base_name: str | None = None, r: int = 8, alpha: int = 64,
                 targets: tuple[str, ...] = ("q_proj", "v_proj", "down_proj")) -> Path:
    """A LoRA adapter with random (non-zero) weights, saved like the trainer saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_name or str(base_dir)
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out
