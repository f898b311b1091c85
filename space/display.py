"""What the app shows and to whom: escaping for display, the model's view of a chat, reviewer access, dates.

Standard library only (and the feedback store's rule names), so every tab (and a test) can use these without Gradio
or a model.
"""

from __future__ import annotations

import datetime as dt
import hmac
import html
import os
import re
from typing import Any, Sequence

from trainer.data.feedback import PREMISE_RULES

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


def is_note(message: dict[str, Any]) -> bool:
    """A message the app added around an answer (the correction above it; its sources, a KB warning under it): shown
    to the visitor, never sent to the model or stored as a turn of the dialogue. Gradio shows such messages as
    titled boxes (`metadata.title`)."""
    metadata = message.get("metadata")
    return bool(metadata.get("title")) if isinstance(metadata, dict) else False


def rated_answer(history: Sequence[dict[str, Any]], index: int) -> int:
    """The history index of the answer a like at `index` rates. Gradio shows consecutive assistant messages as one
    bubble (the correction above the answer, the warning and sources under it) and reports a like on it with the
    bubble's first index, which is the correction's when there is one: a note rates the answer of its bubble."""
    if not 0 <= index < len(history) or not is_note(history[index]):
        return index
    start = index
    while start > 0 and history[start - 1].get("role") == "assistant":
        start -= 1
    end = index
    while end + 1 < len(history) and history[end + 1].get("role") == "assistant":
        end += 1
    return next((i for i in range(start, end + 1) if not is_note(history[i])), index)


def sources_note(hits: Sequence[Any]) -> dict[str, Any]:
    """The retrieved KB passages as a titled message of numbered links with their as-of dates, or a note that the
    knowledge base has nothing on the question. KB text is escaped, so HTML in it stays inert."""
    if not hits:
        text = ("No entry of the knowledge base matches this question, so this answer cites no source. Check the "
                "university's and the government's official pages.")
    else:
        text = "\n".join(f"{n}. [{safe_text(h.passage.title)}]({_link(h.passage.source)}) — as of "
                         f"{safe_text(h.passage.as_of)}" for n, h in enumerate(hits, 1))
    return {"role": "assistant", "content": text, "metadata": {"title": "Sources from the knowledge base"}}


CORRECTION_TITLE = "Correction from the knowledge base"


def correction_note(corrections: Sequence[Any]) -> dict[str, Any]:
    """The KB's corrections of the question's false premises (`trainer.kb.premise.Correction`) as a titled note above
    the answer, shown as soon as the question is sent and whatever the answer then says: each the claim, the fact, a
    link to its official source and its as-of date. KB text is escaped, so HTML in it stays inert."""
    from trainer.kb.premise import distinct

    lines = [f"- The question assumes “{safe_text(c.claim)}” The knowledge base says: {safe_text(c.fact)} "
             f"([source]({_link(c.source)}), as of {safe_text(c.as_of)})" for c in distinct(corrections)]
    return {"role": "assistant", "content": "\n".join(lines), "metadata": {"title": CORRECTION_TITLE}}


def check_title(flags: Sequence[Any]) -> str:
    """The warning's title: what is wrong with the answer (a KB contradiction, an uncorrected false premise, or
    both)."""
    premise = any(f.rule in PREMISE_RULES for f in flags)
    other = any(f.rule not in PREMISE_RULES for f in flags)
    what = " and ".join((["contradicts the knowledge base"] if other else [])
                        + (["does not correct the question's false premise"] if premise else []))
    return f"⚠ Check this answer: it {what}"


def kb_check_label(flags: Sequence[dict[str, Any]]) -> str:
    """A stored record's live-check flags in the labelling queue: `2 warning(s), false premise not corrected`."""
    if not flags:
        return ""
    premise = any(f.get("rule") in PREMISE_RULES for f in flags)
    return f"{len(flags)} warning(s)" + (", false premise not corrected" if premise else "")


def check_note(flags: Sequence[Any]) -> dict[str, Any]:
    """The live answer check's findings as a titled warning under the answer: each names the KB fact it
    contradicts (or the false premise it leaves standing) and links its official source."""
    lines = [f"- {safe_text(f.detail)}" + (f" ([source]({_link(f.source)}))" if f.source else "") for f in flags]
    return {"role": "assistant", "content": "\n".join(lines), "metadata": {"title": check_title(flags)}}


def unavailable_note(message: str) -> dict[str, Any]:
    """The engine's one-line failure (server down, busy, unknown model) as a titled box where the answer would be:
    a note, so it is never sent back to the model or stored as the model's answer."""
    return {"role": "assistant", "content": safe_text(message),
            "metadata": {"title": "⚠ No answer: the model server did not respond"}}


def _link(url: str) -> str:
    """A KB URL (http(s), checked by the KB loader) safe inside a markdown link."""
    return url.replace("(", "%28").replace(")", "%29").replace(" ", "%20")


def trim_history(history: Sequence[dict[str, Any]], max_turns: int) -> tuple[list[dict[str, str]], int]:
    """The last `max_turns` question/answer pairs as model messages (display escaping undone; the app's notes
    left out), and how many earlier pairs were left out."""
    pairs: list[list[dict[str, str]]] = []
    for message in history:
        role = message.get("role")
        if role not in ("user", "assistant") or is_note(message):
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


def format_when(timestamp: float) -> str:
    """A stored timestamp as `YYYY-MM-DD HH:MM` in UTC."""
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def parse_day(text: str, end: bool = False) -> float | None:
    """A `YYYY-MM-DD` filter as a UTC timestamp: the day's start, or with `end` the next day's start; blank is None."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        day = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise ValueError(f"dates are YYYY-MM-DD, got {text!r}") from None
    return (day + dt.timedelta(days=1 if end else 0)).timestamp()
