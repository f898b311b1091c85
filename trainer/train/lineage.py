"""Lineage: what an adapter was made from, so `push`, the cards and the app can quote it exactly."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from trainer.data.conversations import file_sha256

LIBRARIES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate", "huggingface_hub")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(path: str | Path = ".") -> dict[str, Any]:
    """Commit of the code that trained, and whether the tree had uncommitted changes."""
    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


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
