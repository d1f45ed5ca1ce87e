"""Tracing, unit by unit (no server): the switch, the OTEL_* configuration, the spans of the
pipeline with an in-memory exporter, the traceparent handed to the gateway, Triton's flags.

The real thing, with Gunicorn and Triton's own spans, is tests/triton/test_tracing_triton.py.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from triton_score import BadRequest, ModelInfo, TensorSpec, processor
from triton_score.cli.main import _triton_args, build_parser
from triton_score.processors import ProcessorRegistry
from triton_score.scoring import RequestTelemetry, Scorer
from triton_score.serve.supervisor import ServeOptions, Supervisor
from triton_score.serve.triton_trace import check_tracing, triton_trace_args
from triton_score.settings import Settings, tracing_mode
from triton_score.telemetry.otel import (
    OtelTracing,
    exporter_names,
    find_exporter,
    resource_from_env,
)
from triton_score.telemetry.tracing import (
    MODEL,
    NO_REQUEST_SPAN,
    NO_TRACING,
    REQUEST_ID,
    STAGES,
    log_ids,
    start_tracing,
)

CALLER_TRACE = "0af7651916cd43dd8448eb211c12666c"
CALLER_SPAN = "b7ad6b7169242424"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"

DOUBLER = ModelInfo(
    name="doubler",
    version="1",
    platform="",
    backend="python",
    max_batch_size=0,
    inputs=(TensorSpec("x", "FP32", (4,)),),
    outputs=(TensorSpec("y", "FP32", (4,)),),
)


# -- the switch ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "mode"),
    [("", ""), ("off", ""), ("none", ""), ("otel", "otel"), (" OpenTelemetry ", "otel")],
)
def test_score_tracing_values(value: str, mode: str) -> None:
    assert tracing_mode(value) == mode
    assert Settings.from_env({"SCORE_TRACING": value}).tracing == mode


def test_an_unknown_score_tracing_value_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="SCORE_TRACING='jaeger'"):
        Settings.from_env({"SCORE_TRACING": "jaeger"})


def test_tracing_is_off_by_default_and_then_constant_no_op_objects() -> None:
    assert Settings.from_env({}).tracing == ""
    tracing = start_tracing(Settings())
    assert tracing is NO_TRACING and not tracing.enabled
    traced = tracing.request("POST", "/score", {"traceparent": TRACEPARENT}, "r-1")
    assert traced is NO_REQUEST_SPAN and traced.trace_id == ""
    assert traced.stage("decode") is tracing.span("infer", "m", "r") is tracing.span("encode")
    with tracing.span("infer"):
        pass
    traced.finish(200, "m")
    assert tracing.headers() is None and tracing.trace_id() == ""


def test_log_ids_name_the_trace_only_when_there_is_one() -> None:
    assert log_ids("r-1") == "request r-1"
    assert log_ids("r-1", CALLER_TRACE) == f"request r-1, trace {CALLER_TRACE}"


# -- OTEL_* ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({}, ["otlp_proto_http"]),  # the specification's default protocol, the one installed
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp_proto_http"]),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, ["otlp_proto_grpc"]),
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            ["otlp_proto_http"],
        ),
        ({"OTEL_TRACES_EXPORTER": "console, otlp"}, ["console", "otlp_proto_http"]),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
    ],
)
def test_exporters_come_from_otel_traces_exporter(environ: dict[str, str], names: list) -> None:
    assert exporter_names(environ) == names


def test_exporters_are_the_sdks_entry_points() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    assert find_exporter("otlp_proto_http") is OTLPSpanExporter
    assert find_exporter("console") is ConsoleSpanExporter
    with pytest.raises(ValueError, match="no span exporter 'zipkin'"):
        find_exporter("zipkin")


@pytest.mark.parametrize(
    ("environ", "refused"),
    [
        ({}, ""),
        ({"SCORE_TRACING": "otel"}, ""),
        ({"SCORE_TRACING": "otel", "OTEL_TRACES_EXPORTER": "none"}, ""),
        ({"SCORE_TRACING": "otel", "OTEL_TRACES_EXPORTER": "zipkin"}, "no span exporter"),
        ({"SCORE_TRACING": "otel", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "proto-grpc"),
        ({"SCORE_TRACING": "otel", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "http/json"),
        ({"SCORE_TRACING": "yes"}, "SCORE_TRACING='yes'"),
    ],
)
def test_check_tracing_says_in_one_line_why_it_cannot_work(environ: dict, refused: str) -> None:
    found = check_tracing(environ)
    assert (refused in found) if refused else found == ""


def test_service_name_defaults_to_triton_score(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert resource_from_env().attributes["service.name"] == "triton-score"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes,team=ml")
    assert resource_from_env().attributes["service.name"] == "from-attributes"
    assert resource_from_env().attributes["team"] == "ml"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "scoring")
    assert resource_from_env().attributes["service.name"] == "scoring"


# -- spans of the pipeline -----------------------------------------------------------------
class RecordingGateway:
    """Doubles ``x``; keeps the headers of every inference call."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str] | None] = []

    def load_models(self, names=()):
        return {"doubler": DOUBLER}

    def model_info(self, name: str) -> ModelInfo:
        return DOUBLER

    def infer(self, model, inputs, outputs=None, *, request_id="", headers=None):
        self.headers.append(dict(headers) if headers else None)
        return {"y": inputs["x"] * 2}


@processor("doubler")
class Doubler:
    def preprocess(self, request, model):
        if request.json.get("bad"):
            raise BadRequest("bad is not accepted")
        if request.json.get("crash"):
            raise RuntimeError("the processor broke")
        return {"x": np.asarray(request.json["x"], dtype=np.float32)}

    def postprocess(self, outputs, request, model):
        return {"y": outputs["y"].tolist()}


@processor("doubler")
class DoublerWithPredict(Doubler):
    def predict(self, inputs, request, model, triton):
        first = triton.infer(model, inputs)
        return triton.infer("doubler", {"x": first["y"]})


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exported: InMemorySpanExporter) -> OtelTracing:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return OtelTracing(provider)


def scorer(tracing: OtelTracing, gateway: RecordingGateway, cls: type = Doubler) -> Scorer:
    registry = ProcessorRegistry()
    registry.register(cls, "test")
    return Scorer(Settings(), gateway, registry, tracing=tracing)  # type: ignore[arg-type]


def serve(
    tracing: OtelTracing, score: Scorer, body: bytes, headers: dict[str, str], rid: str = "r-1"
) -> tuple[Any, str]:
    """What the /score route does: the request's telemetry, then the scorer's six stages."""
    telemetry = RequestTelemetry.start(
        None,
        tracing,
        method="POST",
        route="/score/{model}",
        headers=headers,
        request_id=rid,
        model="doubler",
    )
    status = 500
    try:
        plan = score.plan("doubler")
        encoded = score.handle(plan, body, "application/json", headers, telemetry)
        status = encoded.status
        return orjson.loads(encoded.body), telemetry.trace_id
    except Exception as exc:
        status = getattr(exc, "status_code", 500)
        raise
    finally:
        telemetry.finish(status, "doubler")


def by_name(exported: InMemorySpanExporter) -> dict[str, Any]:
    return {span.name: span for span in exported.get_finished_spans()}


def test_a_request_span_under_the_callers_with_every_stage_under_it(
    tracing: OtelTracing, exported: InMemorySpanExporter
) -> None:
    gateway = RecordingGateway()
    result, trace_id = serve(
        tracing, scorer(tracing, gateway), b'{"x": [1, 2, 3, 4]}', {"traceparent": TRACEPARENT}
    )
    assert result == {"y": [2.0, 4.0, 6.0, 8.0]}
    assert trace_id == CALLER_TRACE
    spans = by_name(exported)
    assert set(spans) == {"POST /score/{model}", *STAGES}
    root = spans.pop("POST /score/{model}")
    assert root.kind is SpanKind.SERVER
    assert format(root.context.trace_id, "032x") == CALLER_TRACE
    assert format(root.parent.span_id, "016x") == CALLER_SPAN
    assert root.attributes[MODEL] == "doubler" and root.attributes[REQUEST_ID] == "r-1"
    assert root.attributes["http.response.status_code"] == 200
    for name, span in spans.items():
        assert span.parent.span_id == root.context.span_id, name
        assert span.attributes[MODEL] == "doubler", name
        assert span.attributes[REQUEST_ID] == "r-1", name
    # Triton gets the infer span's context: its spans go under it, in the caller's trace.
    (headers,) = gateway.headers
    infer = spans["infer"].context
    assert headers["traceparent"] == f"00-{infer.trace_id:032x}-{infer.span_id:016x}-01"


def test_without_a_traceparent_the_request_span_starts_a_trace(
    tracing: OtelTracing, exported: InMemorySpanExporter
) -> None:
    gateway = RecordingGateway()
    _, trace_id = serve(tracing, scorer(tracing, gateway), b'{"x": [1, 2, 3, 4]}', {})
    root = by_name(exported)["POST /score/{model}"]
    assert root.parent is None
    assert trace_id == format(root.context.trace_id, "032x")
    assert gateway.headers[0]["traceparent"].split("-")[1] == trace_id


def test_a_malformed_traceparent_is_ignored(
    tracing: OtelTracing, exported: InMemorySpanExporter
) -> None:
    gateway = RecordingGateway()
    headers = {"traceparent": "00-not-a-trace-01"}
    _, trace_id = serve(tracing, scorer(tracing, gateway), b'{"x": [1, 2, 3, 4]}', headers)
    root = by_name(exported)["POST /score/{model}"]
    assert root.parent is None and trace_id == format(root.context.trace_id, "032x")


def test_an_unsampled_caller_records_nothing_and_sends_triton_nothing(
    tracing: OtelTracing, exported: InMemorySpanExporter
) -> None:
    gateway = RecordingGateway()
    unsampled = f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"
    _, trace_id = serve(
        tracing, scorer(tracing, gateway), b'{"x": [1, 2, 3, 4]}', {"traceparent": unsampled}
    )
    assert exported.get_finished_spans() == ()
    assert gateway.headers == [None]  # Triton would trace it anyway: no traceparent at all
    assert trace_id == CALLER_TRACE  # the log still names the caller's trace


def test_predicts_triton_calls_each_validated_in_a_span_and_sent_the_infer_span(
    tracing: OtelTracing, exported: InMemorySpanExporter
) -> None:
    gateway = RecordingGateway()
    serve(
        tracing,
        scorer(tracing, gateway, DoublerWithPredict),
        b'{"x": [1, 2, 3, 4]}',
        {"traceparent": TRACEPARENT},
    )
    spans = exported.get_finished_spans()
    infer = next(span for span in spans if span.name == "infer")
    validations = [span for span in spans if span.name == "validate"]
    assert len(validations) == 2
    assert all(span.parent.span_id == infer.context.span_id for span in validations)
    expected = f"00-{CALLER_TRACE}-{infer.context.span_id:016x}-01"
    assert [headers["traceparent"] for headers in gateway.headers] == [expected, expected]


def test_a_client_error_is_recorded_but_leaves_the_status_unset(
    tracing: OtelTracing, exported: InMemorySpanExporter
) -> None:
    with pytest.raises(BadRequest):
        serve(tracing, scorer(tracing, RecordingGateway()), b'{"bad": true}', {})
    spans = by_name(exported)
    assert spans["preprocess"].status.status_code is StatusCode.UNSET
    assert [event.name for event in spans["preprocess"].events] == ["exception"]
    assert spans["POST /score/{model}"].attributes["http.response.status_code"] == 400
    assert spans["POST /score/{model}"].status.status_code is StatusCode.UNSET


def test_a_processor_failure_is_an_error_span_and_its_log_line_names_the_trace(
    tracing: OtelTracing, exported: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="triton_score.scoring.pipeline")
    with pytest.raises(Exception, match="preprocess failed"):
        serve(
            tracing,
            scorer(tracing, RecordingGateway()),
            b'{"crash": true}',
            {"traceparent": TRACEPARENT},
            rid="r-crash",
        )
    spans = by_name(exported)
    assert spans["preprocess"].status.status_code is StatusCode.ERROR
    assert spans["POST /score/{model}"].status.status_code is StatusCode.ERROR
    assert f"preprocess of Doubler failed (request r-crash, trace {CALLER_TRACE})" in caplog.text


# -- Triton's flags ------------------------------------------------------------------------
def test_triton_gets_the_same_otlp_http_endpoint_and_traces_what_we_propagate() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    assert triton_trace_args(environ) == [
        "--trace-config=mode=opentelemetry",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=rate=0",
        "--trace-config=count=-1",
        "--trace-config=opentelemetry,url=http://collector:4318/v1/traces",
        "--trace-config=opentelemetry,bsp_schedule_delay=200",
    ]
    traces = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tempo:4318/v1/traces"}
    assert "--trace-config=opentelemetry,url=http://tempo:4318/v1/traces" in triton_trace_args(
        traces
    )
    assert "--trace-config=opentelemetry,url=http://localhost:4318/v1/traces" in (
        triton_trace_args({})
    )


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "console"},
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    ],
)
def test_triton_gets_no_flags_where_it_cannot_export(environ: dict[str, str]) -> None:
    assert triton_trace_args(environ) == []


def test_triton_arg_is_repeatable_and_defaults_to_score_triton_args(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = build_parser()
    monkeypatch.setenv("SCORE_TRITON_ARGS", "--log-verbose=1 '--trace-config=rate=5'")
    assert _triton_args(parser.parse_args(["serve"])) == (
        "--log-verbose=1",
        "--trace-config=rate=5",
    )
    args = parser.parse_args(
        ["serve", "--triton-arg=--trace-config=rate=1", "--triton-arg=--log-info=false"]
    )
    assert _triton_args(args) == ("--trace-config=rate=1", "--log-info=false")
    assert _triton_args(parser.parse_args(["triton", "--triton-arg=-x"])) == ("-x",)


def test_score_serve_adds_tritons_trace_flags_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    said: list[str] = []
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("SCORE_TRACING", raising=False)
    own = ("--log-verbose=1",)
    assert Supervisor(ServeOptions(triton_args=own), said.append)._triton_args() == list(own)
    monkeypatch.setenv("SCORE_TRACING", "otel")
    args = Supervisor(ServeOptions(triton_args=own), said.append)._triton_args()
    assert args[:-1] == triton_trace_args({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert args[-1] == "--log-verbose=1"
    assert said == [
        "score: Triton traces the requests that bring a traceparent, to "
        "http://127.0.0.1:4318/v1/traces"
    ]
    mine = ("--trace-config=mode=opentelemetry", "--trace-config=rate=1")
    assert Supervisor(ServeOptions(triton_args=mine), said.append)._triton_args() == list(mine)


def test_otel_sdk_disabled_records_and_propagates_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    exported = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracing = OtelTracing(provider)
    gateway = RecordingGateway()
    _, trace_id = serve(tracing, scorer(tracing, gateway), b'{"x": [1, 2, 3, 4]}', {})
    assert exported.get_finished_spans() == () and gateway.headers == [None] and trace_id == ""
