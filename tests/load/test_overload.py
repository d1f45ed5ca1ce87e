"""Shedding overload (``SCORE_MAX_IN_FLIGHT``): a worker that already has its limit of scoring
requests in flight answers the next one 503 with ``Retry-After`` at once, not 504 later.

Unit tests of :class:`~triton_score.http.shedding.InFlightLimit` and of the view in-process
(native and entry-script mode), then the real stack: Gunicorn with one gevent worker in front
of the session's Triton, with a processor that sleeps so requests stay in flight.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import ScoreServer
from helpers import held_out_digits
from prometheus_client.parser import text_string_to_metric_families

from triton_score.http import routes
from triton_score.http.app import create_app
from triton_score.http.shedding import InFlightLimit
from triton_score.local import LocalTriton
from triton_score.settings import Settings


# -- units --------------------------------------------------------------------------------
def test_the_limit_admits_up_to_its_size_and_counts_what_leaves() -> None:
    limit = InFlightLimit(2)
    assert limit.enter() and limit.enter()
    assert not limit.enter()
    assert limit.in_flight == 2
    limit.leave()
    assert limit.enter()
    assert not limit.enter()
    unlimited = InFlightLimit(0)
    assert all(unlimited.enter() for _ in range(1000))


def test_shed_requests_are_logged_at_warning_once_a_minute_at_most(caplog) -> None:
    now = [100.0]
    limit = InFlightLimit(1, warn_every_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.DEBUG, logger="triton_score"):
        for _ in range(5):
            limit.shed("m")
        now[0] += 61
        limit.shed("m")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    debugs = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(warnings) == 2 and len(debugs) == 4
    assert "1 scoring request(s) answered 503 since start" in warnings[0].getMessage()
    # The second WARNING counts the ones shed since the first (4 at DEBUG, and itself).
    assert "5 scoring request(s) answered 503 since the last such line" in warnings[1].getMessage()
    assert limit.shed_total == 6


def test_settings_of_shedding_from_env() -> None:
    settings = Settings.from_env({"SCORE_MAX_IN_FLIGHT": "7", "SCORE_RETRY_AFTER_S": "3"})
    assert (settings.max_in_flight, settings.retry_after_s) == (7, 3)
    assert (Settings().max_in_flight, Settings().retry_after_s) == (128, 1)
    with pytest.raises(ValueError, match="SCORE_MAX_IN_FLIGHT"):
        Settings.from_env({"SCORE_MAX_IN_FLIGHT": "-1"})
    with pytest.raises(ValueError, match="SCORE_RETRY_AFTER_S"):
        Settings.from_env({"SCORE_RETRY_AFTER_S": "soon"})


def _metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_a_full_worker_sheds_score_but_not_health_metrics_or_v2_in_process() -> None:
    settings = Settings(
        triton_url="127.0.0.1:9", processors=("none",), max_in_flight=1, retry_after_s=4
    )
    app = create_app(settings, init=False)
    client = app.test_client()
    limit: InFlightLimit = app.extensions[routes.IN_FLIGHT]
    try:
        assert limit.enter()  # one request in flight: the worker is full
        shed = client.post("/score/m", data=b"{}", headers={"x-request-id": "r-1"})
        assert shed.status_code == 503, shed.json
        assert shed.headers["Retry-After"] == "4"
        assert shed.json == {
            "error": "the server is busy: 1 scoring requests are already in flight in this "
            "worker (SCORE_MAX_IN_FLIGHT); retry after 4 s",
            "code": "overloaded",
            "retry_after_s": 4,
            "request_id": "r-1",
        }
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/").status_code == 200
        metrics = client.get("/metrics").get_data(as_text=True)
        assert _metric(metrics, "score_requests_shed_total") == 1
        assert _metric(metrics, "score_requests_total", code="503") == 1
        # /v2 is forwarded, never shed: it fails here only because no Triton listens.
        assert client.get("/v2/models/m").json["code"] != "overloaded"
        assert limit.in_flight == 1  # a shed request never held a slot

        limit.leave()  # room again: the request is scored (and fails on the missing Triton)
        admitted = client.post("/score/m", data=b"{}")
        assert admitted.json["code"] == "triton_unavailable"
        assert limit.in_flight == 0  # ...and gave its slot back
    finally:
        app.extensions["triton_score"].close()


def test_entry_script_mode_is_shed_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tritonclient.http as httpclient

    # An entry script's runtime adapts tritonclient's client class for the whole process:
    # undo it after this test, as a worker would never need to.
    cls = httpclient.InferenceServerClient
    monkeypatch.setattr(cls, "__init__", cls.__init__)
    script = tmp_path / "entry.py"
    script.write_text("def init():\n    pass\n\n\ndef run(data):\n    return {'ok': True}\n")
    settings = Settings(triton_url="127.0.0.1:9", entry_script=str(script), max_in_flight=1)
    app = create_app(settings)
    client = app.test_client()
    limit: InFlightLimit = app.extensions[routes.IN_FLIGHT]
    try:
        assert client.post("/score", data="{}").json == {"ok": True}
        assert limit.enter()
        shed = client.post("/score", data="{}")
        assert shed.status_code == 503 and shed.json["code"] == "overloaded"
        assert shed.headers["Retry-After"] == "1"
        limit.leave()
        assert client.post("/score", data="{}").json == {"ok": True}
    finally:
        app.extensions["triton_score"].close()


# -- the real stack ---------------------------------------------------------------------
SLOW_PROCESSOR = '''
import time

import numpy as np

from triton_score import processor


@processor("digits_onnx")
class SlowDigits:
    """Sleeps as long as the request says (gevent's patched sleep: the worker stays free)."""

    def preprocess(self, request, model):
        time.sleep(float(request.json.get("sleep", 0)))
        return {"image": np.asarray(request.json["image"], dtype=np.float32).reshape(1, 8, 8)}
'''


@pytest.fixture(scope="module")
def limited_server(triton: LocalTriton, tmp_path_factory: pytest.TempPathFactory):
    processors = tmp_path_factory.mktemp("overload") / "slow_processors.py"
    processors.write_text(SLOW_PROCESSOR)
    server = ScoreServer(
        "--triton-url",
        triton.url,
        "--workers",
        "1",
        "--processors",
        str(processors),
        env={"SCORE_MAX_IN_FLIGHT": "2", "SCORE_RETRY_AFTER_S": "3"},
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def _score(server: ScoreServer, sleep: float) -> requests.Response:
    body = {"image": held_out_digits()[0][0].tolist(), "sleep": sleep}
    return requests.post(
        f"{server.url}/score/digits_onnx",
        data=json.dumps(body),
        headers={"content-type": "application/json"},
        timeout=30,
    )


def test_a_full_worker_answers_503_at_once_and_recovers(limited_server: ScoreServer) -> None:
    server = limited_server
    assert _score(server, 0).status_code == 200  # warm: the connection to Triton is open
    results: list[tuple[int, float, requests.Response]] = []
    start = threading.Barrier(4)

    def one() -> None:
        start.wait()
        began = time.monotonic()
        response = _score(server, 1.0)
        results.append((response.status_code, time.monotonic() - began, response))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.4)  # two requests sleep in preprocess; the worker is full
    probes = {
        path: requests.get(server.url + path, timeout=5).status_code
        for path in ("/", "/v2/health/live", "/v2/health/ready", "/v2/models/digits_onnx")
    }
    for thread in threads:
        thread.join(timeout=30)

    assert probes == dict.fromkeys(probes, 200), probes
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 200, 503, 503], [(s, r.text) for s, _, r in results]
    for status, elapsed, response in results:
        if status == 503:
            assert elapsed < 0.5, f"a shed request took {elapsed:.2f} s (the others sleep 1 s)"
            assert response.headers["Retry-After"] == "3"
            assert response.headers["content-type"] == "application/json"
            assert response.json()["code"] == "overloaded"
            assert response.headers["x-request-id"] == response.json()["request_id"]
        else:
            assert elapsed >= 1.0

    # Afterwards the worker scores as usual, and the metrics and the log tell what happened.
    assert all(_score(server, 0).status_code == 200 for _ in range(3))
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    assert _metric(metrics, "score_requests_shed_total", model="digits_onnx") == 2
    assert _metric(metrics, "score_requests_total", model="digits_onnx", code="503") == 2
    assert server.output().count("overloaded: ") == 1, server.output()[-3000:]
