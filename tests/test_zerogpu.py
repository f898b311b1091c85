"""space/zerogpu.py with the real `spaces` package: off ZeroGPU nothing changes; on ZeroGPU (a process started with
`SPACES_ZERO_GPU=true`, tests/zerogpu_space.py) answers stream from `spaces.GPU` with the duration computed from the
request, adapters switch in the one GPU worker, and a visitor whose quota is used up gets one line.

ZeroGPU's device API (the HTTP service `spaces` asks for a GPU) is the stand-in here, a small server in this process
that grants up to `QUOTA_LEFT_S` seconds a call and answers a longer request as ZeroGPU does when a visitor's quota is
used up (429 with the seconds left and the wait); the CUDA layer under `spaces` does nothing (no GPU on this machine,
see tests/zerogpu_space.py). Everything between, the app included, is real."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from helpers import REPO, stop_app

from space import zerogpu
from space.display import is_note, message_text
from trainer.inference.engine import EngineUnavailable, StreamStats
from trainer.inference.model import GenerationSettings

QUOTA_LEFT_S = 60
SYSTEM = "You are a careful study-abroad counsellor."


class ScriptedEngine:
    adapter_names = ["demo/stage2"]
    serving = "4-bit NF4"

    def stream(self, messages, adapter="base", settings=None, stop=None, stats=None):
        text = ""
        for word in ("Health", "insurance", "is", "compulsory."):
            text = f"{text} {word}".strip()
            if stats is not None:
                stats.new_tokens += 1
            yield text


# Off ZeroGPU, in this process

def test_off_zerogpu_the_engine_is_served_as_it_is_and_spaces_gpu_is_a_no_op(monkeypatch):
    import spaces

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    engine = ScriptedEngine()
    assert not zerogpu.on_zerogpu() and zerogpu.serve_on_zerogpu(engine) is engine
    assert spaces.GPU(duration=zerogpu.call_duration)(engine.stream) == engine.stream  # the real package, off ZeroGPU
    assert zerogpu.on_zerogpu({"SPACES_ZERO_GPU": "true"}) and not zerogpu.on_zerogpu({"SPACES_ZERO_GPU": "0"})


def test_the_duration_asked_for_grows_with_max_new_tokens_up_to_a_cap():
    assert zerogpu.gpu_duration(384) == zerogpu.OVERHEAD_S + 39 == 54
    assert zerogpu.gpu_duration(16) < zerogpu.gpu_duration(200) < zerogpu.gpu_duration(1024) <= zerogpu.MAX_DURATION_S
    assert zerogpu.gpu_duration(100_000) == zerogpu.MAX_DURATION_S
    assert zerogpu.call_duration([], "base", GenerationSettings(max_new_tokens=200)) == zerogpu.gpu_duration(200)


def test_a_used_up_quota_is_one_line_for_the_visitor_and_other_errors_pass():
    """spaces' own error (as `spaces.zero.client.schedule` raises it) becomes EngineUnavailable with one line, which
    the chat and compare tabs show under the answer; an error of the app itself is not swallowed."""
    from spaces.zero.gradio import error

    engine = zerogpu.ZeroGPUEngine(ScriptedEngine())  # off ZeroGPU: spaces.GPU returned the method itself
    stats = StreamStats()
    assert list(engine.stream([{"role": "user", "content": "Hi"}], "demo/stage2", stats=stats))[-1] == \
        "Health insurance is compulsory."
    assert stats.new_tokens == 4 and engine.adapter_names == ["demo/stage2"] and engine.serving.endswith("ZeroGPU")

    def quota(*args):
        raise error("ZeroGPU quota exceeded", "You have exceeded your free ZeroGPU quota (54s requested vs. 12s "
                    "left). Try again in 0:21:00. \nSubscribe to Hugging Face PRO")
        yield

    engine._on_gpu = quota
    with pytest.raises(EngineUnavailable) as caught:
        list(engine.stream([{"role": "user", "content": "Hi"}]))
    assert str(caught.value) == ("ZeroGPU quota exceeded: You have exceeded your free ZeroGPU quota (54s requested vs. "
                                 "12s left). Try again in 0:21:00. Subscribe to Hugging Face PRO")

    def broken(*args):
        raise ValueError("a bug of the app")
        yield

    engine._on_gpu = broken
    with pytest.raises(ValueError, match="a bug of the app"):
        list(engine.stream([{"role": "user", "content": "Hi"}]))


# On ZeroGPU: the app in its own process, spaces asking the stand-in device API for a GPU

class DeviceAPI(BaseHTTPRequestHandler):
    """ZeroGPU's device API as `spaces.zero.api.APIClient` calls it: /schedule, /allow, /release, /startup-report."""

    scheduled: list[dict] = []

    def log_message(self, *args):
        pass

    def _json(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        url = urlsplit(self.path)
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/schedule":
            self.scheduled.append(params)
            if int(params["durationSeconds"]) > QUOTA_LEFT_S:
                return self._json(429, {"left": QUOTA_LEFT_S, "wait": 300})
            return self._json(200, {"idle": True, "nvidiaIndex": 0, "nvidiaUUID": "GPU-test", "allowToken": "allowed"})
        self._json(200, {})


@pytest.fixture(scope="module")
def zerogpu_app(tmp_path_factory):
    """tests/zerogpu_space.py with SPACES_ZERO_GPU=true, its device API served here; yields (url, app pid)."""
    import os
    import queue

    api = ThreadingHTTPServer(("127.0.0.1", 0), DeviceAPI)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    home = tmp_path_factory.mktemp("zerogpu-home")
    env = {**os.environ, "SPACES_ZERO_GPU": "true", "HOME": str(home), "ZEROGPU_OFFLOAD_DIR": str(home / "tensors"),
           "SPACES_ZERO_DEVICE_API_URL": f"http://127.0.0.1:{api.server_address[1]}"}
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "zerogpu_space.py")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    log, deadline = [], time.time() + 120
    try:
        while not log or not log[-1].startswith("[app] running on "):
            assert proc.poll() is None and time.time() < deadline, "app did not start:\n" + "".join(log)
            try:
                log.append(lines.get(timeout=1))
            except queue.Empty:
                continue
        words = log[-1].split()
        yield words[3], int(words[-1])
    finally:
        stop_app(proc)
        api.shutdown()


def visitor_token() -> str:
    """An `X-IP-Token` as a Space's proxy adds it (spaces reads its JWT payload only): a visitor with a quota."""
    payload = base64.urlsafe_b64encode(json.dumps({"sub": "visitor"}).encode()).decode().rstrip("=")
    return f"e30.{payload}.signature"


def chat(url, adapter, max_new_tokens):
    from gradio_client import Client

    client = Client(url, verbose=False, headers={"x-ip-token": visitor_token()})
    job = client.submit("Is health insurance compulsory in Germany?", [], adapter, False, SYSTEM, 0, 0.9,
                        max_new_tokens, api_name="/chat")
    history = job.result(timeout=120)[0]
    return history, [h for h, *_ in job.outputs()]


def test_on_zerogpu_answers_stream_from_the_gpu_worker_and_adapters_switch_there(zerogpu_app):
    url, app_pid = zerogpu_app
    DeviceAPI.scheduled.clear()
    history, updates = chat(url, "demo/stage2", 200)
    answer = message_text([m for m in history if not is_note(m)][-1])
    assert answer.startswith("[demo/stage2 in pid ") and answer.endswith("you need it to enrol.")
    worker_pid = int(answer.split("pid ")[1].split("]")[0])
    assert worker_pid != app_pid  # generated in the process spaces forked for the GPU
    assert len({message_text(h[-1]) for h in updates if h and not is_note(h[-1])}) > 3  # streamed, not one block
    assert [int(s["durationSeconds"]) for s in DeviceAPI.scheduled] == [zerogpu.gpu_duration(200)]
    assert DeviceAPI.scheduled[0]["token"] == visitor_token()

    history, _ = chat(url, "demo/stage1", 120)  # another adapter, the same (idle) worker: nothing reloaded
    answer = message_text([m for m in history if not is_note(m)][-1])
    assert answer.startswith(f"[demo/stage1 in pid {worker_pid}]")
    assert int(DeviceAPI.scheduled[-1]["durationSeconds"]) == zerogpu.gpu_duration(120)


def test_on_zerogpu_a_visitor_over_quota_gets_one_line_and_the_app_keeps_serving(zerogpu_app):
    url, _ = zerogpu_app
    history, _ = chat(url, "demo/stage2", 1024)  # asks for more seconds than this visitor has left
    (note,) = [m for m in history if is_note(m)]
    line = message_text(note)
    assert line.startswith(f"ZeroGPU quota exceeded: You have exceeded your ZeroGPU quota "
                           f"({zerogpu.gpu_duration(1024)}s requested vs. {QUOTA_LEFT_S}s left). Try again in 0:05:00.")
    assert "\n" not in line and "Traceback" not in line
    history, _ = chat(url, "demo/stage2", 64)
    assert message_text([m for m in history if not is_note(m)][-1]).endswith("you need it to enrol.")
