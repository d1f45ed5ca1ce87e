"""AzureML's data collector (``azureml.ai.monitoring.Collector``) in what ``score serve`` runs.

On an AzureML online deployment with a ``data_collector`` block, the platform runs a
collection agent beside the container and tells the package where it is
(``AZUREML_MDC_CONFIG_PATH``: the collections that are on; ``AZUREML_MDC_HOST``/``_PORT``:
the agent). The package queues each ``collect()`` and a background thread of its own posts
it to the agent at ``/modeldata/log``. Here a small HTTP receiver of our own plays the
agent, and the real package, unmodified, is called from an entry script and from a
processor served by the real ``score serve`` (gevent workers, where its thread is a greenlet)
in front of the real Triton.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from conftest import ROOT, ScoreServer
from helpers import held_out_digits

from triton_score.local import LocalTriton

FIXTURES = ROOT / "tests" / "fixtures"


class Agent:
    """What AzureML's collection agent receives: one POST per ``collect()``."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                agent.received.append((self.path, dict(self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def by_type(self, kind: str) -> list[tuple[dict[str, str], list]]:
        return [
            (headers, json.loads(body))
            for path, headers, body in self.received
            if path == "/modeldata/log" and headers.get("ce-type") == f"azureml.inference.{kind}"
        ]

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(self.received) >= count, f"the agent got {len(self.received)} of {count}"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[Agent, dict[str, str]]]:
    receiver = Agent()
    config = tmp_path / "mdc_config.json"
    config.write_text(
        json.dumps(
            {
                "collections": {
                    "model_inputs": {"enabled": True, "sampleRatePercentage": 100},
                    "model_outputs": {"enabled": True, "sampleRatePercentage": 100},
                }
            }
        )
    )
    env = {
        "AZUREML_MDC_CONFIG_PATH": str(config),
        "AZUREML_MDC_HOST": "127.0.0.1",
        "AZUREML_MDC_PORT": str(receiver.port),
    }
    try:
        yield receiver, env
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def _joined(agent: Agent) -> dict[str, tuple[list, list]]:
    """Inputs and outputs by the correlation id that joins them."""
    inputs = {h["ce-x-request-id"]: body for h, body in agent.by_type("model_inputs")}
    outputs = {h["ce-x-request-id"]: body for h, body in agent.by_type("model_outputs")}
    assert inputs.keys() == outputs.keys()
    return {key: (inputs[key], outputs[key]) for key in inputs}


def test_an_entry_script_collects_through_score_serve(triton: LocalTriton, agent: tuple) -> None:
    receiver, env = agent
    server = ScoreServer(
        "--entry-script", str(FIXTURES / "collector_score.py"), "--triton-url", triton.url, env=env
    ).wait_ready()
    try:
        sent = [[{"a": i, "b": 10 * i}] for i in range(1, 6)]
        for rows in sent:
            response = requests.post(f"{server.url}/score", json={"data": rows}, timeout=30)
            assert response.status_code == 200, response.text
            assert response.json() == {"sum": [rows[0]["a"] + rows[0]["b"]]}
        receiver.wait_for(2 * len(sent))
    finally:
        server.stop()
    joined = _joined(receiver)
    assert sorted(joined.values(), key=lambda pair: pair[0][0]["a"]) == [
        (rows, [{"sum": rows[0]["a"] + rows[0]["b"]}]) for rows in sent
    ]
    headers = receiver.by_type("model_inputs")[0][0]
    assert headers["ce-agent"].startswith("azureml-ai-monitoring/")
    assert headers["Content-Type"] == "application/json"


def test_a_processor_collects_through_score_serve(triton: LocalTriton, agent: tuple) -> None:
    receiver, env = agent
    server = ScoreServer(
        "--processors",
        str(FIXTURES / "collector_processor.py"),
        "--triton-url",
        triton.url,
        "--workers",
        "2",
        env=env,
    ).wait_ready()
    images, labels = held_out_digits()
    answers = []
    try:
        for image in images[:8]:
            response = requests.post(
                f"{server.url}/score/digits_onnx", json={"image": image.tolist()}, timeout=30
            )
            assert response.status_code == 200, response.text
            answers.append(response.json()["digit"])
        receiver.wait_for(16)
    finally:
        server.stop()
    joined = _joined(receiver)
    assert len(joined) == 8
    collected = {
        tuple(float(v) for v in inputs[0].values()): outputs[0]["digit"]
        for inputs, outputs in joined.values()
    }
    for image, digit in zip(images[:8], answers, strict=True):
        assert collected[tuple(float(v) for v in image.ravel())] == digit
