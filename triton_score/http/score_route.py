"""``POST /score[/<model>]``, HTTP only: shed, resolve, read the body, score, answer.

:class:`ScoreRoute` is the route's one body, written over the WSGI environ so that it runs
the same under Flask's view (:func:`triton_score.http.routes.score`, for entry scripts and
other methods) and without Flask's request cycle (:mod:`triton_score.http.score_wsgi`, how
a native deployment serves every ``POST /score``):

1. beyond ``SCORE_MAX_IN_FLIGHT`` requests in this worker: a 503 at once, before the body
   (:mod:`triton_score.http.shedding`);
2. the model's :class:`~triton_score.scoring.ModelPlan`: one lookup;
3. the request's :class:`~triton_score.scoring.RequestTelemetry` (its span, in flight);
4. within the request deadline (``SCORING_TIMEOUT_MS``): the body, read within the plan's
   limit (:mod:`triton_score.http.body`), then the scorer's six stages, or the entry script's
   ``run()``;
5. every outcome an answer (errors in their one shape), and the telemetry finished once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from flask import Response
from werkzeug.datastructures import EnvironHeaders
from werkzeug.exceptions import HTTPException

from triton_score.codecs.response import Encoded, encode_error, encode_json, render
from triton_score.codecs.tensors import is_raw_tensor
from triton_score.errors import (
    Overloaded,
    ScoringError,
    ScoringTimeout,
    TritonError,
    TritonUnavailable,
)
from triton_score.http.body import read_body
from triton_score.http.exchange import Exchange
from triton_score.http.responses import http_failure, unexpected
from triton_score.http.shedding import InFlightLimit
from triton_score.runtime import Runtime
from triton_score.scoring import ModelPlan, RequestTelemetry
from triton_score.telemetry.metrics import StreamMeter
from triton_score.triton.deadline import request_deadline

#: Failures counted in score_triton_errors_total, by kind.
TRITON_FAILURES = {
    TritonUnavailable: "unavailable",
    ScoringTimeout: "timeout",
    TritonError: "error",
}
#: The routes' rules, as the access line and the metrics name them.
RULE, MODEL_RULE = "/score", "/score/<model>"

#: An entry script's run(), given the request's telemetry: a Flask response.
ScriptCall = Callable[[RequestTelemetry], Response]
#: What a client sends in ``Accept`` to have a decoupled model's answer streamed.
EVENT_STREAM = "text/event-stream"


@dataclass(eq=False)
class Streamed:
    """An answer sent as server-sent events, one per value of a decoupled model's stream
    (:meth:`~triton_score.scoring.Scorer.stream`): ``data: <JSON>``, then the end of the
    body. A failure once the stream has begun is one ``event: error`` with the error's JSON.

    The request stays in flight, and its telemetry open, until the stream ends: finished,
    failed, or its client gone (the WSGI server then closes :attr:`chunks`).
    """

    chunks: Iterator[bytes]
    status: int = 200
    content_type: str = EVENT_STREAM
    headers: dict[str, str] = field(
        default_factory=lambda: {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def wants_events(environ: dict[str, Any]) -> bool:
    return EVENT_STREAM in environ.get("HTTP_ACCEPT", "")


def query_args(environ: dict[str, Any]) -> dict[str, str]:
    """The query string's parameters, the first value of a repeated one (as Flask's
    ``request.args.to_dict()``)."""
    query: str = environ.get("QUERY_STRING", "")
    if not query:
        return {}
    if not query.isascii():
        query = query.encode("latin-1").decode("utf-8", errors="replace")
    args: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, errors="replace"):
        args.setdefault(name, value)
    return args


class _EventStream:
    """The SSE body of a decoupled model's values, as the WSGI server reads it: ``data:
    <JSON>`` per value, one ``event: error`` when one fails, then the end.

    The stream's request ends exactly once (``done(status, triton_failure)``, the meter,
    Triton's request closed): when the values run out, after the error event, or at
    ``close()``, which the WSGI server calls when the client went away, even when it never
    began reading (a generator that never ran would have no ``finally`` to run).
    """

    def __init__(
        self,
        values: Iterator[Any],
        request_id: str,
        meter: StreamMeter,
        done: Callable[[int, str], None],
    ) -> None:
        self._values = values
        self._request_id = request_id
        self._meter = meter
        self._done = done
        self._ended = False

    def __iter__(self) -> _EventStream:
        return self

    def __next__(self) -> bytes:
        if self._ended:
            raise StopIteration
        try:
            event = b"data: " + encode_json(next(self._values)) + b"\n\n"
        except StopIteration:
            self._end(200, "", "completed")
            raise
        except ScoringError as exc:
            return self._error(exc, TRITON_FAILURES.get(type(exc), ""))
        except Exception as exc:  # noqa: BLE001 - a bug ends the stream, the worker serves on
            return self._error(unexpected(exc), "")
        self._meter.response()
        return event

    def close(self) -> None:
        self._end(499, "", "cancelled")  # a no-op once ended

    def _error(self, error: ScoringError, failure: str) -> bytes:
        self._end(200, failure, "failed")
        return b"event: error\ndata: " + encode_error(error, self._request_id).body + b"\n\n"

    def _end(self, status: int, failure: str, outcome: str) -> None:
        if self._ended:
            return
        self._ended = True
        close = getattr(self._values, "close", None)
        if close is not None:
            close()  # ends Triton's request
        self._meter.end(outcome)
        self._done(status, failure)


class ScoreRoute:
    """The ``/score`` routes of one app.

    :param in_flight: this worker's count of scoring requests (``SCORE_MAX_IN_FLIGHT``).
    """

    def __init__(self, runtime: Runtime, in_flight: InFlightLimit) -> None:
        self.runtime = runtime
        self.in_flight = in_flight

    def answer(
        self, exchange: Exchange, model: str | None, script: ScriptCall | None = None
    ) -> Encoded | Response | Streamed:
        """The answer to one scoring request (never raises).

        :param model: the model named in the path; ``None``: the default one.
        :param script: the entry script's run(), in entry-script mode.
        """
        in_flight = self.in_flight
        # Shed at once, before the body is read: waiting in a full worker ends in a 504 anyway.
        if not in_flight.enter():
            return self.shed(exchange, model)
        answered: Encoded | Response | Streamed | None = None
        try:  # at once: nothing between enter() and here can raise and keep the slot
            answered = self._admitted(exchange, model, script)
            return answered
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and the worker serves on
            return encode_error(unexpected(exc), exchange.request_id)
        finally:
            if not isinstance(answered, Streamed):  # a stream leaves when it ends
                in_flight.leave()

    def model_label(self, model: str | None) -> str:
        """The model's label in metrics and the access line (``unknown`` for a model that
        is not served: a client cannot make up label values)."""
        scorer = self.runtime.scorer
        if scorer is None:
            return "entry_script"
        if model:
            return model if model in scorer.models else "unknown"
        try:
            return scorer.model(None).name if scorer.loaded else "default"
        except ScoringError:
            return "default"

    def shed(self, exchange: Exchange, model: str | None) -> Encoded:
        """The 503 of a request beyond ``SCORE_MAX_IN_FLIGHT``: counted, logged now and then
        (``/v2`` inference is shed by the same rule)."""
        rt = self.runtime
        label = self.model_label(model)
        exchange.model = label
        self.in_flight.shed(label)
        rt.metrics.shed.labels(label).inc()
        rt.metrics.requests.labels(label, "503").inc()
        return encode_error(
            Overloaded(self.in_flight.limit, rt.settings.retry_after_s), exchange.request_id
        )

    def _admitted(
        self, exchange: Exchange, model: str | None, script: ScriptCall | None
    ) -> Encoded | Response | Streamed:
        rt = self.runtime
        scorer = rt.scorer
        environ = exchange.environ
        plan: ModelPlan | None = None
        refused: ScoringError | None = None
        if scorer is None:
            label = "entry_script"
        else:
            try:
                plan = scorer.plan(model)
                label = plan.name
            except ScoringError as exc:  # answered below, inside the request's telemetry
                refused = exc
                label = self.model_label(model)
        exchange.model = label
        headers = EnvironHeaders(environ)
        telemetry = RequestTelemetry.start(
            rt.metrics,
            rt.tracing,
            method=environ.get("REQUEST_METHOD", ""),
            route="/score/{model}" if model else "/score",
            headers=headers,
            request_id=exchange.request_id,
            model=label,
        )
        exchange.stages = telemetry.timings  # for the access line
        exchange.trace_id = telemetry.trace_id  # for the log lines of this request
        status = 500
        triton_failure = ""
        streaming = False
        try:
            with request_deadline(rt.settings.scoring_timeout_ms):
                if script is not None:
                    response = script(telemetry)
                    status = response.status_code
                    return response
                assert scorer is not None
                content_type: str = environ.get("CONTENT_TYPE", "")
                if plan is None:  # an unknown model, or Triton down: too large a body first
                    read_body(environ, rt.settings.max_body_bytes, "SCORE_MAX_BODY_BYTES")
                    assert refused is not None  # no plan: resolving the model raised this
                    raise refused
                # A raw tensor's limit is exact; known from the headers, before the body.
                raw = is_raw_tensor(content_type, headers)
                body = read_body(environ, *plan.body_limit(raw=raw))
                if plan.model.decoupled:
                    values = scorer.handle_stream(
                        plan,
                        body,
                        content_type,
                        dict(headers),
                        telemetry,
                        query=query_args(environ),
                    )
                    if not wants_events(environ):  # the whole stream, as one JSON list
                        encoded = render(list(values))
                        status = encoded.status
                        return encoded
                    finish = telemetry.finish
                    in_flight = self.in_flight

                    def done(final: int, failure: str) -> None:
                        finish(final, label, failure)
                        in_flight.leave()

                    meter = rt.metrics.stream(label, exchange.started)
                    streaming = True  # done() finishes the telemetry
                    return Streamed(_EventStream(values, exchange.request_id, meter, done))
                encoded = scorer.handle(
                    plan,
                    body,
                    content_type,
                    dict(headers),  # the one copy
                    telemetry,
                    query=query_args(environ),
                )
            status = encoded.status
            return encoded
        except ScoringError as exc:
            status = exc.status_code
            triton_failure = TRITON_FAILURES.get(type(exc), "")
            return encode_error(exc, exchange.request_id)
        except HTTPException as exc:  # werkzeug's refusal (an entry script's 413): as it says
            failure = http_failure(exc)
            status = failure.status_code
            return encode_error(failure, exchange.request_id)
        finally:
            if not streaming:  # a stream's is finished when it ends
                telemetry.finish(status, label, triton_failure)
