"""What every view answers with: JSON bodies, errors in one shape, the app's runtime.

Every error a client sees is rendered by :func:`error_response` from a
:class:`~triton_score.errors.ScoringError` — ours, Flask's own refusals (404, 405, 413...)
converted by :func:`http_error`, and the unexpected ones by :func:`unexpected_error`, whose
details go to the log only.
"""

from __future__ import annotations

import logging

from flask import Response, current_app, g
from werkzeug.exceptions import HTTPException

from triton_score.codecs.response import encode_json
from triton_score.errors import HTTPFailure, InternalError, ScoringError
from triton_score.runtime import Runtime
from triton_score.tracing import log_ids

log = logging.getLogger("triton_score")
#: Where the app keeps its :class:`Runtime` (``app.extensions[EXTENSION]``).
EXTENSION = "triton_score"


def runtime() -> Runtime:
    """The :class:`Runtime` of the app handling the current request."""
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


def json_response(body: object, status: int = 200) -> Response:
    return Response(encode_json(body), status=status, mimetype="application/json")


def error_response(exc: ScoringError) -> Response:
    """The one renderer of error bodies: ``{"error", "code", ..., "request_id"}``."""
    response = json_response(exc.to_dict(g.get("request_id", "")), exc.status_code)
    response.headers.update(exc.headers)
    return response


def http_error(exc: HTTPException) -> Response:
    """Flask's own errors (404 route, 405 method, 413 body too large) as JSON."""
    code = exc.name.lower().replace(" ", "_")
    return error_response(HTTPFailure(exc.description or exc.name, exc.code or 500, code))


def unexpected_error(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return http_error(exc)
    request_id = g.get("request_id", "")
    log.exception("unhandled error (%s)", log_ids(request_id, g.get("trace_id", "")))
    return error_response(InternalError(request_id))
