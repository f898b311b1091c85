"""Outside prompt sets: a plain CSV/JSONL/JSON/Parquet file of prompts (the paper's released evaluation prompts, an
office's own questions) evaluated beside or instead of the rubric.

Each row needs a `prompt` (or `question`) column; `reference` (or `answer`) holds an optional reference answer, `id`
an optional stable id (default: file row number) and `topic` an optional tag. Such items get the blind judge,
ROUGE-L/BLEU against the references where given, the markdown rate and the live KB check, but no rubric score (there
are no rules to score them by). Files are read with the same readers as training data (`trainer.data`), so a bad
row is named with its file, line and rule; bad rows are skipped and listed, and a file with no usable prompt is an
error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.eval import EvalError

PROMPT_COLUMNS = ("prompt", "question")
REFERENCE_COLUMNS = ("reference", "answer")
MAX_PROMPT_CHARS = 20_000
RUBRIC_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class PromptItem:
    id: str
    prompt: str
    reference: str | None
    topic: str | None
    location: str
    """file:line of the row."""


@dataclass
class PromptSet:
    path: Path
    items: list[PromptItem]
    skipped: list[str]
    """`file:line: rule: detail` for every row that could not be used."""

    @property
    def with_references(self) -> int:
        return sum(1 for item in self.items if item.reference)


def is_prompt_file(path: str | Path) -> bool:
    """True for a plain prompt file, False for a rubric (YAML)."""
    return Path(path).suffix.lower() not in RUBRIC_SUFFIXES


def _text(row: dict[str, Any], columns: tuple[str, ...]) -> tuple[str | None, Any]:
    for column in columns:
        if column in row:
            return column, row[column]
    return None, None


def load_prompt_set(path: str | Path) -> PromptSet:
    """Read a prompt file; raise EvalError naming the file when it cannot be read or holds no usable prompt."""
    from trainer.data.readers import READERS, DataError, RowError

    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{path}: prompt file not found")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise EvalError(f"{path}: not a prompt file; use .csv, .jsonl, .json or .parquet (or a rubric .yaml)")
    items: list[PromptItem] = []
    skipped: list[str] = []
    seen: dict[str, str] = {}
    row_no = 0
    try:
        for location, obj in reader(path):
            row_no += 1
            if isinstance(obj, RowError):
                skipped.append(str(obj))
                continue
            if not isinstance(obj, dict):
                skipped.append(f"{location}: not an object: expected a row with a prompt column")
                continue
            column, prompt = _text(obj, PROMPT_COLUMNS)
            if column is None:
                skipped.append(f"{location}: missing field prompt: the row has {', '.join(map(str, obj)) or 'no'} "
                               f"columns, expected one of {', '.join(PROMPT_COLUMNS)}")
                continue
            if prompt is None:
                skipped.append(f"{location}: missing field {column}: the row has fewer cells than the header")
                continue
            if not isinstance(prompt, str):
                skipped.append(f"{location}: non-string content: {column} is {type(prompt).__name__}")
                continue
            if not prompt.strip():
                skipped.append(f"{location}: empty content: {column} is empty")
                continue
            if len(prompt) > MAX_PROMPT_CHARS:
                skipped.append(f"{location}: too long: {len(prompt):,} characters > {MAX_PROMPT_CHARS:,}")
                continue
            ref_column, reference = _text(obj, REFERENCE_COLUMNS)
            if reference is not None and not isinstance(reference, str):
                skipped.append(f"{location}: non-string content: {ref_column} is {type(reference).__name__}")
                continue
            item_id = str(obj.get("id") or f"row-{row_no}").strip()
            if item_id in seen:
                skipped.append(f"{location}: duplicate id {item_id!r} (first at {seen[item_id]})")
                continue
            seen[item_id] = location
            topic = obj.get("topic")
            items.append(PromptItem(item_id, prompt.strip(), (reference or "").strip() or None,
                                    str(topic) if topic else None, location))
    except DataError as exc:
        raise EvalError(str(exc)) from None
    if not items:
        listed = "".join(f"\n  {s}" for s in skipped[:20])
        raise EvalError(f"{path}: no usable prompt in {row_no} rows{listed}")
    return PromptSet(path, items, skipped)
