"""The Hub calls, and only those: the one module that touches `HfApi` (token, repos and branches, listing, one commit
per folder, retries). What to push, and the folders and cards, come from `trainer.hub.push` and `trainer.hub.cards`.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable

from trainer import UserError

_TRUE = {"1", "ON", "YES", "TRUE"}


class HubError(UserError, RuntimeError):
    """A push problem a user can fix; one line that names the repo and what to do."""


def offline_mode() -> bool:
    """Whether the Hub is switched off for this process, read as huggingface_hub reads it: HF_HUB_OFFLINE (else
    TRANSFORMERS_OFFLINE) set to 1, ON, YES or TRUE in any case; 0, another value or unset is online."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return value is not None and value.upper() in _TRUE


def resolve_token() -> str:
    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (use --dry-run to only stage "
                       "the folders)")
    return token


def connect(endpoint: str | None = None):
    """An authenticated HfApi (HubError when offline or without a token)."""
    if offline_mode():
        variable = "HF_HUB_OFFLINE" if os.environ.get("HF_HUB_OFFLINE") else "TRANSFORMERS_OFFLINE"
        raise HubError(f"{variable} is set: unset it to push (or use --dry-run)")
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=resolve_token())


def whoami(api) -> str:
    """The user name the token belongs to (the default namespace)."""
    return with_retries("who am I", lambda: api.whoami())["name"]


# Hashing: what the Hub reports for a file, computed locally

def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def local_fingerprints(folder: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        out[path.relative_to(folder).as_posix()] = (git_blob_sha1(data), hashlib.sha256(data).hexdigest())
    return out


# Retries and errors

def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def with_retries(what: str, call: Callable[[], Any], *, attempts: int = 5, sleep: Callable[[float], None] = time.sleep,
                 max_wait: float = 60.0) -> Any:
    """Run a Hub call, retrying 429 (after Retry-After) and 5xx (exponential backoff); other errors become one
    clear line."""
    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(1, attempts + 1):
        try:
            return call()
        except HfHubHTTPError as exc:
            status = _status(exc)
            retryable = status == 429 or (status is not None and 500 <= status < 600)
            if not retryable or attempt == attempts:
                raise _one_line(what, exc, status) from None
            wait = 2.0 ** (attempt - 1) * 0.5
            if status == 429:
                header = exc.response.headers.get("Retry-After", "")
                wait = float(header) if header.strip().isdigit() else max(wait, 1.0)
            print(f"[push] {what}: HTTP {status}, retrying in {min(wait, max_wait):.1f}s "
                  f"(attempt {attempt + 1}/{attempts})", flush=True)
            sleep(min(wait, max_wait))


def _one_line(what: str, exc: Exception, status: int | None) -> HubError:
    if status in (401, 403):
        return HubError(f"{what}: the Hub refused the token (HTTP {status}); check that HF_TOKEN (or your saved "
                        "login) is valid and can write to this namespace")
    if status == 404:
        return HubError(f"{what}: not found (HTTP 404); check the namespace and the repo type")
    if status == 409:
        return HubError(f"{what}: conflict (HTTP 409): a repo of another type or a branch with that name exists")
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return HubError(f"{what}: HTTP {status}: {message}")


# One folder, one commit

def push_folder(api, repo_id: str, repo_type: str, folder: Path, message: str, *, private: bool = False,
                revision: str | None = None) -> tuple[str, str]:
    """Create the repo (and branch) if needed and upload `folder` as its whole content in one commit, unless the
    files are already identical. Returns ("pushed" or "unchanged", the commit the repo is at)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    what = f"{repo_type} {repo_id}"
    kwargs = {"space_sdk": "gradio"} if repo_type == "space" else {}
    with_retries(f"create {what}", lambda: api.create_repo(repo_id, repo_type=repo_type, private=private,
                                                            exist_ok=True, **kwargs))
    if revision:
        with_retries(f"create branch {revision} of {what}", lambda: api.create_branch(
            repo_id, branch=revision, repo_type=repo_type, exist_ok=True))

    def list_remote() -> list:
        try:
            return list(api.list_repo_tree(repo_id, repo_type=repo_type, revision=revision, recursive=True))
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
            return []  # a new repo (or branch) without files yet

    remote = {e.path: (getattr(e, "blob_id", None), (getattr(e, "lfs", None) or {}))
              for e in with_retries(f"list {what}", list_remote) if getattr(e, "blob_id", None) is not None}
    remote.pop(".gitattributes", None)
    local = local_fingerprints(folder)

    def same(path: str) -> bool:
        blob, lfs = remote[path]
        lfs_sha = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
        return (lfs_sha == local[path][1]) if lfs_sha else blob == local[path][0]

    if set(remote) == set(local) and all(same(p) for p in local):
        info = with_retries(f"read {what}", lambda: api.repo_info(repo_id, repo_type=repo_type, revision=revision))
        return "unchanged", info.sha
    operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(folder / p)) for p in local]
    operations += [CommitOperationDelete(path_in_repo=p) for p in sorted(set(remote) - set(local))]
    info = with_retries(f"commit to {what}", lambda: api.create_commit(
        repo_id, operations=operations, commit_message=message, repo_type=repo_type, revision=revision))
    return "pushed", info.oid
