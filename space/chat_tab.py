"""The Chat tab: one adapter answers, streamed; retry, stop and clear; ratings and, with consent, feedback.

Also what the Compare tab shares with it: the checks on a visitor's question and adapter, the prompt, and the
decoding settings built from the shared sliders. `build_chat_tab` is called inside `app.build_app`'s Blocks.
"""

# No `from __future__ import annotations`: Gradio reads the handlers' `gr.Request` / `gr.LikeData` hints at
# run time to pass the request and the like event, and a string annotation would hide them.

import dataclasses
from types import SimpleNamespace
from typing import Any, Sequence

from space.display import (check_note, correction_note, is_note, message_text, rated_answer, safe_text,
                           sources_note, trim_history, unavailable_note)
from trainer.inference.model import BASE, GenerationSettings
from trainer.hub.space_settings import LimitSettings, SpaceConfig


def check_question(message: str, limits: LimitSettings) -> str:
    """The question, stripped; an empty or over-long one is refused with a message the visitor sees."""
    import gradio as gr

    message = (message or "").strip()
    if not message:
        raise gr.Error("Type a question first.")
    if len(message) > limits.max_input_chars:
        raise gr.Error(f"Your message is {len(message):,} characters long; the limit is "
                       f"{limits.max_input_chars:,}. Please shorten it.")
    return message


def _chars(content) -> int:
    """Characters of a message's content: text, or Gradio's list of typed parts (their text)."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(_chars(part.get("text")) if isinstance(part, dict) else _chars(part) for part in content)
    return 0


def check_history(history, limits: LimitSettings) -> list[dict[str, Any]]:
    """The history a client sent back, checked before anything else (`history_problem` with the limits); anything
    wrong is refused in one line naming the message and the rule."""
    import gradio as gr

    problem = history_problem(history, limits)
    if problem is not None:
        raise gr.Error(problem)
    return list(history or [])


REFUSED = "_refused"
"""The role of the one message a malformed history is replaced by, carrying the reason to `checked_chatbot`'s
preprocess."""


def history_problem(value: Any, limits: LimitSettings | None = None) -> str | None:
    """What is wrong with a history an API client sent, in one line; None for a list of {role, content} messages
    from `user` or `assistant` whose content is text or Gradio's text parts. With `limits`, also at most
    `max_history_messages` messages of at most `max_turn_chars` characters each. Run before Gradio's own validation
    (`checked_chatbot`), which would only say "the upstream app raised an exception", and by every handler."""
    if value is None:
        return None
    if not isinstance(value, list):
        return f"history: expected a list of messages, got {type(value).__name__}."
    if limits is not None and len(value) > limits.max_history_messages:
        return (f"history: {len(value):,} messages; the limit is {limits.max_history_messages:,}. Clear the chat and "
                "ask again.")
    for i, message in enumerate(value):
        problem = _message_problem(message, limits)
        if problem is not None:
            return f"history[{i}]: {problem}"
    return None


def _message_problem(message: Any, limits: LimitSettings | None) -> str | None:
    if not isinstance(message, dict):
        hint = " (the [question, answer] pairs format is gone)" if isinstance(message, (list, tuple)) else ""
        return f"expected a message {{\"role\": ..., \"content\": ...}}, got {type(message).__name__}{hint}."
    missing = [key for key in ("role", "content") if key not in message]
    if missing:
        return f"the message has no {' or '.join(missing)}."
    if message["role"] not in ("user", "assistant"):
        return (f"role {message['role']!r} is not accepted; use user or assistant (the system prompt has its own "
                "field).")
    content = message["content"]
    if not isinstance(content, (str, list)):
        return f"content must be text, got {type(content).__name__}."
    if isinstance(content, list) and not all(isinstance(p, dict) and "type" in p for p in content):
        return "content must be text or a list of parts such as {\"type\": \"text\", \"text\": ...}."
    size = _chars(content)
    if limits is not None and size > limits.max_turn_chars:
        return f"{size:,} characters; the limit is {limits.max_turn_chars:,} per message. Clear the chat and ask again."
    return None


def checked_chatbot(**kwargs):
    """A `gr.Chatbot` whose API input is checked first: plain-text contents are accepted as text parts, and a
    malformed history is refused in one line naming the message and the rule. (The instance's data model and
    preprocess are replaced rather than subclassed: a Chatbot subclass would make Gradio write a .pyi stub beside
    this module at run time.)"""
    import types

    import gradio as gr
    from gradio.components.chatbot import ChatbotDataMessages
    from pydantic import model_validator

    class CheckedMessages(ChatbotDataMessages):
        @model_validator(mode="before")
        @classmethod
        def _plain_text(cls, value: Any) -> Any:
            problem = history_problem(value)
            if problem is not None:  # raised in preprocess, where Gradio shows a gr.Error's message
                return [{"role": REFUSED, "content": [{"type": "text", "text": problem}]}]
            return [{**m, "content": [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str)
                     else m["content"]} for m in value or []]

    chatbot = gr.Chatbot(**kwargs)
    stock = chatbot.preprocess

    def preprocess(self, payload):
        if payload is not None and payload.root and payload.root[0].role == REFUSED:
            raise gr.Error(payload.root[0].content[0].text)
        return stock(payload)

    chatbot.data_model = CheckedMessages
    chatbot.preprocess = types.MethodType(preprocess, chatbot)
    return chatbot


def check_system_prompt(system_prompt: str | None, cfg) -> str:
    """The visitor's system prompt (the configured one when an API caller leaves it out), at most
    `limits.max_system_prompt_chars` long."""
    import gradio as gr

    system_prompt = cfg.system_prompt if system_prompt is None else system_prompt
    if not isinstance(system_prompt, str):
        raise gr.Error("system prompt: expected text.")
    if len(system_prompt) > cfg.limits.max_system_prompt_chars:
        raise gr.Error(f"The system prompt is {len(system_prompt):,} characters long; the limit is "
                       f"{cfg.limits.max_system_prompt_chars:,}.")
    return system_prompt


def check_adapter(adapter: str | None, engine, default: str = BASE) -> str:
    """The adapter, if the engine serves it (API callers can send any name); `default` when none is given."""
    import gradio as gr

    if adapter is None:
        return default
    if adapter != BASE and adapter not in engine.adapter_names:
        raise gr.Error(f"Unknown adapter {adapter!r}.")
    return adapter


def decoding(defaults: GenerationSettings, temperature, top_p, max_new_tokens) -> GenerationSettings:
    """The configured settings with the visitor's sliders applied (the repetition penalty has no slider); a slider an
    API caller leaves out (None) keeps its configured value."""
    given = {"temperature": (temperature, float), "top_p": (top_p, float), "max_new_tokens": (max_new_tokens, int)}
    return dataclasses.replace(defaults, **{name: kind(value) for name, (value, kind) in given.items()
                                            if value is not None})


def fit_prompt(engine, system_prompt: str | None, earlier: list[dict[str, str]], question: str, adapter: str,
               max_new_tokens: int, limits: LimitSettings) -> tuple[list[dict[str, str]], int]:
    """The model's messages with as many of the latest exchanges as fit, and how many older ones were left out: the
    whole prompt within `max_prompt_chars` characters and, where the engine counts tokens, within its context minus
    the answer's `max_new_tokens` (or `max_prompt_tokens`). A question that does not fit even alone is refused in one
    line."""
    import gradio as gr

    context = getattr(engine, "context_length", None)
    count = getattr(engine, "prompt_tokens", None)
    budget = limits.max_prompt_tokens or (context - max_new_tokens if context and count else None)
    dropped = 0
    while True:
        messages = prompt_messages(system_prompt, [*earlier, {"role": "user", "content": question}])
        chars = sum(len(m["content"]) for m in messages)
        tokens = count(messages, adapter) if budget is not None and chars <= limits.max_prompt_chars else None
        if chars <= limits.max_prompt_chars and (tokens is None or tokens <= budget):
            return messages, dropped
        if not earlier:
            if chars > limits.max_prompt_chars:
                raise gr.Error(f"The question and the system prompt come to {chars:,} characters; the limit is "
                               f"{limits.max_prompt_chars:,}. Please shorten them.")
            raise gr.Error(f"The question and the system prompt come to {tokens:,} tokens; with the answer's "
                           f"{max_new_tokens:,} that exceeds the {budget + max_new_tokens:,} the model can read. "
                           "Please shorten them, or ask for a shorter answer.")
        earlier, dropped = earlier[2:], dropped + 1


def prompt_messages(system_prompt: str | None, turns: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The model's messages: the system prompt (when not blank), then the conversation."""
    return ([{"role": "system", "content": system_prompt}] if (system_prompt or "").strip() else []) + list(turns)


def ground_default(ground, grounding, adapter: str) -> bool:
    """Whether to ground: the visitor's box, or (left out by an API caller) the adapter's default."""
    if ground is None:
        return grounding.default_for(adapter) if grounding is not None else False
    return bool(ground)


def answer_with_notes(engine, grounding, messages: list[dict[str, str]], adapter: str, ground: bool,
                      settings: GenerationSettings):
    """Stream an answer between its notes: yields (notes above, answer so far, None) while it grows, then (notes
    above, answer, notes below) once it is final. The correction comes first: a false premise the KB corrects is a
    note above every answer (grounded or not, whatever it says), yielded once before the engine is asked, so the
    visitor sees it as soon as the question is sent and the answer streams below it; it also opens a grounded prompt.
    With `ground`, the KB passages retrieved for the question go into the system message (rendered by the adapter's
    own chat template, like any system message) and become the numbered sources under the answer; the finished
    answer is then checked against the KB, and a contradiction becomes a warning under it naming the fact and its
    source. An answer that does not carry its correction gets the warning too."""
    from trainer.inference.engine import EngineUnavailable
    from trainer.kb.retrieve import grounded_messages

    corrections = grounding.premise(messages) if grounding is not None else []
    above = [correction_note(corrections)] if corrections else []
    yield above, "", None  # before retrieval and the first token: the correction shows at once
    hits = grounding.search(messages[-1]["content"]) if (grounding is not None and ground) else None
    prompt = grounded_messages(messages, hits, corrections) if hits is not None else messages
    text = ""
    try:
        for text in engine.stream(prompt, adapter, settings):
            yield above, text, None
    except EngineUnavailable as exc:  # the server is down or busy: say so under what came, check nothing more
        yield above, text, [unavailable_note(str(exc))]
        return
    below = []
    if grounding is not None:
        flags = grounding.check([*messages, {"role": "assistant", "content": text}])
        if flags:
            below.append(check_note(flags))
    if hits is not None:
        below.append(sources_note(hits))
    yield above, text, below


def build_chat_tab(engine, store, cfg: SpaceConfig, choices: list[tuple[str, str]], default_adapter: str,
                   gen_inputs: list[Any], grounding=None) -> None:
    """The Chat tab with its `chat`, `retry`, `clear` and (when feedback is on) `feedback` endpoints.
    `gen_inputs` are the shared system prompt, temperature, top-p and max-new-tokens components; `grounding`
    (space.grounding.Grounding) adds grounded answers with sources and the live KB check."""
    import gradio as gr

    limits = cfg.limits

    def respond(message, history, adapter, ground, system_prompt, temperature, top_p, max_new_tokens):
        # API callers may send null for any input: each then takes the value its control starts with.
        history = check_history(history, limits)  # first: an oversized history is refused before any other work
        message, adapter = check_question(message, limits), check_adapter(adapter, engine, default_adapter)
        system_prompt = check_system_prompt(system_prompt, cfg)
        settings = decoding(cfg.generation, temperature, top_p, max_new_tokens)
        earlier, dropped = trim_history(history, limits.max_history_turns)
        if dropped:
            gr.Info(f"Only the last {limits.max_history_turns} exchanges are sent to the model; "
                    f"{dropped} earlier one(s) were left out.")
        messages, fewer = fit_prompt(engine, system_prompt, earlier, message, adapter, settings.max_new_tokens, limits)
        if fewer:
            gr.Info(f"The conversation is longer than the model can read at once; the {fewer} oldest exchange(s) were "
                    "left out.")
        history.append({"role": "user", "content": safe_text(message)})
        # the correction (if any) above the answer from the first yield, before the first token; notes under it
        for above, text, below in answer_with_notes(engine, grounding, messages, adapter,
                                                    ground_default(ground, grounding, adapter), settings):
            yield [*history, *above, {"role": "assistant", "content": safe_text(text)}, *(below or [])], ""

    def retry(history, adapter, ground, system_prompt, temperature, top_p, max_new_tokens):
        history = check_history(history, limits)
        while history and history[-1].get("role") == "assistant":  # the answer, its correction and its notes
            history.pop()
        if not history:
            raise gr.Error("Nothing to retry yet.")
        last = message_text(history.pop())
        yield from respond(last, history, adapter, ground, system_prompt, temperature, top_p, max_new_tokens)

    def on_like(ratings, data: gr.LikeData):
        return rated(ratings, data.index, data.liked)

    def submit_feedback(history, ratings, comment_text, better_answer, consented, adapter, system_prompt,
                        temperature, top_p, max_new_tokens, request_id, request: gr.Request):
        """Store one consented snapshot of the dialogue with its ratings; acknowledged once durable."""
        from trainer.data.feedback import FeedbackError

        if not consented:
            raise gr.Error("Tick the consent box first: nothing is stored without it.")
        history = check_history(history, limits)
        for what, value in (("comment", comment_text), ("suggested answer", better_answer)):
            if value is not None and (not isinstance(value, str) or len(value) > limits.max_feedback_chars):
                raise gr.Error(f"The {what} is {len(str(value)):,} characters long; the limit is "
                               f"{limits.max_feedback_chars:,}. Please shorten it.")
        # API callers may send null for any input: each then takes the value its control starts with.
        adapter = check_adapter(adapter, engine, default_adapter)
        system_prompt = check_system_prompt(system_prompt, cfg)
        settings = decoding(cfg.generation, temperature, top_p, max_new_tokens)
        try:
            record, removed = feedback_record(
                history, ratings, comment_text, better_answer, engine=engine, adapter=adapter,
                system_prompt=system_prompt, settings=settings, grounding=grounding, request_id=request_id,
                session_id=getattr(request, "session_hash", None) or "api")
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        try:
            record_id = store.add(record)
        except FeedbackError as exc:
            raise gr.Error(str(exc)) from None
        return (f"Saved, thank you (reference `{record_id[:12]}`)."
                + (f" {removed} personal detail(s) were removed before saving." if removed else "")), "", ""

    feedback_on = store is not None and cfg.feedback.enabled
    with gr.Tab("Chat"):
        ui = _chat_controls(cfg, choices, default_adapter, grounding, feedback_on)
        if grounding is not None:  # each adapter brings its own default (space.yaml `ground`)
            ui.adapter.change(grounding.default_for, ui.adapter, ui.ground, api_name=False)
        chat_inputs = [ui.question, ui.chatbot, ui.adapter, ui.ground, *gen_inputs]
        sent = ui.send.click(respond, chat_inputs, [ui.chatbot, ui.question], api_name="chat")
        submitted = ui.question.submit(respond, chat_inputs, [ui.chatbot, ui.question], api_name=False)
        retried = ui.retry_btn.click(retry, [ui.chatbot, ui.adapter, ui.ground, *gen_inputs],
                                     [ui.chatbot, ui.question], api_name="retry")
        ui.stop.click(None, None, None, cancels=[sent, submitted, retried], api_name=False)
        ui.clear.click(lambda: ([], "", {}), None, [ui.chatbot, ui.question, ui.ratings], api_name="clear")
        if feedback_on:
            ui.chatbot.like(on_like, [ui.ratings], [ui.ratings], api_name=False)
            ui.send_feedback.click(
                submit_feedback, [ui.chatbot, ui.ratings, ui.comment, ui.better, ui.consent, ui.adapter,
                                  *gen_inputs, ui.feedback_request],
                [ui.feedback_status, ui.comment, ui.better], api_name="feedback",
                concurrency_limit=64, concurrency_id="feedback")


def rated(ratings, index, liked) -> dict[str, int]:
    """The ratings after a like (1), a dislike (-1) or its undoing on the answer at `index` (JSON keys are text)."""
    ratings = dict(ratings or {})
    key = str(index[0] if isinstance(index, (list, tuple)) else index)
    if liked is True or liked == "like":
        ratings[key] = 1
    elif liked is False or liked == "dislike":
        ratings[key] = -1
    else:
        ratings.pop(key, None)
    return ratings


def feedback_record(history, ratings, comment_text, better_answer, *, engine, adapter: str, system_prompt: str,
                    settings: GenerationSettings, grounding, request_id, session_id: str):
    """The consented snapshot the Feedback button stores, and how many personal details were removed from it: the
    app's notes left out, each rating moved to the answer it rates (`rated_answer`), every text redacted, the live
    KB check's flags per answer. A pure function of what the browser (or an API caller) sent, so tests build records
    without the app; bad ratings are a ValueError naming the rule."""
    from space.privacy import redact, redact_many
    from trainer.data.feedback import FeedbackRecord

    ratings = ratings if ratings is not None else {}
    if not isinstance(ratings, dict) or not all(str(k).isdigit() and v in (1, -1) for k, v in ratings.items()):
        raise ValueError("ratings must map answer indices to 1 (like) or -1 (dislike).")
    # The stored dialogue leaves out the app's notes; ratings follow the answers they rate.
    kept = [(i, m) for i, m in enumerate(history or []) if m.get("role") in ("user", "assistant") and not is_note(m)]
    position = {i: n for n, (i, _) in enumerate(kept)}
    ratings = {position[i]: v for k, v in ratings.items() if (i := rated_answer(history, int(k))) in position}
    messages = [{"role": m["role"], "content": message_text(m)} for _, m in kept]
    texts, counts = redact_many([system_prompt] + [m["content"] for m in messages])
    for m, text in zip(messages, texts[1:]):
        m["content"] = text
    extra = {}
    for key, value in (("comment", comment_text), ("edited_answer", better_answer)):
        if value and value.strip():
            extra[key], found = redact(value.strip())
            counts = {k: counts[k] + found[k] for k in counts}
    last_answer = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    record = FeedbackRecord(
        session_id=session_id, base_model=engine.base_model, adapter=adapter,
        adapter_revision=engine.adapter_revision(adapter), system_prompt=texts[0], messages=messages, consent=True,
        ratings={int(k): int(v) for k, v in ratings.items()},
        settings={"temperature": settings.temperature, "top_p": settings.top_p,
                  "max_new_tokens": settings.max_new_tokens},
        edited_index=last_answer if "edited_answer" in extra else None, redactions=counts,
        request_id=(request_id or "").strip()[:128] or None,
        kb_flags=grounding.flags_per_answer(messages) if grounding is not None else [], **extra)
    return record, sum(counts.values())


def _chat_controls(cfg: SpaceConfig, choices: list[tuple[str, str]], default_adapter: str, grounding,
                   feedback_on: bool) -> SimpleNamespace:
    """The Chat tab's components, laid out (called inside its `gr.Tab`): the adapter and grounding choice, the chat,
    the question row, the examples and the feedback accordion."""
    import gradio as gr

    with gr.Row():
        adapter = gr.Dropdown(choices, value=default_adapter, label="Adapter", elem_id="adapter", scale=4)
        ground = gr.Checkbox(grounding.default_for(default_adapter) if grounding else False,
                             label="Ground answers in the knowledge base (sources shown under each answer)",
                             interactive=grounding is not None, elem_id="ground", scale=2)
    chatbot = checked_chatbot(label="Counsellor", height=480, sanitize_html=True, render_markdown=True,
                              buttons=["copy"], elem_id="chatbot")
    with gr.Row():
        question = gr.Textbox(placeholder="Ask about admissions, visas, scholarships, costs ...",
                              show_label=False, scale=6, elem_id="question", max_lines=8)
        send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        stop = gr.Button("Stop", variant="stop", scale=1, elem_id="stop")
    with gr.Row():
        retry_btn = gr.Button("Retry", size="sm", elem_id="retry")
        clear = gr.Button("Clear", size="sm", elem_id="clear")
    gr.Examples(list(cfg.examples), inputs=question, label="Example questions")
    # Likes per answer index; a (hidden) component rather than State, so API clients can send ratings too.
    ratings = gr.JSON({}, visible=False)
    with gr.Accordion("Feedback: rate answers with the thumbs, correct the last one, send it to us",
                      open=False, visible=feedback_on):
        consent = gr.Checkbox(False, label=cfg.feedback.consent_text, elem_id="consent")
        comment = gr.Textbox(label="Comment (optional)", lines=2, elem_id="comment")
        better = gr.Textbox(label="Suggest a better answer to the last reply (optional)", lines=4,
                            elem_id="better-answer")
        send_feedback = gr.Button("Send feedback", elem_id="send-feedback")
        # API callers may pass an idempotency key so a retried call is not stored twice.
        feedback_request = gr.Textbox("", visible=False)
        feedback_status = gr.Markdown(elem_id="feedback-status")
    return SimpleNamespace(adapter=adapter, ground=ground, chatbot=chatbot, question=question, send=send, stop=stop,
                           retry_btn=retry_btn, clear=clear, ratings=ratings, consent=consent, comment=comment,
                           better=better, send_feedback=send_feedback, feedback_request=feedback_request,
                           feedback_status=feedback_status)
