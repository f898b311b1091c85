"""`transformers serve` on a local model, as the OpenAI-compatible endpoint for the benchmarks and the tests.

    with transformers_serve(demo_model_path(), work_dir) as (base_url, model):
        OpenAICompatibleProvider(base_url, model) ...

Listens on 127.0.0.1 only, offline, on the CPU; the process is stopped by its PID when the block ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ServeError(RuntimeError):
    """`transformers serve` exited or did not answer in time; the message carries its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def transformers_serve(model_dir: Path, work_dir: Path, *, continuous_batching: bool = False, pinned: bool = True,
                       port: int | None = None, timeout: float = 180) -> Iterator[tuple[str, str]]:
    """Serve a copy of `model_dir` (under `work_dir`, whose path becomes the model name) until the block ends.
    Yields (base_url, model_name) once `/v1/models` answers; the server's output goes to `work_dir/serve.log`.
    `pinned=False` lets a request name any model folder (loaded on first use), so one server can answer under
    several names; `port` fixes the port (a server stopped and started again at the same address)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    model = work_dir / Path(model_dir).name
    if not model.exists():
        shutil.copytree(model_dir, model)
    port = port or free_port()
    log = work_dir / "serve.log"
    args = [str(Path(sys.executable).with_name("transformers")), "serve", *([str(model)] if pinned else []),
            "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    if continuous_batching:
        args.append("--continuous-batching")
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise ServeError("transformers serve exited:\n" + log.read_text())
            if time.time() > deadline:
                raise ServeError(f"transformers serve did not answer within {timeout:.0f} s:\n" + log.read_text())
            try:
                urllib.request.urlopen(f"{base_url}/models", timeout=2).read()
                break
            except OSError:
                time.sleep(1)
        yield base_url, str(model)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
