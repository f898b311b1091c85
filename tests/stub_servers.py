"""Small local OpenAI-compatible servers for the tests: chat completions streamed (`StubHandler`, the app's
`engine: openai`) or whole with usage (`EvalStub`, the eval's), and the failures a real server gives (429, 5xx, 404,
slowness), each on a free port of 127.0.0.1 for a block (`stub_server`)."""

from __future__ import annotations

import io
import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubHandler(BaseHTTPRequestHandler):
    """Chat completions as a server streams them, or the failure the test set (`server.status`, `server.delay`)."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        with server.lock:
            server.requests.append({"body": body, "auth": self.headers.get("Authorization"), "at": time.time()})
        if server.status != 200:
            self.send_response(server.status)
            self.send_header("Content-Type", "application/json")
            if server.status == 429:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(json.dumps({"error": {"message": "stub failure"}}).encode())
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        words = f"Answer from {body['model']} about your question".split(" ")
        for i, word in enumerate(words):
            time.sleep(server.delay)
            chunk = {"id": "stub", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "delta": {"content": word if i == 0 else " " + word},
                                  "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")


@contextmanager
def stub_server(handler=StubHandler, **attributes):
    """A stub server on a free port of 127.0.0.1 for the block, with the attributes its handler reads."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.status, server.delay, server.requests, server.lock = 200, 0.0, [], threading.Lock()
    for name, value in attributes.items():
        setattr(server, name, value)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def url_of(server) -> str:
    return f"http://127.0.0.1:{server.server_port}/v1"


class EvalStub(StubHandler):
    """The remote engine's stub; whole (non-streamed) answers with usage, `server.unknown` model names answered
    404, and the most requests it held at once in `server.max_in_flight`."""

    def do_POST(self):
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        body, server = json.loads(raw), self.server
        with server.lock:
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            if body["model"] in server.unknown:
                self._reply(404, {"error": {"message": f"The model `{body['model']}` does not exist."}})
            elif server.status != 200 or body.get("stream"):
                self.rfile = io.BytesIO(raw)
                super().do_POST()
            else:
                with server.lock:
                    server.requests.append({"body": body, "auth": self.headers.get("Authorization"),
                                            "at": time.time()})
                time.sleep(server.delay)
                text = f"Answer from {body['model']} about your question"
                self._reply(200, {"id": "stub", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": text}}],
                                  "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()),
                                            "total_tokens": 10 + len(text.split())}})
        finally:
            with server.lock:
                server.in_flight -= 1

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
