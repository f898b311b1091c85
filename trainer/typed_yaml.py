"""The one place YAML meets code: read a file, apply dotted overrides, build typed, frozen dataclasses.

Every settings file this tool reads (pipeline configs, `configs/synth/*.yaml`, `configs/eval/*.yaml`, the Space
settings, the knowledge base and the eval rubric) goes through here, so every one fails the same way: one line that
names the file, the dotted key (list items by position and name) and the rule, with a did-you-mean for unknown keys.

- `read_yaml(path)`: the parsed document, or an error for a missing file, invalid YAML or a top level that is not
  a mapping.
- `build(cls, raw)`: a dataclass from a mapping. Field types drive the checks (`bool`, `int`, `float`, `str`,
  `X | None`, `tuple[X, ...]`, `Mapping[str, X]`, nested dataclasses); unknown keys and missing required keys are
  named. `1e-4` (which PyYAML reads as text) is accepted as the number users mean.
- `load_typed(cls, path, overrides)`: both, plus `--set key=value` overrides and a `source` field set to the file.
- `check_keys(raw, where, required, optional)` and `convert(value, tp, where)`: the same unknown-key, missing-key
  and wrong-type errors for loaders that build by hand (the knowledge base, the eval rubric), raised as the
  caller's error type.
- `field_docs(cls)`: the one-line docstring under each field, so a command's `--help` quotes its settings type.
"""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from trainer import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A settings file a user wrote is invalid; the message names the file, key and rule."""


def read_yaml(path: str | Path, *, what: str = "config file", error: type[Exception] = ConfigError,
              mapping: bool = True) -> Any:
    """Parse one YAML file. Raises `error` naming the file when it is missing, not YAML, or (with `mapping`) not a
    mapping at the top level."""
    import yaml

    path = Path(path)
    try:
        # libyaml's parser when PyYAML was built with it: the same documents, several times faster
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, expected a {what}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    if mapping and not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping at the top level")
    return raw


def suggest(key: str, choices: typing.Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest choice, or nothing."""
    close = difflib.get_close_matches(str(key), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def item_where(where: str, index: int, value: Any, key: str = "name") -> str:
    """`adapters[2] (stage2)`: list items are named by position and, when they have one, by their `key` (the
    knowledge base and the rubric name entries by `id` or `code`)."""
    name = value.get(key) if isinstance(value, Mapping) else None
    return f"{where}[{index}]" + (f" ({name})" if isinstance(name, str) and name else "")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def check_keys(raw: Any, where: str, required: Sequence[str] = (), optional: Sequence[str] = (),
               error: type[Exception] = ConfigError) -> None:
    """The unknown-key (with did-you-mean) and missing-key errors of `build`, for loaders that build by hand.
    `where` is the dotted path of `raw` ("" for the top level of a file)."""
    if not isinstance(raw, Mapping):
        raise error(f"{where or 'top level'}: expected a mapping, got {raw!r}")
    allowed = (*required, *optional)
    for key in raw:
        if key not in allowed:
            raise error(f"{_join(where, str(key))}: unknown key{suggest(str(key), allowed)}")
    for key in required:
        if key not in raw:
            raise error(f"{_join(where, key)}: required key is missing")


def convert(value: Any, tp: Any, where: str, error: type[Exception] = ConfigError) -> Any:
    """`coerce` for loaders that build by hand: the same conversions and type errors, raised as `error`."""
    try:
        return coerce(value, tp, where)
    except ConfigError as exc:
        raise error(str(exc)) from None


def coerce(value: Any, tp: Any, where: str, source_field: bool = False) -> Any:
    """Convert a YAML value to the annotated type, or raise a ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, where, source_field)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is collections.abc.Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _key_type, item_type = typing.get_args(tp)
        return types.MappingProxyType({str(k): coerce(v, item_type, f"{where}.{k}", source_field)
                                       for k, v in value.items()})
    if origin is frozenset:
        (item_type,) = typing.get_args(tp)
        return frozenset(coerce(value, tuple[item_type, ...], where, source_field))
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type, _ellipsis) = typing.get_args(tp)
        return tuple(coerce(v, item_type, item_where(where, i, v), source_field) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build(tp, value, where, source_field=source_field)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
            is_integral = as_float == int(as_float)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not is_integral:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            # PyYAML reads `1e-4` (no dot) as a string; accept it as the number users mean.
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is Any:
        return value
    raise ConfigError(f"{where}: unsupported type {tp!r}")  # pragma: no cover - schema bug, not user input


def build(cls: type[T], raw: Mapping[str, Any], where: str = "", *, source_field: bool = False) -> T:
    """A `cls` dataclass from a mapping: unknown keys (with a suggestion), missing required keys and wrong types
    are ConfigErrors naming the dotted key. A `source` field is the file a setting came from and is never read from
    the file, unless `source_field` says it is data (a KB fact's official URL)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or 'top level'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if source_field or f.name != "source"]
    for key in raw:
        if key not in names:
            raise ConfigError(f"{_join(where, str(key))}: unknown key{suggest(str(key), names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{_join(where, f.name)}: required key is missing")
            continue
        kwargs[f.name] = coerce(raw[f.name], hints[f.name], _join(where, f.name), source_field)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split a dotted `key=value` override; the value is read as YAML (`true`, `3`, `[a, b]`)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. stages.stage2.learning_rate=1e-4")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply each dotted `key=value` to the raw mapping (creating sections as needed); returns `raw`."""
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def load_typed(cls: type[T], path: str | Path | None, overrides: Sequence[str] = (), *,
               prepare: Callable[[dict[str, Any]], None] | None = None, validate: Callable[[T], None] | None = None,
               what: str = "config file", error: type[Exception] = ConfigError) -> T:
    """Read `path` (or start from the defaults when it is None), apply overrides, build `cls` and validate it.
    Every error is raised as `error` with the file in front: `configs/x.yaml: stages.s1.lr: unknown key ...`.
    `prepare` may reshape the raw mapping first (the pipeline config merges `training:` into each stage)."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path, what=what, error=error) or {}
    label = str(path) if path is not None else what
    try:
        apply_overrides(raw, overrides)
        if prepare is not None:
            prepare(raw)
        value = build(cls, raw, "")
        if any(f.name == "source" for f in dataclasses.fields(cls)):
            value = dataclasses.replace(value, source=str(path) if path is not None else None)
        if validate is not None:
            validate(value)
    except ConfigError as exc:
        raise error(f"{label}: {exc}") from None
    return value


def field_docs(cls: type) -> dict[str, str]:
    """{field: the docstring written under it} for a settings dataclass (Python keeps no such docstrings at run
    time, so they are read from the source; {} when the source is not available)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # pragma: no cover - an install without sources
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for field_node, doc_node in zip(body, body[1:]):
        if isinstance(field_node, ast.AnnAssign) and isinstance(field_node.target, ast.Name) \
                and isinstance(doc_node, ast.Expr) and isinstance(doc_node.value, ast.Constant) \
                and isinstance(doc_node.value.value, str):
            docs[field_node.target.id] = " ".join(doc_node.value.value.split())
    return docs


def to_plain(value: Any) -> Any:
    """Plain, YAML-ready form of a settings dataclass (tuples as lists, mappings as dicts)."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    return value


def dump_yaml(data: Any, header: str = "") -> str:
    """YAML text for settings written back out (resolved configs, the Space bundle's space.yaml)."""
    import yaml

    return header + yaml.safe_dump(to_plain(data), sort_keys=False, allow_unicode=True)


def flag(default: Any, **options: Any) -> Any:
    """A field's default plus what its command-line flag needs beyond the field's name, type and docstring:
    `name` (the flag's stem, when it is not the field's name), `metavar` or `choices` (as argparse takes them)."""
    return dataclasses.field(default=default, metadata={"flag": options})


def flags_last(flags: Mapping[str, Any] | None):
    """A `prepare` step that lays the typed flags over the file and the --set overrides (flags win)."""
    def prepare(raw: dict[str, Any]) -> None:
        raw.update(flags or {})
    return prepare
