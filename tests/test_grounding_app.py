"""Answers grounded in the knowledge base, their sources, the correction of a question's false premise and the live
answer check, in the real Gradio app driven over HTTP and in headless Chromium. The model is a stand-in that answers
with fixed text: the demo model will not reliably repeat a false claim on cue, and the check is what is under test
(the real model's grounded answers are tested in test_app.py)."""

from __future__ import annotations

import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from helpers import REPO, chromium, open_app

from space.display import is_note, message_text
from trainer.inference.model import BASE
from trainer.hub.space_settings import DEFAULT_SYSTEM_PROMPT, SpaceConfig

SYSTEM = "You are a careful study-abroad counsellor."
MEDICARE = "Yes! As an international student in Australia, you will be covered by Medicare for doctor visits."
OPTIONAL = "Health insurance is optional for students in Germany, right?"  # a false premise the KB corrects
AGREES = "Yes! Health insurance is optional for students in Germany, so you can skip it."
CORRECTS = "No — health insurance is mandatory for students in Germany: you need it to enrol."
WARNING = "⚠ Check this answer: it"
CORRECTION = "Correction from the knowledge base"
INJECTED = "<img src=x onerror=\"window.__kbxss=1\"><script>window.__kbxss=2</script>"


class ScriptedEngine:
    """Streams a fixed answer per question word by word, and records the prompts it was given; a question `held`
    gets its first token only once the test lets it go (a slow model, without sleeping)."""

    adapter_names = ["demo/stage2"]
    base_model = "smollm2-135m-instruct"
    load_in_4bit = True
    serving = "4-bit NF4"
    is_demo = True
    refused: dict[str, str] = {}

    def __init__(self, answers: dict[str, str]):
        self.answers, self.prompts, self.gates = answers, [], {}

    def adapter_revision(self, adapter):
        return None

    @contextmanager
    def held(self, question: str):
        """Inside the block, an answer to `question` waits before its first token until the yielded event is set
        (set at the latest when the block ends)."""
        gate = self.gates[question] = threading.Event()
        try:
            yield gate
        finally:
            gate.set()
            self.gates.pop(question, None)

    def stream(self, messages, adapter=BASE, settings=None, stop=None, stats=None):
        self.prompts.append((adapter, [dict(m) for m in messages]))
        question = messages[-1]["content"]
        answer = next((a for key, a in self.answers.items() if key in question), "Please check the official page.")
        gate = self.gates.get(question)
        if gate is not None:
            assert gate.wait(30), "the test never let the held answer go"
        text = ""
        for word in answer.split(" "):
            text += ("" if not text else " ") + word
            yield text


@pytest.fixture(scope="module")
def kb_with_html(tmp_path_factory) -> Path:
    """The shipped KB with HTML injected into the Medicare rule's fact: what the warning shows must stay inert."""
    folder = tmp_path_factory.mktemp("kb") / "kb"
    shutil.copytree(REPO / "data" / "kb", folder)
    rules = yaml.safe_load((folder / "rules.yaml").read_text(encoding="utf-8"))
    for rule in rules["rules"]:
        if rule["id"] == "au-medicare-international-students":
            rule["fact"] = rule["fact"].rstrip() + " " + INJECTED
    (folder / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory, kb_with_html):
    """The app built by `app.build_app` around the scripted engine, launched on a free port."""
    from app import build_app
    from space.grounding import Grounding
    from space.registry import AdapterRegistry, RegisteredAdapter
    from trainer.data.feedback import FeedbackStore
    from trainer.hub.space_settings import load_space_config

    root = tmp_path_factory.mktemp("grounded-app")
    cfg = load_space_config(None, [f"feedback.store={root / 'feedback.sqlite'}", f"grounding.kb={kb_with_html}",
                                   "grounding.k=3"])
    registry = AdapterRegistry([RegisteredAdapter("demo/stage2", str(root), True, ground=False)])
    engine = ScriptedEngine({"Medicare": MEDICARE, "Stanford": "Apply through the Common App by January.",
                             OPTIONAL: AGREES, "optional for students in Germany, isn't it": CORRECTS,
                             "Which insurance": "Health insurance is optional for students in Germany.",
                             "Germany": "Yes: you need health insurance to enrol [1]."})
    store = FeedbackStore(root / "feedback.sqlite")
    demo = build_app(registry, engine, store, cfg, Grounding.load(cfg.grounding, registry))
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        yield url, engine, store
    finally:
        demo.close()
        store.close()


@pytest.fixture
def client(served):
    from gradio_client import Client

    return Client(served[0], verbose=False)


def chat(client, question, adapter=BASE, ground=True, history=()):
    return client.predict(question, list(history), adapter, ground, SYSTEM, 0, 0.9, 64, api_name="/chat")[0]


def notes(history) -> dict[str, str]:
    return {m["metadata"]["title"]: message_text(m) for m in history if is_note(m)}


def titles(history) -> list[str]:
    """The chat's messages in order: a note by its title, a turn by its role."""
    return [m["metadata"]["title"] if is_note(m) else m["role"] for m in history]


def first_output(job, timeout: float = 30):
    """The first update a streaming call sent."""
    deadline = time.time() + timeout
    while not job.outputs():
        assert time.time() < deadline, "no update in time"
        time.sleep(0.02)
    return job.outputs()[0]


def warning(history) -> tuple[str, str] | None:
    """The live check's (title, text), if it warned."""
    return next(((t, text) for t, text in notes(history).items() if t.startswith(WARNING)), None)


def test_a_grounded_answer_shows_numbered_sources_and_the_prompt_carries_them(client, served):
    _, engine, _ = served
    history = chat(client, "Is health insurance compulsory for students in Germany?")
    assert [m["role"] for m in history if not is_note(m)] == ["user", "assistant"]
    sources = notes(history)["Sources from the knowledge base"]
    assert sources.startswith("1. [") and "[Germany: health insurance](" in sources and "— as of 20" in sources
    # a KB rule is listed as the correction it is, never with its false claim as a heading
    assert all("optional" not in line or "correction of “" in line for line in sources.splitlines())
    assert len([line for line in sources.splitlines() if line[:2] in ("1.", "2.", "3.")]) == 3
    adapter, prompt = engine.prompts[-1]
    system = prompt[0]["content"]
    assert prompt[0]["role"] == "system" and system.startswith(SYSTEM) and "[1] Germany:" in system
    assert prompt[-1] == {"role": "user", "content": "Is health insurance compulsory for students in Germany?"}


def test_ungrounded_answers_carry_no_sources_and_each_adapter_has_its_default(client, served):
    _, engine, _ = served
    history = chat(client, "Is health insurance compulsory for students in Germany?", ground=False)
    assert "Sources from the knowledge base" not in notes(history)
    assert engine.prompts[-1][1][0]["content"] == SYSTEM  # no KB text in the prompt
    from gradio_client import Client

    info = Client(served[0], verbose=False).view_api(return_format="dict")["named_endpoints"]["/chat"]["parameters"]
    assert next(p for p in info if p["parameter_name"] == "ground")["type"]["type"] == "boolean"


def test_a_question_that_touches_no_kb_entry_says_so_instead_of_inventing_a_source(client):
    history = chat(client, "What is the best way to make friends in a new city?")
    assert "No entry of the knowledge base matches this question" in notes(history)["Sources from the knowledge base"]


def test_a_repeated_false_claim_gets_a_warning_naming_the_fact_and_its_source(client, served):
    history = chat(client, "Which insurance do students in Germany need?")
    title, text = warning(history)
    assert title == "⚠ Check this answer: it contradicts the knowledge base"
    assert "de-health-insurance-optional" in text and "([source](https://" in text
    history = chat(client, "Am I covered by Medicare as an international student in Australia?")
    title, text = warning(history)
    assert title == ("⚠ Check this answer: it contradicts the knowledge base and does not correct the question's "
                     "false premise")
    assert "au-medicare-international-students" in text and "Overseas Student Health Cover" in text
    history = chat(client, "How do I apply for the Bachelor of Medicine at Stanford?", ground=False)
    assert "Stanford University does not offer" in warning(history)[1]


@pytest.mark.parametrize("ground", [True, False])
def test_a_false_premise_gets_the_kb_correction_whatever_the_answer_and_a_warning_unless_corrected(client, served,
                                                                                                    ground):
    _, engine, _ = served
    history = chat(client, OPTIONAL, ground=ground)
    assert message_text([m for m in history if not is_note(m)][-1]) == AGREES
    # the correction comes first, above the answer; the warning and the sources come under it
    order = titles(history)
    assert order[:3] == ["user", CORRECTION, "assistant"] and order[3].startswith(WARNING)
    assert order[4:] == (["Sources from the knowledge base"] if ground else [])
    shown = notes(history)
    correction = shown[CORRECTION]
    assert correction.startswith("- The question assumes “Health insurance is optional for students in Germany.”")
    assert "required to enrol" in correction
    assert "([source](https://www.study-in-germany.de/en/), as of 20" in correction
    title, text = warning(history)
    assert "does not correct the question's false premise" in title and "agrees with" in text
    system = engine.prompts[-1][1][0]["content"]
    if ground:  # the correction opens the KB block, before the numbered facts
        block = system[len(SYSTEM):]
        assert block.index("false premise") < block.index("required to enrol") < block.index("[1] ")
        assert sources_listed(shown)
    else:
        assert system == SYSTEM and "Sources from the knowledge base" not in shown
    # an answer that corrects the premise keeps the correction note and gets no warning
    history = chat(client, "Health insurance is optional for students in Germany, isn't it?", ground=ground)
    assert CORRECTION in notes(history) and warning(history) is None
    # a question without a false premise gets no correction
    assert CORRECTION not in notes(chat(client, "Is health insurance compulsory for students in Germany?"))
    # the Compare tab shows the same note above each answer and the warning under it
    for shown in client.predict(OPTIONAL, BASE, "demo/stage2", ground, SYSTEM, 0, 0.9, 64, api_name="/compare"):
        assert shown.startswith(f"**{CORRECTION}**\n\n- The question assumes “Health insurance is optional")
        assert shown.index("required to enrol") < shown.index(AGREES) < shown.index("does not correct the question")


AU_PREMISE = "International students in Australia are covered by Medicare, right?"  # corrected by the KB
AU_CLAIM = "- The question assumes “International students in Australia are covered by Medicare.”"


def test_answer_with_notes_yields_the_correction_before_it_asks_the_engine():
    from space.chat_tab import answer_with_notes
    from space.grounding import Grounding
    from trainer.hub.space_settings import load_space_config
    from trainer.inference.model import GenerationSettings

    grounding = Grounding.load(load_space_config(None, []).grounding)  # the shipped KB
    engine = ScriptedEngine({"Medicare": MEDICARE})
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": AU_PREMISE}]
    with engine.held(AU_PREMISE) as gate:
        steps = answer_with_notes(engine, grounding, messages, BASE, True, GenerationSettings())
        above, text, below = next(steps)
        assert titles(above) == [CORRECTION] and message_text(above[0]).startswith(AU_CLAIM)
        assert (text, below) == ("", None) and engine.prompts == []  # the engine is not even asked yet
        gate.set()
        rest = list(steps)
    assert all(step[0] == above for step in rest)  # the correction stays above every later update
    assert [t for _, t, _ in rest][-2:] == [MEDICARE, MEDICARE] and all(b is None for _, _, b in rest[:-1])
    below = titles(rest[-1][2])
    assert below[0].startswith(WARNING) and below[1:] == ["Sources from the knowledge base"]


def test_the_chat_shows_the_correction_before_the_first_token_and_a_like_on_its_bubble_rates_the_answer(client,
                                                                                                        served):
    _, engine, store = served
    with engine.held(AU_PREMISE) as gate:
        job = client.submit(AU_PREMISE, [], BASE, True, SYSTEM, 0, 0.9, 64, api_name="/chat")
        first, _ = first_output(job)
        assert titles(first) == ["user", CORRECTION, "assistant"] and message_text(first[1]).startswith(AU_CLAIM)
        time.sleep(0.2)
        assert [message_text(h[-1]) for h, _ in job.outputs()] == [""] * len(job.outputs())  # still held
        gate.set()
        history, _ = job.result(timeout=30)
    order = titles(history)
    assert order[:3] == ["user", CORRECTION, "assistant"] and message_text(history[2]) == MEDICARE
    assert order[3].startswith(WARNING) and order[4:] == ["Sources from the knowledge base"]
    # retry takes back the answer with the notes around it and asks again: one correction, still first
    retried, _ = client.predict(history, BASE, True, SYSTEM, 0, 0.9, 64, api_name="/retry")
    assert titles(retried) == order and message_text(retried[2]) == MEDICARE
    # a second exchange: the first one's notes are not sent to the model
    history, _ = client.predict("Which insurance do students in Germany need?", history, BASE, True, SYSTEM, 0, 0.9,
                                64, api_name="/chat")
    assert [m["role"] for m in engine.prompts[-1][1][1:]] == ["user", "assistant", "user"]
    # Gradio reports a like on a bubble (correction, answer, warning, sources) with its first index, the
    # correction's: it rates the answer, and the suggested answer replaces the last answer
    assert titles(history)[5:7] == ["user", "assistant"]  # its bubble starts with the answer: no correction
    status, _, _ = client.predict(history, {"1": 1, "6": -1}, "", "Buy Overseas Student Health Cover.", True, BASE,
                                  SYSTEM, 0, 0.9, 64, "", api_name="/feedback")
    record = next(r for r in store.records() if r.id.startswith(status.split("`")[1]))
    assert [m["role"] for m in record.messages] == ["user", "assistant"] * 2
    assert record.messages[1]["content"] == MEDICARE and record.ratings == {1: 1, 3: -1} and record.edited_index == 3


def test_the_compare_tab_shows_the_correction_above_both_answers_before_either_streams(client, served):
    _, engine, _ = served
    with engine.held(AU_PREMISE) as gate:
        job = client.submit(AU_PREMISE, BASE, "demo/stage2", False, SYSTEM, 0, 0.9, 64, api_name="/compare")
        left, right = first_output(job)
        assert left == right and left.startswith(f"**{CORRECTION}**\n\n{AU_CLAIM}") and "Yes!" not in left
        gate.set()
        shown = job.result(timeout=30)
    for answer in shown:
        assert answer.startswith(f"**{CORRECTION}**\n\n{AU_CLAIM}")
        assert answer.index("Overseas Student Health Cover") < answer.index(MEDICARE) < answer.index(WARNING)


def sources_listed(shown: dict[str, str]) -> bool:
    return shown.get("Sources from the knowledge base", "").startswith("1. [")


def test_every_input_an_api_caller_leaves_null_takes_its_default_or_gets_one_line(client, served):
    from gradio_client.exceptions import AppError

    _, engine, store = served
    question = "Is health insurance compulsory for students in Germany?"
    history = chat(client, question)
    calls = {
        "/chat": [question, [], BASE, True, SYSTEM, 0, 0.9, 64],
        "/retry": [history, BASE, True, SYSTEM, 0, 0.9, 64],
        "/compare": [question, BASE, "demo/stage2", True, SYSTEM, 0, 0.9, 64],
        "/feedback": [history, {"1": 1}, "a comment", "a better answer", True, BASE, SYSTEM, 0, 0.9, 64, ""],
    }
    required = {("/chat", 0): "Type a question first.", ("/retry", 0): "Nothing to retry yet.",
                ("/compare", 0): "Type a question first.", ("/feedback", 0): "there is no answer to give feedback",
                ("/feedback", 4): "Tick the consent box first"}
    for api_name, args in calls.items():
        for i in range(len(args)):
            given = [None if j == i else a for j, a in enumerate(args)]
            if (api_name, i) in required:
                with pytest.raises(AppError, match=required[api_name, i]):
                    client.predict(*given, api_name=api_name)
            else:
                client.predict(*given, api_name=api_name)
    # null everywhere but the question: the controls' own defaults (the default adapter, its grounding, the
    # configured system prompt and decoding settings)
    client.predict(question, *[None] * 7, api_name="/chat")
    adapter, prompt = engine.prompts[-1]
    assert adapter == "demo/stage2" and prompt[0]["content"] == DEFAULT_SYSTEM_PROMPT
    status, _, _ = client.predict(history, *[None] * 3, True, *[None] * 6, api_name="/feedback")
    stored = store.get(next(r.id for r in store.records() if r.id.startswith(status.split("`")[1])))
    assert stored.adapter == "demo/stage2" and stored.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert stored.settings["max_new_tokens"] == SpaceConfig().generation.max_new_tokens
    with pytest.raises(AppError, match="ratings must map answer indices"):
        client.predict(history, {"1": "like"}, "", "", True, BASE, SYSTEM, 0, 0.9, 64, "", api_name="/feedback")
    with pytest.raises(AppError, match="Temperature .*: expected a number, got 'warm'"):
        client.predict(question, [], BASE, True, SYSTEM, "warm", 0.9, 64, api_name="/chat")


def test_the_warning_is_stored_with_the_feedback_and_reviewers_can_filter_for_it(client, served, monkeypatch):
    from gradio_client import Client

    _, _, store = served
    clean = chat(client, "Is health insurance compulsory for students in Germany?", ground=False)
    contradicted = chat(client, "Which insurance do students in Germany need?", ground=False)
    affirmed = chat(client, "Am I covered by Medicare as an international student in Australia?", ground=False)
    ids = []
    for history in (clean, contradicted, affirmed):
        status, _, _ = client.predict(history, {}, "", "", True, BASE, SYSTEM, 0, 0.9, 64, "",
                                      api_name="/feedback")
        assert status.startswith("Saved")
        ids.append(status.split("`")[1])
    records = {r.id[:12]: r for r in store.records()}
    assert records[ids[0]].kb_flags == []  # the notes (sources, correction, warning) are not stored as turns
    assert [m["role"] for m in records[ids[2]].messages] == ["user", "assistant"]
    stored = records[ids[2]].kb_flags
    assert [f["rule"] for f in stored] == ["kb_contradiction", "premise_affirmed"]
    assert all(f["message"] == 1 and f["source"].startswith("https://") for f in stored)

    def listed(kb_check):
        return [i for i in ids if i in {r.id[:12] for r in store.records(kb_check=kb_check)}]

    assert (listed("flagged"), listed("premise"), listed("clean")) == (ids[1:], ids[2:], ids[:1])
    # the labelling queue's "false premise not corrected" filter, as a reviewer calls it
    monkeypatch.setenv("LABELLING_TOKEN", "grounding-test-token")
    reviewer = Client(served[0], verbose=False, headers={"x-labelling-token": "grounding-test-token"})
    table, _, _ = reviewer.predict("all", "all", "all", "all", "", "", "", "premise", api_name="/label_queue")
    rows = {row[0][:12]: row for row in table["data"]}
    assert ids[2] in rows and ids[1] not in rows and ids[0] not in rows
    assert rows[ids[2]][6] == "2 warning(s), false premise not corrected"


ORDER_JS = """([first, second]) => { const bot = document.querySelector('#chatbot');
  const find = (text) => [...bot.querySelectorAll('*')].find(e => !e.children.length && e.textContent.includes(text));
  const a = find(first), b = find(second);
  return !!(a && b) && a.getBoundingClientRect().top < b.getBoundingClientRect().top
    && !!(a.compareDocumentPosition(b) & Node.DOCUMENT_POSITION_FOLLOWING); }"""
"""Whether, in the chat, the text `first` is shown above `second` (and comes before it in the page)."""


@pytest.mark.slow  # a browser
def test_in_a_browser_the_correction_comes_first_sources_are_links_and_kb_text_stays_inert(served, tmp_path):
    url, engine, store = served
    question = "Am I covered by Medicare as an international student in Australia?"
    with chromium() as browser:
        page = open_app(browser, url)
        # the default adapter is listed with `ground: false`, so the box starts unticked; ticking grounds it
        assert not page.is_checked("#ground input")
        page.check("#ground input")
        assert page.is_checked("#ground input")
        assert "Knowledge base" in page.inner_text("body")
        with engine.held(question) as gate:  # a slow model: its first token waits for the check below
            page.fill("#question textarea", question)
            page.click("#send")
            page.wait_for_function(f"document.querySelector('#chatbot').innerText.includes('{CORRECTION}')",
                                   timeout=30_000)
            body = page.inner_text("#chatbot")
            # the correction is on screen, with its claim and fact, above where the answer will stream
            assert "Yes!" not in body and "Sources from the knowledge base" not in body
            assert "The question assumes “International students in Australia are covered by Medicare.”" in body
            assert page.evaluate(ORDER_JS, [question, CORRECTION])
            gate.set()
        page.wait_for_function("document.querySelector('#chatbot').innerText.includes('Sources from the "
                               "knowledge base')", timeout=60_000)
        deadline = time.time() + 30
        while page.locator('[data-testid="status-tracker"].generating').count() and time.time() < deadline:
            time.sleep(0.2)
        body = page.inner_text("#chatbot")
        # the scripted "Yes! ... covered by Medicare" agrees with the question's false premise: the KB's correction
        # stays above it, and the warning under it says the answer contradicts the KB and leaves the premise standing
        assert "Check this answer: it contradicts the knowledge base and does not correct the question's false " \
               "premise" in body
        assert CORRECTION in body and "The question assumes “International students in Australia are covered by " \
                                      "Medicare.” The knowledge base says: International students are not" in body
        assert page.evaluate(ORDER_JS, [CORRECTION, "Yes! As an international student"])
        assert page.evaluate(ORDER_JS, ["Yes! As an international student", "Check this answer"])
        assert body.index(CORRECTION) < body.index("Yes! As an") < body.index("Check this answer") \
            < body.index("Sources from the knowledge base")
        assert "<script>window.__kbxss=2</script>" in body  # shown as text
        assert page.evaluate("window.__kbxss") is None
        assert page.locator("#chatbot img[onerror], #chatbot script").count() == 0
        # the notes are collapsible boxes; open them and check the numbered links point at the KB's sources
        for title in page.locator("#chatbot button:has-text('Sources from the knowledge base'), "
                                  "#chatbot span:has-text('Sources from the knowledge base')").all()[:1]:
            title.click()
        links = page.locator("#chatbot a[href^='https://']")
        links.first.wait_for(timeout=10_000)
        hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
        assert any("homeaffairs.gov.au" in h or "studyaustralia.gov.au" in h or ".gov.au" in h for h in hrefs)
        shot = tmp_path / "grounded.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        # a like on the answer's bubble (Gradio reports its first message: the correction) rates the answer
        page.locator("#chatbot button[aria-label='Like']").last.click()
        page.get_by_text("Feedback: rate answers").click()
        page.locator("#consent input").check()
        page.click("#send-feedback")
        page.wait_for_function("document.querySelector('#feedback-status').innerText.includes('Saved')",
                               timeout=30_000)
    (record,) = [r for r in store.records() if r.messages[0]["content"] == question and r.ratings]
    assert record.ratings == {1: 1} and record.messages[1]["content"] == MEDICARE
