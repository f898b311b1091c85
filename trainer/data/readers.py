"""Reading data files: JSONL, JSON, Parquet and CSV (JSONL, JSON and CSV also gzipped, as `datasets` reads them),
a folder of them, or a Hub dataset. Each reader yields `(location, object)` or `(location, RowError)` per row and
never stops at a bad row; `trainer.data.conversations` turns the objects into validated conversations. A file
that cannot be read at all is one `DataError` naming it."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from trainer import UserError
from trainer.data.settings import DatasetSettings

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".jsonl.gz", ".json.gz", ".csv.gz")

# The rules a row can break while it is read (trainer.data.conversations has the others); each message starts with one.
RULE_INVALID_JSON = "invalid JSON"
RULE_ENCODING = "wrong encoding"
RULE_NOT_OBJECT = "not an object"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DataError(UserError, ValueError):
    """The data cannot be used; the message names the file, row and rule."""


@dataclass(frozen=True)
class RowError:
    """One rejected row: where it is and which rule it broke."""

    location: str
    rule: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.location}: {self.rule}" + (f": {self.detail}" if self.detail else "")


def _open_binary(path: Path):
    """The file's bytes, decompressed when its name ends in `.gz` (as `datasets` reads them)."""
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _read_bytes(path: Path) -> bytes:
    try:
        with _open_binary(path) as fh:
            return fh.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read the file: {exc}") from None


def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        yield from _jsonl_lines(path)
    except (OSError, EOFError) as exc:  # a damaged .gz: the rows read so far stay reported
        raise DataError(f"{path}: cannot read the file: {exc}") from None


def _jsonl_lines(path: Path) -> Iterator[tuple[str, Any]]:
    with _open_binary(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            loc = f"{path}:{lineno}"
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield loc, RowError(loc, RULE_ENCODING, f"byte {exc.start + 1} is not UTF-8 ({exc.reason})")
                continue
            try:  # without its line break, so an error at the line's end is placed there, not on a next line
                yield loc, json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                yield loc, RowError(loc, RULE_INVALID_JSON, f"{exc.msg} at column {exc.pos + 1}")


def _read_json(path: Path) -> Iterator[tuple[str, Any]]:
    data = _read_bytes(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: {RULE_ENCODING}: byte is not UTF-8 ({exc.reason}); "
                        "re-save the file as UTF-8") from None
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos < len(text) and text[pos] == "[":
        # Walk the top-level array item by item, so each row keeps its line number and one bad item
        # does not hide the others.
        pos = _skip_ws(text, pos + 1)
        index = 0
        while pos < len(text) and text[pos] != "]":
            index += 1
            line = text.count("\n", 0, pos) + 1
            loc = f"{path}:{line} (item {index})"
            try:
                obj, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                detail = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
                end = _next_item(text, pos, decoder)
                if end is None:
                    yield loc, RowError(loc, RULE_INVALID_JSON, f"{detail}; the rest of the file cannot be read")
                    return
                yield loc, RowError(loc, RULE_INVALID_JSON, detail)
            else:
                yield loc, obj
            pos = _skip_ws(text, end)
            if pos < len(text) and text[pos] == ",":
                pos = _skip_ws(text, pos + 1)
        return
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: {RULE_INVALID_JSON}: {exc.msg} at column {exc.colno}") from None
    if isinstance(obj, dict):
        lists = [k for k, v in obj.items() if isinstance(v, list)]
        if len(lists) == 1 and not set(obj) & {"messages", "conversations", "instruction", "prompt"}:
            for i, item in enumerate(obj[lists[0]], start=1):
                yield f"{path}: {lists[0]}[{i}]", item
            return
        yield f"{path}: item 1", obj
        return
    raise DataError(f"{path}: {RULE_NOT_OBJECT}: expected an array of objects at the top level")


def _next_item(text: str, pos: int, decoder: json.JSONDecoder) -> int | None:
    """Where the array item after the broken one starting at `pos` begins (or the array's `]`), or None.

    First by brackets: strings skipped (one left open ends at its line's end, as JSON strings cannot span lines), a
    closer that does not match closes the brackets it skips. Then, for an item cut short, at the next line that
    starts an object in the broken item's column and decodes: the shape of one-per-line and indented arrays."""
    stack: list[str] = []
    in_string, i, n = False, pos, len(text)
    while i < n:
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 1
            elif ch in "\"\n":
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]":
            if not stack:
                if ch == "]":
                    return i
            else:
                opener = "{" if ch == "}" else "["
                while stack and stack.pop() != opener:
                    pass
        elif ch == "," and not stack:
            return i
        i += 1
    column = pos - (text.rfind("\n", 0, pos) + 1)
    for match in re.finditer(r"\n([ \t]*)(?=[{\[])", text[pos:]):
        start = pos + match.end()
        if len(match.group(1)) == column:
            try:
                decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                continue
            return start
    return None


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from None
    for i, row in enumerate(table.to_pylist(), start=1):
        yield f"{path}: row {i}", row


def _read_csv(path: Path) -> Iterator[tuple[str, Any]]:
    raw = _read_bytes(path)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    # surrogateescape keeps undecodable bytes so the row that holds them is reported, not the whole file.
    text = raw.decode("utf-8", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    row_no = 0
    for row in reader:
        row_no += 1
        loc = f"{path}:{reader.line_num} (row {row_no})"
        values = {k: v for k, v in row.items() if k is not None}
        if any(isinstance(v, str) and _has_surrogates(v) for v in values.values()):
            yield loc, RowError(loc, RULE_ENCODING, "a cell is not UTF-8")
            continue
        parsed: dict[str, Any] = {}
        problem = None
        for key, value in values.items():
            # Chat columns arrive as JSON text inside a cell.
            if key in ("messages", "conversations", "history", "prompt", "completion") and isinstance(value, str) \
                    and value.lstrip().startswith("["):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as exc:
                    if key in ("prompt", "completion"):
                        parsed[key] = value  # plain text that happens to start with "[", e.g. "[Urgent] ..."
                        continue
                    problem = RowError(loc, RULE_INVALID_JSON, f"column {key!r}: {exc.msg} at column {exc.colno}")
                    break
            parsed[key] = value
        yield loc, (problem if problem else parsed)


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def read_hub(spec: DatasetSettings) -> Iterator[tuple[str, Any]]:
    try:
        import datasets

        ds = datasets.load_dataset(spec.path, split=spec.split, revision=spec.revision)
    except Exception as exc:
        raise DataError(f"{spec.path}: cannot load Hub dataset (split {spec.split!r}): {exc}") from None
    for i, row in enumerate(ds, start=1):
        yield f"{spec.path}[{spec.split}]: row {i}", row


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}


def reader_for(path: Path):
    """The reader of a data file by its name (`.jsonl`, `.json.gz`, ...), or None for a file it cannot read."""
    name = path.name.lower()
    suffix = Path(name[:-3]).suffix if name.endswith(".gz") else path.suffix.lower()
    reader = READERS.get(suffix)
    return None if reader is None or (name.endswith(".gz") and suffix == ".parquet") else reader


def folder_files(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The data files of a folder, and (path, why) for every entry that is not read."""
    files, skipped = [], []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            skipped.append((str(entry), "a folder (folders inside the data folder are not read)"))
        elif reader_for(entry) is None:
            skipped.append((str(entry), f"unsupported file type; use one of {', '.join(FILE_SUFFIXES)}"))
        else:
            files.append(entry)
    return files, skipped


def resolve_source(path: str, base_dir: str | Path | None = None) -> tuple[str, list[Path]]:
    """Return ("local", files) or ("hub", []) for a dataset path; relative paths are tried from the working
    directory, then from `base_dir` (the folder above the config's)."""
    kind, files, _ = resolve_files(path, base_dir)
    return kind, files


def resolve_files(path: str, base_dir: str | Path | None) -> tuple[str, list[Path], list[tuple[str, str]]]:
    """`resolve_source`, plus (path, why) for each entry of a folder that is not read."""
    candidates = [Path(path)]
    if base_dir is not None and not Path(path).is_absolute():
        candidates.append(Path(base_dir) / path)
    for candidate in candidates:
        if candidate.is_file():
            if reader_for(candidate) is None:
                raise DataError(f"{candidate}: unsupported file type; use one of {', '.join(FILE_SUFFIXES)}")
            return "local", [candidate], []
        if candidate.is_dir():
            files, skipped = folder_files(candidate)
            if not files:
                raise DataError(f"{candidate}: folder holds no {', '.join(FILE_SUFFIXES)} files")
            return "local", files, skipped
    if _HUB_ID.match(path) and not path.lower().endswith(FILE_SUFFIXES):
        return "hub", [], []
    raise DataError(f"{path}: no such file or folder, and not a Hub dataset id (owner/name)")
