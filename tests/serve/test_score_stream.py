"""``/score/<model>`` for a decoupled model, streamed: the real ``score serve`` in front of the
session's Triton, whose ``tiny_lm`` answers a request with one response per word.

A processor's ``postprocess`` is called once per response; with ``Accept: text/event-stream``
each value is one server-sent event as it comes, and without it the answer is the list of
them. Streams go over Triton's gRPC endpoint (``SCORE_TRITON_GRPC_URL``), and a client that
goes away cancels the model's work.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests
from conftest import ROOT, ScoreServer

from triton_score.local import LocalTriton

PROCESSOR = ROOT / "tests" / "fixtures" / "stream_processor.py"
EVENTS = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module")
def streaming(triton: LocalTriton) -> Iterator[ScoreServer]:
    server = ScoreServer(
        "--triton-url",
        triton.url,
        "--processors",
        str(PROCESSOR),
        "--workers",
        "1",
        env={"SCORE_TRITON_GRPC_URL": f"127.0.0.1:{triton.grpc_port}"},
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def _events(response: requests.Response) -> Iterator[tuple[str, dict, float]]:
    """(event name, data, seconds since the request) of each server-sent event."""
    started = time.monotonic()
    name = "message"
    for line in response.iter_lines():
        if line.startswith(b"event: "):
            name = line[7:].decode()
        elif line.startswith(b"data: "):
            yield name, json.loads(line[6:]), time.monotonic() - started
            name = "message"


def _metric(triton: LocalTriton, name: str) -> float:
    text = requests.get(f"http://127.0.0.1:{triton.metrics_port}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


def test_each_response_is_an_event_as_it_comes(streaming: ScoreServer) -> None:
    body = {"prompt": "a class", "max_tokens": 25, "seed": 4}
    response = requests.post(
        f"{streaming.url}/score/tiny_lm", json=body, headers=EVENTS, stream=True, timeout=60
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["x-request-id"]
    events = list(_events(response))
    assert {name for name, _, _ in events} == {"message"}
    assert len(events) == 25
    # 20 ms a word: the first event is out long before the model has finished.
    assert events[-1][2] - events[0][2] > 0.3

    whole = requests.post(f"{streaming.url}/score/tiny_lm", json=body, timeout=60)
    assert whole.status_code == 200
    assert whole.json() == [data for _, data, _ in events]  # not streamed: the list


def test_a_refusal_before_the_stream_is_a_plain_error(streaming: ScoreServer) -> None:
    refused = requests.post(
        f"{streaming.url}/score/tiny_lm", json={"prompt": 3}, headers=EVENTS, timeout=60
    )
    assert refused.status_code == 400 and "prompt" in refused.json()["error"]
    too_many = requests.post(
        f"{streaming.url}/score/tiny_lm",
        json={"prompt": "a", "max_tokens": 100_000},
        headers=EVENTS,
        timeout=60,
    )
    assert too_many.status_code == 400  # Triton's refusal, before any event
    assert "max_tokens" in too_many.json()["error"]


def test_a_failure_mid_stream_is_an_error_event_and_the_stream_ends(
    streaming: ScoreServer,
) -> None:
    response = requests.post(
        f"{streaming.url}/score/tiny_lm?fail_at=3",
        json={"prompt": "a class", "max_tokens": 10},
        headers=EVENTS,
        stream=True,
        timeout=60,
    )
    assert response.status_code == 200
    events = list(_events(response))
    assert [name for name, _, _ in events] == ["message", "message", "error"]
    error = events[-1][1]
    assert error["code"] == "processor_error" and error["request_id"]
    assert "postprocess failed" in error["error"] and "Traceback" not in json.dumps(error)
    assert requests.get(f"{streaming.url}/v2/health/ready", timeout=10).status_code == 200


def _quiet_steps(triton: LocalTriton, within: float = 10.0) -> float:
    """Triton's step count once the model takes no more steps (every stream ended)."""
    deadline = time.monotonic() + within
    steps = _metric(triton, "tiny_lm_steps_total")
    while True:
        time.sleep(0.3)
        now = _metric(triton, "tiny_lm_steps_total")
        if now == steps:
            return now
        assert time.monotonic() < deadline, "the model never stopped stepping"
        steps = now


def test_a_client_that_goes_away_cancels_the_models_work(
    streaming: ScoreServer, triton: LocalTriton
) -> None:
    before = _quiet_steps(triton)
    cancelled = _metric(triton, "tiny_lm_cancelled_total")
    response = requests.post(
        f"{streaming.url}/score/tiny_lm",
        json={"prompt": "a class", "max_tokens": 2000},
        headers=EVENTS,
        stream=True,
        timeout=60,
    )
    for index, _ in enumerate(_events(response)):
        if index == 2:
            break
    response.close()
    taken = _quiet_steps(triton) - before
    assert _metric(triton, "tiny_lm_cancelled_total") == cancelled + 1
    assert taken < 3 + 15, f"{taken} steps of 2000: the model went on after the client left"


def _ours(server: ScoreServer, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_streams_are_metered_by_how_they_ended(streaming: ScoreServer) -> None:
    # After the tests above (module order): completed, failed and cancelled streams.
    model = {"model": "tiny_lm"}
    assert _ours(streaming, "score_streams_total", outcome="completed", **model) >= 1
    assert _ours(streaming, "score_streams_total", outcome="failed", **model) >= 1
    assert _ours(streaming, "score_streams_total", outcome="cancelled", **model) >= 1
    assert _ours(streaming, "score_streams_in_flight", **model) == 0
    first = _ours(streaming, "score_stream_first_response_seconds_count", **model)
    gaps = _ours(streaming, "score_stream_inter_response_seconds_count", **model)
    sent = _ours(streaming, "score_stream_responses_total", **model)
    assert first >= 3 and gaps >= 24 and sent == first + gaps
    # Each word takes ~20 ms: the mean gap between two events says so.
    mean_gap = _ours(streaming, "score_stream_inter_response_seconds_sum", **model) / gaps
    assert 0.01 < mean_gap < 0.2


def test_every_metric_the_dashboards_stream_panels_query_is_served(
    streaming: ScoreServer,
) -> None:
    from test_monitoring import metric_names, queries, served_names

    served = served_names(requests.get(f"{streaming.url}/metrics", timeout=10).text)
    stream_panels = [(title, expr) for title, expr in queries() if title.startswith("Streams")]
    assert len(stream_panels) >= 4
    for title, expr in stream_panels:
        missing = metric_names(expr) - served
        assert not missing, f"panel {title!r} queries {sorted(missing)}, which nothing serves"
