"""The one observer of a scoring request: spans, stage timings, metrics, the access line.

Each request gets a :class:`RequestTelemetry` from its route. The stages run inside
:meth:`RequestTelemetry.stage`, which opens the stage's span (when tracing is on) and times
it; :meth:`RequestTelemetry.finish` then records the request once: its span's status, the
request counter and duration, each metered stage's histogram, and the timings that the
access line prints. Nothing else in the request path times, traces or counts; observers are
given to it, never patched in.

The metered stages are those of ``score_stage_duration_seconds`` and the access line:
``preprocess`` (the processor's checks and ``preprocess``, and validation, which belongs to
it from a processor author's view), ``infer`` and ``postprocess``. ``decode`` and ``encode``
are spans only: they are the web layer's share, in the request's duration.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from triton_score.telemetry.tracing import NO_REQUEST_SPAN, NO_TRACING, RequestSpan, Tracing

if TYPE_CHECKING:
    from triton_score.telemetry.metrics import Metrics

#: Stage -> the metered stage its time counts towards (stages not here are spans only).
METERED = {
    "preprocess": "preprocess",
    "validate": "preprocess",
    "infer": "infer",
    "postprocess": "postprocess",
}


class _Stage:
    """One stage in progress: its span, and its clock (a class, not a generator: this runs
    several times a request, and ``contextlib`` costs about three times as much)."""

    __slots__ = ("_telemetry", "_metered", "_span", "_started")

    def __init__(self, telemetry: RequestTelemetry, name: str) -> None:
        self._telemetry = telemetry
        self._metered = METERED.get(name)
        self._span = telemetry.tracing.span(name, telemetry.model, telemetry.request_id)

    def __enter__(self) -> Any:
        entered = self._span.__enter__()
        self._started = time.perf_counter()
        return entered

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        if kind is None and self._metered is not None:
            timings = self._telemetry.timings
            elapsed = time.perf_counter() - self._started
            timings[self._metered] = timings.get(self._metered, 0.0) + elapsed
        return self._span.__exit__(kind, error, traceback)


class RequestTelemetry:
    """What is observed of one request, recorded by :meth:`finish`.

    The route makes one with :meth:`start`; a scorer used on its own (AzureML's ``run()``,
    tests, a notebook) makes a bare one: stage spans when tracing is on, no metrics.

    :param metrics: where the request is counted; ``None``: nowhere.
    :param span: the request's own span, which the stage spans go under.
    """

    def __init__(
        self,
        metrics: Metrics | None = None,
        tracing: Tracing = NO_TRACING,
        *,
        request_id: str = "",
        model: str = "",
        span: RequestSpan = NO_REQUEST_SPAN,
    ) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self.request_id = request_id
        #: The model's label for spans and metrics (the scorer sets it once it is known).
        self.model = model
        #: Seconds per metered stage, as the access line prints them.
        self.timings: dict[str, float] = {}
        self._span = span
        self._started = time.perf_counter()
        if metrics is not None:
            metrics.in_flight.inc()

    @classmethod
    def start(
        cls,
        metrics: Metrics | None,
        tracing: Tracing,
        *,
        method: str,
        route: str,
        headers: Any,
        request_id: str,
        model: str,
    ) -> RequestTelemetry:
        """A request's telemetry, from its first moment: its span (a child of the caller's
        ``traceparent`` in ``headers``) is open, and it counts as in flight."""
        span = tracing.request(method, route, headers, request_id, lambda: model)
        return cls(metrics, tracing, request_id=request_id, model=model, span=span)

    @property
    def trace_id(self) -> str:
        """The request's trace id (hex), ``""`` without tracing."""
        return self._span.trace_id

    def elapsed(self) -> float:
        """Seconds since the request began."""
        return time.perf_counter() - self._started

    def stage(self, name: str) -> _Stage:
        """``with telemetry.stage("infer"): ...``: the stage's span and time."""
        return _Stage(self, name)

    def add(self, stage: str, seconds: float) -> None:
        """Time spent in ``stage`` measured elsewhere (an entry script's ``run()``)."""
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    def finish(self, status: int, model: str = "", triton_failure: str = "") -> None:
        """Record the request: ``status`` answered for ``model`` (its label in metrics);
        ``triton_failure``: the kind of Triton failure behind it, if any."""
        model = model or self.model
        self._span.finish(status, model)
        metrics = self.metrics
        if metrics is None:
            return
        metrics.in_flight.dec()
        child = metrics.child
        child(metrics.requests, model, str(status)).inc()
        child(metrics.duration, model).observe(time.perf_counter() - self._started)
        for stage, seconds in self.timings.items():
            if stage in METERED:
                child(metrics.stage, model, stage).observe(seconds)
        if triton_failure:
            child(metrics.triton_errors, model, triton_failure).inc()
