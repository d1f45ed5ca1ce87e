"""OpenTelemetry tracing (``SCORE_TRACING=otel``): the SDK, configured by ``OTEL_*``.

Imported only when tracing is on (:func:`triton_score.telemetry.tracing.start_tracing`); needs the
``tracing`` extra. What the standard variables do here:

- ``OTEL_TRACES_EXPORTER`` (``otlp``): ``otlp``, ``console``, ``none``, or any exporter
  installed under the SDK's ``opentelemetry_traces_exporter`` entry points, comma-separated;
- ``otlp`` is OTLP/HTTP protobuf (the OpenTelemetry specification's default protocol, and
  the exporter the extra installs) unless ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL=grpc``
  (then ``opentelemetry-exporter-otlp-proto-grpc`` must be installed);
- the exporter reads ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, ``..._HEADERS``,
  ``..._TIMEOUT``, ``..._COMPRESSION``; the batch processor ``OTEL_BSP_*``; the sampler
  ``OTEL_TRACES_SAMPLER[_ARG]``; the propagators ``OTEL_PROPAGATORS``; the resource
  ``OTEL_SERVICE_NAME`` (default here: ``triton-score``) and ``OTEL_RESOURCE_ATTRIBUTES``;
  ``OTEL_SDK_DISABLED=true`` records nothing.

Each worker builds its own provider after the fork. It becomes OpenTelemetry's global one
when no other was set, so that spans a processor opens with
``opentelemetry.trace.get_tracer(...)`` land in the same trace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from triton_score import __version__
from triton_score.errors import ScoringError
from triton_score.settings import environment
from triton_score.telemetry.tracing import MODEL, REQUEST_ID, RequestSpan, Tracing

log = logging.getLogger(__name__)

#: ``service.name`` when neither ``OTEL_SERVICE_NAME`` nor ``OTEL_RESOURCE_ATTRIBUTES`` says.
DEFAULT_SERVICE_NAME = "triton-score"
_EXPORTER_GROUP = "opentelemetry_traces_exporter"
_OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The entry-point names of the exporters ``OTEL_TRACES_EXPORTER`` asks for."""
    names = [
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if name.strip()
    ]
    if "none" in names:
        return []
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    resolved = []
    for name in names:
        if name == "otlp":
            if protocol not in _OTLP_BY_PROTOCOL:
                raise ValueError(
                    f"OTLP protocol {protocol!r} is not supported here: use http/protobuf or grpc"
                )
            name = _OTLP_BY_PROTOCOL[protocol]
        resolved.append(name)
    return resolved


def find_exporter(name: str) -> type[SpanExporter]:
    """An exporter class by its entry-point name (``otlp_proto_http``, ``console``...)."""
    found = entry_points(group=_EXPORTER_GROUP, name=name)
    if not found:
        package = {"otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc"}.get(
            name, "the package that provides it"
        )
        raise ValueError(f"OTEL_TRACES_EXPORTER: no span exporter {name!r}; install {package}")
    return next(iter(found)).load()  # type: ignore[no-any-return]


def resource_from_env() -> Resource:
    """``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, else ``triton-score``."""
    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def _hex_trace_id(span: trace.Span) -> str:
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def _failed(span: trace.Span, exc: BaseException) -> None:
    """Record a failure on ``span``: its status is an error unless the client's (a 4xx)."""
    span.record_exception(exc)
    status = exc.status_code if isinstance(exc, ScoringError) else 500
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class _OtelRequestSpan(RequestSpan):
    def __init__(
        self, tracing: OtelTracing, span: trace.Span, token: object, model: str, request_id: str
    ) -> None:
        self._tracing = tracing
        self._span = span
        self._token = token
        self._model = model
        self._request_id = request_id
        self.trace_id = _hex_trace_id(span)

    def stage(self, name: str) -> AbstractContextManager[Any]:
        return self._tracing.span(name, self._model, self._request_id)

    def finish(self, status: int, model: str = "") -> None:
        span = self._span
        span.set_attribute("http.response.status_code", status)
        if model or self._model:
            span.set_attribute(MODEL, model or self._model)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        otel_context.detach(self._token)  # type: ignore[arg-type]
        span.end()


class OtelTracing(Tracing):
    """Tracing through the OpenTelemetry SDK; build it with :meth:`from_env`."""

    enabled = True

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("triton_score", __version__)
        self._closed = False

    @classmethod
    def from_env(cls) -> OtelTracing:
        """A provider with a batch processor per exporter ``OTEL_TRACES_EXPORTER`` names."""
        provider = TracerProvider(resource=resource_from_env())
        names = exporter_names(environment())
        for name in names:
            provider.add_span_processor(BatchSpanProcessor(find_exporter(name)()))
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(provider)
        log.info(
            "tracing: OpenTelemetry, service %s, exporting to %s",
            provider.resource.attributes.get(SERVICE_NAME),
            ", ".join(names) or "nothing (OTEL_TRACES_EXPORTER=none)",
        )
        return cls(provider)

    def request(
        self,
        method: str,
        route: str,
        headers: Any,
        request_id: str,
        model: Callable[[], str] = str,
    ) -> RequestSpan:
        parent = propagate.extract(headers)
        label = model()
        attributes = {"http.request.method": method, "http.route": route, REQUEST_ID: request_id}
        if label:
            attributes[MODEL] = label
        span = self._tracer.start_span(
            f"{method} {route}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return _OtelRequestSpan(self, span, token, label, request_id)

    def span(
        self, stage: str, model: str = "", request_id: str = ""
    ) -> AbstractContextManager[Any]:
        return self._stage(stage, model, request_id)

    @contextmanager
    def _stage(self, stage: str, model: str, request_id: str) -> Iterator[trace.Span]:
        attributes = {MODEL: model, REQUEST_ID: request_id}
        with self._tracer.start_as_current_span(
            stage,
            attributes={key: value for key, value in attributes.items() if value},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as exc:
                _failed(span, exc)
                raise

    def headers(self) -> dict[str, str] | None:
        # Triton traces every request that carries a traceparent, sampled flag or not: an
        # unsampled request sends none, or Triton's spans would hang from spans nobody has.
        if not trace.get_current_span().get_span_context().trace_flags.sampled:
            return None
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier or None

    def trace_id(self) -> str:
        return _hex_trace_id(trace.get_current_span())

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            self.provider.shutdown()
