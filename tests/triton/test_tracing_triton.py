"""Tracing end to end: Gunicorn's workers and a real Triton export to one OTLP receiver, and
a caller's trace holds our spans and Triton's, parented as they happened.

A Triton of its own (the tiny ``scaler`` python model), started with the OpenTelemetry
trace flags pointing at the test receiver (tests/otlp_receiver.py); ``score serve`` in front
of it with ``SCORE_TRACING=otel`` and the standard ``OTEL_*`` variables.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import ScoreServer, start_triton
from otlp_receiver import OtlpReceiver, Span

from triton_score.local import LocalTriton
from triton_score.local.processes import free_port
from triton_score.telemetry.tracing import MODEL, REQUEST_ID, STAGES

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent.parent / "fixtures"
PROBE = FIXTURES / "otel_probe_processor.py"
STREAMING = FIXTURES / "stream_processor.py"
TINY_LM = Path(__file__).parent.parent.parent / "models" / "triton" / "tiny_lm"
TRITON_SERVICE = "triton-inference-server"
REQUEST_SPAN = "POST /score/{model}"


def traceparent() -> tuple[str, str, str]:
    """A caller's (trace id, span id, traceparent header), sampled."""
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def in_trace(spans: list[Span], trace_id: str) -> list[Span]:
    return [span for span in spans if span.trace_id == trace_id]


def joined(trace_id: str, ours: int = 1 + len(STAGES), triton: int = 3):
    """Condition: the trace holds ``ours`` spans of ours and ``triton`` of Triton's."""

    def condition(spans: list[Span]) -> bool:
        found = in_trace(spans, trace_id)
        mine = [span for span in found if span.service != TRITON_SERVICE]
        return len(mine) >= ours and len(found) - len(mine) >= triton

    return condition


def only(spans: list[Span], name: str, service: str | None = None) -> Span:
    found = [s for s in spans if s.name == name and (service is None or s.service == service)]
    assert len(found) == 1, (name, spans)
    return found[0]


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("tracing") / "models"
    shutil.copytree(FIXTURES / "scaler", repository / "scaler")
    shutil.copytree(TINY_LM, repository / "tiny_lm", ignore=shutil.ignore_patterns("*.json"))
    return repository


@pytest.fixture(scope="module")
def traced_triton(repository: Path, receiver: OtlpReceiver) -> Iterator[LocalTriton]:
    """Triton exporting its spans to the receiver: every inference (rate=1), within 200 ms."""
    flags = [
        "mode=opentelemetry",
        "level=TIMESTAMPS",
        "rate=1",
        f"opentelemetry,url=127.0.0.1:{receiver.port}/v1/traces",
        "opentelemetry,bsp_schedule_delay=200",
    ]
    triton = start_triton(
        repository, extra_args=[arg for flag in flags for arg in ("--trace-config", flag)]
    )
    try:
        yield triton
    finally:
        triton.stop()


def otel_env(receiver: OtlpReceiver, **more: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "SCORE_METADATA_REFRESH_S": "0",
        **more,
    }


@pytest.fixture(scope="module")
def traced_server(
    traced_triton: LocalTriton, repository: Path, receiver: OtlpReceiver
) -> Iterator[ScoreServer]:
    server = ScoreServer(
        *("--triton-url", traced_triton.url, "--models", str(repository)),
        *("--processors", f"{PROBE},{STREAMING}", "--workers", "1"),
        env=otel_env(
            receiver,
            SCORE_TRACING="otel",
            SCORE_TRITON_GRPC_URL=f"127.0.0.1:{traced_triton.grpc_port}",
        ),
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def score(server: ScoreServer, headers: dict[str, str], body: object = None) -> requests.Response:
    return requests.post(
        f"{server.url}/score/scaler",
        json={"x": [1, 2, 3, 4]} if body is None else body,
        headers=headers,
        timeout=30,
    )


def test_a_callers_trace_holds_our_spans_and_tritons_under_our_infer_span(
    traced_server: ScoreServer, receiver: OtlpReceiver
) -> None:
    trace_id, caller_span, header = traceparent()
    response = score(traced_server, {"traceparent": header, "x-request-id": "traced-1"})
    assert response.status_code == 200, response.text
    assert response.json()["y"] == [2.0, 4.0, 6.0, 8.0]
    assert response.json()["opentelemetry"]  # tracing on: the worker has the SDK

    spans = in_trace(receiver.wait_for(joined(trace_id)), trace_id)
    assert not receiver.errors
    ours = [span for span in spans if span.service == "triton-score"]
    assert sorted(span.name for span in ours) == sorted([REQUEST_SPAN, *STAGES])
    # Our request span: a server span, child of the caller's span.
    request_span = only(ours, REQUEST_SPAN)
    assert request_span.parent_span_id == caller_span
    assert request_span.kind == 2  # SPAN_KIND_SERVER
    assert request_span.attributes[MODEL] == "scaler"
    assert request_span.attributes[REQUEST_ID] == "traced-1"
    assert request_span.attributes["http.response.status_code"] == 200
    # Every stage: a child of the request span, tagged with the model and the request id.
    for stage in STAGES:
        span = only(ours, stage)
        assert span.parent_span_id == request_span.span_id, stage
        assert span.attributes[MODEL] == "scaler", stage
        assert span.attributes[REQUEST_ID] == "traced-1", stage
    # Triton's spans: in the same trace, InferRequest under our infer span, then model, compute.
    infer = only(ours, "infer")
    triton_request = only(spans, "InferRequest", TRITON_SERVICE)
    assert triton_request.parent_span_id == infer.span_id
    model_span = only(spans, "scaler", TRITON_SERVICE)
    assert model_span.parent_span_id == triton_request.span_id
    assert model_span.attributes["triton.request_id"] == "traced-1"
    assert only(spans, "compute", TRITON_SERVICE).parent_span_id == model_span.span_id


def test_a_streams_request_span_lasts_the_stream_and_tritons_spans_join_it(
    traced_server: ScoreServer, receiver: OtlpReceiver
) -> None:
    trace_id, caller_span, header = traceparent()
    response = requests.post(
        f"{traced_server.url}/score/tiny_lm",
        json={"prompt": "a class", "max_tokens": 10},
        headers={"traceparent": header, "Accept": "text/event-stream", "x-request-id": "streamed"},
        stream=True,
        timeout=60,
    )
    assert response.status_code == 200
    assert len([line for line in response.iter_lines() if line.startswith(b"data: ")]) == 10

    def streamed(spans: list[Span]) -> bool:
        found = in_trace(spans, trace_id)
        return any(s.name == REQUEST_SPAN for s in found) and any(
            s.name == "InferRequest" and s.service == TRITON_SERVICE for s in found
        )

    spans = in_trace(receiver.wait_for(streamed), trace_id)
    request_span = only(spans, REQUEST_SPAN, "triton-score")
    assert request_span.parent_span_id == caller_span
    assert request_span.attributes[MODEL] == "tiny_lm"
    assert request_span.attributes["http.response.status_code"] == 200
    # Open until the last event: ten words at 20 ms a step.
    assert request_span.end_ns - request_span.start_ns > 0.18e9
    # Triton's span of the request, reached over gRPC, in the same trace under ours.
    triton_request = only(spans, "InferRequest", TRITON_SERVICE)
    assert triton_request.parent_span_id == request_span.span_id
    # and a postprocess span per response, under the request span
    postprocess = [s for s in spans if s.name == "postprocess" and s.service == "triton-score"]
    assert len(postprocess) == 10
    assert {s.parent_span_id for s in postprocess} == {request_span.span_id}


def test_without_a_traceparent_our_request_span_starts_the_trace_triton_joins(
    traced_server: ScoreServer, receiver: OtlpReceiver
) -> None:
    request_id = f"untraced-{uuid.uuid4().hex[:8]}"
    assert score(traced_server, {"x-request-id": request_id}).status_code == 200

    def requests_spans(spans: list[Span]) -> list[Span]:
        return [s for s in spans if s.attributes.get(REQUEST_ID) == request_id]

    spans = receiver.wait_for(lambda found: bool(requests_spans(found)))
    request_span = only(requests_spans(spans), REQUEST_SPAN)
    assert request_span.parent_span_id == ""
    spans = in_trace(receiver.wait_for(joined(request_span.trace_id)), request_span.trace_id)
    infer = only(spans, "infer", "triton-score")
    assert only(spans, "InferRequest", TRITON_SERVICE).parent_span_id == infer.span_id


def test_a_failed_requests_log_line_names_its_request_and_trace(
    traced_server: ScoreServer, receiver: OtlpReceiver
) -> None:
    trace_id, _, header = traceparent()
    response = score(traced_server, {"traceparent": header, "x-request-id": "broken-1"}, {})
    assert response.status_code == 500
    assert response.json()["request_id"] == "broken-1"
    deadline = time.monotonic() + 10
    line = f"preprocess of OtelProbe failed (request broken-1, trace {trace_id})"
    while line not in traced_server.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert line in traced_server.output()
    spans = in_trace(receiver.wait_for(joined(trace_id, ours=2, triton=0)), trace_id)
    assert only(spans, REQUEST_SPAN).status_code == 2  # STATUS_CODE_ERROR
    assert only(spans, "preprocess").status_code == 2
    assert only(spans, REQUEST_SPAN).attributes["http.response.status_code"] == 500


def test_tracing_off_imports_no_opentelemetry_and_exports_nothing(
    traced_triton: LocalTriton, repository: Path, receiver: OtlpReceiver
) -> None:
    # Everything set up for exporting, but SCORE_TRACING is not set.
    server = ScoreServer(
        *("--triton-url", traced_triton.url, "--models", str(repository)),
        *("--processors", str(PROBE), "--workers", "1"),
        env=otel_env(receiver, OTEL_SERVICE_NAME="tracing-off"),
    )
    try:
        server.wait_ready()
        trace_id, _, header = traceparent()
        request_ids = [f"off-{n}-{uuid.uuid4().hex[:8]}" for n in range(3)]
        for request_id in request_ids:
            response = score(server, {"traceparent": header, "x-request-id": request_id})
            assert response.status_code == 200
            assert response.json()["opentelemetry"] == []  # nothing imported in the worker
        # Triton (rate=1) traces these requests on its own: wait for its spans, then ours
        # would have come too (the same 200 ms schedule).
        spans = receiver.wait_for(
            lambda found: {s.attributes.get("triton.request_id") for s in found} >= set(request_ids)
        )
        time.sleep(1.0)
        spans = receiver.snapshot()
    finally:
        server.stop()
    assert not [span for span in spans if span.service == "tracing-off"]
    assert not in_trace(spans, trace_id)  # and no traceparent reached Triton
    for request_id in request_ids:
        model_span = next(s for s in spans if s.attributes.get("triton.request_id") == request_id)
        triton_request = next(s for s in spans if s.span_id == model_span.parent_span_id)
        assert triton_request.name == "InferRequest" and triton_request.parent_span_id == ""


def test_score_serve_starts_triton_with_its_trace_flags_when_tracing_is_on(
    repository: Path, receiver: OtlpReceiver
) -> None:
    """No Triton at --triton-url: score serve starts one, flagged to join our traces. With a
    minute between exports, the spans leave when the worker and Triton stop, not before."""
    server = ScoreServer(
        *("--triton-url", f"127.0.0.1:{free_port()}", "--models", str(repository)),
        *("--triton-grpc-port", str(free_port()), "--triton-metrics-port", str(free_port())),
        *("--processors", str(PROBE), "--workers", "1", "--no-build"),
        env=otel_env(
            receiver,
            SCORE_TRACING="otel",
            OTEL_SERVICE_NAME="serve-started",
            OTEL_BSP_SCHEDULE_DELAY="60000",
        ),
    )
    trace_id, caller_span, header = traceparent()
    try:
        server.wait_ready()
        assert (
            f"score: Triton traces the requests that bring a traceparent, to {receiver.url}"
            "/v1/traces" in server.output()
        )
        response = score(server, {"traceparent": header, "x-request-id": "serve-1"})
        assert response.status_code == 200, response.text
        time.sleep(1.0)
        assert in_trace(receiver.snapshot(), trace_id) == []  # still buffered
    finally:
        server.stop()
    spans = in_trace(receiver.wait_for(joined(trace_id), timeout=10), trace_id)
    assert only(spans, REQUEST_SPAN, "serve-started").parent_span_id == caller_span
    infer = only(spans, "infer", "serve-started")
    assert only(spans, "InferRequest", TRITON_SERVICE).parent_span_id == infer.span_id
    assert only(spans, "scaler", TRITON_SERVICE).attributes["triton.request_id"] == "serve-1"
