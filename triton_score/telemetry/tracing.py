"""Tracing: a span per scoring request and per stage, joined with Triton's own spans.

Off by default (``SCORE_TRACING`` unset), and then free: :data:`NO_TRACING` answers every
call with a shared no-op object, and nothing imports OpenTelemetry. ``SCORE_TRACING=otel``
builds an :class:`~triton_score.telemetry.otel.OtelTracing` instead (the OpenTelemetry SDK,
configured by the standard ``OTEL_*`` variables; the ``tracing`` extra), which:

- continues the caller's trace when the request carries a W3C ``traceparent``;
- opens a server span for the request (``POST /score/{model}``) with child spans for the
  stages ``decode``, ``preprocess``, ``validate``, ``infer``, ``postprocess``, ``encode``,
  each tagged with :data:`MODEL` and :data:`REQUEST_ID`;
- sends the ``infer`` span's ``traceparent`` to Triton with the inference call, so that a
  Triton started with ``--trace-config mode=opentelemetry`` puts its own spans
  (``InferRequest`` > model > ``compute``) under it, in the same trace.

The request path only ever calls :meth:`Tracing.span`, :meth:`Tracing.request`,
:meth:`Tracing.headers` and :meth:`Tracing.trace_id` (through
:class:`~triton_score.scoring.RequestTelemetry`). A Triton call that coalescing joined for
several requests carries the ``traceparent`` of the first of them (``triton/coalesce.py``): Triton's
spans for that call go under that request's ``infer`` span; the other requests' ``infer``
spans time their wait and share of it, without Triton's spans beneath.

The ``tritonserver`` flags that send Triton's own spans to the same collector are the
supervisor's business: :mod:`triton_score.serve.triton_trace`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from triton_score.settings import Settings

#: Span attributes of ours; Triton's spans carry ``triton.model_name``/``triton.request_id``.
MODEL = "score.model_name"
REQUEST_ID = "score.request_id"
#: The request's stages, in order, as span names.
STAGES = ("decode", "preprocess", "validate", "infer", "postprocess", "encode")

_NULL: AbstractContextManager[Any] = nullcontext()


class RequestSpan:
    """One request's server span, as the routes see it; this one does nothing."""

    #: The trace id, 32 lower-case hex digits, or ``""`` when there is no span.
    trace_id = ""

    def stage(self, name: str) -> AbstractContextManager[Any]:
        """A child span for stage ``name`` of this request."""
        return _NULL

    def finish(self, status: int, model: str = "") -> None:
        """End the span with the response's status and the model that served it."""


NO_REQUEST_SPAN = RequestSpan()


class Tracing:
    """Tracing turned off: every method is a constant answer, nothing is recorded."""

    enabled = False

    def request(
        self,
        method: str,
        route: str,
        headers: Any,
        request_id: str,
        model: Callable[[], str] = str,
    ) -> RequestSpan:
        """Open the server span of one request, the caller's ``traceparent`` its parent.

        :param headers: the request's headers (any mapping whose ``get`` ignores case).
        :param model: called once, only when tracing, for the model to tag the span with.
        """
        return NO_REQUEST_SPAN

    def span(
        self, stage: str, model: str = "", request_id: str = ""
    ) -> AbstractContextManager[Any]:
        """A child span of the current one, for one stage of one request."""
        return _NULL

    def headers(self) -> dict[str, str] | None:
        """What to send to Triton with an inference call: the current span's ``traceparent``
        (when it is sampled), else ``None``."""
        return None

    def trace_id(self) -> str:
        """The current trace id (hex), for the log; ``""`` when there is none."""
        return ""

    def shutdown(self) -> None:
        """Export what is still buffered, and stop."""


#: The one :class:`Tracing` used when ``SCORE_TRACING`` is off.
NO_TRACING = Tracing()


def start_tracing(settings: Settings) -> Tracing:
    """The tracing ``settings`` ask for: :data:`NO_TRACING`, or OpenTelemetry."""
    if settings.tracing != "otel":
        return NO_TRACING
    try:
        from triton_score.telemetry.otel import OtelTracing  # only when turned on
    except ImportError as exc:
        raise RuntimeError(
            f"SCORE_TRACING=otel needs the OpenTelemetry SDK ({exc.name} is missing): "
            "pip install 'triton-score[tracing]'"
        ) from exc
    return OtelTracing.from_env()


def log_ids(request_id: str, trace_id: str = "") -> str:
    """``request <id>``, and ``, trace <id>`` when there is one: how log lines name a request."""
    return f"request {request_id}, trace {trace_id}" if trace_id else f"request {request_id}"
