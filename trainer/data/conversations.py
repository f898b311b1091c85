"""Where data enters: any supported file or Hub dataset -> validated `messages` conversations (the files are read
by `trainer.data.readers`).

Supported inputs: JSONL, JSON, Parquet and CSV files (JSONL, JSON and CSV also gzipped, `.jsonl.gz`), a folder of
them, or a Hub dataset id. Supported schemas, auto-detected from each file's first row or forced with
`dataset.schema`:

- `messages`: OpenAI chat format, `{"messages": [{"role": ..., "content": ...}, ...]}`; a content may be a list of
  parts (`[{"type": "text", "text": ...}]`, the OpenAI and Gradio shape), whose text parts are joined
- `sharegpt`: `{"conversations": [{"from": "human" | "gpt" | ..., "value": ...}, ...]}` (StudyAbroadGPT's schema)
- `alpaca`: `{"instruction", "input", "output"}` with optional `system` and `history`
- `prompt_completion`: `{"prompt", "completion"}`, each a string or a list of messages

Every bad row gets one message naming its file, line (or row) and rule. Bad rows are skipped and counted, and the
stage fails when more than `max_bad_fraction` of the rows are bad; `strict` fails on the first. Exact duplicates
are removed. The train/eval split is chosen by content hash, so it is the same on every machine and in every order.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from trainer import UserError
from trainer.data.settings import DatasetSettings
from trainer.data.readers import (RULE_NOT_OBJECT, DataError, RowError, read_hub,
                                  reader_for, resolve_files)

try:  # ships with gradio (a pinned requirement); plain json is used without it
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

# The rules a row can break once read (trainer.data.readers has those of reading); each message starts with one.
RULE_SCHEMA = "schema mismatch"
RULE_EMPTY = "empty content"
RULE_ROLE = "unknown role"
RULE_ORDER = "turns out of order"
RULE_NO_ASSISTANT = "no assistant turn"
RULE_NON_STRING = "non-string content"
RULE_TOO_LONG = "too long after templating"
RULE_MISSING_FIELD = "missing field"
RULE_EMPTY_CONVERSATION = "empty conversation"
RULE_NON_TEXT = "non-text content"

SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "chatgpt": "assistant", "bot": "assistant",
    "system": "system",
}
CHAT_ROLES = ("system", "user", "assistant")


class RowProblem(UserError):
    """A row that breaks a rule (`rule`, with the detail); the reader turns it into a RowError naming the file and
    row, or a DataError in strict mode."""

    def __init__(self, rule: str, detail: str = ""):
        super().__init__(rule)
        self.rule, self.detail = rule, detail


@dataclass(frozen=True)
class Conversation:
    """A validated conversation in `messages` form, with where it came from."""

    messages: tuple[dict[str, str], ...]
    location: str

    @cached_property
    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the messages: the row's identity for dedup and splitting.
        Computed once: dedup, the split and the lineage all ask for it (bench/scaling.py)."""
        return content_hash(self.messages)

    def as_row(self) -> dict[str, Any]:
        return {"messages": [dict(m) for m in self.messages]}


@dataclass
class DataReport:
    """What ingestion saw: counts, rejected rows, and the hashes the lineage records."""

    source: str
    schema: str = ""
    rows_read: int = 0
    duplicates: int = 0
    errors: list[RowError] = field(default_factory=list)
    file_hashes: dict[str, str] = field(default_factory=dict)
    kept: int = 0
    duplicate_rows: list[tuple[str, str]] = field(default_factory=list)
    """(location, location of the first copy) for every exact duplicate removed."""
    file_schemas: dict[str, str] = field(default_factory=dict)
    """Each file read and the schema its rows were read as (a folder's files may differ)."""
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    """(path, why) for every entry of a folder that was not read."""

    @property
    def bad(self) -> int:
        return len(self.errors)

    def rule_counts(self) -> dict[str, int]:
        return dict(Counter(e.rule for e in self.errors))

    def summary(self) -> str:
        rules = ", ".join(f"{rule}: {n}" for rule, n in sorted(self.rule_counts().items()))
        schema = self.schema or "no rows"
        if len(set(self.file_schemas.values())) > 1:  # a folder of files in different schemas: name each
            schema = "; ".join(f"{Path(f).name}: {s}" for f, s in self.file_schemas.items())
        skipped = ""
        if self.skipped_files:
            skipped = f", {len(self.skipped_files)} skipped (" + "; ".join(
                f"{Path(f).name}: {why}" for f, why in self.skipped_files) + ")"
        return (
            f"{self.source}: {self.rows_read} rows read ({schema}), {self.kept} kept, "
            f"{self.bad} bad{f' ({rules})' if rules else ''}, {self.duplicates} exact duplicates removed{skipped}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "schema": self.schema,
            "rows_read": self.rows_read,
            "kept": self.kept,
            "bad": self.bad,
            "bad_by_rule": self.rule_counts(),
            "duplicates_removed": self.duplicates,
            "file_sha256": self.file_hashes,
            "file_schemas": self.file_schemas,
            "skipped_files": [{"path": f, "why": why} for f, why in self.skipped_files],
        }


def content_hash(messages: Iterable[dict[str, str]]) -> str:
    """sha256 of a conversation's canonical JSON: `json.dumps(..., ensure_ascii=False, separators=(",", ":"))`
    of its role/content pairs, UTF-8 encoded."""
    pairs = [{"role": m["role"], "content": m["content"]} for m in messages]
    if _orjson is not None and all(type(p["role"]) is str and type(p["content"]) is str for p in pairs):
        try:
            # The same bytes as the json.dumps call below for any string (tests/test_bench.py checks every code
            # point), ~15x faster: it was most of the ingestion time (bench/scaling.py).
            return hashlib.sha256(_orjson.dumps(pairs)).hexdigest()
        except TypeError:  # a lone surrogate: let json say what it says about it
            pass
    canonical = json.dumps(pairs, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Normalising: one function per schema, each returning the list of messages or raising RowProblem.

def detect_schema(obj: Any) -> str | None:
    """Guess a row's schema from its keys."""
    if not isinstance(obj, dict):
        return None
    if "messages" in obj:
        return "messages"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    if "prompt" in obj and "completion" in obj:
        return "prompt_completion"
    return None


def _message(role: Any, content: Any, index: int) -> dict[str, str]:
    if isinstance(content, list):
        content = _text_parts(content, f"message {index} ({role})")
    if not isinstance(content, str):
        raise RowProblem(RULE_NON_STRING, f"message {index} ({role}) has {type(content).__name__} content")
    return {"role": role, "content": content}


def _text_parts(parts: list, where: str) -> str:
    """An OpenAI / Gradio content-part list as one text: its text parts joined by newlines. An image, file or audio
    part cannot be trained on by a text model, so it is named rather than silently dropped."""
    texts = []
    for j, part in enumerate(parts, start=1):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise RowProblem(RULE_SCHEMA, f"{where} part {j} needs a 'type' (e.g. {{\"type\": \"text\", "
                                           "\"text\": ...})")
        if part["type"] != "text":
            raise RowProblem(RULE_NON_TEXT, f"{where} part {j} is {part['type']!r}; only text parts can be "
                                             "trained on")
        if not isinstance(part.get("text"), str):
            raise RowProblem(RULE_NON_STRING, f"{where} part {j} has {type(part.get('text')).__name__} text")
        texts.append(part["text"])
    return "\n".join(texts)


@dataclass(frozen=True)
class _TurnList:
    """How a schema lists its turns: under which key, what one is called, its speaker and text fields, the roles its
    speakers map to and how an unknown speaker is reported."""

    key: str
    noun: str
    speaker: str
    text: str
    role: Callable[[Any], str | None]
    unknown: str
    """`{noun} {i} ...{speaker!r}; expected ...` with the speaker's repr."""


_MESSAGES = _TurnList("messages", "message", "role", "content",
                      lambda role: role if isinstance(role, str) and role in CHAT_ROLES else None,
                      "message {i} has role {speaker!r}; expected one of " + ", ".join(CHAT_ROLES))
_SHAREGPT = _TurnList("conversations", "turn", "from", "value",
                      lambda speaker: SHAREGPT_ROLES.get(speaker.lower()) if isinstance(speaker, str) else None,
                      "turn {i} is from {speaker!r}; expected human, gpt, assistant or system")


def _from_turns(obj: dict[str, Any], spec: _TurnList) -> list[dict[str, str]]:
    """The messages of a row whose turns are a list of speaker/text dicts (`messages`, ShareGPT)."""
    turns = obj.get(spec.key)
    if not isinstance(turns, list):
        raise RowProblem(RULE_SCHEMA, f"'{spec.key}' must be a list, got {type(turns).__name__}")
    out = []
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict) or spec.speaker not in turn or spec.text not in turn:
            raise RowProblem(RULE_SCHEMA, f"{spec.noun} {i} needs '{spec.speaker}' and '{spec.text}'")
        role = spec.role(turn[spec.speaker])
        if role is None:
            raise RowProblem(RULE_ROLE, spec.unknown.format(i=i, speaker=turn[spec.speaker]))
        out.append(_message(role, turn[spec.text], i))
    return out


def _from_messages(obj: dict[str, Any]) -> list[dict[str, str]]:
    return _from_turns(obj, _MESSAGES)


def _from_sharegpt(obj: dict[str, Any]) -> list[dict[str, str]]:
    return _from_turns(obj, _SHAREGPT)


def _from_alpaca(obj: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    if obj.get("system") not in (None, ""):
        out.append(_message("system", obj["system"], 1))
    history = obj.get("history") or []
    if not isinstance(history, list):
        raise RowProblem(RULE_SCHEMA, "'history' must be a list of [question, answer] pairs")
    for pair in history:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RowProblem(RULE_SCHEMA, "'history' must be a list of [question, answer] pairs")
        out.append(_message("user", pair[0], len(out) + 1))
        out.append(_message("assistant", pair[1], len(out) + 1))
    instruction, extra = obj.get("instruction"), obj.get("input")
    if not isinstance(instruction, str):
        raise RowProblem(RULE_NON_STRING, f"'instruction' is {type(instruction).__name__}")
    if extra not in (None, "") and not isinstance(extra, str):
        raise RowProblem(RULE_NON_STRING, f"'input' is {type(extra).__name__}")
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    out.append(_message("user", prompt, len(out) + 1))
    if obj.get("output") is None:  # no key, or an empty Parquet/CSV cell
        raise RowProblem(RULE_MISSING_FIELD, "output (an alpaca row needs instruction and output)")
    out.append(_message("assistant", obj["output"], len(out) + 1))
    return out


def _from_prompt_completion(obj: dict[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for key, default_role in (("prompt", "user"), ("completion", "assistant")):
        value = obj.get(key)
        if isinstance(value, list):
            out.extend(_from_messages({"messages": value}))
        else:
            out.append(_message(default_role, value, len(out) + 1))
    return out


NORMALIZERS = {
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "alpaca": _from_alpaca,
    "prompt_completion": _from_prompt_completion,
}


def check_turns(messages: Sequence[dict[str, str]]) -> None:
    """Raise RowProblem unless the conversation is [system] user assistant (user assistant)* with text in each."""
    for i, m in enumerate(messages, start=1):
        if not m["content"].strip():
            raise RowProblem(RULE_EMPTY, f"message {i} ({m['role']}) is empty")
    if not any(m["role"] == "assistant" for m in messages):
        raise RowProblem(RULE_NO_ASSISTANT, "the conversation has no answer to learn from")
    expected = "user"
    for i, m in enumerate(messages, start=1):
        role = m["role"]
        if role == "system":
            if i != 1:
                raise RowProblem(RULE_ORDER, f"message {i} is a system turn; only the first message may be one")
            continue
        if role != expected:
            raise RowProblem(RULE_ORDER, f"message {i} is {role!r} where {expected!r} was expected")
        expected = "assistant" if role == "user" else "user"
    if messages[-1]["role"] != "assistant":
        raise RowProblem(RULE_ORDER, f"the last message is {messages[-1]['role']!r}; it must be an assistant answer")


def normalize_row(obj: Any, schema: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """One raw row -> validated messages. Raises RowProblem naming the rule it breaks."""
    if not isinstance(obj, dict):
        raise RowProblem(RULE_NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    if detect_schema(obj) != schema and not (schema == "alpaca" and "instruction" in obj):
        found = detect_schema(obj)
        raise RowProblem(RULE_SCHEMA, f"expected {schema} fields, found {found or 'keys ' + ', '.join(sorted(obj))}")
    messages = NORMALIZERS[schema](obj)
    if not messages:
        raise RowProblem(RULE_EMPTY_CONVERSATION, "the row holds no messages")
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    check_turns(messages)
    return messages


def read_dialogues(path: str | Path) -> list[list[dict[str, str]]]:
    """The messages of every conversation in one data file, in any schema the tool reads, for what needs only their
    text (the benchmarks' data, the test tokenizer's corpus); a row that breaks a rule is skipped, not reported."""
    from trainer.data.readers import reader_for

    path = Path(path)
    reader = reader_for(path)
    if reader is None:
        raise DataError(f"{path}: not a data file the tool reads")
    out = []
    for _, obj in reader(path):
        schema = detect_schema(obj)
        try:
            out.append(normalize_row(obj, schema)) if schema else None
        except RowProblem:
            continue
    return out


def load_conversations(spec: DatasetSettings, base_dir: str | Path | None = None, path: str | None = None
                       ) -> tuple[list[Conversation], DataReport]:
    """Read, normalise, validate and deduplicate one dataset. Bad rows are collected in the report, not raised,
    unless `spec.strict` is set or more than `spec.max_bad_fraction` of the rows are bad."""
    path = path or spec.path
    kind, files, skipped = resolve_files(path, base_dir)
    report = DataReport(source=path, schema="" if spec.schema == "auto" else spec.schema, skipped_files=skipped)
    if kind == "hub":
        streams: list[tuple[str, Iterable[tuple[str, Any]]]] = [(path, read_hub(spec))]
    else:
        streams = [(str(f), reader_for(f)(f)) for f in files]
        report.file_hashes = {str(f): file_sha256(f) for f in files}

    conversations: list[Conversation] = []
    seen: dict[str, str] = {}
    for name, stream in streams:
        schema = None if spec.schema == "auto" else spec.schema
        if schema is not None:
            report.file_schemas[name] = schema
        for location, obj in stream:
            report.rows_read += 1
            if isinstance(obj, RowError):
                _reject(report, obj, spec)
                continue
            if schema is None and isinstance(obj, dict):  # anything else is rejected as not an object below
                schema = detect_schema(obj)
                if schema is None:
                    _reject(report, RowError(location, RULE_SCHEMA, "cannot tell the schema from keys "
                                             f"{', '.join(sorted(obj))}; set dataset.schema"), spec)
                    continue
                report.schema = report.schema or schema
                report.file_schemas[name] = schema
            try:
                messages = normalize_row(obj, schema, spec.system_prompt)
            except RowProblem as problem:
                _reject(report, RowError(location, problem.rule, problem.detail), spec)
                continue
            conv = Conversation(tuple(messages), location)
            key = conv.content_hash
            if key in seen:
                report.duplicates += 1
                report.duplicate_rows.append((location, seen[key]))
                continue
            seen[key] = location
            conversations.append(conv)
    report.kept = len(conversations)
    enforce_bad_share(report, spec)
    return conversations, report


def _reject(report: DataReport, error: RowError, spec: DatasetSettings) -> None:
    report.errors.append(error)
    if spec.strict:
        raise DataError(f"{error} (strict mode: fix the row or turn dataset.strict off to skip bad rows)")


def enforce_bad_share(report: DataReport, spec: DatasetSettings) -> None:
    """Raise DataError when too many rows are bad (or none is usable)."""
    if report.rows_read == 0:
        raise DataError(f"{report.source}: no rows")
    share = report.bad / report.rows_read
    if share > spec.max_bad_fraction or report.kept == 0:
        listed = "\n  ".join(str(e) for e in report.errors[:20])
        more = f"\n  ... and {report.bad - 20} more" if report.bad > 20 else ""
        raise DataError(
            f"{report.source}: {report.bad} of {report.rows_read} rows are bad ({share:.0%}, limit "
            f"{spec.max_bad_fraction:.0%}):\n  {listed}{more}"
        )


def check_lengths(conversations: list[Conversation], tokenizer, chat_template: str, max_length: int,
                  report: DataReport, spec: DatasetSettings) -> tuple[list[Conversation], list[int]]:
    """Drop conversations longer than `max_length` tokens once rendered with the training template, recording
    each as a bad row in `report`. Returns the kept conversations and their token lengths."""
    kept, lengths = [], []
    # A token covers at most as many characters as its longest vocabulary entry is long (twice that leaves room for
    # normalisers that compose characters), so a conversation with more characters than max_length such tokens
    # could hold is too long without rendering or tokenizing it (a 50 MB line took 80 s and 4.6 GB to be told so).
    most = 2 * max_length * max(map(len, tokenizer.get_vocab()), default=1)
    fits = []
    for conv in conversations:
        chars = sum(len(m["content"]) for m in conv.messages)
        if chars > most:
            _reject(report, RowError(conv.location, RULE_TOO_LONG,
                                     f"{chars:,} characters, more than max_length {max_length} tokens can hold "
                                     f"(at most {most // max_length} characters a token); not tokenized"), spec)
        else:
            fits.append(conv)
    batch = 256
    for start in range(0, len(fits), batch):
        chunk = fits[start:start + batch]
        texts = tokenizer.apply_chat_template([list(c.messages) for c in chunk], chat_template=chat_template,
                                              tokenize=False)
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        for conv, ids in zip(chunk, encoded):
            if len(ids) > max_length:
                _reject(report, RowError(conv.location, RULE_TOO_LONG,
                                         f"{len(ids)} tokens > max_length {max_length}"), spec)
                continue
            kept.append(conv)
            lengths.append(len(ids))
    return kept, lengths


def split_train_eval(conversations: list[Conversation], eval_fraction: float, seed: int
                     ) -> tuple[list[Conversation], list[Conversation]]:
    """Hold out the `eval_fraction` of conversations whose seeded content hash is smallest (at least one when the
    fraction is positive and two or more conversations exist). Independent of row order and machine."""
    if eval_fraction <= 0 or len(conversations) < 2:
        return list(conversations), []
    n_eval = min(len(conversations) - 1, max(1, round(len(conversations) * eval_fraction)))
    ranked = sorted(conversations, key=lambda c: hashlib.sha256(f"{seed}:{c.content_hash}".encode()).hexdigest())
    eval_keys = {c.content_hash for c in ranked[:n_eval]}
    train = [c for c in conversations if c.content_hash not in eval_keys]
    held = [c for c in conversations if c.content_hash in eval_keys]
    return train, held


def to_dataset(conversations: Sequence[Conversation]):
    """A `datasets.Dataset` with one `messages` column, as TRL's conversational SFT expects."""
    import datasets

    return datasets.Dataset.from_list([c.as_row() for c in conversations])


@dataclass
class StageData:
    """A stage's validated conversations, split, with the reports the lineage records."""

    train: list[Conversation]
    eval: list[Conversation]
    train_lengths: list[int]
    reports: list[DataReport]

    def summary(self) -> str:
        tokens = f", {sum(self.train_lengths):,} train tokens" if self.train_lengths else ""
        return (" | ".join(r.summary() for r in self.reports)
                + f" -> {len(self.train)} train / {len(self.eval)} eval conversations{tokens}")

    def split_record(self) -> dict[str, Any]:
        return {
            "train": [{"sha256": c.content_hash, "source": c.location} for c in self.train],
            "eval": [{"sha256": c.content_hash, "source": c.location} for c in self.eval],
        }


def prepare_stage_data(spec: DatasetSettings, *, seed: int, max_length: int, tokenizer=None,
                       chat_template: str | None = None, base_dir: str | Path | None = None) -> StageData:
    """Load, validate, length-check (when a tokenizer is given) and split one stage's data."""
    conversations, report = load_conversations(spec, base_dir)
    reports = [report]
    if spec.eval_path:
        train = conversations
        held, eval_report = load_conversations(spec, base_dir, path=spec.eval_path)
        reports.append(eval_report)
    else:
        train, held = split_train_eval(conversations, spec.eval_fraction, seed)
    lengths: list[int] = []
    if tokenizer is not None:
        train, lengths = check_lengths(train, tokenizer, chat_template, max_length, report, spec)
        held, _ = check_lengths(held, tokenizer, chat_template, max_length, reports[-1], spec)
        if spec.eval_path:
            report.kept, reports[-1].kept = len(train), len(held)
        else:
            report.kept = len(train) + len(held)
        for r in reports:
            enforce_bad_share(r, spec)
        if not train:
            raise DataError(f"{spec.path}: no training conversations left after validation")
    return StageData(train=train, eval=held, train_lengths=lengths, reports=reports)
