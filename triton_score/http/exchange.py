"""One request and its answer, as the web layer tracks it: the :class:`Exchange`.

Everything the layer notes about a request while it is handled lives here, typed, in one
object: when it started, its ids, the route and model it reached, its stage timings, its
trace. :class:`~triton_score.http.envelope.Envelope` makes one per request, for the Flask
app's routes and for the ``/score`` routes served without Flask's request cycle
(:mod:`triton_score.http.score_wsgi`) alike, and makes it the *current* exchange
(:func:`current`), which is what log lines read their request id from.

The current exchange is a :mod:`contextvars` variable: per greenlet under gevent, per thread
otherwise, and carried into the offload pool's threads with the rest of the context
(:mod:`triton_score.scoring.offload`), so concurrent requests never see each other's.
"""

from __future__ import annotations

import time
from contextvars import Token
from dataclasses import dataclass, field
from typing import Any

from triton_score.telemetry import logs


@dataclass(slots=True, eq=False)
class Exchange:
    """What the web layer knows of one request, from its first byte to its access line.

    :param environ: the request's WSGI environ (headers are read from it, never copied).
    """

    environ: dict[str, Any]
    #: The path, decoded as Flask's ``request.path`` is (:func:`request_path`).
    path: str = ""
    #: ``time.perf_counter()`` when the request reached us: the access line's duration.
    started: float = field(default_factory=time.perf_counter)
    #: ``x-request-id``: the client's, or a new UUID.
    request_id: str = ""
    #: ``x-ms-client-request-id`` (or the deprecated ``x-ms-request-id``), as the client sent it.
    client_request_id: str = ""
    #: The route's rule (``/score/<model>``), for the access line.
    route: str = ""
    #: The model's label (for metrics and the access line); ``""`` when none applies.
    model: str = ""
    #: Seconds per stage, as the access line prints them (the scoring telemetry's own dict).
    stages: dict[str, float] = field(default_factory=dict)
    #: The request's trace id when tracing is on, for its log lines.
    trace_id: str = ""
    #: The ``Authorization`` header, taken out of the environ until the key is checked.
    authorization: str | None = None
    _token: Token[Any] | None = None

    def record_stage(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` to ``stage`` (the ``/v2`` forwarder's time, for instance)."""
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    def make_current(self) -> None:
        """Make this the request being handled (its log lines carry its ids)."""
        self._token = logs.CURRENT_REQUEST.set(self)

    def release(self) -> None:
        """No longer the current request (a kept-alive connection's next request is not)."""
        if self._token is not None:
            logs.CURRENT_REQUEST.reset(self._token)
            self._token = None


def request_path(environ: dict[str, Any]) -> str:
    """The request's path as Flask sees it: ``PATH_INFO`` (a WSGI server hands it over as
    latin-1) read as UTF-8, with one leading slash."""
    path: str = environ.get("PATH_INFO") or ""
    if not path.isascii():
        path = path.encode("latin-1").decode("utf-8", errors="replace")
    return "/" + path.lstrip("/")


def current() -> Exchange | None:
    """The exchange being handled in this greenlet or thread, if any."""
    found = logs.CURRENT_REQUEST.get()
    return found if isinstance(found, Exchange) else None


def request_id() -> str:
    """The current request's id (``""`` outside a request)."""
    found = current()
    return found.request_id if found is not None else ""
