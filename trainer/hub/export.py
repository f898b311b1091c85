"""`python -m trainer export-feedback`: the labelling tab's records -> stage-2 training data.

Writes, from the feedback store (SQLite) or from the JSONL copy the Space commits to its Hub dataset:

- `sft.jsonl`: accepted dialogues in `messages` form, with corrections applied (a reviewer's edit wins over the
  visitor's suggested answer, which wins over the original), ending at the last answer;
- `kto.jsonl`: every liked or disliked answer of a record not rejected, as TRL's conversational KTO rows
  (`prompt`, `completion`, `label`);
- `dpo.jsonl`: every corrected answer of a record not rejected, as TRL's conversational preference rows
  (`prompt`, `chosen` = the correction, `rejected` = the original answer);
- `README.md`: a dataset card (collection, consent, redaction, counts, adapters involved) and `manifest.json`.

A stage-2 config points at the export directly: `--set stages.stage2.dataset.path=<out>/sft.jsonl`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from trainer import UserError
from trainer.hub.cards import feedback_card
from trainer.train.lineage import now_iso, write_json


class ExportError(UserError, ValueError):
    """The feedback could not be read or exported; the message names the file."""


@dataclass
class ExportResult:
    out_dir: Path
    counts: dict[str, int]


def _corrected(record, index: int) -> str | None:
    if index in record.review_edits:
        return record.review_edits[index]
    if record.edited_index == index and record.edited_answer:
        return record.edited_answer
    return None


def _system(record, with_system: bool) -> list[dict[str, str]]:
    return [{"role": "system", "content": record.system_prompt}] if with_system and record.system_prompt.strip() \
        else []


def _prefix(record, index: int, with_system: bool) -> list[dict[str, str]]:
    return _system(record, with_system) + [dict(m) for m in record.messages[:index]]


def sft_row(record, with_system: bool = True) -> dict[str, Any] | None:
    messages = [{"role": m["role"], "content": _corrected(record, i) or m["content"]}
                for i, m in enumerate(record.messages)]
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()
    if not messages:
        return None
    return {"messages": _system(record, with_system) + messages, "id": record.id}


def kto_rows(record, with_system: bool = True) -> Iterable[dict[str, Any]]:
    for index, value in sorted(record.ratings.items()):
        yield {"prompt": _prefix(record, index, with_system),
               "completion": [{"role": "assistant", "content": record.messages[index]["content"]}],
               "label": value > 0, "id": f"{record.id}:{index}"}


def dpo_rows(record, with_system: bool = True) -> Iterable[dict[str, Any]]:
    for index, message in enumerate(record.messages):
        if message["role"] != "assistant":
            continue
        better = _corrected(record, index)
        if better and better.strip() != message["content"].strip():
            yield {"prompt": _prefix(record, index, with_system), "chosen": [{"role": "assistant", "content": better}],
                   "rejected": [{"role": "assistant", "content": message["content"]}], "id": f"{record.id}:{index}"}


def read_jsonl_records(folder: Path) -> list:
    """Replay the JSONL copy (records and later decisions, in file order) into records."""
    from trainer.data.feedback import FeedbackRecord

    records: dict[str, FeedbackRecord] = {}
    files = sorted(folder.rglob("*.jsonl"))
    if not files:
        raise ExportError(f"{folder}: no .jsonl files")
    for path in files:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                print(f"[export] {path}:{lineno}: skipped a torn line", flush=True)
                continue
            if data.get("kind") == "decision":
                record = records.get(data["id"])
                if record is not None:
                    record.status, record.reviewer = data["status"], data.get("reviewer")
                    record.decided_at, record.topic = data.get("decided_at"), data.get("topic") or record.topic
                    record.review_edits = {int(k): v for k, v in data.get("review_edits", {}).items()}
                continue
            data.pop("kind", None)
            data["ratings"] = {int(k): v for k, v in data.get("ratings", {}).items()}
            data["review_edits"] = {int(k): v for k, v in data.get("review_edits", {}).items()}
            records.setdefault(data["id"], FeedbackRecord(**data))
    return list(records.values())


def export_feedback(source: str | Path, out_dir: str | Path, *, system_prompt: bool = True) -> ExportResult:
    """Write sft/kto/dpo JSONL files and a dataset card from a store file or a folder of JSONL records.

    `system_prompt=False` leaves the counselling system prompt out of every row. Use it for Mistral-Instruct:
    its template shows a system prompt only with the final user turn, so a prompt rendered alone and the same prompt
    followed by an answer disagree, and TRL cannot split KTO/DPO rows into prompt and answer."""
    source, out = Path(source), Path(out_dir)
    if source.is_dir():
        records = read_jsonl_records(source)
    elif source.is_file():
        from trainer.data.feedback import FeedbackStore

        store = FeedbackStore(source)
        try:
            records = store.records()
        finally:
            store.close()
    else:
        raise ExportError(f"{source}: no such feedback store or folder")
    records = [r for r in records if r.consent]  # the store refuses others; a hand-edited copy might not
    out.mkdir(parents=True, exist_ok=True)
    sft = [row for r in records if r.status == "accepted" for row in [sft_row(r, system_prompt)] if row]
    usable = [r for r in records if r.status != "rejected"]
    kto = [row for r in usable for row in kto_rows(r, system_prompt)]
    dpo = [row for r in usable for row in dpo_rows(r, system_prompt)]
    for name, rows in (("sft", sft), ("kto", kto), ("dpo", dpo)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                          encoding="utf-8")
    redactions = Counter()
    for r in records:
        redactions.update(r.redactions)
    statuses = Counter(r.status for r in records)
    counts = {"records": len(records), "accepted": statuses["accepted"], "rejected": statuses["rejected"],
              "unreviewed": statuses["unreviewed"], "sft": len(sft), "kto": len(kto),
              "kto_liked": sum(1 for r in kto if r["label"]), "dpo": len(dpo)}
    manifest = {
        "created": now_iso(), "source": str(source), "system_prompt_included": system_prompt, "counts": counts,
        "redactions": dict(redactions),
        "adapters": dict(Counter(f"{r.adapter}@{r.adapter_revision}" for r in records)),
        "base_models": sorted({r.base_model for r in records}),
        "reviewers": len({r.reviewer for r in records if r.reviewer}),
        "first": min((r.created_at for r in records), default=None),
        "last": max((r.created_at for r in records), default=None),
    }
    write_json(out / "manifest.json", manifest)
    feedback_card(manifest).save(out / "README.md")
    print(f"[export] {counts['records']} records -> {counts['sft']} SFT dialogues, {counts['kto']} KTO rows "
          f"({counts['kto_liked']} liked), {counts['dpo']} DPO pairs in {out}", flush=True)
    return ExportResult(out, counts)
