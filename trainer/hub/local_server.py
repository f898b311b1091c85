"""Real OpenAI-compatible servers on a local model, for the benchmarks, the tests and anyone trying a run against a
server on one machine: `transformers serve`, and vLLM (the CPU build, from `scripts/vllm.sh`) with a run's LoRA
adapters.

    with transformers_serve(demo_model_path(), work_dir) as (base_url, model):
        OpenAICompatibleProvider(base_url, model) ...
    server = VLLMServer(demo_model_path(), {"demo/stage2": adapter_dir}, work_dir).start()
    ...; server.stop()

Each listens on 127.0.0.1 only, offline, on the CPU; the process is stopped by its PID when the block ends.
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

from trainer import REPO_ROOT as REPO, UserError


class ServeError(UserError, RuntimeError):
    """The server exited or did not answer in time; the message carries its log."""


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
        _wait_until_serving(proc, base_url, log, timeout, "transformers serve")
        yield base_url, str(model)
    finally:
        stop_process(proc)


def _wait_until_serving(proc, base_url: str, log: Path, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            raise ServeError(f"{what} exited:\n" + log.read_text()[-6000:])
        if time.time() > deadline:
            raise ServeError(f"{what} did not answer within {timeout:.0f} s:\n" + log.read_text()[-6000:])
        try:
            urllib.request.urlopen(f"{base_url}/models", timeout=2).read()
            return
        except OSError:
            time.sleep(1)


def stop_process(proc, group: bool = False, timeout: float = 20) -> None:
    """Stop a server we started, by its PID (with `group`, its whole process group, made by start_new_session, so
    the workers it started go too): SIGTERM, then SIGKILL after `timeout` seconds."""
    import signal

    def send(sig) -> None:
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)

    try:
        send(signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait()


def vllm_command(model_dir: Path | str, adapters: dict[str, Path | str], port: int, max_lora_rank: int = 16,
                 dtype: str = "float32", max_model_len: int = 2048, optimization: int | None = None) -> list[str]:
    """`scripts/vllm.sh serve` (as `trainer serve --start` runs it) for the base and its adapters. `optimization` 0
    skips torch.compile at start-up (minutes on 2 cores), for tests; None keeps vLLM's default (compiled)."""
    from trainer.hub.serving import ServedAdapter, local_vllm_command

    served = [ServedAdapter(name, str(path), local=True) for name, path in adapters.items()]
    extra = ["--dtype", dtype, "--max-model-len", str(max_model_len)]
    if optimization is not None:
        extra += ["--optimization-level", str(optimization)]
    return local_vllm_command(str(model_dir), served, max_lora_rank, port=port, extra=extra)


class VLLMServer:
    """vLLM serving `model_dir` (under its path as the model name) and `adapters` ({served name: folder}) on one
    port of 127.0.0.1; `start()` returns once `/v1/models` answers, `stop()` ends it and its workers, and a stopped
    server can be started again at the same address. Output goes to `work_dir/vllm.log` (appended)."""

    def __init__(self, model_dir: Path | str, adapters: dict[str, Path | str], work_dir: Path, *,
                 port: int | None = None, max_lora_rank: int = 16, dtype: str = "float32",
                 optimization: int | None = None, timeout: float = 900):
        self.model, self.adapters, self.work_dir = str(model_dir), dict(adapters), work_dir
        self.port, self.max_lora_rank, self.dtype, self.timeout = port or free_port(), max_lora_rank, dtype, timeout
        self.optimization = optimization
        self.proc = None
        work_dir.mkdir(parents=True, exist_ok=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "VLLMServer":
        log = self.work_dir / "vllm.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        with open(log, "a") as out:
            self.proc = subprocess.Popen(
                vllm_command(self.model, self.adapters, self.port, self.max_lora_rank, self.dtype,
                             optimization=self.optimization), stdout=out,
                stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        try:
            _wait_until_serving(self.proc, self.base_url, log, self.timeout, "vLLM")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, group=True, timeout=30)
            self.proc = None
