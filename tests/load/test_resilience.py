"""What happens when things go wrong under a real Gunicorn: slow models, Triton going away,
Triton coming back, SIGTERM with requests in flight, a dying Triton, broken processors."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import ScoreServer, start_triton

from triton_score.local import LocalTriton
from triton_score.local.processes import descendants, free_port, still_running

pytestmark = pytest.mark.integration  # each test starts tritonserver or score serve

SLEEPY_CONFIG = """
name: "sleepy"
backend: "python"
max_batch_size: 0
input [{ name: "seconds" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "slept" data_type: TYPE_FP32 dims: [1] }]
instance_group [{ kind: KIND_CPU count: 2 }]
"""
SLEEPY_MODEL = """
import time
import triton_python_backend_utils as pb

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            seconds = pb.get_input_tensor_by_name(request, "seconds").as_numpy()
            time.sleep(float(seconds[0]))
            responses.append(pb.InferenceResponse([pb.Tensor("slept", seconds)]))
        return responses
"""


def sleepy_repository(root: Path) -> Path:
    repo = root / "repo"
    (repo / "sleepy" / "1").mkdir(parents=True)
    (repo / "sleepy" / "config.pbtxt").write_text(SLEEPY_CONFIG)
    (repo / "sleepy" / "1" / "model.py").write_text(SLEEPY_MODEL)
    return repo


def sleep_request(server: ScoreServer, seconds: float, timeout: float = 30) -> requests.Response:
    return requests.post(
        f"{server.url}/score/sleepy",
        data=json.dumps({"inputs": {"seconds": [seconds]}}),
        headers={"content-type": "application/json"},
        timeout=timeout,
    )


@pytest.fixture()
def sleepy(tmp_path: Path):
    triton = start_triton(sleepy_repository(tmp_path))
    server = ScoreServer(
        "--triton-url",
        triton.url,
        "--processors",
        "none",
        env={"SCORING_TIMEOUT_MS": "1000", "SCORE_GRACEFUL_TIMEOUT": "20"},
    )
    try:
        yield triton, server.wait_ready()
    finally:
        server.stop()
        triton.stop()


def test_slow_request_is_a_json_504_and_the_server_keeps_serving(sleepy) -> None:
    _, server = sleepy
    started = time.monotonic()
    slow = sleep_request(server, 3.0)
    elapsed = time.monotonic() - started
    assert slow.status_code == 504, slow.text
    assert slow.headers["content-type"] == "application/json"
    assert slow.json()["code"] == "timeout"
    assert elapsed < 2.5, f"the 1000 ms scoring timeout took {elapsed:.1f} s"
    fast = sleep_request(server, 0.0)  # the second model instance is free
    assert fast.status_code == 200 and fast.json()["outputs"]["slept"] == [0.0]


def test_triton_down_is_a_prompt_503_and_scoring_resumes_when_it_is_back(sleepy) -> None:
    triton, server = sleepy
    assert sleep_request(server, 0.0).status_code == 200
    workers_before = descendants(server.process.pid)
    triton.stop()

    started = time.monotonic()
    ready = requests.get(server.url + "/v2/health/ready", timeout=10)
    score = sleep_request(server, 0.0, timeout=10)
    elapsed = time.monotonic() - started
    assert ready.status_code == 503
    assert score.status_code == 503, score.text
    assert score.json()["code"] == "triton_unavailable"
    assert score.headers["Retry-After"].isdigit()
    assert elapsed < 5, f"answering while Triton is down took {elapsed:.1f} s"
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    assert 'score_triton_errors_total{kind="unavailable",model="sleepy"}' in metrics
    assert 'score_requests_total{code="503",model="sleepy"}' in metrics

    # Triton comes back on the same port: scoring resumes, workers are not restarted.
    back = LocalTriton(
        triton.model_repository,
        http_port=triton.http_port,
        grpc_port=triton.grpc_port,
        metrics_port=triton.metrics_port,
    ).start(timeout=60)
    try:
        deadline = time.monotonic() + 15
        status = 0
        while time.monotonic() < deadline and status != 200:
            status = sleep_request(server, 0.0, timeout=10).status_code
            time.sleep(0.2)
        assert status == 200
        assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
        assert all(sleep_request(server, 0.0).status_code == 200 for _ in range(5))
        assert descendants(server.process.pid) == workers_before
    finally:
        back.stop()


def test_sigterm_drains_in_flight_requests(sleepy) -> None:
    _, server = sleepy
    results: list[int] = []
    worker = threading.Thread(target=lambda: results.append(sleep_request(server, 0.8).status_code))
    worker.start()
    time.sleep(0.3)  # the request is now inside Triton
    server.process.send_signal(signal.SIGTERM)
    worker.join(timeout=30)
    assert results == [200]
    assert server.process.wait(timeout=30) == 0


def test_serve_exits_non_zero_when_its_triton_dies(tmp_path: Path) -> None:
    repo = sleepy_repository(tmp_path)
    port = free_port()
    server = ScoreServer(
        "--models",
        str(repo),
        "--processors",
        "none",
        "--triton-url",
        f"127.0.0.1:{port}",
        "--triton-grpc-port",
        str(free_port()),
        "--triton-metrics-port",
        str(free_port()),
    )
    try:
        server.wait_ready()
        match = re.search(r"tritonserver \(pid (\d+)\)", server.output())
        assert match, server.output()
        triton_pid = int(match.group(1))
        tree = descendants(server.process.pid)  # before anything exits: orphans move away
        assert triton_pid in tree, (triton_pid, tree)
        assert len(tree) >= 3, tree  # score serve, tritonserver, gunicorn (+ its workers)

        os.kill(triton_pid, signal.SIGKILL)
        code = server.process.wait(timeout=30)
        assert code != 0
        assert "tritonserver exited unexpectedly" in server.output()
        assert still_running(tree) == [], "score serve left processes behind"
    finally:
        server.stop()


def test_serve_exits_non_zero_with_a_clear_message_on_a_broken_processor(
    tmp_path: Path, triton: LocalTriton
) -> None:
    broken = tmp_path / "broken_processors.py"
    broken.write_text(
        "from triton_score import processor\n\n@processor('digits_onnx')\nclass X:\n    pass\n"
    )
    server = ScoreServer("--triton-url", triton.url, "--processors", str(broken))
    try:
        code = server.process.wait(timeout=60)
        assert code != 0
        assert "defines neither preprocess() nor postprocess()" in server.output()
    finally:
        server.stop()
