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

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import MethodNotAllowed

from triton_score.azureml.host import EntryScript
from triton_score.codecs.response import Encoded, render
from triton_score.codecs.tensors import largest_request_bytes
from triton_score.errors import HTTPFailure, ScoringError, TritonUnavailable
from triton_score.http.body import read_body
from triton_score.http.exchange import Exchange, current
from triton_score.http.forward import INFER, TritonForwarder, TritonMetrics
from triton_score.http.responses import error_response, json_response, runtime, send
from triton_score.http.score_route import ScoreRoute, Streamed
from triton_score.http.v2_infer import ModelCatalog, check_infer_request
from triton_score.runtime import Runtime
from triton_score.scoring import RequestTelemetry
from triton_score.triton.deadline import request_deadline

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

#: Where the app keeps its :class:`~triton_score.http.score_route.ScoreRoute`.
SCORE_ROUTE = "triton_score.score_route"

#: Response headers azmlinfsrv adds to run()'s answers: time spent in run(), in ms, and
#: whether it failed (raised, or answered 5xx).
RUN_TIME = "x-ms-run-fn-exec-ms"
RUN_FUNCTION_FAILED = "x-ms-run-function-failed"


def exchange() -> Exchange:
    """The current request's exchange (the app's first hook made it)."""
    found = current()
    assert found is not None, "a view runs after the envelope's hook"
    return found


def score_route() -> ScoreRoute:
    return current_app.extensions[SCORE_ROUTE]  # type: ignore[no-any-return]


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


def _run_entry_script(
    script: EntryScript, request_id: str, telemetry: RequestTelemetry
) -> Response:
    """run()'s output as a response (a response object as it is, anything else as JSON),
    with azmlinfsrv's ``x-ms-run-fn-exec-ms`` and ``x-ms-run-function-failed``."""
    result = script.run(request._get_current_object(), request_id)  # type: ignore[attr-defined]
    telemetry.add("run", result.elapsed_ms / 1000)
    output = result.output  # AMLResponse (ours or azmlinfsrv's) and friends go as they are
    response = output if isinstance(output, Response) else send(render(output))
    response.headers[RUN_FUNCTION_FAILED] = str(response.status_code >= 500)
    response.headers[RUN_TIME] = f"{result.elapsed_ms:.3f}"
    return response


@blueprint.route("/score", methods=["GET", "POST", "OPTIONS"], provide_automatic_options=False)
@blueprint.post("/score/<model>")
def score(model: str | None = None) -> Response:
    """Entry scripts' ``/score``, and other methods than POST. A native deployment's POSTs
    are served before Flask (:mod:`triton_score.http.score_wsgi`); both run
    :class:`~triton_score.http.score_route.ScoreRoute`."""
    rt = runtime()
    if request.method != "POST":
        answered = _other_method(rt)
        if answered is not None:
            return answered
    seen = exchange()
    script = rt.entry_script
    answer = score_route().answer(
        seen,
        model,
        None
        if script is None
        else lambda telemetry: _run_entry_script(script, seen.request_id, telemetry),
    )
    if isinstance(answer, Streamed):
        return Response(
            answer.chunks, answer.status, headers=answer.headers, content_type=answer.content_type
        )
    return send(answer) if isinstance(answer, Encoded) else answer


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
    seen = exchange()
    started = time.perf_counter()
    try:
        forwarder.check_allowed(request.method, route)
        if infer is None:
            with request_deadline(rt.settings.scoring_timeout_ms):
                # The same limit as /score: a chunked body above it is refused, not truncated.
                body = read_body(
                    request.environ, rt.settings.max_body_bytes, "SCORE_MAX_BODY_BYTES"
                )
                status, body, headers = forwarder.forward(
                    request.method, target, body, dict(request.headers)
                )
            return Response(body, status=status, headers=headers)
        scoring = score_route()
        in_flight = scoring.in_flight
        if not in_flight.enter():
            return send(scoring.shed(seen, infer["model"]))
        try:
            with request_deadline(rt.settings.scoring_timeout_ms):
                status, body, headers = _forward_infer(rt, seen, forwarder, infer, target)
        finally:
            in_flight.leave()
        return Response(body, status=status, headers=headers)
    except ScoringError as exc:
        return error_response(exc)
    finally:
        seen.record_stage("forward", time.perf_counter() - started)


def _forward_infer(
    rt: Runtime, seen: Exchange, forwarder: TritonForwarder, infer: re.Match[str], target: str
) -> tuple[int, bytes, list[tuple[str, str]]]:
    catalog: ModelCatalog = current_app.extensions[V2_MODELS]
    model = catalog.get(infer["model"], infer["version"] or "")
    seen.model = score_route().model_label(model.name)
    limit, source = rt.settings.max_body_bytes, "SCORE_MAX_BODY_BYTES"
    largest = largest_request_bytes(model)
    if largest is not None and largest < limit:
        limit, source = largest, f"the largest valid request for model {model.name}"
    body = read_body(request.environ, limit, source)
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
