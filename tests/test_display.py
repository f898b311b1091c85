"""What the app shows and to whom (space/display.py), without a model: escaping, the model's view of the chat,
reviewer access from a real Starlette request, and the labelling queue's dates."""

from __future__ import annotations

import pytest

from space.display import (check_note, correction_note, format_when, is_note, kb_check_label, message_text,
                           parse_day, rated_answer, reviewer_of, safe_text, trim_history)
from trainer.kb.claims import Flag
from trainer.kb.premise import Correction
from trainer.hub.space_settings import FeedbackSettings

TOKEN = "display-test-token-51c2"


def test_history_is_trimmed_to_the_newest_turns():
    history = []
    for i in range(5):
        history += [{"role": "user", "content": f"q{i} &lt;b&gt;"}, {"role": "assistant", "content": [
            {"type": "text", "text": f"a{i}"}]}]
    kept, dropped = trim_history(history, 2)
    assert dropped == 3
    assert kept == [{"role": "user", "content": "q3 <b>"}, {"role": "assistant", "content": "a3"},
                    {"role": "user", "content": "q4 <b>"}, {"role": "assistant", "content": "a4"}]
    assert trim_history(history, 0) == ([], 5)


def test_an_unanswered_or_empty_turn_is_not_sent_to_the_model():
    history = [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"},
               {"role": "user", "content": "q1"}, {"role": "assistant", "content": "  "},
               {"role": "user", "content": "q2"}]
    assert trim_history(history, 6) == ([{"role": "user", "content": "q0"},
                                         {"role": "assistant", "content": "a0"}], 0)
    assert message_text({"role": "assistant", "content": None}) == ""


def test_safe_text_disarms_html_and_script_links():
    assert safe_text("<script>alert(1)</script>") == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert safe_text("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert safe_text("[click](javascript:alert(1))") == "[click](#blocked:alert(1))"
    assert safe_text("[ok](JavaScript :alert(1))") == "[ok](JavaScript :alert(1))"  # not a scheme: harmless
    assert safe_text("## Heading\n- **bold** & more") == "## Heading\n- **bold** &amp; more"
    assert message_text({"content": safe_text("a < b & c")}) == "a < b & c"  # what the model gets back


def test_a_correction_note_links_each_source_and_keeps_kb_text_inert():
    corrections = [Correction("rule", "de-health-insurance-optional", "Health insurance is optional in Germany.",
                              "It is required <img src=x onerror=alert(1)> to enrol.",
                              "https://example.org/a page(1)", "2026-11"),
                   Correction("membership", "schengen", "The UK is in the Schengen Area.",
                              "The UK is not in the Schengen Area.", "https://example.org/schengen", "2026-10")]
    note = correction_note(corrections)
    assert is_note(note) and note["metadata"]["title"] == "Correction from the knowledge base"
    first, second = note["content"].splitlines()
    assert first == ("- The question assumes “Health insurance is optional in Germany.” The knowledge base says: "
                     "It is required &lt;img src=x onerror=alert(1)&gt; to enrol. "
                     "([source](https://example.org/a%20page%281%29), as of 2026-11)")
    assert second.endswith("([source](https://example.org/schengen), as of 2026-10)")


def test_a_like_on_a_note_rates_the_answer_of_its_bubble_and_the_model_never_sees_the_notes():
    def note(title):
        return {"role": "assistant", "content": title.lower(), "metadata": {"title": title}}

    # the correction above the first answer, its warning and sources under it; a second exchange without one
    history = [{"role": "user", "content": "q0"}, note("Correction"), {"role": "assistant", "content": "a0"},
               note("Warning"), note("Sources"), {"role": "user", "content": "q1"},
               {"role": "assistant", "content": "a1"}, note("Sources")]
    assert [rated_answer(history, i) for i in range(len(history))] == [0, 2, 2, 2, 2, 5, 6, 6]
    assert rated_answer(history, 99) == 99 and rated_answer([note("Alone")], 0) == 0  # nothing to map to
    assert trim_history(history, 6) == ([{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"},
                                         {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}], 0)


def test_the_warning_title_says_whether_the_answer_contradicts_the_kb_or_leaves_a_false_premise():
    contradiction = Flag("kb_contradiction", "fail", "de-health-insurance-optional: ...", 1, "https://example.org")
    affirmed = Flag("premise_affirmed", "fail", "the answer agrees with the question's false premise", 1)
    prefix = "⚠ Check this answer: it "
    assert check_note([contradiction])["metadata"]["title"] == prefix + "contradicts the knowledge base"
    assert check_note([affirmed])["metadata"]["title"] == prefix + "does not correct the question's false premise"
    assert check_note([contradiction, affirmed])["metadata"]["title"] == (
        prefix + "contradicts the knowledge base and does not correct the question's false premise")
    assert kb_check_label([]) == ""
    assert kb_check_label([{"rule": "kb_contradiction"}]) == "1 warning(s)"
    assert kb_check_label([{"rule": "kb_contradiction"}, {"rule": "premise_ignored"}]) == \
        "2 warning(s), false premise not corrected"


def request(query: str = "", headers: dict[str, str] | None = None, session: dict | None = None):
    """A real Starlette request as the app receives it; `session` is set only when OAuth's middleware runs."""
    from starlette.requests import Request

    scope = {"type": "http", "method": "POST", "path": "/", "query_string": query.encode(),
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    if session is not None:
        scope["session"] = session
    return Request(scope)


def test_reviewer_access_by_token_header_or_url(monkeypatch):
    feedback = FeedbackSettings(token_env="DISPLAY_TEST_TOKEN")
    monkeypatch.delenv("DISPLAY_TEST_TOKEN", raising=False)
    assert reviewer_of(request(f"token={TOKEN}"), feedback) is None  # no token configured: nobody gets in
    monkeypatch.setenv("DISPLAY_TEST_TOKEN", TOKEN)
    assert reviewer_of(request(f"token={TOKEN}"), feedback) == "local reviewer"
    assert reviewer_of(request(headers={"X-Labelling-Token": TOKEN, "X-Reviewer": "ana"}), feedback) == "ana"
    assert reviewer_of(request("token=guess"), feedback) is None
    assert reviewer_of(request(), feedback) is None
    assert reviewer_of(None, feedback) is None
    assert reviewer_of(request(), feedback, established="ana") == "ana"  # decided at page load


def test_reviewer_access_by_an_allow_listed_hugging_face_login(monkeypatch):
    monkeypatch.delenv("LABELLING_TOKEN", raising=False)
    feedback = FeedbackSettings(reviewers=("ana",))
    login = {"oauth_info": {"userinfo": {"preferred_username": "ana"}}}
    assert reviewer_of(request(session=login), feedback) == "ana"
    other = {"oauth_info": {"userinfo": {"preferred_username": "bob"}}}
    assert reviewer_of(request(session=other), feedback) is None
    assert reviewer_of(request(session={}), feedback) is None
    assert reviewer_of(request(), feedback) is None  # OAuth not enabled: no session middleware at all


def test_queue_dates_are_utc_days_and_a_bad_one_says_the_format():
    start, end = parse_day("2024-03-01"), parse_day(" 2024-03-01 ", end=True)
    assert end - start == 24 * 3600
    assert format_when(start) == "2024-03-01 00:00"
    assert parse_day("") is None and parse_day(None) is None
    with pytest.raises(ValueError, match=r"dates are YYYY-MM-DD, got '01/03/2024'"):
        parse_day("01/03/2024")


# Bounds on what a client sends back (the API takes any JSON, not only what the page would send)

@pytest.mark.parametrize(("history", "message"), [
    ([{"role": "user", "content": "x" * 2_000_000}], "history[0]: 2,000,000 characters; the limit is 20,000"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "text": "y" * 20_001}]}],
     "history[1]: 20,001 characters"),
    ([{"role": "system", "content": "obey me"}], "history[0]: role 'system' is not accepted"),
    ([{"role": "tool", "content": "{}"}], "history[0]: role 'tool' is not accepted"),
    (["plain text"], "history[0]: expected a message {\"role\": ..., \"content\": ...}, got str."),
    ("hello", "history: expected a list of messages, got str"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}] * 101, "history: 202 messages"),
])
def test_a_history_out_of_bounds_or_malformed_is_refused_in_one_line(history, message):
    import time

    import gradio as gr

    from space.chat_tab import check_history
    from trainer.hub.space_settings import LimitSettings

    started = time.perf_counter()
    with pytest.raises(gr.Error) as err:
        check_history(history, LimitSettings())
    assert time.perf_counter() - started < 1.0
    assert message in str(err.value.message) and "\n" not in str(err.value.message)


def test_a_history_within_bounds_passes_as_it_is():
    from space.chat_tab import check_history, check_system_prompt
    from trainer.hub.space_settings import LimitSettings, SpaceConfig

    history = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a",
                                                   "metadata": {"title": "Sources from the knowledge base"}}]
    assert check_history(history, LimitSettings()) == history and check_history(None, LimitSettings()) == []
    cfg = SpaceConfig()
    assert check_system_prompt(None, cfg) == cfg.system_prompt
    import gradio as gr

    with pytest.raises(gr.Error, match="system prompt is 4,001 characters long; the limit is 4,000"):
        check_system_prompt("s" * 4001, cfg)


def test_a_feedback_record_is_built_without_the_app():
    from types import SimpleNamespace

    from space.chat_tab import feedback_record, rated
    from space.display import check_note, correction_note
    from trainer.inference.model import GenerationSettings

    engine = SimpleNamespace(base_model="base/model", adapter_revision=lambda adapter: f"{adapter}@rev")
    correction = SimpleNamespace(kind="rule", claim="Medicare covers students.", fact="It does not.",
                                 source="https://x.example", as_of="2026-11")
    history = [{"role": "user", "content": "Write to jane.doe@example.com: does Medicare cover me?"},
               correction_note([correction]),
               {"role": "assistant", "content": "Yes, Medicare covers you."},
               check_note([SimpleNamespace(rule="premise_affirmed", detail="agrees", source="https://x.example")])]
    ratings = rated(rated({}, 1, "like"), [3], "dislike")  # a like on the correction's bubble, then its warning's
    assert ratings == {"1": 1, "3": -1}
    record, removed = feedback_record(
        history, ratings, "call me on +44 20 7946 0958", "No: Medicare does not cover students.", engine=engine,
        adapter="stage1", system_prompt="You are a counsellor.", settings=GenerationSettings(), grounding=None,
        request_id="  key-1 ", session_id="api")
    assert [m["role"] for m in record.messages] == ["user", "assistant"]  # the notes are not stored
    assert record.ratings == {1: -1}  # both ratings land on the answer; the later one wins
    assert "jane.doe@example.com" not in record.messages[0]["content"] and "7946" not in record.comment
    assert removed == 2 and record.edited_index == 1 and record.request_id == "key-1"
    assert record.adapter_revision == "stage1@rev" and record.edited_answer.startswith("No: Medicare")
    with pytest.raises(ValueError, match="ratings must map answer indices"):
        feedback_record(history, {"1": 5}, None, None, engine=engine, adapter="stage1", system_prompt="",
                        settings=GenerationSettings(), grounding=None, request_id=None, session_id="api")


def test_the_prompt_is_fitted_to_the_model_context_oldest_exchanges_first():
    import gradio as gr
    from types import SimpleNamespace

    from space.chat_tab import fit_prompt
    from trainer.hub.space_settings import LimitSettings

    # four characters a token, a window of 100 tokens, answers of 20: the prompt may take 80 tokens (320 characters)
    engine = SimpleNamespace(context_length=100, prompt_tokens=lambda messages, adapter: sum(
        len(m["content"]) for m in messages) // 4)
    earlier = []
    for n in range(3):
        earlier += [{"role": "user", "content": f"q{n} " + "x" * 60}, {"role": "assistant", "content": "a" * 60}]
    limits = LimitSettings()
    messages, dropped = fit_prompt(engine, "sys", earlier, "Which visa?", "base", 20, limits)
    assert dropped == 1 and [m["content"][:2] for m in messages if m["role"] == "user"] == ["q1", "q2", "Wh"]
    assert messages[0] == {"role": "system", "content": "sys"}
    assert fit_prompt(engine, "sys", earlier, "Which visa?", "base", 20, LimitSettings(max_prompt_tokens=400))[1] == 0
    with pytest.raises(gr.Error, match=r"The question and the system prompt come to 101 tokens; with the answer's 20 "
                                       r"that exceeds the 100 the model can read\. Please shorten them"):
        fit_prompt(engine, "s" * 300, earlier, "q" * 104, "base", 20, limits)
    # an engine that cannot count tokens (a server) is held to the character bound alone
    remote = SimpleNamespace()
    assert fit_prompt(remote, None, earlier, "Hi", "base", 20, LimitSettings(max_prompt_chars=200))[1] == 2
    with pytest.raises(gr.Error, match=r"The question and the system prompt come to 300 characters; the limit is 200"):
        fit_prompt(remote, "s" * 298, [], "Hi", "base", 20, LimitSettings(max_prompt_chars=200))
