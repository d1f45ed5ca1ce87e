"""A tiny HTTP server standing in for Triton: it records every request it gets (headers
included), so tests can see exactly what the scoring server forwards."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: Model ``m``: one FP32 input ``x`` of shape [2], one output ``y``; no batching.
METADATA = {
    "name": "m",
    "versions": ["1"],
    "platform": "fake",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [2]}],
}
CONFIG = {"name": "m", "max_batch_size": 0}
#: A valid ``/v2/models/m/infer`` body (the forwarder checks it before it sends it on).
INFER_BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]}
).encode()

METRICS = b"""# HELP nv_inference_count Number of inferences performed
# TYPE nv_inference_count counter
nv_inference_count{model="m",version="1"} 3
"""


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


class FakeTriton:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                owner.seen.append(Seen(self.command, self.path, dict(self.headers.items())))
                status = 200
                if self.path == "/metrics":
                    body, kind = METRICS, "text/plain; charset=utf-8"
                elif self.path.startswith("/v2/health/"):  # never ready: no models here
                    status, body, kind = 503, b"", "text/plain"
                elif self.path == "/v2/repository/index":
                    body, kind = b"[]", "application/json"
                elif self.path.split("?")[0].endswith("/config"):
                    body, kind = json.dumps(CONFIG).encode(), "application/json"
                else:
                    body, kind = json.dumps(METADATA).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # http.server's names

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeTriton:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def headers_of(self, path: str) -> dict[str, str]:
        """The headers of the last request for ``path``, names lower-cased."""
        for seen in reversed(self.seen):
            if seen.path == path:
                return {k.lower(): v for k, v in seen.headers.items()}
        raise AssertionError(f"Triton never got {path}; it got {[s.path for s in self.seen]}")
