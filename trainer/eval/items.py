"""What an evaluation asks every model: the answer items (rubric questions or an outside prompt set, then one prompt
per assistant turn of the held-out conversations), which of them were seen in training (contamination), and the
per-item measures of a model's answers to them (`Measures`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from trainer.eval.metrics import Measures
from trainer.eval.rubric import Question, is_markdown, score_answer


@dataclass(frozen=True)
class AnswerItem:
    """One prompt every model answers."""

    kind: str
    """`rubric` (a rubric question), `prompt` (a row of an outside prompt set) or `reference` (an assistant turn of
    a held-out conversation, with its answer as the reference)."""
    id: str
    messages: tuple[dict[str, str], ...]
    """The prompt as the model gets it (system prompt first)."""
    text: str
    """What the student asks: the question the judge, retrieval and the contamination check see."""
    question: Question | None = None
    reference: str | None = None
    conversation: str | None = None
    """Content hash of the held-out conversation a `reference` item comes from."""

    @property
    def judged(self) -> bool:
        """Rubric questions and outside prompts go to the judge; held-out turns are scored against references."""
        return self.kind in ("rubric", "prompt")


def answer_items(questions: Sequence[Question], prompts: Sequence[Any], references: Sequence[dict[str, Any]],
                 system_prompt: str) -> list[AnswerItem]:
    """Rubric questions (or outside prompts), then held-out reference prompts, in that order."""
    def ask(text: str) -> tuple[dict[str, str], ...]:
        return tuple(([{"role": "system", "content": system_prompt}] if system_prompt.strip() else [])
                     + [{"role": "user", "content": text}])

    items = [AnswerItem("rubric", q.id, ask(q.question), q.question, question=q) for q in questions]
    items += [AnswerItem("prompt", p.id, ask(p.prompt), p.prompt, reference=p.reference) for p in prompts]
    for r in references:
        asked = next((m["content"] for m in reversed(r["messages"]) if m["role"] == "user"), "")
        items.append(AnswerItem("reference", r["id"], tuple(r["messages"]), asked, reference=r["reference"],
                                conversation=r["id"].split("#", 1)[0]))
    return items


def check_contamination(items: Sequence[AnswerItem], held_out: Sequence[Any], stages: Sequence[Any],
                        threshold: float) -> dict[str, Any]:
    """Every judged item and held-out conversation found in any stage's training rows (re-read through the run's
    lineage, hashes checked), with the ids to exclude. A stage whose rows cannot be re-read is listed, not hidden."""
    from trainer.data.contamination import EvalItem, TrainingRow, conversation_text, find_contamination
    from trainer.train.rundir import RunError

    training, problems = [], {}
    for stage in stages:
        try:
            rows = stage.train_rows()
        except RunError as exc:
            problems[stage.name] = str(exc)
            continue
        training += [TrainingRow(c.location, stage.name, tuple(c.messages)) for c in rows]
    queries = [EvalItem(item.id, "question", item.text) for item in items if item.judged]
    queries += [EvalItem(conv.content_hash, "conversation", conversation_text(conv.messages)) for conv in held_out]
    matches = find_contamination(queries, training, threshold)
    short = {conv.content_hash: conv.content_hash[:12] for conv in held_out}
    return {"checked": not problems, "threshold": threshold, "training_rows": len(training),
            "unchecked_stages": problems, "matches": [m.to_dict() for m in matches],
            "items": sorted({m.item for m in matches if m.kind == "question"}),
            "conversations": sorted({short[m.item] for m in matches if m.kind == "conversation"})}


def keep_masks(items: Sequence[AnswerItem], held_out: Sequence[Any], contamination: dict[str, Any] | None
               ) -> tuple[list[bool], list[bool]]:
    """Which answer items and which held-out conversations are clean (all of them without a contamination check)."""
    bad_items = set((contamination or {}).get("items", ()))
    bad_convs = set((contamination or {}).get("conversations", ()))
    keep = [item.id not in bad_items and (item.conversation or "") not in bad_convs for item in items]
    keep_conversations = [conv.content_hash[:12] not in bad_convs for conv in held_out]
    return keep, keep_conversations


def measure(items: Sequence[AnswerItem], texts: Sequence[str | None], auditor, loss_rows: Sequence[Sequence[float]]
            = ()) -> tuple[Measures, list[list[Any]], list[Any]]:
    """A model's per-item measures, the live KB check's flags per answer and the rubric scores (None where an item
    was not answered, e.g. held-out turns in a grounded pass). The KB check is the audit's own
    (`Auditor.check_answer`), run on the conversation as the student wrote it plus the answer."""
    from trainer.eval.stats import bleu_statistics, rouge_l

    m = Measures(loss=[list(r) for r in loss_rows])
    flags_out: list[list[Any]] = []
    scores: list[Any] = []
    with_ref = [i for i, item in enumerate(items) if item.reference and texts[i] is not None]
    rouge = dict(zip(with_ref, rouge_l([texts[i] for i in with_ref], [items[i].reference for i in with_ref])))
    bleu = dict(zip(with_ref, bleu_statistics([texts[i] for i in with_ref], [items[i].reference for i in with_ref])))
    for i, (item, text) in enumerate(zip(items, texts)):
        answered = text is not None
        score = score_answer(item.question, text) if answered and item.question is not None else None
        scores.append(score)
        flags = auditor.check_answer([*(x for x in item.messages if x["role"] != "system"),
                                      {"role": "assistant", "content": text}]) if answered else []
        flags_out.append(flags)
        m.passed.append(float(score.passed) if score else None)
        m.score.append(score.score if score else None)
        m.corrected.append(float(bool(score.corrected)) if score and item.question.false_premise else None)
        m.markdown.append(float(is_markdown(text)) if answered else None)
        m.kb_flag.append(float(bool(flags)) if answered else None)
        m.rouge.append(rouge.get(i))
        m.bleu.append(bleu.get(i))
    return m, flags_out, scores
