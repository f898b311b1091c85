"""`engine: openai`: the app streaming from an OpenAI-compatible server.

Fast tests drive `space.remote_engine.OpenAIEngine` against a small local HTTP server that speaks the chat
completions stream and answers with the failures a real server gives (429, 5xx, 404, slowness), and the Gradio app
built around it. The slow ones start a real `transformers serve` on the demo model (and a copy of it with a LoRA
adapter merged, served under its own name), launch `python app.py` with `engine: openai`, and drive it over HTTP and
in headless Chromium.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from helpers import answer_lengths, at_once, chromium, launch_app, open_app, stop_app, watch_answer
from stub_servers import stub_server, url_of

from trainer.hub import local_server as serve
from space.display import is_note, message_text
from trainer.inference.engine import EngineUnavailable, StreamStats
from space.registry import AdapterRegistry
from space.remote_engine import OpenAIEngine
from trainer.inference.model import BASE, GenerationSettings
from trainer.typed_yaml import ConfigError
from trainer.hub.space_settings import load_space_config

SYSTEM = "You are a careful study-abroad counsellor."
KEY = "sk-test-0123456789abcdef"
UNAVAILABLE = "⚠ No answer: the model server did not respond"


@pytest.fixture
def stub():
    with stub_server() as server:
        yield server


def space_config(base_url: str, *extra: str, api_key_env: str | None = None):
    overrides = ["engine=openai", f"openai.base_url={base_url}", "base_model=served-base", "openai.timeout_s=2",
                 "adapters=[{name: counsellor, served_name: counsellor-lora}, {name: plain}]",
                 "grounding.enabled=false", "grounding.check_answers=false", *extra]
    if api_key_env:
        overrides.append(f"openai.api_key_env={api_key_env}")
    return load_space_config(None, overrides)


def engine_for(base_url: str, *extra: str, api_key_env: str | None = None) -> OpenAIEngine:
    cfg = space_config(base_url, *extra, api_key_env=api_key_env)
    return OpenAIEngine.from_config(cfg, AdapterRegistry.from_config(cfg)).load()


QUESTION = [{"role": "user", "content": "Do I need a visa?"}]


# Settings


def test_the_openai_settings_are_typed_and_checked_by_key():
    cfg = space_config("http://127.0.0.1:8000/v1")
    assert cfg.engine == "openai" and cfg.openai.timeout_s == 2
    assert [(a.name, a.served_name) for a in cfg.adapters] == [("counsellor", "counsellor-lora"), ("plain", None)]
    with pytest.raises(ConfigError, match=r"^space config: engine: 'vllm' must be one of local, openai$"):
        load_space_config(None, ["engine=vllm"])
    with pytest.raises(ConfigError, match="openai.base_served_name: set it"):
        load_space_config(None, ["engine=openai"])
    with pytest.raises(ConfigError, match="openai.base_url: 'localhost:8000' is not an http"):
        load_space_config(None, ["engine=openai", "base_model=b", "openai.base_url=localhost:8000"])
    with pytest.raises(ConfigError, match="openai.timeout_s: must be positive"):
        load_space_config(None, ["engine=openai", "base_model=b", "openai.timeout_s=0"])
    # an adapter without path or repo lives on the server only: fine for `openai`, not for `local`
    with pytest.raises(ConfigError, match=r"adapters\[0\] \(a\): set exactly one of path"):
        load_space_config(None, ["adapters=[{name: a}]"])


def test_a_key_pasted_where_the_variable_name_belongs_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as caught:
        load_space_config(None, ["engine=openai", "base_model=b", f"openai.api_key_env={KEY}"])
    assert "openai.api_key_env" in str(caught.value) and KEY not in str(caught.value)


def test_a_named_but_unset_key_variable_is_one_line_naming_it(monkeypatch):
    monkeypatch.delenv("E16_MISSING_KEY", raising=False)
    with pytest.raises(ConfigError, match="openai.api_key_env: the environment variable E16_MISSING_KEY is not set"):
        engine_for("http://127.0.0.1:8000/v1", api_key_env="E16_MISSING_KEY")


# The engine against a stub server


def test_each_adapter_is_the_model_field_and_the_answer_streams(stub):
    engine = engine_for(url_of(stub))
    assert engine.adapter_names == ["counsellor", "plain"] and engine.refused == {}
    stats = StreamStats()
    growing = list(engine.stream(QUESTION, "counsellor", GenerationSettings(max_new_tokens=16, temperature=0),
                                 stats=stats))
    assert growing[-1] == "Answer from counsellor-lora about your question"
    assert len(growing) > 1 and all(b.startswith(a) for a, b in zip(growing, growing[1:]))
    assert stats.new_tokens == len(growing) and stats.first_token_s is not None
    assert engine.generate(QUESTION, "plain") == "Answer from plain about your question"
    assert engine.generate(QUESTION, BASE) == "Answer from served-base about your question"
    from trainer.eval.engine import ServerEngine
    from trainer.inference.engine import Engine

    batch = engine.answer_all([QUESTION, QUESTION], "plain", GenerationSettings(max_new_tokens=16, temperature=0))
    assert batch.texts == ["Answer from plain about your question"] * 2 and all(n > 0 for n in batch.new_tokens)
    evaluator = ServerEngine(url_of(stub), {BASE: "served-base", "plain": "plain"})
    assert isinstance(engine, Engine) and isinstance(evaluator, Engine)  # the app's and the eval's: one interface
    sent = stub.requests[0]["body"]
    assert sent["model"] == "counsellor-lora" and sent["stream"] is True and sent["max_tokens"] == 16
    assert sent["temperature"] == 0 and "repetition_penalty" not in sent  # not an OpenAI field
    assert sent["messages"] == QUESTION


@pytest.mark.parametrize("status, expected", [
    (429, "The model server is busy right now (too many requests). Please try again in a minute."),
    (500, "The model server had an error (HTTP 500). Please try again in a moment."),
    (503, "The model server had an error (HTTP 503). Please try again in a moment."),
    (404, "The model server does not serve 'counsellor' (no model named 'counsellor-lora')."),
])
def test_server_failures_become_one_line_for_the_visitor(stub, status, expected, capsys):
    stub.status = status
    engine = engine_for(url_of(stub))
    with pytest.raises(EngineUnavailable) as caught:
        list(engine.stream(QUESTION, "counsellor"))
    message = str(caught.value)
    assert message.startswith(expected) and "\n" not in message and "Traceback" not in message
    log = capsys.readouterr().out
    assert log.startswith(f"[engine] {url_of(stub)} model 'counsellor-lora': ") and log.count("\n") == 1


def test_a_slow_server_times_out_and_nothing_listening_is_unreachable(stub):
    stub.delay = 3  # longer than openai.timeout_s between two tokens
    with pytest.raises(EngineUnavailable, match=r"^The model server did not answer within 2 s\."):
        list(engine_for(url_of(stub)).stream(QUESTION, "plain"))
    with pytest.raises(EngineUnavailable, match=r"^The model server cannot be reached right now\."):
        list(engine_for(f"http://127.0.0.1:{serve.free_port()}/v1").stream(QUESTION, "plain"))


def test_the_key_goes_to_the_server_only(stub, monkeypatch, capsys):
    monkeypatch.setenv("E16_SERVER_KEY", KEY)
    engine = engine_for(url_of(stub), api_key_env="E16_SERVER_KEY")
    assert engine.generate(QUESTION, "plain").startswith("Answer from plain")
    assert stub.requests[-1]["auth"] == f"Bearer {KEY}"
    assert KEY not in repr(engine) and KEY not in str(engine.settings)
    stub.status = 500
    with pytest.raises(EngineUnavailable) as caught:
        engine.generate(QUESTION, "plain")
    assert KEY not in str(caught.value) and KEY not in capsys.readouterr().out


def test_many_streams_at_once_share_no_lock(stub):
    stub.delay = 0.1  # 6 words: each stream takes ~0.6 s; one after the other, 8 would take ~5 s
    engine = engine_for(url_of(stub))
    spans, answers = [], []

    def visitor(n: int) -> None:
        started = time.time()
        answers.append(engine.generate([{"role": "user", "content": f"question {n}"}], "counsellor"))
        spans.append((started, time.time()))

    threads = [threading.Thread(target=visitor, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(answers) == 8 and set(answers) == {"Answer from counsellor-lora about your question"}
    assert max(start for start, _ in spans) < min(end for _, end in spans)  # all eight were streaming together


def test_an_adapter_with_local_files_is_identified_by_their_hash_and_served_under_its_name(stub, tmp_path):
    from trainer.data.conversations import file_sha256

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    engine = engine_for(url_of(stub), f"adapters=[{{name: local-one, path: {folder}}}]")
    assert engine.adapter_revision("local-one") == "sha256:" + file_sha256(folder / "adapter_model.safetensors")
    assert engine.generate(QUESTION, "local-one") == "Answer from local-one about your question"


def test_the_app_shows_a_failure_as_a_note_and_answers_again_when_the_server_is_back(stub, tmp_path, monkeypatch):
    from gradio_client import Client

    from app import build_app
    from trainer.data.feedback import FeedbackStore

    monkeypatch.setenv("E16_SERVER_KEY", KEY)
    cfg = space_config(url_of(stub), f"feedback.store={tmp_path / 'feedback.sqlite'}", api_key_env="E16_SERVER_KEY")
    registry = AdapterRegistry.from_config(cfg)
    engine = OpenAIEngine.from_config(cfg, registry).load()
    store = FeedbackStore(tmp_path / "feedback.sqlite")
    demo = build_app(registry, engine, store, cfg)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        stub.status = 503
        history, _ = client.predict("Do I need a visa?", [], "counsellor", False, SYSTEM, 0, 0.9, 32,
                                    api_name="/chat")
        notes = [m for m in history if is_note(m)]
        assert [m["metadata"]["title"] for m in notes] == [UNAVAILABLE]
        assert message_text(notes[0]).startswith("The model server had an error (HTTP 503).")
        stub.status = 200
        history, _ = client.predict("Do I need a visa?", history, "counsellor", False, SYSTEM, 0, 0.9, 32,
                                    api_name="/chat")
        assert message_text(history[-1]) == "Answer from counsellor-lora about your question"
        assert not is_note(history[-1])
        # the failed exchange is not sent back to the model as if it had been answered
        assert stub.requests[-1]["body"]["messages"][1:] == [{"role": "user", "content": "Do I need a visa?"}]
        left, right = client.predict("Do I need a visa?", BASE, "plain", False, SYSTEM, 0, 0.9, 32,
                                     api_name="/compare")
        assert left.startswith("Answer from served-base") and right.startswith("Answer from plain")
        status, _, _ = client.predict(history, {}, "", "", True, "counsellor", SYSTEM, 0, 0.9, 32, "",
                                      api_name="/feedback")
        assert status.startswith("Saved")
        record = store.records()[0]
        assert record.base_model == "served-base" and record.adapter == "counsellor"
        assert record.adapter_revision is None  # lives on the server only: nothing here identifies its weights
        assert stub.requests[-1]["auth"] == f"Bearer {KEY}"
    finally:
        demo.close()
        store.close()
    for path in tmp_path.rglob("*"):  # the store and its JSONL copy: no key anywhere
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path


# A real server: `transformers serve`


@pytest.fixture(scope="module")
def merged_adapter_dir(demo_model_dir, tmp_path_factory) -> Path:
    """The demo model with a LoRA adapter (random, non-zero) merged in: served under its own name, as vLLM serves an
    adapter under its `--lora-modules` name."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("merged") / "counsellor-merged"
    shutil.copytree(demo_model_dir, folder)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32)
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    lora.merge_and_unload().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def served_models(demo_model_dir, merged_adapter_dir, tmp_path_factory):
    """One unpinned `transformers serve`: the base under its folder's path, the merged adapter under its own."""
    with serve.transformers_serve(demo_model_dir, tmp_path_factory.mktemp("engine-served"), pinned=False) as (
            base_url, base):
        yield base_url, base, str(merged_adapter_dir)


@pytest.fixture(scope="module")
def openai_app(served_models, tmp_path_factory):
    """`python app.py` with `engine: openai` pointed at the real server; 16 generations at once."""
    base_url, base, merged = served_models
    root = tmp_path_factory.mktemp("openai-app")
    (root / "space.yaml").write_text(
        f"engine: openai\nopenai:\n  base_url: {base_url}\n  base_served_name: {base}\n  timeout_s: 120\n"
        "adapters:\n  - name: missing\n    served_name: no-such-model\n"
        f"  - name: counsellor\n    served_name: {merged}\n    description: merged adapter\n"  # the default: last
        "limits:\n  concurrency: 16\ngeneration:\n  temperature: 0\n  max_new_tokens: 16\n"
        "grounding:\n  enabled: false\n  check_answers: false\n"
        f"feedback:\n  store: {root / 'feedback.sqlite'}\n", encoding="utf-8")
    proc, url = launch_app(root / "space.yaml", env={"HF_HUB_OFFLINE": "1"})
    try:
        yield url
    finally:
        stop_app(proc)


def real_chat(client, question, adapter, history=(), max_new_tokens=16):
    return client.predict(question, list(history), adapter, False, SYSTEM, 0, 0.9, max_new_tokens, api_name="/chat")


def test_each_served_model_answers_through_the_app(openai_app):
    from gradio_client import Client

    client = Client(openai_app, verbose=False)
    answers = {}
    for adapter in (BASE, "counsellor"):
        job = client.submit("How do I open a bank account abroad?", [], adapter, False, SYSTEM, 0, 0.9, 16,
                            api_name="/chat")
        updates = list(job)
        history, _ = job.result()
        assert [m["role"] for m in history] == ["user", "assistant"] and not is_note(history[-1])
        answers[adapter] = message_text(history[-1])
        assert answers[adapter].strip()
        assert len(updates) >= 3  # streamed: the question, then the answer growing
    assert answers[BASE] != answers["counsellor"]  # the request's model field chose the (merged) weights
    history, _ = real_chat(client, "How do I open a bank account abroad?", "missing")
    notes = [m for m in history if is_note(m)]
    assert [m["metadata"]["title"] for m in notes] == [UNAVAILABLE]
    assert message_text(notes[0]).startswith("The model server")
    history, _ = real_chat(client, "And a phone contract?", "counsellor")  # still serving after the failure
    assert message_text(history[-1]).strip() and not is_note(history[-1])


def test_eight_visitors_stream_at_once(openai_app):
    from gradio_client import Client

    def visitor(n: int) -> tuple[str, tuple[float, float, float]]:
        client = Client(openai_app, verbose=False)
        started = time.time()
        job = client.submit(f"Question {n}: how do I find housing?", [], "counsellor" if n % 2 else BASE,
                            False, SYSTEM, 0, 0.9, 16, api_name="/chat")
        first = None
        for history, _ in job:
            if first is None and history and message_text(history[-1]).strip():
                first = time.time()
        return message_text(job.result()[0][-1]), (started, first or time.time(), time.time())

    results = at_once(8, visitor, timeout=600)
    answers, spans = {n: a for n, (a, _) in results.items()}, {n: s for n, (_, s) in results.items()}
    assert len(answers) == 8 and all(a.strip() for a in answers.values())
    # no global lock in the app: all eight were in flight together
    assert max(start for start, _, _ in spans.values()) < min(end for _, _, end in spans.values())


def test_a_stopped_server_is_one_message_and_the_app_recovers_when_it_returns(demo_model_dir, tmp_path):
    from gradio_client import Client

    from app import build_app

    port = serve.free_port()
    work = tmp_path / "served"
    base = str(work / Path(demo_model_dir).name)  # the name the server below will serve the base under
    cfg = load_space_config(None, ["engine=openai", f"openai.base_url=http://127.0.0.1:{port}/v1",
                                   f"openai.base_served_name={base}", "feedback.enabled=false",
                                   "grounding.enabled=false", "grounding.check_answers=false"])
    registry = AdapterRegistry.from_config(cfg)
    demo = build_app(registry, OpenAIEngine.from_config(cfg, registry).load(), None, cfg)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        history, _ = real_chat(client, "Is health insurance compulsory?", BASE)
        assert [m["metadata"]["title"] for m in history if is_note(m)] == [UNAVAILABLE]
        assert message_text(history[-1]) == "The model server cannot be reached right now. Please try again in a " \
                                            "moment."
        with serve.transformers_serve(demo_model_dir, work, port=port):
            history, _ = real_chat(client, "Is health insurance compulsory?", BASE)
            assert message_text(history[-1]).strip() and not is_note(history[-1])
        history, _ = real_chat(client, "Is health insurance compulsory?", BASE)  # stopped again
        assert [m["metadata"]["title"] for m in history if is_note(m)] == [UNAVAILABLE]
    finally:
        demo.close()


def test_in_a_browser_an_answer_streams_from_the_server(openai_app, tmp_path):
    with chromium() as browser:
        page = open_app(browser, openai_app)
        assert "on an OpenAI-compatible server" in page.inner_text("body")
        page.fill("#question textarea", "How do I open a bank account abroad?")
        watch_answer(page)
        page.click("#send")
        bot = page.locator('#chatbot [data-testid="bot"]').last
        bot.wait_for(timeout=120_000)
        lengths = answer_lengths(page, bot, 120)
        assert len(set(lengths)) >= 3, f"answer did not stream: {lengths}: {bot.inner_text()!r}"
        assert UNAVAILABLE not in page.inner_text("#chatbot")
