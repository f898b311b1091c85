"""The Hub emulator (tests/hub_emulator.py) against the real huggingface_hub 2.4 client and datasets.

huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_DISABLE_XET at import time, and this test session runs
with HF_HUB_OFFLINE=1 (tests/conftest.py), which makes every request of the client raise OfflineModeIsEnabled, even
with an explicit `HfApi(endpoint=...)`. So the client runs in a fresh interpreter with a clean environment
(`run_client`), while the emulator runs here and is inspected directly. `test_in_process_client_needs_online_constants`
shows the in-process alternative.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hub_emulator import HubEmulator, git_blob_oid, lfs_pointer

PRELUDE = """\
import json, os, sys, time
from huggingface_hub import HfApi, CommitOperationAdd, CommitOperationDelete
from huggingface_hub.errors import HfHubHTTPError
api = HfApi(endpoint=os.environ["HF_ENDPOINT"], token=os.environ.get("HF_TOKEN"))
result = {}

sleeps = []


def record_sleeps():
    # from now on the client's waits between retries are recorded in `sleeps` (and skipped), not timed
    time.sleep = sleeps.append


def error_info(err):
    response = getattr(err, "response", None)
    return {"type": type(err).__name__, "mro": [c.__name__ for c in type(err).__mro__],
            "status": getattr(response, "status_code", None), "message": str(err)}
"""


def run_client(hub: HubEmulator, tmp_path: Path, code: str, *, token: bool = True, timeout: float = 120) -> dict:
    """Run `code` (after PRELUDE) in a fresh interpreter pointed at the emulator; return its `result` dict.

    Environment: HF_ENDPOINT=<emulator>, HF_HUB_OFFLINE=0, HF_DATASETS_OFFLINE=0, HF_HUB_DISABLE_XET=1,
    HF_HOME=tmp_path/hf_home (no real cache touched), HF_TOKEN only when `token`.
    """
    out = tmp_path / f"client_result_{len(list(tmp_path.glob('client_result_*')))}.json"
    script = PRELUDE + textwrap.dedent(code) + f"\njson.dump(result, open({str(out)!r}, 'w'), default=str)\n"
    env = hub.client_env(token=token, home=tmp_path / "hf_home")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        raise AssertionError(f"client failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(out.read_text())


def assert_token_never_stored(hub: HubEmulator) -> None:
    secret = hub.token.encode()
    for path in hub.root.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), f"token found in {path}"
    assert all(hub.token not in part for request in hub.requests for part in map(str, request))


def calls(hub: HubEmulator, method: str, fragment: str) -> list[int]:
    """Statuses of the logged requests with this method whose path contains `fragment`."""
    return [status for m, path, status in hub.requests if m == method and fragment in path]


# ---------------------------------------------------------------------------------------------------- raw protocol
def _http(hub: HubEmulator, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
          token: str | None = "default"):
    """One request with urllib (no huggingface_hub): returns (status, headers, body)."""
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {hub.token if token == 'default' else token}"
    request = urllib.request.Request(hub.endpoint + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _raw_commit(hub: HubEmulator, repo: str, lines: list[dict], revision: str = "main") -> dict:
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    status, _, data = _http(hub, "POST", f"/api/models/{repo}/commit/{revision}", body,
                            {"Content-Type": "application/x-ndjson"})
    assert status == 200, data
    return json.loads(data)


def test_raw_protocol_lfs_ranges_and_error_codes(hub):
    """The wire protocol without the client: LFS batch/PUT/verify, resolve headers, Range, error codes, auth."""
    status, _, data = _http(hub, "POST", "/api/repos/create", json.dumps({"name": "raw", "type": "model"}).encode(),
                            {"Content-Type": "application/json"})
    assert status == 200 and json.loads(data)["url"] == f"{hub.endpoint}/tester/raw"
    status, _, data = _http(hub, "POST", "/api/repos/create", json.dumps({"name": "raw"}).encode())
    assert status == 409 and json.loads(data)["url"] == f"{hub.endpoint}/tester/raw"

    blob = bytes(range(256)) * 40
    sha = hashlib.sha256(blob).hexdigest()
    batch = {"operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
             "objects": [{"oid": sha, "size": len(blob)}]}
    status, _, data = _http(hub, "POST", "/tester/raw.git/info/lfs/objects/batch", json.dumps(batch).encode())
    actions = json.loads(data)["objects"][0]["actions"]
    assert status == 200 and set(actions) == {"upload", "verify"}
    href = actions["upload"]["href"]
    assert href.startswith(hub.endpoint + "/_lfs/" + sha)
    # Wrong bytes are refused (sha256 checked), an unsigned URL too; the right bytes need no token (like S3).
    assert _http(hub, "PUT", href[len(hub.endpoint):], b"not it", token=None)[0] == 400
    assert _http(hub, "PUT", f"/_lfs/{sha}", blob, token=None)[0] == 403
    assert _http(hub, "PUT", href[len(hub.endpoint):], blob, token=None)[0] == 200
    verify = json.dumps({"oid": sha, "size": len(blob)}).encode()
    assert _http(hub, "POST", "/tester/raw.git/info/lfs/objects/verify", verify)[0] == 200
    status, _, data = _http(hub, "POST", "/tester/raw.git/info/lfs/objects/batch", json.dumps(batch).encode())
    assert "actions" not in json.loads(data)["objects"][0]  # already stored: nothing to upload

    # A commit naming an LFS object that was never uploaded is refused.
    missing = {"key": "lfsFile", "value": {"path": "x.bin", "algo": "sha256", "oid": "0" * 64, "size": 1}}
    status, _, _ = _http(hub, "POST", "/api/models/tester/raw/commit/main",
                         json.dumps({"key": "header", "value": {"summary": "x"}}).encode() + b"\n"
                         + json.dumps(missing).encode() + b"\n")
    assert status == 422
    commit = _raw_commit(hub, "tester/raw", [
        {"key": "header", "value": {"summary": "raw", "description": ""}},
        {"key": "file", "value": {"path": "dir/hello.txt", "encoding": "base64",
                                  "content": base64.b64encode(b"hello world").decode()}},
        {"key": "lfsFile", "value": {"path": "weights.bin", "algo": "sha256", "oid": sha, "size": len(blob)}},
    ])
    assert commit["success"] is True and commit["pullRequestUrl"] is None
    assert commit["commitUrl"] == f"{hub.endpoint}/tester/raw/commit/{commit['commitOid']}"
    assert hub.commits("model", "tester/raw")[-1] == commit["commitOid"]

    # parentCommit must be the head of the branch
    stale = hub.commits("model", "tester/raw")[0]
    status, _, _ = _http(hub, "POST", "/api/models/tester/raw/commit/main",
                         json.dumps({"key": "header", "value": {"summary": "x", "parentCommit": stale}}).encode())
    assert status == 412

    # resolve: regular file -> ETag = git blob oid; LFS file -> X-Linked-Etag = sha256, X-Linked-Size
    status, headers, body = _http(hub, "HEAD", "/tester/raw/resolve/main/dir/hello.txt")
    assert status == 200 and body == b""
    assert headers["ETag"] == f'"{git_blob_oid(b"hello world")}"' and headers["Content-Length"] == "11"
    assert headers["X-Repo-Commit"] == commit["commitOid"]
    status, headers, _ = _http(hub, "HEAD", "/tester/raw/resolve/main/weights.bin")
    assert headers["X-Linked-Etag"] == f'"{sha}"' and headers["X-Linked-Size"] == str(len(blob))
    assert "X-Xet-Hash" not in headers
    status, headers, body = _http(hub, "GET", "/tester/raw/resolve/main/weights.bin", headers={"Range": "bytes=10-19"})
    assert status == 206 and body == blob[10:20] and headers["Content-Range"] == f"bytes 10-19/{len(blob)}"
    status, _, body = _http(hub, "GET", "/tester/raw/resolve/main/weights.bin", headers={"Range": "bytes=-5"})
    assert status == 206 and body == blob[-5:]
    status, headers, _ = _http(hub, "GET", "/tester/raw/resolve/main/weights.bin",
                               headers={"Range": f"bytes={len(blob)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(blob)}"
    # the commit oid (and a 7-char prefix) stays resolvable
    oid = commit["commitOid"]
    assert _http(hub, "GET", f"/tester/raw/resolve/{oid[:7]}/dir/hello.txt")[2] == b"hello world"

    # error codes the client maps to its exceptions
    for path, code in [("/tester/raw/resolve/main/nope.txt", "EntryNotFound"),
                       ("/tester/raw/resolve/nobranch/dir/hello.txt", "RevisionNotFound"),
                       ("/tester/nope/resolve/main/dir/hello.txt", "RepoNotFound"),
                       ("/api/models/tester/raw/revision/nobranch", "RevisionNotFound"),
                       ("/api/models/tester/nope", "RepoNotFound")]:
        status, headers, _ = _http(hub, "GET", path)
        assert (status, headers["X-Error-Code"]) == (404, code), path
    assert _http(hub, "GET", "/api/datasets/tester/raw/parquet")[0] == 404
    # auth: a wrong token is a 401 even on public reads; writes need a token; public reads do not
    status, headers, data = _http(hub, "GET", "/api/models/tester/raw", token="hf_wrong")
    assert status == 401 and headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    assert json.loads(data)["error"] == "Invalid credentials in Authorization header"
    assert _http(hub, "GET", "/api/models/tester/raw", token=None)[0] == 200
    assert _http(hub, "POST", "/api/models/tester/raw/preupload/main", b'{"files": []}', token=None)[0] == 401

    # fault injection: `times`, custom headers and body, then back to normal; method and path must both match
    hub.fail_next("GET", r"^/api/models/tester/raw$", 503, times=2, headers={"Retry-After": "7"}, body="maintenance")
    assert _http(hub, "HEAD", "/api/models/tester/raw")[0] == 404  # HEAD is not GET: untouched (no such route)
    status, headers, data = _http(hub, "GET", "/api/models/tester/raw")
    assert (status, headers["Retry-After"], json.loads(data)) == (503, "7", {"error": "maintenance"})
    assert _http(hub, "GET", "/api/models/tester/raw")[0] == 503
    assert _http(hub, "GET", "/api/models/tester/raw")[0] == 200
    assert hub.requests[-3:] == [("GET", "/api/models/tester/raw", 503), ("GET", "/api/models/tester/raw", 503),
                                 ("GET", "/api/models/tester/raw", 200)]
    assert hub.files("model", "tester/raw")["weights.bin"] == blob

    # deletions: a missing file is an EntryNotFound, a folder goes with everything under it
    header = {"key": "header", "value": {"summary": "rm"}}
    body = b"".join(json.dumps(x).encode() + b"\n" for x in [header, {"key": "deletedFile", "value": {"path": "no"}}])
    status, headers, _ = _http(hub, "POST", "/api/models/tester/raw/commit/main", body)
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")
    _raw_commit(hub, "tester/raw", [header, {"key": "deletedFolder", "value": {"path": "dir/"}}])
    assert sorted(hub.files("model", "tester/raw")) == [".gitattributes", "weights.bin"]
    assert hub.files("model", "tester/raw", revision=oid)["dir/hello.txt"] == b"hello world"  # history intact
    assert_token_never_stored(hub)


# ---------------------------------------------------------------------------------------------------- with the client
def test_in_process_client_needs_online_constants(hub, monkeypatch):
    """In this process HF_HUB_OFFLINE=1 (conftest) blocks HfApi even with an explicit endpoint, unless patched."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    if constants.HF_HUB_OFFLINE:
        with pytest.raises(OfflineModeIsEnabled):
            api.whoami()
        assert hub.requests == []  # blocked before any request was sent
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # hf_xet is installed: without this, LFS goes to Xet
    assert api.whoami()["name"] == "tester"
    api.create_repo("tester/inproc")
    info = api.create_commit("tester/inproc", [CommitOperationAdd("w.safetensors", b"\0" * 64)], commit_message="w")
    assert hub.commits("model", "tester/inproc")[-1] == info.oid
    assert hub.files("model", "tester/inproc")["w.safetensors"] == b"\0" * 64


def test_whoami_and_auth_errors(hub, tmp_path):
    res = run_client(hub, tmp_path, """
        result["whoami"] = api.whoami()
        bad = HfApi(endpoint=os.environ["HF_ENDPOINT"], token="hf_wrong_token_0000000000000000")
        for name, call in [("whoami", lambda: bad.whoami()), ("create_repo", lambda: bad.create_repo("tester/x")),
                           ("repo_info", lambda: bad.model_info("tester/x"))]:
            try:
                call()
                result["bad_" + name] = None
            except Exception as err:
                result["bad_" + name] = error_info(err)
        anonymous = HfApi(endpoint=os.environ["HF_ENDPOINT"], token=False)
        try:
            anonymous.create_repo("tester/y")
        except Exception as err:
            result["anonymous_create"] = error_info(err)
    """)
    me = res["whoami"]
    assert (me["name"], me["type"], me["orgs"], me["auth"]["accessToken"]["role"]) == ("tester", "user", [], "write")
    for name in ("whoami", "create_repo", "repo_info"):
        err = res["bad_" + name]
        assert err is not None and "HfHubHTTPError" in err["mro"] and err["status"] == 401, err
    assert res["anonymous_create"]["status"] == 401
    assert hub.requests[0] == ("GET", "/api/whoami-v2", 200)
    assert ("GET", "/api/whoami-v2", 401) in hub.requests
    assert_token_never_stored(hub)


def test_create_repo_exist_ok_and_private_repos(hub, tmp_path):
    res = run_client(hub, tmp_path, """
        result["url"] = api.create_repo("tester/pub")
        result["again_exist_ok"] = api.create_repo("tester/pub", exist_ok=True)
        try:
            api.create_repo("tester/pub")
        except HfHubHTTPError as err:
            result["again"] = error_info(err)
        api.create_repo("tester/priv", private=True)
        api.create_repo("tester/data", repo_type="dataset", private=True)
        result["private_with_token"] = api.model_info("tester/priv").private
        result["dataset_with_token"] = api.dataset_info("tester/data").id
        try:
            api.create_repo("someone-else/repo")
        except HfHubHTTPError as err:
            result["other_namespace"] = error_info(err)
    """)
    assert res["url"] == res["again_exist_ok"] == f"{hub.endpoint}/tester/pub"
    assert res["again"]["status"] == 409
    assert res["private_with_token"] is True and res["dataset_with_token"] == "tester/data"
    assert res["other_namespace"]["status"] == 403
    assert calls(hub, "POST", "/api/repos/create") == [200, 409, 409, 200, 200, 403]
    assert len(hub.commits("model", "tester/pub")) == 1  # the Hub's "initial commit" (.gitattributes)

    anon = run_client(hub, tmp_path, """
        from huggingface_hub import hf_hub_download
        result["public"] = api.model_info("tester/pub").id
        for name, call in [("model_info", lambda: api.model_info("tester/priv")),
                           ("dataset_info", lambda: api.dataset_info("tester/data")),
                           ("download", lambda: hf_hub_download("tester/priv", ".gitattributes"))]:
            try:
                call()
                result[name] = None
            except Exception as err:
                result[name] = error_info(err)
    """, token=False)
    assert anon["public"] == "tester/pub"
    for name in ("model_info", "dataset_info", "download"):
        assert "RepositoryNotFoundError" in anon[name]["mro"] and anon[name]["status"] == 404, anon[name]


def test_commits_tree_downloads_and_snapshot(hub, tmp_path):
    readme = b"---\nlicense: apache-2.0\nlibrary_name: peft\n---\n# Adapter\n"
    res = run_client(hub, tmp_path, """
        import hashlib
        from huggingface_hub import hf_hub_download, snapshot_download
        api.create_repo("tester/adapter")
        weights = bytes(range(256)) * 64
        png = b"\\x89PNG\\r\\n\\x1a\\n" + bytes(200)
        first = api.create_commit("tester/adapter", [
            CommitOperationAdd("README.md", __README__),
            CommitOperationAdd("adapter_config.json", b'{"r": 8}'),
            CommitOperationAdd("adapter_model.safetensors", weights),
            CommitOperationAdd("samples/plot.png", png),
            CommitOperationAdd("notes/old.txt", b"to be deleted"),
        ], commit_message="Add adapter", commit_description="first push")
        second = api.create_commit("tester/adapter", [
            CommitOperationDelete("notes/old.txt"),
            CommitOperationAdd("training_args.json", b"{}"),
        ], commit_message="Tidy up")
        result["commits"] = [first.oid, second.oid]
        result["commit_url"] = first.commit_url
        result["tree"] = [
            {"path": e.path, "type": type(e).__name__, "blob_id": getattr(e, "blob_id", None),
             "tree_id": getattr(e, "tree_id", None), "size": getattr(e, "size", None),
             "lfs": None if getattr(e, "lfs", None) is None else {"sha256": e.lfs.sha256, "size": e.lfs.size,
                                                                   "pointer_size": e.lfs.pointer_size},
             "last_commit": e.last_commit.oid if e.last_commit else None}
            for e in api.list_repo_tree("tester/adapter", recursive=True, expand=True)
        ]
        result["top_level"] = sorted(e.path for e in api.list_repo_tree("tester/adapter"))
        result["root_tree_id"] = [e.tree_id for e in api.get_paths_info("tester/adapter", ["samples"])]
        regular = hf_hub_download("tester/adapter", "adapter_config.json")
        lfs = hf_hub_download("tester/adapter", "adapter_model.safetensors")
        result["regular"] = open(regular, "rb").read().decode()
        result["lfs_sha256"] = hashlib.sha256(open(lfs, "rb").read()).hexdigest()
        result["weights_sha256"] = hashlib.sha256(weights).hexdigest()
        old = hf_hub_download("tester/adapter", "notes/old.txt", revision=first.oid)
        result["old_revision"] = open(old, "rb").read().decode()
        snap = snapshot_download("tester/adapter")
        result["snapshot"] = {str(p.relative_to(snap)): hashlib.sha256(p.read_bytes()).hexdigest()
                              for p in __import__("pathlib").Path(snap).rglob("*") if p.is_file()}
        result["snapshot_dir"] = snap
    """.replace("__README__", repr(readme)))
    files = hub.files("model", "tester/adapter")

    # one commit per create_commit call, on top of the initial commit
    commits = hub.commits("model", "tester/adapter")
    assert len(commits) == 3 and commits[1:] == res["commits"]
    assert calls(hub, "POST", "/commit/") == [200, 200]
    assert res["commit_url"] == f"{hub.endpoint}/tester/adapter/commit/{res['commits'][0]}"
    # the two LFS files went through batch + PUT; the text files did not
    assert len(calls(hub, "PUT", "/_lfs/")) == 2
    assert sorted(files) == [".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors",
                             "samples/plot.png", "training_args.json"]
    assert hub.files("model", "tester/adapter", revision=res["commits"][0])["notes/old.txt"] == b"to be deleted"

    tree = {e["path"]: e for e in res["tree"]}
    assert set(tree) == set(files) | {"samples"}
    for path, content in files.items():
        entry = tree[path]
        assert entry["size"] == len(content)
        if path.endswith((".safetensors", ".png")):
            sha = hashlib.sha256(content).hexdigest()
            assert entry["lfs"] == {"sha256": sha, "size": len(content),
                                    "pointer_size": len(lfs_pointer(sha, len(content)))}
            assert entry["blob_id"] == git_blob_oid(lfs_pointer(sha, len(content)))  # the pointer's git oid
        else:
            assert entry["lfs"] is None
            assert entry["blob_id"] == hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    assert tree["samples"]["type"] == "RepoFolder" and tree["samples"]["tree_id"] == res["root_tree_id"][0]
    assert tree["training_args.json"]["last_commit"] == res["commits"][1]
    assert tree["README.md"]["last_commit"] == res["commits"][0]
    assert res["top_level"] == [".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors",
                                "samples", "training_args.json"]

    # downloads give back identical bytes, old revisions stay resolvable by commit oid
    assert res["regular"] == '{"r": 8}'
    assert res["lfs_sha256"] == res["weights_sha256"] == hashlib.sha256(files["adapter_model.safetensors"]).hexdigest()
    assert res["old_revision"] == "to be deleted"
    assert res["snapshot"] == {p: hashlib.sha256(c).hexdigest() for p, c in files.items()}
    assert res["snapshot_dir"].startswith(str(tmp_path / "hf_home"))

    # the folder oids are real git tree oids
    if shutil.which("git"):
        work = tmp_path / "git"
        for path, content in files.items():
            if tree[path]["lfs"]:
                content = lfs_pointer(hashlib.sha256(content).hexdigest(), len(content))
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_bytes(content)
        git = ["git", "-C", str(work), "-c", "core.autocrlf=false"]
        subprocess.run(git[:3] + ["init", "-q"], check=True)
        subprocess.run(git + ["add", "-A"], check=True)
        root_tree = subprocess.run(git + ["write-tree"], check=True, capture_output=True, text=True).stdout.strip()
        samples = subprocess.run(git + ["rev-parse", f"{root_tree}:samples"], check=True, capture_output=True,
                                 text=True).stdout.strip()
        assert tree["samples"]["tree_id"] == samples
    assert_token_never_stored(hub)


def test_branches_refs_and_paginated_tree(hub, tmp_path):
    hub.tree_page_size = 2  # forces the client to follow the Link header
    res = run_client(hub, tmp_path, """
        from huggingface_hub import hf_hub_download
        api.create_repo("tester/branchy")
        api.create_commit("tester/branchy", [CommitOperationAdd(f"f{i}.txt", b"main %d" % i) for i in range(5)],
                          commit_message="main files")
        api.create_branch("tester/branchy", branch="dev")
        try:
            api.create_branch("tester/branchy", branch="dev")
        except HfHubHTTPError as err:
            result["again"] = error_info(err)
        api.create_branch("tester/branchy", branch="dev", exist_ok=True)
        dev = api.create_commit("tester/branchy", [CommitOperationAdd("f0.txt", b"dev 0")], commit_message="on dev",
                                revision="dev")
        result["dev_commit"] = dev.oid
        refs = api.list_repo_refs("tester/branchy")
        result["branches"] = {b.name: b.target_commit for b in refs.branches}
        result["listing"] = sorted(e.path for e in api.list_repo_tree("tester/branchy", recursive=True))
        result["dev_file"] = open(hf_hub_download("tester/branchy", "f0.txt", revision="dev"), "rb").read().decode()
        result["main_file"] = open(hf_hub_download("tester/branchy", "f0.txt"), "rb").read().decode()
        try:
            api.create_commit("tester/branchy", [CommitOperationAdd("x.txt", b"x")], commit_message="x",
                              revision="nope")
        except HfHubHTTPError as err:
            result["no_branch"] = error_info(err)
    """)
    assert res["again"]["status"] == 409
    main, dev = hub.commits("model", "tester/branchy"), hub.commits("model", "tester/branchy", "dev")
    assert len(main) == 2 and dev == main + [res["dev_commit"]]
    assert res["branches"] == {"main": main[-1], "dev": dev[-1]}
    assert res["dev_file"] == "dev 0" and res["main_file"] == "main 0"
    assert hub.files("model", "tester/branchy", "dev")["f0.txt"] == b"dev 0"
    assert res["listing"] == [".gitattributes"] + [f"f{i}.txt" for i in range(5)]
    assert len(calls(hub, "GET", "/tree/main")) == 3  # 6 entries, 2 per page
    assert "RevisionNotFoundError" in res["no_branch"]["mro"]


def test_load_dataset_and_dataset_card(hub, tmp_path):
    res = run_client(hub, tmp_path, """
        import datasets
        from huggingface_hub import DatasetCard
        readme = '''---
        license: mit
        configs:
        - config_name: default
          data_files:
          - split: train
            path: data/train.jsonl
          - split: test
            path: data/test.jsonl
        ---
        # Study-abroad dialogues
        '''
        train = "".join(json.dumps({"text": f"train {i}", "label": i}) + "\\n" for i in range(5))
        test = "".join(json.dumps({"text": f"test {i}", "label": 10 + i}) + "\\n" for i in range(2))
        api.create_repo("tester/dialogues", repo_type="dataset")
        api.create_commit("tester/dialogues", repo_type="dataset", commit_message="data", operations=[
            CommitOperationAdd("README.md", readme.encode()),
            CommitOperationAdd("data/train.jsonl", train.encode()),
            CommitOperationAdd("data/test.jsonl", test.encode())])
        ds = datasets.load_dataset("tester/dialogues")
        result["splits"] = {split: ds[split].to_list() for split in ds}
        card = DatasetCard.load("tester/dialogues")
        result["card"] = {"license": card.data.license, "configs": card.data.configs, "text": card.text}
        result["card_data"] = api.dataset_info("tester/dialogues").card_data.to_dict()
    """)
    assert res["splits"] == {"train": [{"text": f"train {i}", "label": i} for i in range(5)],
                             "test": [{"text": f"test {i}", "label": 10 + i} for i in range(2)]}
    assert res["card"]["license"] == "mit" and res["card"]["text"].strip() == "# Study-abroad dialogues"
    assert res["card"]["configs"][0]["data_files"][1] == {"split": "test", "path": "data/test.jsonl"}
    assert res["card_data"]["configs"] == res["card"]["configs"]
    assert all(status < 500 for _, _, status in hub.requests)
    assert_token_never_stored(hub)


def test_model_card_and_space(hub, tmp_path):
    space_dir = tmp_path / "space"
    space_dir.mkdir()
    (space_dir / "app.py").write_text("import gradio as gr\n")
    (space_dir / "requirements.txt").write_text("gradio\n")
    res = run_client(hub, tmp_path, f"""
        from huggingface_hub import ModelCard, hf_hub_download
        api.create_repo("tester/card")
        api.upload_file(repo_id="tester/card", path_in_repo="README.md", commit_message="card",
                        path_or_fileobj=b"---\\nlicense: apache-2.0\\nbase_model: mistralai/Mistral-7B-Instruct-v0.3\\n"
                                        b"library_name: peft\\ntags:\\n- lora\\n---\\n# LoRA adapter\\n")
        card = ModelCard.load("tester/card")
        result["card"] = [card.data.license, card.data.base_model, card.data.library_name, card.data.tags,
                          card.text.strip()]
        result["info"] = [api.model_info("tester/card").card_data.license, api.model_info("tester/card").tags]

        api.create_repo("tester/demo", repo_type="space", space_sdk="gradio")
        api.upload_folder(repo_id="tester/demo", repo_type="space", folder_path={str(space_dir)!r})
        info = api.space_info("tester/demo")
        result["space"] = [info.sdk, info.runtime.stage, sorted(s.rfilename for s in info.siblings)]
        result["app"] = open(hf_hub_download("tester/demo", "app.py", repo_type="space")).read()
    """)
    assert res["card"] == ["apache-2.0", "mistralai/Mistral-7B-Instruct-v0.3", "peft", ["lora"], "# LoRA adapter"]
    assert res["info"] == ["apache-2.0", ["lora"]]
    assert res["space"] == ["gradio", "RUNNING", [".gitattributes", "README.md", "app.py", "requirements.txt"]]
    assert res["app"] == "import gradio as gr\n"
    assert len(hub.commits("space", "tester/demo")) == 2
    assert ("GET", "/spaces/tester/demo/resolve/main/app.py", 200) in hub.requests


# ---------------------------------------------------------------------------------------------------- fault injection
def test_commit_errors_are_not_retried_by_the_client(hub, tmp_path):
    """POST /commit is sent once: a 500 or a 429 (even with Retry-After) surfaces as HfHubHTTPError."""
    hub.fail_next("POST", r"/commit/", 500)
    hub.fail_next("POST", r"/api/repos/create$", 500)
    res = run_client(hub, tmp_path, """
        try:
            api.create_repo("tester/flaky")
        except HfHubHTTPError as err:
            result["create_repo_500"] = error_info(err)
        api.create_repo("tester/flaky")
        try:
            api.create_commit("tester/flaky", [CommitOperationAdd("a.txt", b"a")], commit_message="a")
        except HfHubHTTPError as err:
            result["commit_500"] = error_info(err)
        result["after_500"] = api.create_commit("tester/flaky", [CommitOperationAdd("a.txt", b"a")],
                                                commit_message="a").oid
    """)
    assert res["create_repo_500"]["status"] == 500
    assert res["commit_500"]["status"] == 500 and "Injected failure (500)" in res["commit_500"]["message"]
    assert calls(hub, "POST", "/commit/") == [500, 200]
    assert hub.commits("model", "tester/flaky")[-1] == res["after_500"]
    assert len(hub.commits("model", "tester/flaky")) == 2

    hub.fail_next("POST", r"/commit/", 429, headers={"Retry-After": "1"})
    res = run_client(hub, tmp_path, """
        record_sleeps()
        try:
            api.create_commit("tester/flaky", [CommitOperationAdd("b.txt", b"b")], commit_message="b")
        except HfHubHTTPError as err:
            result["commit_429"] = error_info(err)
        result["sleeps"] = sleeps
    """)
    assert res["commit_429"]["status"] == 429
    assert res["sleeps"] == []  # no wait for a retry (which would have slept Retry-After + 1 = 2 s first)
    assert calls(hub, "POST", "/commit/") == [500, 200, 429]
    assert len(hub.commits("model", "tester/flaky")) == 2


def test_upload_steps_and_listing_are_retried_by_the_client(hub, tmp_path):
    """preupload, LFS batch, LFS PUT and the tree listing go through http_backoff: 500/429 are retried."""
    hub.fail_next("POST", r"/preupload/", 429, headers={"Retry-After": "1"})
    hub.fail_next("POST", r"\.git/info/lfs/objects/batch$", 500)
    hub.fail_next("PUT", r"^/_lfs/", 503)
    hub.fail_next("GET", r"/tree/", 500)
    res = run_client(hub, tmp_path, """
        record_sleeps()
        api.create_repo("tester/retry")
        info = api.create_commit("tester/retry", [CommitOperationAdd("model.safetensors", b"w" * 100),
                                                  CommitOperationAdd("config.json", b"{}")], commit_message="w")
        result["commit"], result["sleeps"] = info.oid, list(sleeps)
        result["tree"] = sorted(e.path for e in api.list_repo_tree("tester/retry"))
        result["all_sleeps"] = sleeps
    """)
    assert calls(hub, "POST", "/preupload/") == [429, 200]
    assert calls(hub, "POST", "/info/lfs/objects/batch") == [500, 200]
    assert calls(hub, "PUT", "/_lfs/") == [503, 200]
    assert calls(hub, "POST", "/commit/") == [200]
    assert calls(hub, "GET", "/tree/") == [500, 200]
    # Retry-After: 1 -> the client waits 1 + 1 s; a 5xx -> its first backoff step, 1 s; the listing retries after
    # the commit
    assert res["sleeps"] == [2.0, 1, 1] and res["all_sleeps"] == [2.0, 1, 1, 1]
    assert hub.commits("model", "tester/retry")[-1] == res["commit"]
    assert res["tree"] == [".gitattributes", "config.json", "model.safetensors"]
    assert hub.files("model", "tester/retry")["model.safetensors"] == b"w" * 100


def test_download_faults(hub, tmp_path):
    """hf_hub_download and repo_info under 5xx/429.

    HEAD /resolve: not retried when the file is cached (the cached copy is returned silently), retried with backoff
    when it is not. The GET of the bytes is retried on 429 (and 408) only; a 500 raises. repo_info is never retried.
    """
    run_client(hub, tmp_path, """
        api.create_repo("tester/dl")
        api.create_commit("tester/dl", [CommitOperationAdd(f"{n}.txt", n.encode()) for n in "abc"],
                          commit_message="files")
    """)
    hub.fail_next("HEAD", r"/resolve/main/a\.txt$", 500)
    hub.fail_next("GET", r"/resolve/main/b\.txt$", 500)
    hub.fail_next("GET", r"/resolve/main/c\.txt$", 429, headers={"Retry-After": "1"})
    hub.fail_next("GET", r"^/api/models/tester/dl$", 500)
    res = run_client(hub, tmp_path, """
        from huggingface_hub import hf_hub_download
        for name in "abc":
            try:
                result[name] = open(hf_hub_download("tester/dl", f"{name}.txt"), "rb").read().decode()
            except Exception as err:
                result[name] = error_info(err)
        try:
            api.model_info("tester/dl")
        except HfHubHTTPError as err:
            result["repo_info"] = error_info(err)
    """)
    assert res["a"] == "a" and calls(hub, "HEAD", "/resolve/main/a.txt") == [500, 200]  # not cached: retried
    assert res["b"]["status"] == 500 and "HfHubHTTPError" in res["b"]["mro"]
    assert calls(hub, "GET", "/resolve/main/b.txt") == [500]
    assert res["c"] == "c" and calls(hub, "GET", "/resolve/main/c.txt") == [429, 200]
    assert res["repo_info"]["status"] == 500

    # Once cached, a failing HEAD is not retried: the cached file comes back (it could be stale).
    hub.fail_next("HEAD", r"/resolve/main/a\.txt$", 503)
    res = run_client(hub, tmp_path, """
        from huggingface_hub import hf_hub_download
        result["a"] = open(hf_hub_download("tester/dl", "a.txt"), "rb").read().decode()
    """)
    assert res["a"] == "a" and calls(hub, "HEAD", "/resolve/main/a.txt") == [500, 200, 503]
