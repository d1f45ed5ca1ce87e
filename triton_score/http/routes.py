"""Routes: health, scoring, ``/v2`` forwarding, OpenAPI and metrics, all on one port.

==========================  ======================================================
``GET /``                   liveness: 200 ``Healthy`` while the worker runs
``GET /v2/health/live``     liveness, Triton style
``GET /v2/health/ready``    200 only when the models are loaded and Triton is ready; 503
                            from SIGTERM on (``SCORE_DRAIN_FILE``, see ``serve``)
``POST /score``             score on the default model (the only one, or SCORE_MODEL); with
                            an entry script, its run() (also GET, and OPTIONS for @rawhttp)
``POST /score/<model>``     score on a named model
``/v2/...``                 forwarded to Triton unchanged (metadata, infer, stats...)
``GET /swagger.json``       Swagger 2.0 (as azmlinfsrv), OpenAPI 3 with ``?version=3``
``GET /openapi.json``       the OpenAPI 3 document built from the models and processors
``GET /metrics``            Prometheus metrics of all workers
``GET /metrics/triton``     Triton's own metrics (``nv_inference_*``), fetched from its port
==========================  ======================================================

With API keys (``SCORE_API_KEYS``/``SCORE_API_KEYS_FILE``) every route but ``/`` and
``/v2/health/*`` needs ``Authorization: Bearer <key>``: see :mod:`triton_score.http.auth`.

A worker with ``SCORE_MAX_IN_FLIGHT`` scoring requests in flight answers the next ``/score``
503 with ``Retry-After`` at once, before reading its body; the other routes are never shed
(:mod:`triton_score.http.shedding`).
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from triton_score.codecs.request import REQUEST_ID
from triton_score.codecs.response import Encoded, render
from triton_score.codecs.tensors import is_raw_tensor, largest_request_bytes
from triton_score.deadline import request_deadline
from triton_score.entry_script import EntryScript
from triton_score.errors import (
    BadRequest,
    BodyTooLarge,
    HTTPFailure,
    Overloaded,
    ScoringError,
    ScoringTimeout,
    TritonError,
    TritonUnavailable,
)
from triton_score.http.access import record_stage
from triton_score.http.body import IncompleteBody, read_exactly
from triton_score.http.forward import INFER, TritonForwarder, TritonMetrics
from triton_score.http.responses import error_response, json_response, runtime
from triton_score.http.shedding import InFlightLimit
from triton_score.http.v2_infer import ModelCatalog, check_infer_request
from triton_score.runtime import Runtime
from triton_score.scoring import ModelPlan, RequestTelemetry

log = logging.getLogger("triton_score")
blueprint = Blueprint("triton_score", __name__)
#: Where the app keeps its ``/v2`` forwarder.
FORWARDER = "triton_score.forwarder"
#: Where the app keeps its :class:`TritonMetrics` (``/metrics/triton``).
TRITON_METRICS = "triton_score.triton_metrics"
#: Where the app keeps its :class:`InFlightLimit` (``SCORE_MAX_IN_FLIGHT``).
IN_FLIGHT = "triton_score.in_flight"
#: Where the app keeps the :class:`ModelCatalog` that ``/v2`` infer requests are checked with.
V2_MODELS = "triton_score.v2_models"

#: Failures counted in score_triton_errors_total, by kind.
TRITON_FAILURES = {
    TritonUnavailable: "unavailable",
    ScoringTimeout: "timeout",
    TritonError: "error",
}

#: Request-id headers AzureML's inference server accepts and echoes (and ``x-request-id``).
MS_REQUEST_ID = "x-ms-request-id"
MS_CLIENT_REQUEST_ID = "x-ms-client-request-id"


#: Response headers azmlinfsrv adds to run()'s answers: time spent in run(), in ms, and
#: whether it failed (raised, or answered 5xx).
RUN_TIME = "x-ms-run-fn-exec-ms"
RUN_FUNCTION_FAILED = "x-ms-run-function-failed"

#: AzureML's server refuses longer ids with 431; so do we.
MAX_ID_LENGTH = 100


def assign_request_id() -> Response | None:
    """Take ids as AzureML's server does.

    ``x-request-id`` is the client's or a new UUID; ``x-ms-client-request-id`` (or the
    deprecated ``x-ms-request-id``) is the client's own id, echoed back and reported as
    ``x-ms-request-id``.
    """
    g.client_request_id = ""
    incoming = {
        name: request.headers.get(name, "")
        for name in (REQUEST_ID, MS_CLIENT_REQUEST_ID, MS_REQUEST_ID)
    }
    for name, value in incoming.items():
        if len(value) > MAX_ID_LENGTH or not value.isprintable():
            return error_response(
                HTTPFailure(
                    f"{name} must be printable and at most {MAX_ID_LENGTH} characters",
                    431,
                    "bad_request_id",
                )
            )
    # A uuid4 costs a few microseconds of os.urandom: make one only when the client sent none.
    g.request_id = incoming[REQUEST_ID] or str(uuid.uuid4())
    g.client_request_id = incoming[MS_CLIENT_REQUEST_ID] or incoming[MS_REQUEST_ID]
    return None


def echo_request_id(response: Response) -> Response:
    response.headers[REQUEST_ID] = g.get("request_id", "")
    client_id = g.get("client_request_id", "")
    response.headers[MS_REQUEST_ID] = client_id or g.get("request_id", "")
    if client_id:
        response.headers[MS_CLIENT_REQUEST_ID] = client_id
    return response


# -- health ------------------------------------------------------------------------------
@blueprint.get("/")
def liveness() -> Response:
    return Response("Healthy", mimetype="text/plain")


@blueprint.get("/v2/health/live")
def live() -> Response:
    return json_response({"live": True})


@blueprint.get("/v2/health/ready")
def ready() -> Response:
    rt = runtime()
    if rt.settings.drain_file and os.path.exists(rt.settings.drain_file):
        # Shutting down (score serve got SIGTERM): still scoring, but send no new requests.
        draining = HTTPFailure("the server is shutting down", 503, "draining")
        draining.details = {"ready": False, "draining": True}
        return error_response(draining)
    if rt.is_ready():
        return json_response({"ready": True})
    not_ready = TritonUnavailable(
        "Triton is not ready or models are not loaded", details={"ready": False}
    )
    return error_response(not_ready)


# -- scoring -----------------------------------------------------------------------------
def _model_label(model: str | None) -> str:
    scorer = runtime().scorer
    if scorer is None:
        return "entry_script"
    if model:
        return model if model in scorer.models else "unknown"
    try:
        return scorer.model(None).name if scorer.loaded else "default"
    except ScoringError:
        return "default"


def _other_method(rt: Runtime) -> Response | None:
    """``/score`` for a method other than POST: the entry script's run() when it reads that
    method; otherwise 200 to OPTIONS (a CORS preflight, as azmlinfsrv), else 405."""
    if rt.entry_script is not None and request.method in rt.entry_script.methods:
        return None
    if request.method == "OPTIONS":
        allowed = "GET, OPTIONS, POST" if rt.entry_script is not None else "OPTIONS, POST"
        return Response(status=200, headers={"Allow": allowed})
    script = rt.entry_script
    raise MethodNotAllowed(valid_methods=sorted(script.methods) if script else ["POST"])


def _run_entry_script(script: EntryScript, telemetry: RequestTelemetry) -> Response:
    """run()'s output as a response (a response object as it is, anything else as JSON),
    with azmlinfsrv's ``x-ms-run-fn-exec-ms`` and ``x-ms-run-function-failed``."""
    result = script.run(request._get_current_object(), g.request_id)  # type: ignore[attr-defined]
    telemetry.add("run", result.elapsed_ms / 1000)
    if isinstance(result.output, Response):  # AMLResponse (ours or azmlinfsrv's) and friends
        response = result.output
    else:
        response = _send(render(result.output))
    response.headers[RUN_FUNCTION_FAILED] = str(response.status_code >= 500)
    response.headers[RUN_TIME] = f"{result.elapsed_ms:.3f}"
    return response


def _send(encoded: Encoded) -> Response:
    return Response(
        encoded.body,
        status=encoded.status,
        headers=encoded.headers,
        content_type=encoded.content_type,
    )


def _shed(rt: Runtime, limit: InFlightLimit, model: str | None) -> Response:
    """The 503 of a request beyond ``SCORE_MAX_IN_FLIGHT``: counted, logged now and then."""
    label = _model_label(model)
    g.model = label
    limit.shed(label)
    rt.metrics.shed.labels(label).inc()
    rt.metrics.requests.labels(label, "503").inc()
    return error_response(Overloaded(limit.limit, rt.settings.retry_after_s))


def _read_body(limit: int, source: str) -> bytes:
    """The request body, refused with a 413 naming ``limit`` when it is larger.

    A ``Content-Length`` above the limit is refused before a byte of the body is read; a body
    without one (chunked) is read up to the limit only.
    """
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(limit, length, source=source)
    if length is not None:
        try:  # in place: the body is held once, and tensors are views over it
            return read_exactly(request.stream, length)
        except IncompleteBody as exc:
            raise BadRequest(str(exc)) from None
    # Werkzeug stops a chunked body at max_content_length without a word (it raises only on
    # a read past it): read one byte more than the limit, and refuse a body that has it.
    request.max_content_length = limit + 1
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise BodyTooLarge(limit, source=source) from None
    if len(body) > limit:
        raise BodyTooLarge(limit, source=source)
    return body


@blueprint.route("/score", methods=["GET", "POST", "OPTIONS"], provide_automatic_options=False)
@blueprint.post("/score/<model>")
def score(model: str | None = None) -> Response:
    rt = runtime()
    if request.method != "POST":
        answered = _other_method(rt)
        if answered is not None:
            return answered
    # Shed at once, before the body is read: waiting in a full worker ends in a 504 anyway.
    in_flight: InFlightLimit = current_app.extensions[IN_FLIGHT]
    if not in_flight.enter():
        return _shed(rt, in_flight, model)
    try:  # at once: nothing between enter() and here can raise and keep the slot
        return _score_admitted(rt, model)
    finally:
        in_flight.leave()


def _score_admitted(rt: Runtime, model: str | None) -> Response:
    """``/score`` for a request within ``SCORE_MAX_IN_FLIGHT``: HTTP only. The model's plan
    is resolved once; the scorer runs the stages; the telemetry records the request."""
    scorer = rt.scorer
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
            label = _model_label(model)
    g.model = label
    telemetry = RequestTelemetry.start(
        rt.metrics,
        rt.tracing,
        method=request.method,
        route="/score/{model}" if model else "/score",
        headers=request.headers,
        request_id=g.request_id,
        model=label,
    )
    g.stages = telemetry.timings  # for the access line
    if telemetry.trace_id:
        g.trace_id = telemetry.trace_id  # for the log lines of this request
    status = 500
    triton_failure = ""
    try:
        with request_deadline(rt.settings.scoring_timeout_ms):
            if rt.entry_script is not None:
                response = _run_entry_script(rt.entry_script, telemetry)
                status = response.status_code
                return response
            assert scorer is not None
            content_type = request.content_type or ""
            if plan is None:  # an unknown model, or Triton down: too large a body comes first
                _read_body(rt.settings.max_body_bytes, "SCORE_MAX_BODY_BYTES")
                assert refused is not None  # no plan: resolving the model raised this
                raise refused
            # A raw tensor's limit is exact; known from the headers, before the body is read.
            raw = is_raw_tensor(content_type, request.headers)
            body = _read_body(*plan.body_limit(raw=raw))
            encoded = scorer.handle(
                plan,
                body,
                content_type,
                dict(request.headers),  # the one copy; the Request keeps it
                telemetry,
                query=request.args.to_dict(),  # first value of a repeated parameter
            )
        status = encoded.status
        return _send(encoded)
    except ScoringError as exc:
        status = exc.status_code
        triton_failure = TRITON_FAILURES.get(type(exc), "")
        return error_response(exc)
    except HTTPException as exc:  # Flask's own refusal (an entry script's 413): as answered
        status = exc.code or 500
        raise
    finally:
        telemetry.finish(status, label, triton_failure)


# -- Triton passthrough ------------------------------------------------------------------
@blueprint.route("/v2", methods=["GET", "POST"])
@blueprint.route("/v2/<path:path>", methods=["GET", "POST"])
def forward(path: str = "") -> Response:
    """``/v2/...`` to Triton: refused paths before the body is read; infer requests shed
    like ``/score``, their body bounded by the model's largest valid request, and checked
    (:mod:`triton_score.http.v2_infer`) before they are sent."""
    rt = runtime()
    route = "/v2/" + path if path else "/v2"
    target = route + ("?" + request.query_string.decode("latin-1") if request.query_string else "")
    forwarder: TritonForwarder = current_app.extensions[FORWARDER]
    infer = INFER.match(route) if request.method == "POST" else None
    started = time.perf_counter()
    try:
        forwarder.check_allowed(request.method, route)
        if infer is None:
            with request_deadline(rt.settings.scoring_timeout_ms):
                # The same limit as /score: a chunked body above it is refused, not truncated.
                body = _read_body(rt.settings.max_body_bytes, "SCORE_MAX_BODY_BYTES")
                status, body, headers = forwarder.forward(
                    request.method, target, body, dict(request.headers)
                )
            return Response(body, status=status, headers=headers)
        in_flight: InFlightLimit = current_app.extensions[IN_FLIGHT]
        if not in_flight.enter():
            return _shed(rt, in_flight, infer["model"])
        try:
            with request_deadline(rt.settings.scoring_timeout_ms):
                status, body, headers = _forward_infer(rt, forwarder, infer, target)
        finally:
            in_flight.leave()
        return Response(body, status=status, headers=headers)
    except ScoringError as exc:
        return error_response(exc)
    finally:
        record_stage("forward", time.perf_counter() - started)


def _forward_infer(
    rt: Runtime, forwarder: TritonForwarder, infer: re.Match[str], target: str
) -> tuple[int, bytes, list[tuple[str, str]]]:
    catalog: ModelCatalog = current_app.extensions[V2_MODELS]
    model = catalog.get(infer["model"], infer["version"] or "")
    g.model = _model_label(model.name)
    limit, source = rt.settings.max_body_bytes, "SCORE_MAX_BODY_BYTES"
    largest = largest_request_bytes(model)
    if largest is not None and largest < limit:
        limit, source = largest, f"the largest valid request for model {model.name}"
    body = _read_body(limit, source)
    headers = dict(request.headers)
    check_infer_request(model, body, headers)
    return forwarder.forward(request.method, target, body, headers)


# -- documents ---------------------------------------------------------------------------
@blueprint.get("/swagger.json")
def swagger() -> Response:
    """Swagger 2.0 by default, OpenAPI 3 with ``?version=3``, as azmlinfsrv answers."""
    from triton_score.http.openapi import build_openapi
    from triton_score.http.swagger2 import OPENAPI3_VERSIONS, SWAGGER2_VERSIONS, to_swagger2

    version = request.args.get("version", "2")
    if version in OPENAPI3_VERSIONS:
        return json_response(build_openapi(runtime()))
    if version in SWAGGER2_VERSIONS:
        return json_response(to_swagger2(build_openapi(runtime())))
    return error_response(
        HTTPFailure(
            f"swagger version {version[:20]!r} is not served: choose 2 (the default) or 3",
            404,
            "unknown_document_version",
        )
    )


@blueprint.get("/openapi.json")
def openapi() -> Response:
    """Our OpenAPI 3 document, whatever azmlinfsrv's default is."""
    from triton_score.http.openapi import build_openapi

    return json_response(build_openapi(runtime()))


@blueprint.get("/metrics")
def metrics() -> Response:
    body, content_type = runtime().metrics.render()
    return Response(body, mimetype=content_type.split(";")[0], content_type=content_type)


@blueprint.get("/metrics/triton")
def triton_metrics() -> Response:
    """Triton's own metrics (``nv_inference_*``), scrapeable through the scoring port."""
    scraper: TritonMetrics = current_app.extensions[TRITON_METRICS]
    try:
        status, body, content_type = scraper.scrape()
    except ScoringError as exc:
        return error_response(exc)
    return Response(body, status=status, content_type=content_type)
