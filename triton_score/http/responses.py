"""What every view answers with: JSON bodies, errors in one shape, the app's runtime.

Every error a client sees is rendered by :func:`~triton_score.codecs.response.encode_error`
from a :class:`~triton_score.errors.ScoringError`: ours, werkzeug's own refusals (404, 405,
413...) converted by :func:`http_failure`, and the unexpected ones by :func:`unexpected`,
whose details go to the log only. The Flask app's error handlers (:func:`error_response`,
:func:`http_error`, :func:`unexpected_error`) and the ``/score`` routes served without Flask
(:mod:`triton_score.http.score_wsgi`) use the same three.
"""

from __future__ import annotations

import logging

from flask import Response, current_app
from werkzeug.exceptions import HTTPException

from triton_score.codecs.response import Encoded, encode_error, encode_json
from triton_score.errors import HTTPFailure, InternalError, ScoringError
from triton_score.http.exchange import current, request_id
from triton_score.runtime import Runtime
from triton_score.telemetry.tracing import log_ids

log = logging.getLogger("triton_score")
#: Where the app keeps its :class:`Runtime` (``app.extensions[EXTENSION]``).
EXTENSION = "triton_score"


def runtime() -> Runtime:
    """The :class:`Runtime` of the app handling the current request."""
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


def send(encoded: Encoded) -> Response:
    """An :class:`Encoded` answer as a Flask response."""
    return Response(
        encoded.body,
        status=encoded.status,
        headers=encoded.headers,
        content_type=encoded.content_type,
    )


def json_response(body: object, status: int = 200) -> Response:
    return Response(encode_json(body), status=status, mimetype="application/json")


def http_failure(exc: HTTPException) -> HTTPFailure:
    """werkzeug's own refusals (404 route, 405 method, 413 body too large) as ours."""
    code = exc.name.lower().replace(" ", "_")
    return HTTPFailure(exc.description or exc.name, exc.code or 500, code)


def unexpected(exc: Exception) -> ScoringError:
    """What the client gets for a bug (a 500 naming the request id, nothing else); the
    traceback goes to the log, with the request's ids."""
    exchange = current()
    ids = log_ids(exchange.request_id, exchange.trace_id) if exchange else log_ids("")
    log.error("unhandled error (%s)", ids, exc_info=exc)
    return InternalError(request_id())


def error_response(exc: ScoringError) -> Response:
    """The one renderer of error bodies, for the Flask app's views and hooks."""
    return send(encode_error(exc, request_id()))


def http_error(exc: HTTPException) -> Response:
    return error_response(http_failure(exc))


def unexpected_error(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return http_error(exc)
    return error_response(unexpected(exc))
