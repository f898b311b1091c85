"""Feedback and labelling through the real app: 32 concurrent visitors, kill -9, access control, PII, the browser."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import chromium, launch_app, open_app, stop_app

from trainer.data.feedback import FeedbackStore

TOKEN = "local-reviewer-token-8c1f"
SYSTEM = "You are a careful counsellor."
HISTORY = [{"role": "user", "content": "Which English test should I take?"},
           {"role": "assistant", "content": "Most universities accept IELTS Academic or TOEFL iBT."}]


def write_config(root: Path, runs: Path) -> Path:
    config = root / "space.yaml"
    config.write_text(f"runs_dir: {runs}\ngeneration:\n  temperature: 0\n  max_new_tokens: 48\n"
                      f"feedback:\n  store: {root / 'fb.sqlite'}\n  token_env: TEST_LABELLING_TOKEN\n")
    return config


@pytest.fixture(scope="module")
def feedback_app(tmp_path_factory, short_demo_run):
    root = tmp_path_factory.mktemp("feedback-app")
    proc, url = launch_app(write_config(root, short_demo_run.parent), {"TEST_LABELLING_TOKEN": TOKEN})
    try:
        yield url, root / "fb.sqlite"
    finally:
        stop_app(proc)


def as_chatbot(history):
    """Messages as Gradio 6's Chatbot takes them over the API: content is a list of typed parts."""
    return [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in history]


def send(client, request_id: str, *, history=HISTORY, ratings=None, comment="", better="", consent=True,
         adapter="demo/stage2"):
    return client.predict(as_chatbot(history), ratings or {}, comment, better, consent, adapter, SYSTEM, 0, 0.9, 48,
                          request_id, api_name="/feedback")


def flood(url: str, clients: int, per_client: int, acked: list[str], prefix: str, errors: list) -> None:
    from gradio_client import Client

    def visitor(c: int) -> None:
        client = Client(url, verbose=False)
        for i in range(per_client):
            request_id = f"{prefix}-{c}-{i}"
            try:
                status, _, _ = send(client, request_id, ratings={"1": 1 if i % 2 else -1})
            except Exception as exc:  # after a kill -9, the rest fail: that is the point
                errors.append(exc)
                return
            assert status.startswith("Saved")
            acked.append(request_id)

    threads = [threading.Thread(target=visitor, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def request_ids(store_path: Path) -> list[str]:
    store = FeedbackStore(store_path)
    try:
        return [r.request_id for r in store.records()]
    finally:
        store.close()


def test_32_clients_at_once_store_each_submission_exactly_once(feedback_app):
    """32 clients submitting at once (the load; `bench/feedback_store.py` measures its throughput): every
    acknowledged submission is stored, once, and nothing else is."""
    url, store_path = feedback_app
    acked: list[str] = []
    errors: list = []
    flood(url, 32, 12, acked, "load", errors)
    assert not errors and len(acked) == 32 * 12
    stored = [r for r in request_ids(store_path) if r and r.startswith("load-")]
    assert len(stored) == 32 * 12 and set(stored) == set(acked)


def test_kill_9_during_load_keeps_every_acknowledged_record(tmp_path, short_demo_run):
    config = write_config(tmp_path, short_demo_run.parent)
    proc, url = launch_app(config, {"TEST_LABELLING_TOKEN": TOKEN})
    acked: list[str] = []
    errors: list = []
    loader = threading.Thread(target=flood, args=(url, 32, 200, acked, "kill", errors))
    loader.start()
    deadline = time.time() + 120
    while len(acked) < 96 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    loader.join()
    assert len(acked) >= 96 and errors  # the app died mid-load
    stored = set(request_ids(tmp_path / "fb.sqlite"))
    assert set(acked) <= stored

    proc, url = launch_app(config, {"TEST_LABELLING_TOKEN": TOKEN})  # restart on the same store
    try:
        from gradio_client import Client

        assert send(Client(url, verbose=False), "after-restart")[0].startswith("Saved")
        assert set(acked) | {"after-restart"} <= set(request_ids(tmp_path / "fb.sqlite"))
    finally:
        stop_app(proc)


def test_nothing_is_stored_without_consent_and_personal_data_is_removed(feedback_app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, store_path = feedback_app
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match="Tick the consent box first"):
        send(client, "no-consent", consent=False)
    private = [{"role": "user", "content": "I'm priya.k@example.com, +91 98765 43210, passport K1234567, living at "
                                           "221B Baker Street, London NW1 6XE. Is IELTS 7.5 enough for $15,000?"},
               {"role": "assistant", "content": "IELTS 7.5 meets most requirements."}]
    status, _, _ = send(client, "pii", history=private, comment="call me on 020 7946 0958",
                        better="Yes: IELTS 7.5 is above most minimums.")
    assert "personal detail(s) were removed" in status
    store = FeedbackStore(store_path)
    try:
        stored = next(r for r in store.records() if r.request_id == "pii")
        assert all(r.request_id != "no-consent" for r in store.records())
    finally:
        store.close()
    text = stored.messages[0]["content"]
    for placeholder in ("[EMAIL]", "[PHONE]", "[ID_NUMBER]", "[ADDRESS]"):
        assert placeholder in text
    assert "IELTS 7.5" in text and "$15,000" in text
    assert stored.comment == "call me on [PHONE]"
    assert stored.redactions["email"] == 1 and stored.redactions["phone"] == 2
    raw = b"".join(p.read_bytes() for p in store_path.parent.glob("fb.sqlite*"))
    for secret in (b"priya.k@example.com", b"98765 43210", b"K1234567", b"Baker Street", b"7946 0958"):
        assert secret not in raw


def test_an_oversized_comment_or_suggested_answer_is_refused_and_nothing_is_stored(feedback_app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, store_path = feedback_app
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match="The comment is 1,000,000 characters long; the limit is 4,000"):
        send(client, "huge-comment", comment="c" * 1_000_000)
    with pytest.raises(AppError, match="The suggested answer is 4,001 characters long"):
        send(client, "huge-answer", better="b" * 4001)
    assert not {"huge-comment", "huge-answer"} & set(request_ids(store_path))


def test_labelling_endpoints_refuse_without_the_token_and_work_with_it(feedback_app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, _ = feedback_app
    review_me = [{"role": "user", "content": "Which English test for a UK master's?"}, HISTORY[1]]
    send(Client(url, verbose=False), "for-review", history=review_me, ratings={"1": -1},
         better="Either IELTS or TOEFL; check the page.")
    stranger = Client(url, verbose=False)
    for api_name, args in (("/label_queue", ("unreviewed", "all", "all", "all", "", "", "", "all")),
                           ("/label_open", ("anything",)),
                           ("/label_accept", ("anything", None, "", None))):
        with pytest.raises(AppError, match="The labelling tab is for reviewers"):
            stranger.predict(*args, api_name=api_name)
    wrong = Client(url, verbose=False, headers={"x-labelling-token": "guess"})
    with pytest.raises(AppError, match="for reviewers"):
        wrong.predict("unreviewed", "disliked", "all", "all", "", "", "", "all", api_name="/label_queue")

    reviewer = Client(url, verbose=False, headers={"x-labelling-token": TOKEN, "x-reviewer": "ana"})
    table, picked, count = reviewer.predict("unreviewed", "disliked", "demo/stage2", "all", "", "",
                                            "UK master", "all", api_name="/label_queue")
    rows = table["data"]
    assert len(rows) == 1 and count == "1 dialogue(s)"
    record_id = next(r[0] for r in rows if r[7] == review_me[0]["content"])
    dialogue, details, turn, topic = reviewer.predict(record_id, api_name="/label_open")
    assert "Either IELTS or TOEFL" in details and turn["value"] == 1 and turn["choices"] == [["1", 1]]
    with pytest.raises(AppError, match="The search text is 100,000 characters long; the limit is 200"):
        reviewer.predict("all", "all", "all", "all", "", "", "x" * 100_000, "all", api_name="/label_queue")
    with pytest.raises(AppError, match="The corrected answer is 1,000,000 characters long; the limit is 4,000"):
        reviewer.predict(record_id, 1, "c" * 1_000_000, "tests", api_name="/label_accept")
    status = reviewer.predict(record_id, 1, "Both IELTS Academic and TOEFL iBT are widely accepted.", "tests",
                              api_name="/label_accept")
    assert status == "accepted by ana, turn 1 corrected"
    store = FeedbackStore(feedback_app[1])
    try:
        decided = store.get(record_id)
    finally:
        store.close()
    assert (decided.status, decided.reviewer, decided.topic) == ("accepted", "ana", "tests")
    assert decided.review_edits == {1: "Both IELTS Academic and TOEFL iBT are widely accepted."}


def test_in_a_browser_rate_correct_and_review(feedback_app):
    url, store_path = feedback_app
    with chromium() as browser:
        visitor = open_app(browser, url)
        assert visitor.get_by_role("tab", name="Labelling").count() == 0  # hidden without access
        visitor.uncheck("#ground input")  # the answer is then the last message (no sources under it)
        visitor.fill("#question textarea", "How do I find student housing?")
        visitor.click("#send")
        visitor.wait_for_function(
            "(() => { const b = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
            " return b.length && b[b.length-1].innerText.length > 10; })()", timeout=90_000)
        # Gradio marks a streaming event's outputs `generating` until it ends: rate the finished answer.
        visitor.wait_for_function(
            "document.querySelectorAll('[data-testid=\"status-tracker\"].generating').length === 0",
            timeout=90_000)
        visitor.locator("#chatbot button[aria-label='Like']").last.click()
        visitor.get_by_text("Feedback: rate answers").click()
        visitor.locator("#consent input").check()
        visitor.fill("#comment textarea", "Useful, but mention deposits.")
        visitor.fill("#better-answer textarea", "Apply for university halls early and never pay a deposit "
                                                "for a room you have not verified.")
        visitor.click("#send-feedback")
        visitor.wait_for_function("document.querySelector('#feedback-status').innerText.includes('Saved')",
                                  timeout=30_000)

        assert visitor.get_by_role("tab", name="Labelling").count() == 0  # still hidden after the load event
        store = FeedbackStore(store_path)
        try:
            mine = [r for r in store.records() if r.messages[0]["content"] == "How do I find student housing?"]
        finally:
            store.close()
        assert len(mine) == 1 and mine[0].ratings == {1: 1}
        assert mine[0].comment == "Useful, but mention deposits." and mine[0].edited_index == 1

        reviewer = open_app(browser, f"{url}?token={TOKEN}")
        reviewer.get_by_role("tab", name="Labelling").click()
        reviewer.fill("#queue-search textarea", "student housing")
        reviewer.click("#load-queue")
        reviewer.wait_for_function("document.body.innerText.includes('How do I find student housing?')",
                                   timeout=30_000)
        reviewer.screenshot(path=str(store_path.parent / "labelling.png"), full_page=True)
