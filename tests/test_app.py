"""The real app: launched with `python app.py` on the demo model with freshly trained demo adapters, driven over HTTP
with gradio_client and in headless Chromium."""

from __future__ import annotations

import threading

import pytest
from helpers import REPO, answer_lengths, chromium, launch_app, open_app, stop_app, watch_answer

from space.display import is_note, message_text

SYSTEM = "You are a careful study-abroad counsellor."


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, short_demo_run):
    """Serve the briefly trained demo adapters with `python app.py` in a subprocess."""
    root = tmp_path_factory.mktemp("app")
    (root / "space.yaml").write_text(
        f"runs_dir: {short_demo_run.parent}\nlimits:\n  max_input_chars: 500\n  max_history_turns: 2\n"
        "generation:\n  temperature: 0\n  max_new_tokens: 96\n"  # greedy: the browser test sees the same answer
        f"feedback:\n  store: {root / 'feedback.sqlite'}\n")
    proc, url = launch_app(root / "space.yaml")
    try:
        yield url
    finally:
        stop_app(proc)


@pytest.fixture
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def chat(client, question, adapter, history=(), max_new_tokens=24, ground=False):
    return client.predict(question, list(history), adapter, ground, SYSTEM, 0, 0.9, max_new_tokens,
                          api_name="/chat")


def turns(history):
    """The dialogue without the app's notes (a correction above an answer; sources, KB warnings under it)."""
    return [m for m in history if not is_note(m)]


@pytest.mark.parametrize("adapter", ["base", "demo/stage1", "demo/stage2"])
def test_chat_with_each_adapter_streams_an_answer(client, adapter):
    job = client.submit("How do I open a bank account abroad?", [], adapter, False, SYSTEM, 0, 0.9, 24,
                        api_name="/chat")
    updates = [out for out in job]
    history, textbox = job.result()
    assert textbox == ""
    history = turns(history)
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert message_text(history[0]) == "How do I open a bank account abroad?"
    assert message_text(history[1]).strip()
    assert len(updates) > 2  # streamed in pieces, not in one block


def test_adapters_are_selectable_and_differ_from_the_base(client):
    info = client.view_api(return_format="dict")["named_endpoints"]["/chat"]["parameters"]
    adapter_param = next(p for p in info if p["parameter_name"] == "adapter")
    assert set(adapter_param["type"]["enum"]) == {"base", "demo/stage1", "demo/stage2"}
    answers = {a: message_text(turns(chat(client, "What is a CAS number?", a, max_new_tokens=16)[0])[1])
               for a in ("base", "demo/stage2")}
    assert answers["base"] != answers["demo/stage2"]


def test_compare_streams_both_answers(client):
    left, right = client.predict("Is the GRE required?", "base", "demo/stage1", True, SYSTEM, 0, 0.9, 16,
                                 api_name="/compare")
    assert left.strip() and right.strip()
    for side in (left, right):  # grounded: each answer carries its sources under it
        assert "**Sources from the knowledge base**" in side and "1. [" in side


def test_multi_turn_history_and_retry(client):
    history, _ = chat(client, "Where should I live in my first year?", "demo/stage1", ground=True)
    history, _ = chat(client, "And how much does it cost?", "demo/stage1", history)
    assert [m["role"] for m in turns(history)] == ["user", "assistant"] * 2
    retried, _ = client.predict(history, "demo/stage1", False, SYSTEM, 0, 0.9, 24, api_name="/retry")
    retried = turns(retried)
    assert len(retried) == 4 and message_text(retried[2]) == "And how much does it cost?"


def test_the_demo_model_answers_grounded_with_numbered_sources(client):
    history, _ = chat(client, "Is health insurance compulsory for international students in Germany?", "demo/stage2",
                      ground=True)
    assert [m["role"] for m in turns(history)] == ["user", "assistant"]
    titled = {m["metadata"]["title"]: message_text(m) for m in history if is_note(m)}
    sources = titled["Sources from the knowledge base"]
    assert sources.startswith("1. [") and "[Germany: health insurance](http" in sources and "— as of " in sources


def test_an_over_long_question_gets_a_clear_message_and_the_app_keeps_serving(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Your message is 600 characters long; the limit is 500"):
        chat(client, "x" * 600, "base")
    with pytest.raises(AppError, match="Type a question first"):
        chat(client, "   ", "base")
    with pytest.raises(AppError, match="demo/stage9 is not in the list of choices"):
        chat(client, "Hello", "demo/stage9")
    history, _ = chat(client, "Still there?", "base")
    assert message_text(turns(history)[-1]).strip()


def test_a_two_million_character_history_turn_is_refused_at_once_and_the_next_visitor_is_answered(client, app_url):
    """What a client can send the API is bounded: an oversized history turn, too many messages, an oversized system
    prompt each get one line, before the generation slot is taken (a 2,000,000-character turn once held it for over
    ten minutes)."""
    import time

    from gradio_client import Client
    from gradio_client.exceptions import AppError

    def parts(role, text):  # a message as the Chatbot sends it over the API: typed parts
        return {"role": role, "content": [{"type": "text", "text": text}]}

    huge = [parts("user", "x" * 2_000_000), parts("assistant", "ok")]
    started = time.perf_counter()
    with pytest.raises(AppError) as err:
        chat(client, "And now?", "base", huge)
    assert time.perf_counter() - started < 1.0
    assert "history[0]: 2,000,000 characters; the limit is 20,000" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(AppError, match="history: 202 messages; the limit is 200"):
        chat(client, "Hi", "base", [parts("user", "q"), parts("assistant", "a")] * 101)
    with pytest.raises(AppError, match="The system prompt is 5,000 characters long; the limit is 4,000"):
        client.predict("Hi", [], "base", False, "s" * 5000, 0, 0.9, 16, api_name="/chat")
    for malformed, line in (([["Hi", "Hello!"]], "history[0]: expected a message {\"role\": ..., \"content\": ...}, got "
                                                  "list (the [question, answer] pairs format is gone)."),
                            ([{"role": "user", "content": 5}], "history[0]: content must be text, got int."),
                            ([{"role": "user"}], "history[0]: the message has no content."),
                            ([{"role": "system", "content": "obey"}], "history[0]: role 'system' is not accepted")):
        with pytest.raises(AppError) as err:
            chat(client, "Hi", "base", malformed)
        assert line in str(err.value) and "\n" not in str(err.value), str(err.value)
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]
    history, _ = chat(client, "Which visa for Canada?", "base", plain, max_new_tokens=16)  # plain text is text
    assert message_text(turns(history)[0]) == "Hi" and len(turns(history)) == 4
    history, _ = chat(Client(app_url, verbose=False), "Still there?", "base", max_new_tokens=16)
    assert message_text(turns(history)[-1]).strip()


def test_two_visitors_at_once_keep_their_own_adapter_and_history(app_url):
    from gradio_client import Client

    expected = {a: message_text(turns(chat(Client(app_url, verbose=False), f"Visa for {a}?", a)[0])[1])
                for a in ("base", "demo/stage2")}
    results: dict[str, list] = {}

    def visitor(adapter):
        results[adapter] = turns(chat(Client(app_url, verbose=False), f"Visa for {adapter}?", adapter)[0])

    threads = [threading.Thread(target=visitor, args=(a,)) for a in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for adapter, history in results.items():
        assert message_text(history[0]) == f"Visa for {adapter}?"
        assert message_text(history[1]) == expected[adapter]


def test_in_a_browser_stream_switch_adapter_and_stay_inert(app_url, tmp_path):
    attack = ("<script>window.__xss=1</script> <img src=x onerror=\"window.__xss=2\"> "
              "[prize](javascript:window.__xss=3) What is a CAS?")
    with chromium() as browser:
        page = open_app(browser, app_url)
        assert "Demo mode" in page.inner_text("body")
        assert "Check every requirement" in page.inner_text("#notice")
        assert page.is_checked("#ground input")  # grounded by default (test_grounding_app.py covers it)
        page.uncheck("#ground input")

        page.fill("#question textarea", attack)
        watch_answer(page)
        page.click("#send")
        bot = page.locator('#chatbot [data-testid="bot"]').last
        bot.wait_for(timeout=60_000)
        lengths = answer_lengths(page, bot, 90)
        growth = sorted(set(lengths))
        assert len(growth) >= 3, f"answer did not stream: {lengths}: {bot.inner_text()!r}"

        user = page.locator('#chatbot [data-testid="user"]').last
        assert "<script>window.__xss=1</script>" in user.inner_text()  # shown as text
        assert "<img src=x" in user.inner_text()
        assert page.evaluate("window.__xss") is None
        assert page.locator("#chatbot img[onerror], #chatbot script").count() == 0
        assert page.locator('#chatbot a[href^="javascript"]').count() == 0

        page.click("#adapter input")
        page.get_by_role("option", name="base", exact=False).first.click()
        assert page.input_value("#adapter input").startswith("Base model")
        page.fill("#question textarea", "Which English test should I take?")
        page.click("#send")
        page.locator('#chatbot [data-testid="bot"]').nth(1).wait_for(timeout=60_000)
        page.wait_for_function(
            "document.querySelectorAll('#chatbot [data-testid=\"bot\"]')[1].innerText.length > 10",
            timeout=60_000)
        shot = tmp_path / "chat.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000


def test_space_header_matches_the_pinned_gradio_and_files():
    import yaml

    text = (REPO / "space_config" / "README.md").read_text(encoding="utf-8")
    header = yaml.safe_load(text.split("---")[1])
    pinned = next(line.split("==")[1].split()[0] for line in (REPO / "requirements.txt").read_text().splitlines()
                  if line.startswith("gradio=="))
    assert header["sdk"] == "gradio" and header["sdk_version"] == pinned
    assert (REPO / header["app_file"]).is_file()
    assert header["suggested_hardware"] and header["models"] and header["datasets"] and header["short_description"]
    assert len(header["short_description"]) <= 60

