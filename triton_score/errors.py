"""One exception hierarchy for everything a client can be told.

Each error carries the HTTP status it maps to and a message that is safe to show a client:
no stack trace, no internal addresses. The web layer turns any :class:`ScoringError` into a
JSON body ``{"error": ..., "code": ...}``; anything else becomes a 500 whose details go only
to the log. The classes know nothing of Flask, so processors can raise them too.
"""

from __future__ import annotations

from typing import Any


class ScoringError(Exception):
    """Base class: ``status_code`` and a client-safe ``message``."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_dict(self, request_id: str = "") -> dict[str, Any]:
        """The JSON body a client gets: ``{"error", "code", ...details, "request_id"}``.

        This is the only place an error body is built (the web app and the entry script's
        ``run()`` both use it), so every error a client sees has the same shape.
        """
        body: dict[str, Any] = {"error": self.message, "code": self.code}
        body.update(self.details)
        if request_id:
            body.setdefault("request_id", request_id)
        return body

    @property
    def headers(self) -> dict[str, str]:
        """Response headers this error asks for (``Retry-After`` on a 503)."""
        return {}


class BadRequest(ScoringError):
    """The request cannot be scored as sent (400). Raise it from a processor, too."""

    status_code = 400
    code = "bad_request"


class InvalidInput(BadRequest):
    """An input tensor does not match the model's metadata (400); names the input."""

    code = "invalid_input"

    def __init__(self, input_name: str, message: str, **details: Any) -> None:
        super().__init__(
            f"input {input_name!r}: {message}", details={"input": input_name, **details}
        )


class InvalidRequest(BadRequest):
    """The request does not match the processor's ``request_schema`` (400); names the field.

    :param field: where the offending value is (``image``, ``items[2].name``); empty for the
        body itself.
    """

    code = "invalid_request"

    def __init__(self, field: str, message: str) -> None:
        where = f"field {field!r}" if field else "the request body"
        super().__init__(f"{where}: {message}", details={"field": field})


class UnsupportedMediaType(ScoringError):
    """The request's content type is not one the processor accepts (415)."""

    status_code = 415
    code = "unsupported_media_type"


class HTTPFailure(ScoringError):
    """A protocol-level refusal (404 route, 405 method, 413 body, 431 header...)."""

    def __init__(self, message: str, status_code: int, code: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class Unauthorized(ScoringError):
    """No valid API key (401), with the ``WWW-Authenticate: Bearer`` challenge of RFC 6750.

    :param error: RFC 6750's ``error`` attribute: ``invalid_token`` for a key that is not
        valid, ``invalid_request`` for a malformed header, empty for a missing one. The key
        itself is never part of the message.
    """

    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str, *, error: str = "") -> None:
        super().__init__(message)
        self.error = error

    @property
    def headers(self) -> dict[str, str]:
        challenge = 'Bearer realm="triton-score"'
        if self.error:
            challenge += f', error="{self.error}"'
        return {"WWW-Authenticate": challenge}


class BodyTooLarge(ScoringError):
    """The request body is above the limit of the route (413); the message names the limit.

    The limit is ``SCORE_MAX_BODY_BYTES``, or a processor's lower ``max_body_bytes``; ``/score``
    checks ``Content-Length`` before it reads the body.
    """

    status_code = 413
    #: The code of Flask's own 413, so that every 413 carries the same one.
    code = "request_entity_too_large"

    def __init__(self, limit: int, size: int | None = None, *, source: str = "") -> None:
        body = f"{size} bytes" if size is not None else "larger than that"
        where = f" ({source})" if source else ""
        super().__init__(
            f"the request body may be at most {limit} bytes{where}; it is {body}",
            details={"limit_bytes": limit},
        )


class TooManyRows(ScoringError):
    """A request sends more rows (its batch dimension) than one request may (413); the
    message names the input and the limit (``SCORE_MAX_ROWS`` or the processor's
    ``max_rows``). Rows beyond the model's ``max_batch_size`` are not an error: they are
    split into several Triton calls (:mod:`triton_score.triton.batches`)."""

    status_code = 413
    code = "too_many_rows"

    def __init__(self, input_name: str, rows: int, limit: int, source: str) -> None:
        super().__init__(
            f"input {input_name!r}: {rows} rows; a request may send at most {limit} ({source})",
            details={"input": input_name, "rows": rows, "limit_rows": limit},
        )


class InternalError(ScoringError):
    """Anything unexpected: the client learns only the request id; the log has the rest."""

    def __init__(self, request_id: str = "") -> None:
        super().__init__(f"internal server error; see the server log for request id {request_id}")


class ModelNotFound(ScoringError):
    status_code = 404
    code = "model_not_found"


class ProcessorError(ScoringError):
    """A processor raised something other than :class:`ScoringError` (500, logged)."""

    code = "processor_error"


class RunFunctionFailed(ProcessorError):
    """An entry script's ``run()`` raised (500, logged); flagged as azmlinfsrv flags it."""

    @property
    def headers(self) -> dict[str, str]:
        return {"x-ms-run-function-failed": "True"}


class TritonError(ScoringError):
    """Triton answered with an error: a 4xx keeps Triton's status and message; anything else
    is a 500 whose message names only what failed (Triton's own message is logged)."""

    code = "triton_error"

    def __init__(self, message: str, status_code: int = 500) -> None:
        super().__init__(message)
        self.status_code = status_code


class TritonUnavailable(ScoringError):
    """Triton cannot be reached or is not ready (503, with ``Retry-After``)."""

    status_code = 503
    code = "triton_unavailable"
    retry_after_s = 5

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class Overloaded(ScoringError):
    """This worker already has its limit of scoring requests in flight (503, ``Retry-After``).

    Raised before the request's body is read (``SCORE_MAX_IN_FLIGHT``), so that a client learns
    at once to try again (another worker, another replica, or this one a moment later) instead
    of waiting in a queue for a 504.
    """

    status_code = 503
    code = "overloaded"

    def __init__(self, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"the server is busy: {limit} scoring requests are already in flight in this "
            f"worker (SCORE_MAX_IN_FLIGHT); retry after {retry_after_s} s",
            details={"retry_after_s": retry_after_s},
        )
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class ScoringTimeout(ScoringError):
    status_code = 504
    code = "timeout"
