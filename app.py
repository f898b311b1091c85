"""The Gradio Space: a study-abroad counsellor chat over one 4-bit base and hot-swappable adapters.

`build_app(registry, engine, store, cfg)` wires the UI from parts passed in; nothing loads at import.
`python app.py` loads the base and adapters once and serves on 127.0.0.1:7860 (see `--help`).
"""

import argparse
import html
import os
import re
import sys
from typing import Any, Sequence

QUEUE_PAGE = 200  # dialogues listed at once in the labelling queue (filters narrow it)
NOTICE = ("Answers come from a language model and can be wrong or out of date. Check every requirement, fee and "
          "deadline with the university and the official government sources before you act on it.")
_JS_LINK = re.compile(r"\]\(\s*(?:javascript|vbscript|data):", re.IGNORECASE)

def safe_text(text: str) -> str:
    """Display form of a message: HTML escaped (markdown still renders) and script links disarmed."""
    return _JS_LINK.sub("](#blocked:", html.escape(text, quote=False))

def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message as Gradio hands it back (a string, or a list of typed parts), unescaped."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return html.unescape(content) if isinstance(content, str) else ""

def trim_history(history: Sequence[dict[str, Any]], max_turns: int) -> tuple[list[dict[str, str]], int]:
    """The last `max_turns` question/answer pairs as model messages (display escaping undone), and how many
    earlier pairs were left out."""
    pairs: list[list[dict[str, str]]] = []
    for message in history:
        role = message.get("role")
        if role not in ("user", "assistant"):
            continue
        turn = {"role": role, "content": message_text(message)}
        if role == "user" or not pairs:
            pairs.append([turn])
        else:
            pairs[-1].append(turn)
    complete = [p for p in pairs if len(p) == 2 and p[0]["role"] == "user" and p[1]["content"].strip()]
    kept = complete[-max_turns:] if max_turns else []
    return [m for pair in kept for m in pair], len(complete) - len(kept)

def oauth_username(request) -> str | None:
    """The Hugging Face username of a visitor logged in through the Space's OAuth, if any."""
    try:
        info = request.session.get("oauth_info") if request is not None else None
    except (AssertionError, AttributeError, KeyError):  # no session middleware: OAuth is not enabled
        return None
    return ((info or {}).get("userinfo") or {}).get("preferred_username")

def reviewer_of(request, feedback_cfg, established: str | None = None) -> str | None:
    """Who may use the labelling tab: an allow-listed OAuth user on a Space, or the holder of the local token
    (sent as the `X-Labelling-Token` header, or `?token=` in the page URL). None means no access."""
    import hmac

    if established:
        return established
    username = oauth_username(request)
    if username and username in feedback_cfg.reviewers:
        return username
    expected = os.environ.get(feedback_cfg.token_env, "")
    if request is not None and expected:
        given = request.headers.get("x-labelling-token") or dict(request.query_params).get("token") or ""
        if given and hmac.compare_digest(given.encode(), expected.encode()):
            return (request.headers.get("x-reviewer") or "local reviewer")[:64]
    return None

def _when(timestamp: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")

def _day(text: str, end: bool = False) -> float | None:
    import datetime as dt

    text = (text or "").strip()
    if not text:
        return None
    try:
        day = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise ValueError(f"dates are YYYY-MM-DD, got {text!r}") from None
    return (day + dt.timedelta(days=1 if end else 0)).timestamp()

def build_app(registry, engine, store=None, cfg=None):
    """The Blocks app. `store` (feedback) is optional until the labelling tab uses it."""
    import gradio as gr

    from trainer.modeling import BASE, GenerationSettings
    from trainer.space_settings import SpaceConfig

    cfg = cfg or SpaceConfig()
    limits, defaults = cfg.limits, cfg.generation
    choices = [("Base model (no adapter)", BASE)] + [
        (f"{name} - {registry.get(name).description}" if registry.get(name).description else name, name)
        for name in engine.adapter_names
    ]
    default_adapter = engine.adapter_names[-1] if engine.adapter_names else BASE
    quant = "4-bit NF4" if engine.load_in_4bit else "unquantized"
    banner = [f"**Base model:** `{engine.base_model}` ({quant}), adapters: "
              + (", ".join(f"`{n}`" for n in engine.adapter_names) or "none")]
    if engine.is_demo:
        banner.append("**Demo mode:** no GPU here, so this runs the embedded demo model (SmolLM2-135M-Instruct) "
                      "on the CPU. It shows how the pipeline works; its answers are not counselling.")
    for name, reason in engine.refused.items():
        banner.append(f"Adapter `{name}` was not loaded: {safe_text(reason)}")

    def settings(temperature, top_p, max_new_tokens) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                  top_p=float(top_p), repetition_penalty=defaults.repetition_penalty)

    def check_question(message: str) -> str:
        message = (message or "").strip()
        if not message:
            raise gr.Error("Type a question first.")
        if len(message) > limits.max_input_chars:
            raise gr.Error(f"Your message is {len(message):,} characters long; the limit is "
                           f"{limits.max_input_chars:,}. Please shorten it.")
        return message

    def check_adapter(adapter: str) -> str:
        if adapter != BASE and adapter not in engine.adapter_names:
            raise gr.Error(f"Unknown adapter {adapter!r}.")
        return adapter

    def respond(message, history, adapter, system_prompt, temperature, top_p, max_new_tokens):
        message, adapter = check_question(message), check_adapter(adapter)
        history = list(history or [])
        earlier, dropped = trim_history(history, limits.max_history_turns)
        if dropped:
            gr.Info(f"Only the last {limits.max_history_turns} exchanges are sent to the model; "
                    f"{dropped} earlier one(s) were left out.")
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt.strip() else []) + \
            earlier + [{"role": "user", "content": message}]
        history += [{"role": "user", "content": safe_text(message)}, {"role": "assistant", "content": ""}]
        yield history, ""
        for text in engine.stream(messages, adapter, settings(temperature, top_p, max_new_tokens)):
            history[-1] = {"role": "assistant", "content": safe_text(text)}
            yield history, ""

    def retry(history, adapter, system_prompt, temperature, top_p, max_new_tokens):
        history = list(history or [])
        while history and history[-1].get("role") == "assistant":
            history.pop()
        if not history:
            raise gr.Error("Nothing to retry yet.")
        last = message_text(history.pop())
        yield from respond(last, history, adapter, system_prompt, temperature, top_p, max_new_tokens)

    def compare(question, adapter_a, adapter_b, system_prompt, temperature, top_p, max_new_tokens):
        question = check_question(question)
        adapter_a, adapter_b = check_adapter(adapter_a), check_adapter(adapter_b)
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt.strip() else []) + \
            [{"role": "user", "content": question}]
        gen = settings(temperature, top_p, max_new_tokens)
        answer_a = ""
        for answer_a in engine.stream(messages, adapter_a, gen):
            yield safe_text(answer_a), ""
        for answer_b in engine.stream(messages, adapter_b, gen):
            yield safe_text(answer_a), safe_text(answer_b)

    def on_like(ratings, data: gr.LikeData):
        ratings = dict(ratings or {})
        index = str(data.index[0] if isinstance(data.index, (list, tuple)) else data.index)  # JSON keys are text
        if data.liked is True or data.liked == "like":
            ratings[index] = 1
        elif data.liked is False or data.liked == "dislike":
            ratings[index] = -1
        else:
            ratings.pop(index, None)
        return ratings

    def submit_feedback(history, ratings, comment_text, better_answer, consented, adapter, system_prompt,
                        temperature, top_p, max_new_tokens, request_id, request: gr.Request):
        """Store one consented snapshot of the dialogue with its ratings; acknowledged once durable."""
        from trainer.feedback import FeedbackError, FeedbackRecord
        from space.privacy import redact, redact_many

        if not consented:
            raise gr.Error("Tick the consent box first: nothing is stored without it.")
        messages = [{"role": m["role"], "content": message_text(m)} for m in (history or [])
                    if m.get("role") in ("user", "assistant")]
        texts, counts = redact_many([system_prompt] + [m["content"] for m in messages])
        system_text = texts[0]
        for m, text in zip(messages, texts[1:]):
            m["content"] = text
        extra = {}
        for key, value in (("comment", comment_text), ("edited_answer", better_answer)):
            if value and value.strip():
                extra[key], found = redact(value.strip())
                counts = {k: counts[k] + found[k] for k in counts}
        last_answer = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        record = FeedbackRecord(
            session_id=getattr(request, "session_hash", None) or "api", base_model=engine.base_model,
            adapter=adapter, adapter_revision=engine.adapter_revision(adapter), system_prompt=system_text,
            messages=messages, consent=True, ratings={int(k): int(v) for k, v in (ratings or {}).items()},
            settings={"temperature": float(temperature), "top_p": float(top_p),
                      "max_new_tokens": int(max_new_tokens)},
            edited_index=last_answer if "edited_answer" in extra else None, redactions=counts,
            request_id=(request_id or "").strip()[:128] or None, **extra)
        try:
            record_id = store.add(record)
        except FeedbackError as exc:
            raise gr.Error(str(exc)) from None
        removed = sum(counts.values())
        return (f"Saved, thank you (reference `{record_id[:12]}`)."
                + (f" {removed} personal detail(s) were removed before saving." if removed else "")), "", ""

    def require_reviewer(request, established):
        reviewer = reviewer_of(request, cfg.feedback, established)
        if reviewer is None:
            raise gr.Error("The labelling tab is for reviewers: log in with an allowed account or use the token.")
        return reviewer

    def rating_label(record) -> str:
        likes = sum(1 for v in record.ratings.values() if v > 0)
        dislikes = sum(1 for v in record.ratings.values() if v < 0)
        return f"+{likes} / -{dislikes}" if record.ratings else "unrated"

    def label_queue(status, rating, adapter_filter, topic, since, until, search, established,
                    request: gr.Request):
        require_reviewer(request, established)
        try:
            rows = store.records(status=None if status == "all" else status,
                                 rating=None if rating == "all" else rating,
                                 adapter=None if adapter_filter == "all" else adapter_filter,
                                 topic=None if topic == "all" else topic, since=_day(since), until=_day(until, True))
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        needle = (search or "").strip().lower()
        if needle:
            rows = [r for r in rows if any(needle in m["content"].lower() for m in r.messages)]
        shown = rows[:QUEUE_PAGE]
        table = [[r.id, _when(r.created_at), r.adapter, rating_label(r), r.topic or "", r.status,
                  next((m["content"][:80] for m in r.messages if m["role"] == "user"), "")] for r in shown]
        count = f"{len(rows)} dialogue(s)" + (f", showing the oldest {QUEUE_PAGE}" if len(rows) > QUEUE_PAGE else "")
        return table, gr.Dropdown(choices=[r.id for r in shown], value=shown[0].id if shown else None), count

    def label_open(record_id, established, request: gr.Request):
        require_reviewer(request, established)
        record = store.get(record_id or "")
        if record is None:
            raise gr.Error(f"No dialogue {record_id!r}.")
        shown = [{"role": m["role"], "content": safe_text(record.review_edits.get(i, m["content"]))}
                 for i, m in enumerate(record.messages)]
        turns = [i for i, m in enumerate(record.messages) if m["role"] == "assistant"]
        details = [f"**Adapter** `{record.adapter}` · **status** {record.status} · **ratings** {rating_label(record)}"]
        if record.comment:
            details.append(f"**Comment:** {safe_text(record.comment)}")
        if record.edited_answer:
            details.append(f"**Suggested answer for message {record.edited_index}:**\n\n"
                           f"{safe_text(record.edited_answer)}")
        if record.reviewer:
            details.append(f"Decided by {safe_text(record.reviewer)} on {_when(record.decided_at)}")
        return shown, "\n\n".join(details), gr.Dropdown(choices=turns, value=turns[-1] if turns else None), \
            record.topic or None

    def label_decide(record_id, decision, turn, corrected, topic, established, request: gr.Request):
        from trainer.feedback import FeedbackError
        from space.privacy import redact

        reviewer = require_reviewer(request, established)
        edits = {}
        if corrected and corrected.strip():
            if turn is None:
                raise gr.Error("Choose the assistant turn the correction replaces.")
            edits[int(turn)] = redact(corrected.strip())[0]
        try:
            record = store.decide(record_id or "", status=decision, reviewer=reviewer, topic=topic or None,
                                  edits=edits)
        except FeedbackError as exc:
            raise gr.Error(str(exc)) from None
        return f"{record.status} by {reviewer}" + (f", turn {turn} corrected" if edits else "")

    def on_load(request: gr.Request):
        reviewer = reviewer_of(request, cfg.feedback) if store is not None else None
        return gr.Tab(visible=reviewer is not None), reviewer

    with gr.Blocks(title="Study-abroad counsellor") as demo:
        gr.Markdown("# Study-abroad counsellor\n" + "\n\n".join(banner))
        gr.Markdown(f"> {NOTICE}", elem_id="notice")
        with gr.Accordion("Counselling prompt and generation settings", open=False):
            system_prompt = gr.Textbox(cfg.system_prompt, label="System prompt", lines=4)
            with gr.Row():
                temperature = gr.Slider(0, 1.5, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top-p")
                max_new_tokens = gr.Slider(16, defaults.max_new_tokens_limit, value=defaults.max_new_tokens, step=16,
                                           label="Max new tokens")
        gen_inputs = [system_prompt, temperature, top_p, max_new_tokens]

        with gr.Tab("Chat"):
            adapter = gr.Dropdown(choices, value=default_adapter, label="Adapter", elem_id="adapter")
            chatbot = gr.Chatbot(label="Counsellor", height=480, sanitize_html=True, render_markdown=True,
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
            feedback_on = store is not None and cfg.feedback.enabled
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
            chat_inputs = [question, chatbot, adapter, *gen_inputs]
            sent = send.click(respond, chat_inputs, [chatbot, question], api_name="chat")
            submitted = question.submit(respond, chat_inputs, [chatbot, question], api_name=False)
            retried = retry_btn.click(retry, [chatbot, adapter, *gen_inputs], [chatbot, question], api_name="retry")
            stop.click(None, None, None, cancels=[sent, submitted, retried], api_name=False)
            clear.click(lambda: ([], "", {}), None, [chatbot, question, ratings], api_name="clear")
            if feedback_on:
                chatbot.like(on_like, [ratings], [ratings], api_name=False)
                send_feedback.click(
                    submit_feedback, [chatbot, ratings, comment, better, consent, adapter, *gen_inputs,
                                      feedback_request],
                    [feedback_status, comment, better], api_name="feedback",
                    concurrency_limit=64, concurrency_id="feedback")

        with gr.Tab("Compare"):
            gr.Markdown("The same question answered by two adapters on the same base, one after the other.")
            compare_question = gr.Textbox(label="Question", elem_id="compare-question", max_lines=8)
            with gr.Row():
                adapter_a = gr.Dropdown(choices, value=BASE, label="Left", elem_id="adapter-a")
                adapter_b = gr.Dropdown(choices, value=default_adapter, label="Right", elem_id="adapter-b")
            compare_btn = gr.Button("Compare", variant="primary", elem_id="compare")
            with gr.Row():
                answer_a = gr.Markdown(sanitize_html=True, elem_id="answer-a")
                answer_b = gr.Markdown(sanitize_html=True, elem_id="answer-b")
            compare_btn.click(compare, [compare_question, adapter_a, adapter_b, *gen_inputs], [answer_a, answer_b],
                              api_name="compare")

        reviewer_state = gr.State(None)  # set at page load for an authorised reviewer; never by an API caller
        with gr.Tab("Labelling", visible=False, elem_id="labelling-tab") as labelling_tab:
            if store is not None and os.environ.get("SPACE_ID") and os.environ.get("OAUTH_CLIENT_ID"):
                gr.LoginButton()
            with gr.Row():
                status_filter = gr.Dropdown(["unreviewed", "accepted", "rejected", "all"], value="unreviewed",
                                            label="Status")
                rating_filter = gr.Dropdown(["all", "liked", "disliked", "unrated"], value="all", label="Rating")
                adapter_filter = gr.Dropdown(["all", BASE, *engine.adapter_names], value="all", label="Adapter")
                topic_filter = gr.Dropdown(["all", *cfg.feedback.topics], value="all", label="Topic")
                since = gr.Textbox(label="From (YYYY-MM-DD)")
                until = gr.Textbox(label="To (YYYY-MM-DD)")
            search = gr.Textbox(label="Containing (any message)", elem_id="queue-search")
            load_queue = gr.Button("Load queue", elem_id="load-queue")
            queue_count = gr.Markdown()
            queue_table = gr.Dataframe(headers=["id", "created (UTC)", "adapter", "ratings", "topic", "status",
                                                "first question"], interactive=False, wrap=True)
            record_id = gr.Dropdown([], label="Dialogue", elem_id="record-id", allow_custom_value=True)
            open_btn = gr.Button("Open", elem_id="open-record")
            dialogue = gr.Chatbot(label="Dialogue under review", height=360, sanitize_html=True)
            record_details = gr.Markdown()
            with gr.Row():
                turn = gr.Dropdown([], label="Assistant turn to correct")
                topic_tag = gr.Dropdown(list(cfg.feedback.topics), label="Topic")
            corrected = gr.Textbox(label="Corrected answer for that turn (optional)", lines=5)
            with gr.Row():
                accept = gr.Button("Accept", variant="primary", elem_id="accept")
                reject = gr.Button("Reject", variant="stop", elem_id="reject")
            decision_status = gr.Markdown()
            filters = [status_filter, rating_filter, adapter_filter, topic_filter, since, until, search,
                       reviewer_state]
            load_queue.click(label_queue, filters, [queue_table, record_id, queue_count], api_name="label_queue")
            open_btn.click(label_open, [record_id, reviewer_state], [dialogue, record_details, turn, topic_tag],
                           api_name="label_open")
            for button, decision in ((accept, "accepted"), (reject, "rejected")):
                button.click(label_decide, [record_id, gr.State(decision), turn, corrected, topic_tag,
                                            reviewer_state], [decision_status], api_name=f"label_{decision[:-2]}")
        demo.load(on_load, None, [labelling_tab, reviewer_state], api_name=False)

    demo.queue(default_concurrency_limit=limits.concurrency, max_size=limits.queue_size)
    return demo

def open_feedback_store(cfg):
    """The SQLite store, plus (with `feedback.hub_dataset`) a CommitScheduler pushing its JSONL copy."""
    from pathlib import Path

    from trainer.feedback import FeedbackStore

    settings = cfg.feedback
    store_path = Path(settings.store)
    if settings.hub_dataset is None:
        return FeedbackStore(store_path)
    from huggingface_hub import CommitScheduler

    folder = store_path.parent / "hub-jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    scheduler = CommitScheduler(repo_id=settings.hub_dataset, repo_type="dataset", folder_path=folder,
                                path_in_repo="records", every=settings.every_minutes, private=True,
                                allow_patterns=["*.jsonl"])
    print(f"[app] feedback is also committed to the dataset {settings.hub_dataset} every "
          f"{settings.every_minutes:g} min", flush=True)
    return FeedbackStore(store_path, jsonl_dir=folder, scheduler=scheduler)

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the study-abroad counsellor app.")
    parser.add_argument("--config", default="space_config/space.yaml", help="Space settings YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set limits.max_input_chars=1000")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args(argv)

    from space.engine import InferenceEngine, choose_base_model
    from space.registry import AdapterRegistry
    from trainer.space_settings import ConfigError, load_space_config
    from trainer.demo_model import DemoModelError
    from trainer.modeling import ModelError

    try:
        # Without a settings file at the default place, the defaults apply; a file named explicitly must exist.
        missing_default = args.config == parser.get_default("config") and not os.path.exists(args.config)
        cfg = load_space_config(None if missing_default else args.config, args.overrides)
        registry = AdapterRegistry.from_config(cfg, ".")
        engine = InferenceEngine(choose_base_model(cfg.base_model), registry, load_in_4bit=cfg.load_in_4bit,
                                 base_revision=cfg.base_revision)
        print(f"[app] loading {engine.base_model} and {len(registry)} adapter(s) ...", flush=True)
        engine.load()
    except (ConfigError, ModelError, DemoModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[app] ready in {engine.load_seconds:.1f}s: base + {', '.join(engine.adapter_names) or 'no adapters'}",
          flush=True)
    import gradio as gr

    try:
        store = open_feedback_store(cfg) if cfg.feedback.enabled else None
    except Exception as exc:  # the Hub dataset could not be created or reached: say so in one line
        print(f"error: feedback store: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    demo = build_app(registry, engine, store, cfg)
    _, url, _ = demo.launch(server_name=args.host, server_port=args.port, theme=gr.themes.Soft(),
                            prevent_thread_lock=True, quiet=True)
    print(f"[app] running on {url}", flush=True)
    demo.block_thread()
    return 0

if __name__ == "__main__":
    sys.exit(main())
