"""A local stand-in for the Hugging Face Hub, speaking its HTTP API the way `huggingface_hub` 2.4 calls it.

Standard library only (PyYAML, when importable, fills `cardData` and checks README metadata): a
`ThreadingHTTPServer` on 127.0.0.1 (random free port) that keeps everything it is sent on disk under a root
folder, with git-like, immutable commits per repo and branch:

    root/objects/ab/cdef...        git blobs (regular files and LFS pointers), named by their git blob oid
    root/lfs/ab/abcdef...          LFS objects, named by their sha256
    root/repos/<type>/<ns>/<name>/repo.json            visibility, sdk, refs (branch/tag/pr -> commit oid)
    root/repos/<type>/<ns>/<name>/commits/<oid>.json   one commit: parents, message, full tree

Each commit stores its whole tree (path -> kind, git oid, size, sha256 for LFS files), so every old revision stays
resolvable by its commit oid. Headers and bodies are never logged or stored: the token never reaches the disk.

Clients must take the plain HTTP path (`HF_HUB_DISABLE_XET=1`): the emulator has no Xet CAS. `HfApi(endpoint=...)`
works in-process once `huggingface_hub.constants.HF_HUB_OFFLINE` is false; everything that reads `HF_ENDPOINT` at
import time (hf_hub_download, snapshot_download, HfFileSystem, datasets) needs a process started with
`HF_ENDPOINT=<emulator.endpoint>` (see `HubEmulator.client_env`).

Usage:

    emu = HubEmulator(tmp_path / "hub")
    endpoint = emu.start()
    HfApi(endpoint=endpoint, token=emu.token).create_repo("tester/my-model")
    emu.fail_next("POST", r"/commit/", 500)          # the next commit call gets a 500
    emu.commits("model", "tester/my-model")          # commit oids on main, oldest first
    emu.files("model", "tester/my-model")            # {path: bytes} at the head of main
    emu.stop()

or the function-scoped pytest fixture `hub` defined at the bottom of this module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
import traceback
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

try:  # optional: only used to fill `cardData` in repo info and to check README metadata in /api/validate-yaml
    import yaml as _yaml
except ImportError:  # pragma: no cover - PyYAML ships with datasets/transformers, but the emulator does not need it
    _yaml = None

try:
    import pytest
except ImportError:  # pragma: no cover - the emulator itself does not need pytest
    pytest = None


DEFAULT_TOKEN = "hf_emulator_secret_token_0123456789"
REPO_TYPES = ("model", "dataset", "space")
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
PLURALS = {"models": "model", "datasets": "dataset", "spaces": "space"}
SPACE_SDKS = ("gradio", "streamlit", "docker", "static")

# Files stored with Git LFS: these suffixes, or anything larger than LFS_THRESHOLD bytes.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack", ".parquet", ".arrow",
                ".npy", ".npz", ".pkl", ".pickle", ".png", ".jpg", ".jpeg", ".webp", ".gif", ".gguf", ".zip",
                ".gz", ".tar", ".tgz", ".zst", ".wav", ".mp3")
LFS_THRESHOLD = 10 * 1024 * 1024

# What the Hub writes in a new repo's first commit.
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_HEX40_RE = re.compile(r"^[0-9a-f]{40}$")
_HEX_PREFIX_RE = re.compile(r"^[0-9a-f]{7,40}$")
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_FRONT_MATTER_RE = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def git_blob_oid(content: bytes) -> str:
    """The oid git gives a blob: sha1(b"blob <len>\\0" + content)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file committed in place of an LFS object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def is_lfs_path(path: str, size: int) -> bool:
    return path.lower().endswith(LFS_SUFFIXES) or size > LFS_THRESHOLD


def _now_iso(ts: float | None = None) -> str:
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


def _front_matter(text: str):
    """The README's YAML header as a dict, or None (no header, or PyYAML missing). Raises ValueError if malformed."""
    match = _FRONT_MATTER_RE.match(text)
    if match is None or _yaml is None:
        return None
    try:
        data = _yaml.safe_load(match.group(1))
    except _yaml.YAMLError as err:
        raise ValueError(f"Invalid YAML in README.md metadata: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("README.md metadata must be a YAML mapping")
    return json.loads(json.dumps(data, default=str))  # JSON-safe (dates -> str)


class HubError(Exception):
    """Raised by handlers: becomes an HTTP error response with the Hub's JSON body and headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class HubEmulator:
    """A Hugging Face Hub on 127.0.0.1, storing repos under `root`. See the module docstring."""

    def __init__(self, root: Path, token: str = DEFAULT_TOKEN, user: str = "tester"):
        self.root = Path(root)
        self.token = token
        self.user = user
        self.endpoint = ""
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status); never headers or bodies
        self.tree_page_size = 1000  # entries per /tree page (50 with expand=true), like the Hub
        self._lock = threading.RLock()
        self._failures: list[dict] = []
        self._commit_cache: dict[tuple, dict] = {}
        self._dir_oid_cache: dict[str, dict[str, str]] = {}
        self._secret = secrets.token_bytes(32)  # signs the LFS upload URLs (they carry no Authorization header)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for sub in ("objects", "lfs", "repos", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> str:
        if self._server is not None:
            return self.endpoint
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.block_on_close = False
        server.emulator = self  # type: ignore[attr-defined]
        self._server = server
        self.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="hub-emulator", daemon=True)
        self._thread.start()
        return self.endpoint

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "HubEmulator":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def client_env(self, token: bool = False, home: Path | str | None = None, base: dict | None = None) -> dict:
        """Environment for a client process: this endpoint, online, no Xet, a private HF_HOME; HF_TOKEN if asked.

        Starts from `base` (default: os.environ) minus every HF_* / HUGGINGFACE_* variable.
        """
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if not k.startswith(("HF_", "HUGGINGFACE_")) and k not in ("TRANSFORMERS_OFFLINE",)}
        env.update({"HF_ENDPOINT": self.endpoint, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
                    "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                    "HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_HOME": str(home if home is not None else
                                                                        self.root.parent / "hf_home")})
        if token:
            env["HF_TOKEN"] = self.token
        return env

    # ------------------------------------------------------------------ fault injection
    def fail_next(self, method: str, path_regex: str, status: int, times: int = 1, headers: dict | None = None,
                  body: str | None = None) -> None:
        """The next `times` requests with this method (or "*") whose path matches `path_regex` get `status`.

        The path matched (with re.search) is the one logged in `requests`: percent-decoded, without the query string.
        """
        with self._lock:
            self._failures.append({"method": method.upper(), "regex": re.compile(path_regex), "status": int(status),
                                   "remaining": int(times), "headers": dict(headers or {}), "body": body})

    def _take_failure(self, method: str, path: str) -> dict | None:
        with self._lock:
            for rule in self._failures:
                if rule["method"] in (method, "*") and rule["regex"].search(path):
                    rule["remaining"] -= 1
                    if rule["remaining"] <= 0:
                        self._failures.remove(rule)
                    return rule
        return None

    def _log(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    # ------------------------------------------------------------------ inspection (for tests)
    def commits(self, repo_type: str, repo_id: str, revision: str = "main") -> list[str]:
        """Commit oids on `revision` (first-parent history), oldest first."""
        repo = self._require_repo(repo_type, repo_id)
        oid = self._resolve_revision(repo, revision)
        chain = []
        while oid:
            chain.append(oid)
            parents = self._load_commit(repo, oid)["parents"]
            oid = parents[0] if parents else None
        return chain[::-1]

    def files(self, repo_type: str, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """{path: content} of the tree at `revision` (LFS files give their real content, not the pointer)."""
        repo = self._require_repo(repo_type, repo_id)
        tree = self._load_commit(repo, self._resolve_revision(repo, revision))["tree"]
        return {path: self._read_entry(entry) for path, entry in sorted(tree.items())}

    def _require_repo(self, repo_type: str, repo_id: str) -> dict:
        repo = self._load_repo(repo_type, repo_id)
        if repo is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r}")
        return repo

    # ------------------------------------------------------------------ storage
    def _repo_dir(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / repo_type / repo_id

    def _load_repo(self, repo_type: str, repo_id: str) -> dict | None:
        if repo_type not in REPO_TYPES or repo_id.count("/") != 1 or ".." in repo_id:
            return None
        path = self._repo_dir(repo_type, repo_id) / "repo.json"
        with self._lock:
            if not path.is_file():
                return None
            return json.loads(path.read_text(encoding="utf-8"))

    def _save_repo(self, repo: dict) -> None:
        self._write_atomic(self._repo_dir(repo["type"], repo["id"]) / "repo.json",
                           json.dumps(repo, indent=1, sort_keys=True).encode())

    def _write_atomic(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "tmp" / uuid.uuid4().hex
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def _put_object(self, content: bytes) -> str:
        oid = git_blob_oid(content)
        path = self.root / "objects" / oid[:2] / oid[2:]
        if not path.exists():
            self._write_atomic(path, content)
        return oid

    def _object_path(self, oid: str) -> Path:
        return self.root / "objects" / oid[:2] / oid[2:]

    def _lfs_path(self, sha256: str) -> Path:
        return self.root / "lfs" / sha256[:2] / sha256

    def _has_lfs(self, sha256: str) -> bool:
        return bool(re.fullmatch(r"[0-9a-f]{64}", sha256)) and self._lfs_path(sha256).is_file()

    def _read_entry(self, entry: dict) -> bytes:
        if entry["kind"] == "lfs":
            return self._lfs_path(entry["sha256"]).read_bytes()
        return self._object_path(entry["oid"]).read_bytes()

    def _entry_path_on_disk(self, entry: dict) -> Path:
        return self._lfs_path(entry["sha256"]) if entry["kind"] == "lfs" else self._object_path(entry["oid"])

    def _load_commit(self, repo: dict, oid: str) -> dict:
        key = (repo["type"], repo["id"], oid)
        with self._lock:
            commit = self._commit_cache.get(key)
            if commit is None:
                path = self._repo_dir(repo["type"], repo["id"]) / "commits" / f"{oid}.json"
                commit = json.loads(path.read_text(encoding="utf-8"))
                self._commit_cache[key] = commit
            return commit

    def _has_commit(self, repo: dict, oid: str) -> bool:
        return (self._repo_dir(repo["type"], repo["id"]) / "commits" / f"{oid}.json").is_file()

    def _write_commit(self, repo: dict, parents: list[str], tree: dict, title: str, message: str) -> str:
        date = _now_iso()
        header = json.dumps({"parents": parents, "tree": tree, "title": title, "message": message, "date": date,
                             "author": self.user, "nonce": uuid.uuid4().hex}, sort_keys=True).encode()
        oid = hashlib.sha1(b"commit %d\0" % len(header) + header).hexdigest()
        commit = {"id": oid, "parents": parents, "tree": tree, "title": title, "message": message, "date": date,
                  "authors": [self.user]}
        self._write_atomic(self._repo_dir(repo["type"], repo["id"]) / "commits" / f"{oid}.json",
                           json.dumps(commit, indent=1, sort_keys=True).encode())
        return oid

    # ------------------------------------------------------------------ revisions
    def _resolve_revision(self, repo: dict, revision: str) -> str:
        """Commit oid for a branch, tag, refs/... name or (prefix of a) commit oid; HubError 404 otherwise."""
        refs = repo["refs"]
        for candidate in (revision, f"refs/heads/{revision}", f"refs/tags/{revision}"):
            if candidate in refs:
                return refs[candidate]
        rev = revision.lower()
        if _HEX40_RE.match(rev) and self._has_commit(repo, rev):
            return rev
        if _HEX_PREFIX_RE.match(rev) and len(rev) < 40:
            commits_dir = self._repo_dir(repo["type"], repo["id"]) / "commits"
            matches = [p.stem for p in commits_dir.glob(f"{rev}*.json")]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")

    @staticmethod
    def _branch_ref(repo: dict, revision: str) -> str:
        """The ref a commit to `revision` updates: an existing branch or refs/pr/N."""
        if revision.startswith("refs/pr/") and revision in repo["refs"]:
            return revision
        ref = revision if revision.startswith("refs/heads/") else f"refs/heads/{revision}"
        if ref in repo["refs"]:
            return ref
        if revision in repo["refs"] or f"refs/tags/{revision}" in repo["refs"] or _HEX_PREFIX_RE.match(revision):
            raise HubError(400, f"Invalid rev id: {revision} is not a branch")
        raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")

    # ------------------------------------------------------------------ trees
    def _dir_oids(self, repo: dict, commit: dict) -> dict[str, str]:
        """{directory path: git tree oid} for every directory of the commit ("" is the root)."""
        cached = self._dir_oid_cache.get(commit["id"])
        if cached is not None:
            return cached
        children: dict[str, dict[str, tuple[str, str]]] = {"": {}}
        for path in commit["tree"]:
            parts = path.split("/")
            for i in range(1, len(parts)):
                children.setdefault("/".join(parts[:i]), {})
        for path, entry in commit["tree"].items():
            parent, _, name = path.rpartition("/")
            children[parent][name] = ("100644", entry["oid"])
        oids: dict[str, str] = {}
        for directory in sorted(children, key=lambda d: (d.count("/") if d else -1), reverse=True):  # deepest first
            entries = children[directory]
            for sub in [d for d in children if d and d.rpartition("/")[0] == directory]:
                entries[sub.rpartition("/")[2]] = ("40000", oids[sub])
            body = b"".join(f"{mode} {name}".encode() + b"\0" + bytes.fromhex(oid) for name, (mode, oid) in
                            sorted(entries.items(), key=lambda kv: kv[0] + ("/" if kv[1][0] == "40000" else "")))
            oids[directory] = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
        self._dir_oid_cache[commit["id"]] = oids
        return oids

    def _entry_json(self, repo: dict, commit: dict, path: str, expand: bool) -> dict:
        tree = commit["tree"]
        if path in tree:
            entry = tree[path]
            item = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
            if entry["kind"] == "lfs":
                item["lfs"] = {"oid": entry["sha256"], "size": entry["size"],
                               "pointerSize": len(lfs_pointer(entry["sha256"], entry["size"]))}
        else:
            item = {"type": "directory", "oid": self._dir_oids(repo, commit)[path], "size": 0, "path": path}
        if expand:
            last = self._last_commit(repo, commit, path)
            item["lastCommit"] = {"id": last["id"], "title": last["title"], "date": last["date"]}
        return item

    def _path_oid(self, repo: dict, commit: dict, path: str) -> str | None:
        if path in commit["tree"]:
            return commit["tree"][path]["oid"]
        return self._dir_oids(repo, commit).get(path)

    def _last_commit(self, repo: dict, commit: dict, path: str) -> dict:
        """The most recent commit (first-parent history) that changed `path`."""
        oid = self._path_oid(repo, commit, path)
        while commit["parents"]:
            parent = self._load_commit(repo, commit["parents"][0])
            if self._path_oid(repo, parent, path) != oid:
                break
            commit = parent
        return commit

    def _is_dir(self, repo: dict, commit: dict, path: str) -> bool:
        return path == "" or path in self._dir_oids(repo, commit)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "HubEmulator/1.0"
    timeout = 60  # idle keep-alive connections are dropped after this long

    # ------------------------------------------------------------------ plumbing
    @property
    def emu(self) -> HubEmulator:
        return self.server.emulator  # type: ignore[attr-defined]

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr access log
        pass

    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    def do_PATCH(self):
        self._handle("PATCH")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                line = self.rfile.readline()
                if not line:
                    break
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self, method: str) -> None:
        self.method = method
        split = urlsplit(self.path)
        self.raw_segments = split.path.split("/")[1:]
        self.segments = [unquote(s) for s in self.raw_segments]
        self.log_path = unquote(split.path)
        self.query = parse_qs(split.query, keep_blank_values=True)
        self.response_status, self.logged = 500, False
        try:
            self.body = self._read_body()
        except Exception:  # noqa: BLE001 - a broken request body: answer and drop the connection
            self.close_connection = True
            self._send_json(400, {"error": "Malformed request body"})
            return
        try:
            rule = self.emu._take_failure(method, self.log_path)
            if rule is not None:
                self._send_json(rule["status"], {"error": rule["body"] or f"Injected failure ({rule['status']})"},
                                headers=rule["headers"])
            else:
                self._route()
        except HubError as err:
            headers = dict(err.headers)
            if err.code:
                headers["X-Error-Code"] = err.code
            headers.setdefault("X-Error-Message", err.message)
            self._send_json(err.status, {"error": err.message, **err.extra}, headers=headers)
        except BrokenPipeError:
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - any emulator bug becomes a 500 the client can report
            traceback.print_exc()
            self._send_json(500, {"error": f"Emulator error: {type(exc).__name__}: {exc}"})
        finally:
            if not self.logged:  # no response went out (e.g. the client hung up)
                self.emu._log(method, self.log_path, self.response_status)

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json; charset=utf-8",
              headers: dict | None = None) -> None:
        self.response_status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("X-Request-Id", uuid.uuid4().hex)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        if not any(k.lower() == "content-length" for k in (headers or {})):
            self.send_header("Content-Length", str(len(body)))
        # Logged before the response leaves, so a client that has its answer always finds it in `requests`.
        self.emu._log(self.method, self.log_path, status)
        self.logged = True
        self.end_headers()
        if self.method != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, status: int, payload, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers=headers)

    def _json_body(self) -> dict:
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except ValueError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err
        if not isinstance(data, dict):
            raise HubError(400, "Expected a JSON object")
        return data

    # ------------------------------------------------------------------ auth
    def _user(self) -> str | None:
        """The authenticated user, None if no token; 401 on a wrong token (even on public reads, like the Hub)."""
        header = self.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.emu.token.encode()):
            raise HubError(401, _INVALID_CREDENTIALS)
        return self.emu.user

    def _require_user(self) -> str:
        user = self._user()
        if user is None:
            raise HubError(401, "You must be authenticated to access this endpoint (missing Authorization header)")
        return user

    def _repo_for_read(self, repo_type: str, repo_id: str) -> dict:
        user = self._user()
        repo = self.emu._load_repo(repo_type, repo_id)
        if repo is None or (repo["private"] and user is None):
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return repo

    def _repo_for_write(self, repo_type: str, repo_id: str) -> tuple[dict, str]:
        user = self._require_user()
        repo = self.emu._load_repo(repo_type, repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", code="RepoNotFound")
        if repo_id.split("/")[0] != user:
            raise HubError(403, f"You don't have the rights to write to {repo_type}s/{repo_id}")
        return repo, user

    # ------------------------------------------------------------------ routing
    def _route(self) -> None:
        seg, method = self.segments, self.method
        if seg[:1] == ["api"]:
            rest = seg[1:]
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami()
            if rest == ["repos", "create"] and method == "POST":
                return self._create_repo()
            if rest == ["repos", "delete"] and method == "DELETE":
                return self._delete_repo()
            if rest == ["validate-yaml"] and method == "POST":
                return self._validate_yaml()
            if len(rest) >= 3 and rest[0] in PLURALS:
                return self._route_repo_api(PLURALS[rest[0]], f"{rest[1]}/{rest[2]}", rest[3:])
            raise HubError(404, f"Not found: {self.log_path}")
        if seg[:1] == ["_lfs"] and len(seg) == 2 and method == "PUT":
            return self._lfs_put(seg[1])
        # git-lfs batch & verify: /{prefix}{repo}.git/info/lfs/objects/{batch|verify}
        repo_type, rest = ("dataset", seg[1:]) if seg[:1] == ["datasets"] else \
            ("space", seg[1:]) if seg[:1] == ["spaces"] else ("model", seg)
        if len(rest) == 6 and rest[1].endswith(".git") and rest[2:5] == ["info", "lfs", "objects"] and method == "POST":
            repo_id = f"{rest[0]}/{rest[1][:-4]}"
            if rest[5] == "batch":
                return self._lfs_batch(repo_type, repo_id)
            if rest[5] == "verify":
                return self._lfs_verify(repo_type, repo_id)
        if len(rest) >= 4 and rest[2] == "resolve" and method in ("GET", "HEAD"):
            raw_rest = self.raw_segments[len(self.raw_segments) - len(rest):]
            return self._resolve(repo_type, f"{rest[0]}/{rest[1]}", rest[3:], raw_rest[3:])
        raise HubError(404, f"Not found: {self.log_path}")

    def _route_repo_api(self, repo_type: str, repo_id: str, sub: list[str]) -> None:
        method = self.method
        if not sub:
            if method == "GET":
                return self._repo_info(repo_type, repo_id, None)
        elif sub[0] == "revision" and len(sub) >= 2 and method == "GET":
            return self._repo_info(repo_type, repo_id, "/".join(sub[1:]))
        elif sub[0] == "tree" and len(sub) >= 2 and method == "GET":
            return self._tree(repo_type, repo_id, sub[1], "/".join(sub[2:]))
        elif sub[0] == "paths-info" and len(sub) == 2 and method == "POST":
            return self._paths_info(repo_type, repo_id, sub[1])
        elif sub[0] == "preupload" and len(sub) == 2 and method == "POST":
            return self._preupload(repo_type, repo_id, sub[1])
        elif sub[0] == "commit" and len(sub) == 2 and method == "POST":
            return self._commit(repo_type, repo_id, sub[1])
        elif sub[0] == "commits" and len(sub) == 2 and method == "GET":
            return self._list_commits(repo_type, repo_id, sub[1])
        elif sub == ["refs"] and method == "GET":
            return self._refs(repo_type, repo_id)
        elif sub[0] == "branch" and len(sub) == 2 and method in ("POST", "DELETE"):
            return self._branch(repo_type, repo_id, sub[1])
        elif sub[0] == "tag" and len(sub) == 2 and method in ("POST", "DELETE"):
            return self._tag(repo_type, repo_id, sub[1])
        elif sub == ["settings"] and method == "PUT":
            return self._settings(repo_type, repo_id)
        elif sub[0] in ("xet-write-token", "xet-read-token"):
            self._repo_for_read(repo_type, repo_id)
            raise HubError(404, "The hub emulator has no Xet storage: run the client with HF_HUB_DISABLE_XET=1")
        elif sub == ["runtime"] and method == "GET" and repo_type == "space":
            repo = self._repo_for_read(repo_type, repo_id)
            return self._send_json(200, self._space_runtime(repo))
        # Anything else (e.g. /api/datasets/{repo}/parquet, discussions, ...): known repo -> plain 404.
        self._repo_for_read(repo_type, repo_id)
        raise HubError(404, f"Not found: {self.log_path}")

    # ------------------------------------------------------------------ users & repos
    def _whoami(self) -> None:
        user = self._require_user()
        self._send_json(200, {
            "type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user, "fullname": user,
            "email": f"{user}@example.com", "emailVerified": True, "canPay": False, "isPro": False,
            "periodEnd": None, "avatarUrl": "", "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "hub-emulator", "role": "write",
                                                             "createdAt": _now_iso(0)}},
        })

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.emu.endpoint}/{URL_PREFIXES[repo_type]}{repo_id}"

    def _create_repo(self) -> None:
        user = self._require_user()
        payload = self._json_body()
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        name, namespace = payload.get("name"), payload.get("organization") or user
        if not isinstance(name, str) or not _NAME_RE.match(name) or "--" in name or ".." in name \
                or name.endswith(".git"):
            raise HubError(400, f"Invalid repo name: {name!r}")
        if namespace != user:
            raise HubError(403, f"You don't have the rights to create a {repo_type} under the namespace "
                                f"\"{namespace}\"")
        sdk = payload.get("sdk")
        if repo_type == "space" and sdk not in SPACE_SDKS:
            raise HubError(400, f"Invalid or missing sdk for a Space: {sdk!r}")
        repo_id = f"{namespace}/{name}"
        url = self._repo_url(repo_type, repo_id)
        visibility = payload.get("visibility")
        private = visibility == "private" if visibility is not None else bool(payload.get("private", False))
        with self.emu._lock:
            if self.emu._load_repo(repo_type, repo_id) is not None:
                raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
            repo = {"type": repo_type, "id": repo_id, "_id": uuid.uuid4().hex[:24], "private": private,
                    "sdk": sdk if repo_type == "space" else None, "createdAt": _now_iso(), "refs": {}}
            files = {".gitattributes": GITATTRIBUTES.encode()}
            if repo_type == "space":
                app = "" if sdk in ("docker", "static") else "app_file: app.py\n"
                files["README.md"] = (f"---\ntitle: {name}\nemoji: 🚀\ncolorFrom: blue\ncolorTo: indigo\nsdk: {sdk}\n"
                                      f"{app}pinned: false\n---\n\nCheck out the configuration reference at "
                                      "https://huggingface.co/docs/hub/spaces-config-reference\n").encode()
            tree = {}
            for path, content in files.items():
                tree[path] = {"kind": "regular", "oid": self.emu._put_object(content), "size": len(content)}
            oid = self.emu._write_commit(repo, [], tree, "initial commit", "")
            repo["refs"]["refs/heads/main"] = oid
            self.emu._save_repo(repo)
        self._send_json(200, {"url": url, "name": repo_id, "id": repo["_id"]})

    def _delete_repo(self) -> None:
        user = self._require_user()
        payload = self._json_body()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user}/{payload.get('name')}"
        repo, _ = self._repo_for_write(repo_type, repo_id)
        with self.emu._lock:
            directory = self.emu._repo_dir(repo["type"], repo["id"])
            os.replace(directory, self.emu.root / "tmp" / f"deleted-{uuid.uuid4().hex}")
            self.emu._commit_cache = {k: v for k, v in self.emu._commit_cache.items() if k[:2] != (repo_type, repo_id)}
        self._send_json(200, {})

    def _settings(self, repo_type: str, repo_id: str) -> None:
        repo, _ = self._repo_for_write(repo_type, repo_id)
        payload = self._json_body()
        with self.emu._lock:
            repo = self.emu._load_repo(repo_type, repo_id)
            if "visibility" in payload:
                repo["private"] = payload["visibility"] == "private"
            if "private" in payload:
                repo["private"] = bool(payload["private"])
            if "gated" in payload:
                repo["gated"] = payload["gated"]
            self.emu._save_repo(repo)
        self._send_json(200, {})

    def _validate_yaml(self) -> None:
        self._user()
        payload = self._json_body()
        try:
            _front_matter(str(payload.get("content", "")))
        except ValueError as err:
            return self._send_json(400, {"errors": [{"message": str(err)}], "warnings": []})
        self._send_json(200, {"errors": [], "warnings": []})

    @staticmethod
    def _space_runtime(repo: dict) -> dict:
        return {"stage": "RUNNING", "hardware": {"current": "cpu-basic", "requested": "cpu-basic"},
                "storage": None, "gcTimeout": 172800, "replicas": {"current": 1, "requested": 1}, "devMode": False,
                "domains": [{"domain": f"{repo['id'].replace('/', '-')}.hf.space", "stage": "READY"}]}

    def _repo_info(self, repo_type: str, repo_id: str, revision: str | None) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        emu = self.emu
        commit = emu._load_commit(repo, emu._resolve_revision(repo, revision or "main"))
        blobs = _truthy((self.query.get("blobs") or [None])[0])
        siblings = []
        for path, entry in sorted(commit["tree"].items()):
            sibling = {"rfilename": path}
            if blobs:
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if entry["kind"] == "lfs":
                    sibling["lfs"] = {"size": entry["size"], "sha256": entry["sha256"],
                                      "pointerSize": len(lfs_pointer(entry["sha256"], entry["size"]))}
            siblings.append(sibling)
        info = {
            "_id": repo["_id"], "id": repo_id, "author": repo_id.split("/")[0], "sha": commit["id"],
            "lastModified": commit["date"], "createdAt": repo["createdAt"], "private": repo["private"],
            "gated": repo.get("gated", False), "disabled": False, "likes": 0, "tags": [], "siblings": siblings,
            "usedStorage": sum(e["size"] for e in commit["tree"].values()),
        }
        if repo_type != "space":
            info.update(downloads=0)
        card = None
        if "README.md" in commit["tree"]:
            try:
                card = _front_matter(emu._read_entry(commit["tree"]["README.md"]).decode("utf-8", "replace"))
            except ValueError:
                card = None
        if card is not None:
            info["cardData"] = card
            if isinstance(card.get("tags"), list):
                info["tags"] = [str(t) for t in card["tags"]]
        if repo_type == "model":
            info["modelId"] = repo_id
            if card:
                for key in ("library_name", "pipeline_tag"):
                    if isinstance(card.get(key), str):
                        info[key] = card[key]
        elif repo_type == "space":
            info.update(sdk=repo.get("sdk") or (card or {}).get("sdk"), subdomain=repo_id.replace("/", "-"),
                        host=None, runtime=self._space_runtime(repo), models=[], datasets=[])
        expand = self.query.get("expand") or self.query.get("expand[]")
        if expand:
            info = {k: v for k, v in info.items() if k in ("_id", "id") or k in expand}
        self._send_json(200, info)

    # ------------------------------------------------------------------ refs & history
    def _refs(self, repo_type: str, repo_id: str) -> None:
        repo = self._repo_for_read(repo_type, repo_id)

        def refs_with(prefix: str) -> list[dict]:
            return [{"name": ref[len(prefix):], "ref": ref, "targetCommit": oid}
                    for ref, oid in sorted(repo["refs"].items()) if ref.startswith(prefix)]

        payload = {"branches": refs_with("refs/heads/"), "converts": refs_with("refs/convert/"),
                   "tags": refs_with("refs/tags/")}
        if _truthy((self.query.get("include_prs") or [None])[0]):
            payload["pullRequests"] = [{"name": r["ref"], "ref": r["ref"], "targetCommit": r["targetCommit"]}
                                       for r in refs_with("refs/pr/")]
        self._send_json(200, payload)

    def _list_commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        items = []
        for oid in reversed(self.emu.commits(repo_type, repo_id, self.emu._resolve_revision(repo, revision))):
            commit = self.emu._load_commit(repo, oid)
            items.append({"id": oid, "title": commit["title"], "message": commit["message"], "date": commit["date"],
                          "authors": [{"user": a, "avatar": ""} for a in commit["authors"]]})
        self._send_json(200, items)

    def _branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        repo, _ = self._repo_for_write(repo_type, repo_id)
        ref = branch if branch.startswith("refs/heads/") else f"refs/heads/{branch}"
        name = ref[len("refs/heads/"):]
        with self.emu._lock:
            repo = self.emu._load_repo(repo_type, repo_id)
            if self.method == "DELETE":
                if name == "main":
                    raise HubError(403, "Cannot delete the main branch")
                if ref not in repo["refs"]:
                    raise HubError(404, f"Branch {name} not found", code="RevisionNotFound")
                del repo["refs"][ref]
            else:
                if branch.startswith("refs/") and not branch.startswith("refs/heads/") or not name \
                        or ".." in name or name.endswith("/"):
                    raise HubError(400, f"Invalid branch name: {branch}")
                if ref in repo["refs"]:
                    raise HubError(409, f"Reference already exists: {ref}")
                start = self._json_body().get("startingPoint") or "main"
                repo["refs"][ref] = self.emu._resolve_revision(repo, start)
            self.emu._save_repo(repo)
        self._send_json(200, {})

    def _tag(self, repo_type: str, repo_id: str, segment: str) -> None:
        repo, _ = self._repo_for_write(repo_type, repo_id)
        with self.emu._lock:
            repo = self.emu._load_repo(repo_type, repo_id)
            if self.method == "DELETE":
                ref = f"refs/tags/{segment}"
                if ref not in repo["refs"]:
                    raise HubError(404, f"Tag {segment} not found", code="RevisionNotFound")
                del repo["refs"][ref]
            else:  # POST /tag/{revision} {"tag": ...}
                tag = self._json_body().get("tag")
                if not isinstance(tag, str) or not tag or ".." in tag:
                    raise HubError(400, f"Invalid tag name: {tag!r}")
                ref = f"refs/tags/{tag}"
                if ref in repo["refs"]:
                    raise HubError(409, f"Tag {tag} already exists")
                repo["refs"][ref] = self.emu._resolve_revision(repo, segment)
            self.emu._save_repo(repo)
        self._send_json(200, {})

    # ------------------------------------------------------------------ listing
    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        emu = self.emu
        commit = emu._load_commit(repo, emu._resolve_revision(repo, revision))
        path = path.strip("/")
        if not emu._is_dir(repo, commit, path):
            raise HubError(404, f"Directory not found: {path!r}", code="EntryNotFound",
                           headers={"X-Repo-Commit": commit["id"]})
        recursive = _truthy((self.query.get("recursive") or [None])[0])
        expand = _truthy((self.query.get("expand") or [None])[0])
        prefix = f"{path}/" if path else ""
        paths: set[str] = set()
        for file_path in commit["tree"]:
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix):].split("/")
            if recursive:
                paths.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts) + 1))
            else:
                paths.add(prefix + parts[0])
        # Directories first, then files, each sorted by path.
        ordered = sorted(paths, key=lambda p: (p in commit["tree"], p))
        page_size = max(1, min(emu.tree_page_size, 50) if expand else emu.tree_page_size)
        cursor = int((self.query.get("cursor") or ["0"])[0] or 0)
        page = ordered[cursor:cursor + page_size]
        headers = {}
        if cursor + page_size < len(ordered):
            params = {k: v[0] for k, v in self.query.items() if k != "cursor"}
            params["cursor"] = str(cursor + page_size)
            raw_path = "/" + "/".join(self.raw_segments)
            headers["Link"] = f'<{emu.endpoint}{raw_path}?{urlencode(params)}>; rel="next"'
        self._send_json(200, [emu._entry_json(repo, commit, p, expand) for p in page], headers=headers)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        emu = self.emu
        commit = emu._load_commit(repo, emu._resolve_revision(repo, revision))
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            payload = self._json_body()
            paths, expand = payload.get("paths") or [], payload.get("expand")
            paths = [paths] if isinstance(paths, str) else paths
            expand = expand if isinstance(expand, bool) else _truthy(str(expand))
        else:
            form = parse_qs(self.body.decode("utf-8"), keep_blank_values=True)
            paths = form.get("paths", []) + form.get("paths[]", [])
            expand = _truthy((form.get("expand") or [None])[0])
        result, seen = [], set()
        for raw in paths:
            path = str(raw).strip("/")
            if path in seen or not path:
                continue
            seen.add(path)
            if path in commit["tree"] or emu._is_dir(repo, commit, path):
                result.append(emu._entry_json(repo, commit, path, expand))
        self._send_json(200, result)

    # ------------------------------------------------------------------ uploads
    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo, _ = self._repo_for_write(repo_type, repo_id)
        emu = self.emu
        files = self._json_body().get("files")
        if not isinstance(files, list):
            raise HubError(400, "Expected a 'files' list")
        if _truthy((self.query.get("create_pr") or [None])[0]):
            tree = emu._load_commit(repo, emu._resolve_revision(repo, revision))["tree"]
        else:
            tree = emu._load_commit(repo, repo["refs"][emu._branch_ref(repo, revision)])["tree"]
        result = []
        for item in files:
            path, size = str(item.get("path", "")), int(item.get("size") or 0)
            existing = tree.get(path)
            lfs = is_lfs_path(path, size) or (existing is not None and existing["kind"] == "lfs")
            oid = None
            if existing is not None:  # what the client compares with its local oid: sha256 for LFS, sha1 otherwise
                oid = existing["sha256"] if existing["kind"] == "lfs" else existing["oid"]
            result.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                           "oid": oid})
        self._send_json(200, {"files": result})

    def _lfs_href(self, sha256: str) -> str:
        sig = hmac.new(self.emu._secret, sha256.encode(), hashlib.sha256).hexdigest()
        return f"{self.emu.endpoint}/_lfs/{sha256}?{urlencode({'sig': sig})}"

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        repo, _ = self._repo_for_write(repo_type, repo_id)
        payload = self._json_body()
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the 'upload' operation is supported by the emulator")
        objects = []
        for obj in payload.get("objects") or []:
            oid, size = str(obj.get("oid", "")), obj.get("size")
            if not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int) or size < 0:
                objects.append({"oid": oid, "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "Invalid oid or size"}})
                continue
            item = {"oid": oid, "size": size, "authenticated": True}
            path = self.emu._lfs_path(oid)
            if not (path.is_file() and path.stat().st_size == size):
                item["actions"] = {
                    "upload": {"href": self._lfs_href(oid), "expires_at": _now_iso(time.time() + 3600)},
                    "verify": {"href": f"{self._repo_url(repo_type, repo_id)}.git/info/lfs/objects/verify",
                               "header": {}},
                }
            objects.append(item)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, sha256: str) -> None:
        expected = hmac.new(self.emu._secret, sha256.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest((self.query.get("sig") or [""])[0], expected):
            raise HubError(403, "Invalid or missing upload signature")
        actual = hashlib.sha256(self.body).hexdigest()
        if actual != sha256:
            raise HubError(400, f"sha256 mismatch: expected {sha256}, got {actual}")
        path = self.emu._lfs_path(sha256)
        if not path.exists():
            self.emu._write_atomic(path, self.body)
        self._send(200, b"", headers={"ETag": f'"{hashlib.md5(self.body).hexdigest()}"'})

    def _lfs_verify(self, repo_type: str, repo_id: str) -> None:
        self._repo_for_write(repo_type, repo_id)
        payload = self._json_body()
        oid, size = str(payload.get("oid", "")), payload.get("size")
        path = self.emu._lfs_path(oid) if re.fullmatch(r"[0-9a-f]{64}", oid) else None
        if path is None or not path.is_file():
            raise HubError(404, f"Object {oid} not found")
        if size is not None and path.stat().st_size != size:
            raise HubError(422, f"Object {oid} has size {path.stat().st_size}, not {size}")
        self._send(200, b"{}", content_type="application/vnd.git-lfs+json")

    # ------------------------------------------------------------------ commits
    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo, _ = self._repo_for_write(repo_type, repo_id)
        emu = self.emu
        try:
            lines = [json.loads(line) for line in self.body.decode("utf-8").splitlines() if line.strip()]
        except ValueError as err:
            raise HubError(400, f"Invalid ndjson body: {err}") from err
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first ndjson line must be the commit header")
        header = lines[0].get("value") or {}
        summary = str(header.get("summary") or "").strip()
        if not summary:
            raise HubError(400, "Commit summary is required")
        # Objects first (outside the lock): regular files to the object store, LFS files must be uploaded already.
        ops = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = str(value.get("path", ""))
            if key in ("file", "lfsFile", "deletedFile") and not self._valid_path(path):
                raise HubError(400, f"Invalid path: {path!r}")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding: {value.get('encoding')}")
                content = base64.b64decode(value.get("content", ""))
                ops.append(("add", path, {"kind": "regular", "oid": emu._put_object(content), "size": len(content)}))
            elif key == "lfsFile":
                sha256, size = str(value.get("oid", "")), value.get("size")
                if value.get("algo", "sha256") != "sha256" or not emu._has_lfs(sha256):
                    raise HubError(422, f"LFS object {sha256} for {path} has not been uploaded")
                actual = emu._lfs_path(sha256).stat().st_size
                if size is not None and int(size) != actual:
                    raise HubError(422, f"LFS object {sha256} has size {actual}, not {size}")
                oid = emu._put_object(lfs_pointer(sha256, actual))
                ops.append(("add", path, {"kind": "lfs", "oid": oid, "size": actual, "sha256": sha256}))
            elif key == "deletedFile":
                ops.append(("delete", path, None))
            elif key == "deletedFolder":
                ops.append(("delete_folder", path.strip("/"), None))
            else:
                raise HubError(400, f"Unsupported commit operation: {key!r}")
        create_pr, pr_num = _truthy((self.query.get("create_pr") or [None])[0]), None
        with emu._lock:
            repo = emu._load_repo(repo_type, repo_id)
            if create_pr:
                base = emu._resolve_revision(repo, revision)
                numbers = [int(r.rsplit("/", 1)[1]) for r in repo["refs"] if r.startswith("refs/pr/")]
                pr_num = max(numbers, default=0) + 1
                ref = f"refs/pr/{pr_num}"
            else:
                ref = emu._branch_ref(repo, revision)
                base = repo["refs"][ref]
            parent_commit = header.get("parentCommit")
            if parent_commit and not base.startswith(str(parent_commit).lower()):
                raise HubError(412, f"A commit has happened since the parent commit {parent_commit}: the head of "
                                    f"{ref} is now {base}")
            tree = dict(emu._load_commit(repo, base)["tree"])
            for op, path, entry in ops:
                if op == "add":
                    tree[path] = entry
                elif op == "delete":
                    if path not in tree:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
                    del tree[path]
                else:
                    doomed = [p for p in tree if not path or p.startswith(path + "/")]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", code="EntryNotFound")
                    for p in doomed:
                        del tree[p]
            for path in tree:  # a path cannot be both a file and a folder
                parts = path.split("/")
                for i in range(1, len(parts)):
                    if "/".join(parts[:i]) in tree:
                        raise HubError(400, f"{'/'.join(parts[:i])} is a file, cannot add {path}")
            oid = emu._write_commit(repo, [base], tree, summary, str(header.get("description") or ""))
            repo["refs"][ref] = oid
            emu._save_repo(repo)
        url = self._repo_url(repo_type, repo_id)
        self._send_json(200, {"success": True, "commitOid": oid, "commitUrl": f"{url}/commit/{oid}",
                              "hookOutput": "", "pullRequestUrl": f"{url}/discussions/{pr_num}" if create_pr else None})

    @staticmethod
    def _valid_path(path: str) -> bool:
        parts = path.split("/")
        return bool(path) and not path.startswith("/") and not path.endswith("/") and ".git" not in parts[:1] \
            and all(p not in ("", ".", "..") for p in parts)

    # ------------------------------------------------------------------ downloads
    def _resolve(self, repo_type: str, repo_id: str, rest: list[str], raw_rest: list[str]) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        emu = self.emu
        # The client quotes the revision as one segment ("refs%2Fpr%2F1"); accept it unquoted too.
        n = 3 if len(rest) > 3 and rest[0] == "refs" and rest[1] in ("heads", "tags", "pr", "convert") else 1
        revision, path = "/".join(rest[:n]), "/".join(rest[n:])
        commit = emu._load_commit(repo, emu._resolve_revision(repo, revision))
        entry = commit["tree"].get(path)
        base_headers = {"X-Repo-Commit": commit["id"], "Accept-Ranges": "bytes"}
        if entry is None:
            raise HubError(404, "Entry not found", code="EntryNotFound", headers=base_headers)
        disk = emu._entry_path_on_disk(entry)
        size = entry["size"]
        headers = dict(base_headers)
        if entry["kind"] == "lfs":
            headers.update({"ETag": f'"{entry["sha256"]}"', "X-Linked-Etag": f'"{entry["sha256"]}"',
                            "X-Linked-Size": str(size)})
        else:
            headers["ETag"] = f'"{entry["oid"]}"'
        headers["Content-Disposition"] = f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}; " \
                                         f"filename=\"{path.rsplit('/', 1)[-1]}\";"
        start, end, status = 0, size - 1, 200
        range_header = self.headers.get("Range")
        if range_header:
            match = _RANGE_RE.match(range_header)
            if match is None or (not match.group(1) and not match.group(2)):
                raise HubError(416, f"Invalid range: {range_header}", headers={"Content-Range": f"bytes */{size}"})
            first, last = match.group(1), match.group(2)
            if first:
                start, end = int(first), min(int(last), size - 1) if last else size - 1
            else:
                start, end = max(size - int(last), 0), size - 1
            if start >= size or start > end:
                raise HubError(416, f"Range not satisfiable: {range_header}",
                               headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(end - start + 1, 0)
        headers["Content-Length"] = str(length)
        if self.method == "HEAD":
            return self._send(status, b"", content_type="application/octet-stream", headers=headers)
        with open(disk, "rb") as fh:
            fh.seek(start)
            data = fh.read(length)
        self._send(status, data, content_type="application/octet-stream", headers=headers)


if pytest is not None:

    @pytest.fixture
    def hub(tmp_path):
        """A running HubEmulator storing under tmp_path / "hub", stopped after the test."""
        emulator = HubEmulator(tmp_path / "hub")
        emulator.start()
        try:
            yield emulator
        finally:
            emulator.stop()
