"""benchmarks/loadgen.py against a tiny local HTTP server: records, errors, the CLI."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import ROOT

from triton_score.local.processes import free_port

sys.path.insert(0, str(ROOT / "benchmarks"))
from loadgen import LoadGenerator, main


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_POST(self) -> None:  # http.server's naming
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/cut":  # a status line, then the connection breaks mid-answer
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            self.close_connection = True
            return
        status = 503 if self.path == "/busy" else 200
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "5")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_runs_n_requests_at_fixed_concurrency(url: str) -> None:
    seen: list[int] = []
    results = LoadGenerator(
        url + "/ok", body=b"{}", concurrency=4, on_record=lambda r: seen.append(r.index)
    ).run(requests=200)
    assert [r.index for r in results.records] == list(range(200))
    assert sorted(seen) == list(range(200))
    assert results.statuses() == {200: 200} and results.errors() == {}
    summary = results.summary()
    assert summary["requests"] == 200 and summary["errors"] == {}
    assert all(r.ended >= r.started for r in results.records)


def test_classifies_refused_truncated_and_keeps_retry_after(url: str) -> None:
    refused = LoadGenerator(f"http://127.0.0.1:{free_port()}/", concurrency=2).run(requests=4)
    assert refused.errors() == {"refused": 4}
    cut = LoadGenerator(url + "/cut", body=b"{}", concurrency=1).run(requests=3)
    assert cut.errors() == {"truncated": 3}
    busy = LoadGenerator(url + "/busy", body=b"{}", concurrency=1).run(duration=0.3)
    assert set(busy.statuses()) == {503}
    assert {r.retry_after for r in busy.records} == {"5"}


def test_command_line(url: str, tmp_path, capsys) -> None:  # fixtures
    out = tmp_path / "records.jsonl"
    code = main([url + "/ok", "--body", "{}", "-c", "2", "-n", "10", "--json", str(out)])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["statuses"] == {"200": 10}
    assert len(out.read_text().splitlines()) == 10
    assert main([url + "/busy", "--body", "{}", "-n", "2"]) == 1
