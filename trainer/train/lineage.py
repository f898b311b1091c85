"""Lineage: what an adapter was made from, so `push`, the cards and the app can quote it exactly: the hashes, versions
and git state a stage records, and `Lineage`, lineage.json as a type."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from trainer.data.conversations import file_sha256

LIBRARIES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate", "huggingface_hub")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Python's version and each library's (None where it is not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(path: str | Path = ".") -> GitRecord:
    """Commit of the code that trained, and whether the tree had uncommitted changes."""
    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return GitRecord(commit=commit, dirty=bool(status) if status is not None else None)


def _hash_cache_path() -> Path:
    from trainer.train.demo_model import cache_root

    return cache_root() / "weight_hashes.json"


def weights_sha256(folder: str | Path) -> dict[str, str]:
    """sha256 of each weight file in a model folder, cached by path, size and mtime (7B weights take a while)."""
    folder = Path(folder)
    cache_file = _hash_cache_path()
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    hashes, changed = {}, False
    for path in sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()):
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in cache:
            cache[key] = file_sha256(path)
            changed = True
        hashes[path.name] = cache[key]
    if changed:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
        os.replace(tmp, cache_file)
    return hashes


def combined_sha256(hashes: list[str]) -> str:
    """One hash for a set of row hashes (order-independent)."""
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def write_json(path: str | Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


# lineage.json as types: what `run_stage` records and the cards, push, eval and the app's registry read back. Every
# record writes the keys lineage.json has always had, in the same order; reading a file tolerates missing keys (an
# older run, a test's partial folder) and ignores unknown ones.

def known_fields(cls, data: Mapping[str, Any] | None) -> dict[str, Any]:
    """The entries of `data` that are fields of `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in (data or {}).items() if k in names}


class Record:
    """A JSON record as a frozen dataclass: written field by field in the declared order, read back tolerating missing
    keys and ignoring unknown ones. A record whose file leaves some keys out overrides `to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None):
        return cls(**known_fields(cls, data))


@dataclass(frozen=True)
class BaseModelRecord(Record):
    """The base model a stage trained on."""

    name: str | None = None
    """The configured name: a Hub id, a local folder or the demo model's name."""
    revision: str | None = None
    """The configured Hub revision (None: the default branch)."""
    demo: bool = False
    """Whether it is the embedded demo model."""
    path: str | None = None
    """The local folder the weights were read from (local models only)."""
    weights_sha256: dict[str, str] | None = None
    """sha256 of each weight file in `path` (local models only)."""
    source: dict[str, Any] | None = None
    """The folder's SOURCE.json, where the weights came from (the demo model: `upstream`, `package`)."""
    commit: str | None = None
    """The Hub commit the weights were downloaded at (Hub models only)."""

    @property
    def is_local(self) -> bool:
        return self.path is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "revision": self.revision, "demo": self.demo}
        if self.is_local:
            out.update(path=self.path, weights_sha256=self.weights_sha256)
            if self.source is not None:
                out["source"] = self.source
        else:
            out["commit"] = self.commit
        return out


@dataclass(frozen=True)
class QuantizationRecord(Record):
    """How the base was quantized while it trained."""

    load_in_4bit: bool = False
    """4-bit weights (bitsandbytes) or none."""
    quant_type: str | None = None
    """`nf4` or `fp4` (4-bit only)."""
    double_quant: bool | None = None
    """Whether the quantization constants were quantized too (4-bit only)."""
    compute_dtype: str | None = None
    """The dtype the matmuls ran in, as it ran (4-bit only)."""

    def to_dict(self) -> dict[str, Any]:
        if not self.load_in_4bit:
            return {"load_in_4bit": False}
        return {"load_in_4bit": True, "quant_type": self.quant_type, "double_quant": self.double_quant,
                "compute_dtype": self.compute_dtype}


@dataclass(frozen=True)
class AdapterRecord(Record):
    """The adapter a stage continued (its parent)."""

    path: str
    """Its folder."""
    stage: str | None
    """The stage of this run that trained it (None: a folder from elsewhere)."""
    adapter_sha256: str
    """sha256 of its adapter_model.safetensors."""
    lineage_sha256: str | None = None
    """sha256 of its stage's lineage.json, when it has one."""

    def to_dict(self) -> dict[str, Any]:
        out = {"path": self.path, "stage": self.stage, "adapter_sha256": self.adapter_sha256}
        if self.lineage_sha256 is not None:
            out["lineage_sha256"] = self.lineage_sha256
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> AdapterRecord | None:
        return None if data is None else cls(**{"path": None, "stage": None, "adapter_sha256": None,
                                               **known_fields(cls, data)})


@dataclass(frozen=True)
class TemplateRecord(Record):
    """The chat template the stage trained with (saved in the adapter folder)."""

    family: str | None = None
    """`chatml`, `mistral`, ..."""
    sha256: str | None = None
    """sha256 of the template text."""


@dataclass(frozen=True)
class DatasetRecord(Record):
    """One data file (or folder, or Hub dataset) a stage read, and what ingestion made of it."""

    source: str | None = None
    """The path or Hub id as configured."""
    schema: str = ""
    """The input schema its rows were read as."""
    rows_read: int = 0
    """Rows read."""
    kept: int = 0
    """Conversations kept after validation, dedup and the length check."""
    bad: int = 0
    """Rows rejected."""
    bad_by_rule: dict[str, int] = field(default_factory=dict)
    """Rejected rows per rule."""
    duplicates_removed: int = 0
    """Exact duplicates removed."""
    file_sha256: dict[str, str] = field(default_factory=dict)
    """sha256 of each local file read (empty for a Hub dataset)."""
    file_schemas: dict[str, str] = field(default_factory=dict)
    """The schema each file was read as."""
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    """`{"path", "why"}` for each entry of a folder that was not read."""

    @property
    def is_local(self) -> bool:
        return bool(self.file_sha256)

    @classmethod
    def from_report(cls, report) -> DatasetRecord:
        """From ingestion's `DataReport`."""
        return cls.from_dict(report.to_dict())


@dataclass(frozen=True)
class SplitRecord(Record):
    """How a stage's conversations were split into train and eval."""

    method: str | None = None
    """`seeded content hash` or `separate eval file`."""
    seed: int | None = None
    """The seed of the hash split."""
    train_rows: int = 0
    """Training conversations."""
    eval_rows: int = 0
    """Held-out conversations."""
    train_sha256: str | None = None
    """One hash over the training conversations' content hashes."""
    eval_sha256: str | None = None
    """One hash over the held-out conversations' content hashes."""

    @classmethod
    def of(cls, data, *, seed: int, separate_eval_file: bool) -> SplitRecord:
        """From a stage's `StageData` (its train and eval conversations)."""
        return cls(method="separate eval file" if separate_eval_file else "seeded content hash", seed=seed,
                   train_rows=len(data.train), eval_rows=len(data.eval),
                   train_sha256=combined_sha256([c.content_hash for c in data.train]),
                   eval_sha256=combined_sha256([c.content_hash for c in data.eval]))


@dataclass(frozen=True)
class GitRecord(Record):
    """The code that trained."""

    commit: str | None = None
    """The commit checked out (None outside a git checkout)."""
    dirty: bool | None = None
    """Whether the tree had uncommitted changes."""


@dataclass(frozen=True)
class EvaluationRecord(Record):
    """The evaluation's verdict on the stage, added to lineage.json after training (`StageRun.record_evaluation`)."""

    verdict: str
    """`passed`, `failed`, `inconclusive` or `not gated`."""
    passed: bool
    """Whether the gate passed."""
    summary: str
    """One line: what decided it."""
    results: str
    """The eval's results.json, relative to the stage folder."""
    date: str
    """When the evaluation ran (ISO 8601, UTC)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> EvaluationRecord | None:
        return None if data is None else cls(**{"verdict": None, "passed": None, "summary": None, "results": None,
                                                 "date": None, **known_fields(cls, data)})


@dataclass(frozen=True)
class Lineage(Record):
    """lineage.json: what a stage's adapter was made from."""

    run: str | None = None
    """The pipeline's name."""
    stage: str | None = None
    """The stage's name."""
    created: str | None = None
    """When the stage finished (ISO 8601, UTC)."""
    base_model: BaseModelRecord = field(default_factory=BaseModelRecord)
    """The base model it trained on."""
    quantization: QuantizationRecord = field(default_factory=QuantizationRecord)
    """How the base was quantized."""
    parent_adapter: AdapterRecord | None = None
    """The adapter it continued (None: a fresh LoRA adapter)."""
    adapter_sha256: str | None = None
    """sha256 of the adapter_model.safetensors it wrote."""
    chat_template: TemplateRecord = field(default_factory=TemplateRecord)
    """The chat template it trained with."""
    datasets: tuple[DatasetRecord, ...] = ()
    """Every dataset it read (the training file, then a separate eval file)."""
    split: SplitRecord = field(default_factory=SplitRecord)
    """The train / eval split."""
    bad_rows: tuple[str, ...] = ()
    """Every rejected row: location and rule."""
    grounding: dict[str, Any] | None = None
    """With `dataset.grounding: kb`: the KB, its version and the retrieval settings the rows were grounded with."""
    seed: int | None = None
    """The run's seed."""
    libraries: dict[str, str | None] = field(default_factory=dict)
    """Python and library versions."""
    git: GitRecord = field(default_factory=GitRecord)
    """The code's commit."""
    command: str | None = None
    """The command line that trained it."""
    evaluation: EvaluationRecord | None = None
    """The last evaluation's verdict (written after training; absent until one ran)."""

    def to_dict(self) -> dict[str, Any]:
        """lineage.json's content: the keys and order it has always had; `evaluation` only once one ran."""
        out = {
            "run": self.run, "stage": self.stage, "created": self.created, "base_model": self.base_model.to_dict(),
            "quantization": self.quantization.to_dict(),
            "parent_adapter": self.parent_adapter.to_dict() if self.parent_adapter else None,
            "adapter_sha256": self.adapter_sha256, "chat_template": self.chat_template.to_dict(),
            "datasets": [d.to_dict() for d in self.datasets], "split": self.split.to_dict(),
            "bad_rows": list(self.bad_rows), "grounding": self.grounding, "seed": self.seed,
            "libraries": dict(self.libraries), "git": self.git.to_dict(), "command": self.command,
        }
        if self.evaluation is not None:
            out["evaluation"] = self.evaluation.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Lineage:
        known = known_fields(cls, data)
        return cls(**{
            **known,
            "base_model": BaseModelRecord.from_dict(known.get("base_model")),
            "quantization": QuantizationRecord.from_dict(known.get("quantization")),
            "parent_adapter": AdapterRecord.from_dict(known.get("parent_adapter")),
            "chat_template": TemplateRecord.from_dict(known.get("chat_template")),
            "datasets": tuple(DatasetRecord.from_dict(d) for d in known.get("datasets") or ()),
            "split": SplitRecord.from_dict(known.get("split")),
            "bad_rows": tuple(known.get("bad_rows") or ()),
            "libraries": dict(known.get("libraries") or {}),
            "git": GitRecord.from_dict(known.get("git")),
            "evaluation": EvaluationRecord.from_dict(known.get("evaluation")),
        })
