"""The dashboard against a live server, and the JSON log.

``score serve`` starts its own Triton here (on a one-model repository, free ports), so
``/metrics/triton`` also proves that it hands the workers its Triton's metrics port.
Every metric name in the dashboard's PromQL (parsed by a real PromQL parser) must be served
by ``/metrics`` or ``/metrics/triton`` once a few requests went through.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import promql_parser
import pytest
import requests
from conftest import EXAMPLES, ROOT, ScoreServer
from helpers import held_out_digits

from triton_score.local.processes import free_port

DASHBOARD = ROOT / "monitoring" / "grafana-dashboard.json"
CHATTY = ROOT / "tests" / "fixtures" / "chatty_processors.py"
KEY = "monitoring-key-5c0d9e21a7b34f68"
#: Grafana's variables, as Grafana substitutes them before Prometheus sees a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$model": ".*"}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects, from its syntax tree."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def served_names(exposition: str) -> set[str]:
    names = set()
    for line in exposition.splitlines():
        found = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
        if found and not line.startswith("#"):
            names.add(found.group(0))
    return names


def test_the_dashboard_is_grafana_json_with_parseable_queries() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "model"}
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
    titles = " ".join(title.lower() for title, _ in queries())
    for topic in ("requests per second", "errors", "per stage", "in flight", "queue", "batch"):
        assert topic in titles
    for title, expr in queries():
        assert metric_names(expr), f"{title!r}: {expr} selects no metric"
    everything = set().union(*(metric_names(expr) for _, expr in queries()))
    assert {
        "score_requests_total",
        "score_stage_duration_seconds_bucket",
        "score_requests_in_flight",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_request_success",
        "nv_inference_count",
        "nv_inference_exec_count",
    } <= everything


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScoreServer]:
    repository = tmp_path_factory.mktemp("repository")
    shutil.copytree(EXAMPLES / "digits_onnx", repository / "digits_onnx")
    server = ScoreServer(
        "--models",
        str(repository),
        "--no-build",
        "--triton-url",
        f"127.0.0.1:{free_port()}",  # nothing there: score serve starts its own Triton
        "--triton-grpc-port",
        str(free_port()),
        "--triton-metrics-port",
        str(free_port()),
        "--processors",
        str(CHATTY),
        env={
            "SCORE_API_KEYS": KEY,
            "SCORE_AUTH_EXEMPT": "metrics",
            "SCORE_LOG_FORMAT": "json",
            "SCORING_TIMEOUT_MS": "1500",
        },
    )
    try:
        yield server.wait_ready(timeout=180)
    finally:
        server.stop()


def score(server: ScoreServer, body: dict[str, Any], request_id: str = "") -> requests.Response:
    headers = {"Authorization": f"Bearer {KEY}"}
    if request_id:
        headers["x-request-id"] = request_id
    return requests.post(f"{server.url}/score/digits_onnx", json=body, headers=headers, timeout=30)


def test_every_metric_the_dashboard_queries_is_served(monitored: ScoreServer) -> None:
    images, _ = held_out_digits()
    with ThreadPoolExecutor(8) as pool:  # at once, so that Triton batches some
        codes = list(
            pool.map(
                lambda n: score(monitored, {"images": images[: 1 + n % 3].tolist()}), range(24)
            )
        )
    assert codes and {c.status_code for c in codes} == {200}
    assert score(monitored, {"images": "not images"}).status_code == 400
    slow = score(monitored, {"images": images[:1].tolist(), "sleep": 3})
    assert slow.status_code == 504  # past SCORING_TIMEOUT_MS: score_triton_errors_total
    refused = requests.post(f"{monitored.url}/score/digits_onnx", json={}, timeout=10)
    assert refused.status_code == 401  # score_auth_failures_total

    ours = requests.get(monitored.url + "/metrics", timeout=10)  # SCORE_AUTH_EXEMPT=metrics
    triton = requests.get(monitored.url + "/metrics/triton", timeout=10)
    assert ours.status_code == 200 and triton.status_code == 200, triton.text
    assert 'nv_inference_count{model="digits_onnx"' in triton.text
    served = served_names(ours.text) | served_names(triton.text)
    for title, expr in queries():
        if title.startswith("Streams"):
            continue  # a streaming server serves those: tests/serve/test_score_stream.py
        missing = metric_names(expr) - served
        assert not missing, f"panel {title!r} queries {sorted(missing)}, which nothing serves"


def test_exempt_metrics_leave_the_rest_guarded(monitored: ScoreServer) -> None:
    assert requests.get(monitored.url + "/swagger.json", timeout=10).status_code == 401
    assert requests.get(monitored.url + "/v2/models/digits_onnx", timeout=10).status_code == 401
    with_key = requests.get(
        monitored.url + "/swagger.json", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )
    assert with_key.status_code == 200


def json_lines(output: str) -> list[dict[str, Any]]:
    entries = []
    for line in output.splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))  # every line of ours is one JSON object
    return entries


def test_json_access_lines_and_prints_carry_the_request_id(monitored: ScoreServer) -> None:
    images, _ = held_out_digits()
    assert score(monitored, {"images": images[:3].tolist()}, "json-ok-1").status_code == 200
    assert score(monitored, {"images": "bad"}, "json-bad-1").status_code == 400
    entries = json_lines(monitored.output())
    by_id = {
        e["request_id"]: e
        for e in entries
        if e["logger"] == "triton_score.access" and "request_id" in e
    }
    ok = by_id["json-ok-1"]
    assert ok["status"] == 200 and ok["model"] == "digits_onnx" and ok["method"] == "POST"
    assert ok["route"] == "/score/<model>" and ok["path"] == "/score/digits_onnx"
    assert set(ok["stages_ms"]) == {"preprocess", "infer", "postprocess"}
    assert ok["duration_ms"] >= sum(ok["stages_ms"].values())
    assert by_id["json-bad-1"]["status"] == 400
    printed = [
        e
        for e in entries
        if e["logger"] == "triton_score.stdout" and e.get("request_id") == "json-ok-1"
    ]
    assert [e["message"] for e in printed] == ["chatty: preprocessing 3 image(s)"]
    assert KEY not in monitored.output()


def test_metrics_of_a_refused_request_name_no_key(monitored: ScoreServer) -> None:
    requests.get(
        monitored.url + "/swagger.json", headers={"Authorization": "Bearer " + "x" * 40}, timeout=5
    )
    text = requests.get(monitored.url + "/metrics", timeout=10).text
    assert 'score_auth_failures_total{group="docs",reason="invalid"}' in text
    assert "x" * 40 not in text and KEY not in text


def test_gunicorns_own_lines_are_json_too(monitored: ScoreServer) -> None:
    """Under SCORE_LOG_FORMAT=json, a log pipeline must not meet Gunicorn's plain lines."""
    lines = [line for line in monitored.output().splitlines() if "Booting worker" in line]
    assert lines, monitored.output()[-2000:]
    for line in lines:
        entry = json.loads(line)
        assert entry["logger"] == "gunicorn.error" and entry["level"] == "INFO"
