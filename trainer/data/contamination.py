"""Contamination: eval items (questions, held-out conversations) that also occur, exactly or nearly, in training rows.

The paper's released data and evaluation overlapped; a score on questions the adapter was trained on measures
memory, not counselling. Two tests, as the audit's near-duplicate check does them:

- **exact**: the same text after lowercasing and collapsing whitespace (a question against every user message of
  the training rows; a held-out conversation against every training conversation);
- **near**: estimated Jaccard similarity of byte 8-gram MinHash sketches at or above the threshold (the audit's
  `trainer.data.near_dup.near_copies`, default 0.8).

`find_contamination(items, training)` returns every match with where it was found (file:line and stage), so the eval
can list them and report every metric with them excluded, and `trainer audit FILE --against OTHER` can check any
pair of files.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

DEFAULT_THRESHOLD = 0.8
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class EvalItem:
    """Something an evaluation scores: a rubric question (its text) or a held-out conversation (its messages)."""

    id: str
    kind: str
    """`question` (compared with training user messages) or `conversation` (with whole training conversations)."""
    text: str


@dataclass(frozen=True)
class TrainingRow:
    location: str
    """file:line of the row, as ingestion names it."""
    stage: str
    messages: tuple[dict[str, str], ...]


@dataclass(frozen=True)
class Match:
    item: str
    kind: str
    how: str
    """`exact` or `near`."""
    similarity: float
    location: str
    stage: str
    text: str
    """The training text it matched (the first 200 characters)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text.lower()).strip()


def _digest(text: str) -> str:
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def conversation_text(messages: Sequence[dict[str, str]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def find_contamination(items: Sequence[EvalItem], training: Sequence[TrainingRow],
                       threshold: float = DEFAULT_THRESHOLD) -> list[Match]:
    """Every eval item found in the training rows, exactly or nearly (one match per item: exact first, else the
    most similar), in item order."""
    from trainer.data.near_dup import near_copies

    messages = [(row, m["content"]) for row in training for m in row.messages if m["role"] == "user"]
    conversations = [(row, conversation_text(row.messages)) for row in training]
    out: list[Match] = []
    for kind, corpus in (("question", messages), ("conversation", conversations)):
        mine = [item for item in items if item.kind == kind]
        if not mine or not corpus:
            continue
        exact = {}
        for row, text in corpus:
            exact.setdefault(_digest(text), (row, text))
        near = near_copies([item.text for item in mine], [text for _, text in corpus], threshold)
        for q, item in enumerate(mine):
            hit = exact.get(_digest(item.text))
            if hit is not None:
                out.append(Match(item.id, kind, "exact", 1.0, hit[0].location, hit[0].stage, hit[1][:200]))
            elif q in near:
                j, similarity = near[q]
                row, text = corpus[j]
                out.append(Match(item.id, kind, "near", similarity, row.location, row.stage, text[:200]))
    order = {item.id: n for n, item in enumerate(items)}
    return sorted(out, key=lambda m: order.get(m.item, 0))


MIN_QUESTION_CHARS = 40
"""`--against` compares user messages from this length up: "Thanks!" or "And for Canada?" in both files says
nothing about overlap."""


def rows_also_in(conversations: Sequence[Any], other: str | Path) -> dict[str, Any]:
    """The rows of `conversations` (ingested `Conversation`s) whose whole conversation or a user message also occurs,
    exactly or nearly, in the file `other` (any file ingestion reads): `trainer audit FILE --against OTHER`."""
    from trainer.data.settings import DatasetSettings
    from trainer.data.conversations import load_conversations

    theirs, _ = load_conversations(DatasetSettings(path=str(other), max_bad_fraction=1.0, eval_fraction=0))
    training = [TrainingRow(c.location, str(other), c.messages) for c in theirs]
    items, where = [], {}
    for conv in conversations:
        items.append(EvalItem(f"{conv.location}#conversation", "conversation", conversation_text(conv.messages)))
        where[items[-1].id] = (conv.location, "conversation")
        for k, m in enumerate(conv.messages, start=1):
            if m["role"] == "user" and len(m["content"].strip()) >= MIN_QUESTION_CHARS:
                items.append(EvalItem(f"{conv.location}#{k}", "question", m["content"]))
                where[items[-1].id] = (conv.location, f"message {k}")
    matches = [{"row": where[m.item][0], "what": where[m.item][1], "how": m.how, "similarity": m.similarity,
                "other": m.location} for m in find_contamination(items, training)]
    return {"file": str(other), "rows": len({m["row"] for m in matches}), "matches": matches}
