"""The Labelling tab: reviewers list the stored feedback, open a dialogue, accept or reject it, correct an answer.

Only reviewers see it (an allow-listed OAuth user on a Space, or the holder of the local token); every endpoint
checks again, so an API caller without access gets an error, not records.
"""

# No `from __future__ import annotations`: Gradio reads the handlers' `gr.Request` / `gr.LikeData` hints at
# run time to pass the request and the like event, and a string annotation would hide them.

import os
from types import SimpleNamespace

from space.display import format_when, kb_check_label, parse_day, reviewer_of, safe_text
from trainer.inference.model import BASE
from trainer.hub.space_settings import SpaceConfig

QUEUE_PAGE = 200  # dialogues listed at once in the labelling queue (filters narrow it)
MAX_SEARCH_CHARS = 200  # a queue search longer than any sentence worth finding is refused, not scanned


def rating_label(record) -> str:
    """`+2 / -1`, or `unrated`."""
    likes = sum(1 for v in record.ratings.values() if v > 0)
    dislikes = sum(1 for v in record.ratings.values() if v < 0)
    return f"+{likes} / -{dislikes}" if record.ratings else "unrated"


def queue_row(record) -> list[str]:
    """One line of the labelling queue: id, when, adapter, ratings, topic, status, KB check, first question."""
    return [record.id, format_when(record.created_at), record.adapter, rating_label(record), record.topic or "",
            record.status, kb_check_label(record.kb_flags),
            next((m["content"][:80] for m in record.messages if m["role"] == "user"), "")]


def record_details(record) -> str:
    """What a reviewer reads beside an opened dialogue: adapter, status, ratings, the visitor's comment and
    suggested answer, the live KB check's warnings with their sources, and who decided it when. Visitor and KB text
    is escaped, so HTML in it stays inert."""
    details = [f"**Adapter** `{record.adapter}` · **status** {record.status} · **ratings** {rating_label(record)}"]
    if record.comment:
        details.append(f"**Comment:** {safe_text(record.comment)}")
    if record.edited_answer:
        details.append(f"**Suggested answer for message {record.edited_index}:**\n\n{safe_text(record.edited_answer)}")
    for flag in record.kb_flags:
        details.append(f"**⚠ KB check, message {flag['message']}:** {safe_text(flag['detail'])}"
                       + (f" ([source]({flag['source']}))" if flag.get("source") else ""))
    if record.reviewer:
        details.append(f"Decided by {safe_text(record.reviewer)} on {format_when(record.decided_at)}")
    return "\n\n".join(details)


def build_labelling_tab(demo, engine, store, cfg: SpaceConfig) -> None:
    """The (hidden) Labelling tab with its `label_queue`, `label_open`, `label_accept` and `label_reject`
    endpoints, and the page-load check that shows it to reviewers."""
    import gradio as gr

    def require_reviewer(request, established):
        reviewer = reviewer_of(request, cfg.feedback, established)
        if reviewer is None:
            raise gr.Error("The labelling tab is for reviewers: log in with an allowed account or use the token.")
        return reviewer

    def label_queue(status, rating, adapter_filter, topic, since, until, search, kb_check, established,
                    request: gr.Request):
        require_reviewer(request, established)
        try:
            rows = store.records(status=None if status == "all" else status,
                                 rating=None if rating == "all" else rating,
                                 adapter=None if adapter_filter == "all" else adapter_filter,
                                 topic=None if topic == "all" else topic, since=parse_day(since),
                                 until=parse_day(until, True), kb_check=None if kb_check == "all" else kb_check)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        needle = (search or "").strip().lower()
        if len(needle) > MAX_SEARCH_CHARS:
            raise gr.Error(f"The search text is {len(needle):,} characters long; the limit is {MAX_SEARCH_CHARS}.")
        if needle:
            rows = [r for r in rows if any(needle in m["content"].lower() for m in r.messages)]
        shown = rows[:QUEUE_PAGE]
        table = [queue_row(r) for r in shown]
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
        return shown, record_details(record), gr.Dropdown(choices=turns, value=turns[-1] if turns else None), \
            record.topic or None

    def label_decide(record_id, decision, turn, corrected, topic, established, request: gr.Request):
        from space.privacy import redact
        from trainer.data.feedback import FeedbackError

        reviewer = require_reviewer(request, established)
        if corrected is not None and (not isinstance(corrected, str) or
                                      len(corrected) > cfg.limits.max_feedback_chars):
            raise gr.Error(f"The corrected answer is {len(str(corrected)):,} characters long; the limit is "
                           f"{cfg.limits.max_feedback_chars:,}. Please shorten it.")
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

    reviewer_state = gr.State(None)  # set at page load for an authorised reviewer; never by an API caller
    with gr.Tab("Labelling", visible=False, elem_id="labelling-tab") as labelling_tab:
        ui = _labelling_controls(engine, store, cfg)
        filters = [ui.status_filter, ui.rating_filter, ui.adapter_filter, ui.topic_filter, ui.since, ui.until,
                   ui.search, ui.kb_filter, reviewer_state]
        ui.load_queue.click(label_queue, filters, [ui.queue_table, ui.record_id, ui.queue_count],
                            api_name="label_queue")
        ui.open_btn.click(label_open, [ui.record_id, reviewer_state],
                          [ui.dialogue, ui.details_md, ui.turn, ui.topic_tag], api_name="label_open")
        for button, decision in ((ui.accept, "accepted"), (ui.reject, "rejected")):
            button.click(label_decide, [ui.record_id, gr.State(decision), ui.turn, ui.corrected, ui.topic_tag,
                                        reviewer_state], [ui.decision_status], api_name=f"label_{decision[:-2]}")
    demo.load(on_load, None, [labelling_tab, reviewer_state], api_name=False)


def _labelling_controls(engine, store, cfg: SpaceConfig) -> SimpleNamespace:
    """The Labelling tab's components, laid out (called inside its `gr.Tab`): the queue's filters and table, the
    dialogue under review and the decision buttons."""
    import gradio as gr

    if store is not None and os.environ.get("SPACE_ID") and os.environ.get("OAUTH_CLIENT_ID"):
        gr.LoginButton()
    with gr.Row():
        status_filter = gr.Dropdown(["unreviewed", "accepted", "rejected", "all"], value="unreviewed",
                                    label="Status")
        rating_filter = gr.Dropdown(["all", "liked", "disliked", "unrated"], value="all", label="Rating")
        adapter_filter = gr.Dropdown(["all", BASE, *engine.adapter_names], value="all", label="Adapter")
        topic_filter = gr.Dropdown(["all", *cfg.feedback.topics], value="all", label="Topic")
        kb_filter = gr.Dropdown([("all", "all"), ("any KB warning", "flagged"),
                                 ("false premise not corrected", "premise"), ("no KB warning", "clean")],
                                value="all", label="KB check", elem_id="kb-filter")
        since = gr.Textbox(label="From (YYYY-MM-DD)")
        until = gr.Textbox(label="To (YYYY-MM-DD)")
    search = gr.Textbox(label="Containing (any message)", elem_id="queue-search")
    load_queue = gr.Button("Load queue", elem_id="load-queue")
    queue_count = gr.Markdown()
    queue_table = gr.Dataframe(headers=["id", "created (UTC)", "adapter", "ratings", "topic", "status",
                                        "KB check", "first question"], interactive=False, wrap=True)
    record_id = gr.Dropdown([], label="Dialogue", elem_id="record-id", allow_custom_value=True)
    open_btn = gr.Button("Open", elem_id="open-record")
    dialogue = gr.Chatbot(label="Dialogue under review", height=360, sanitize_html=True)
    details_md = gr.Markdown()
    with gr.Row():
        turn = gr.Dropdown([], label="Assistant turn to correct")
        topic_tag = gr.Dropdown(list(cfg.feedback.topics), label="Topic")
    corrected = gr.Textbox(label="Corrected answer for that turn (optional)", lines=5)
    with gr.Row():
        accept = gr.Button("Accept", variant="primary", elem_id="accept")
        reject = gr.Button("Reject", variant="stop", elem_id="reject")
    decision_status = gr.Markdown()
    return SimpleNamespace(status_filter=status_filter, rating_filter=rating_filter, adapter_filter=adapter_filter,
                           topic_filter=topic_filter, kb_filter=kb_filter, since=since, until=until, search=search,
                           load_queue=load_queue, queue_count=queue_count, queue_table=queue_table,
                           record_id=record_id, open_btn=open_btn, dialogue=dialogue, details_md=details_md,
                           turn=turn, topic_tag=topic_tag, corrected=corrected, accept=accept, reject=reject,
                           decision_status=decision_status)
