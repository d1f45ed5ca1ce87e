"""``POST /score`` and ``POST /score/<model>`` straight from WSGI; everything else to Flask.

Flask's request cycle (its request and app contexts, URL routing, the hook lists, a
``Request`` and a ``Response`` object with their header structures) cost about as much CPU
as our whole scoring pipeline on a small model: a sixth of a worker's time per request,
measured with py-spy (``benchmarks/README.md``). A scoring request needs none of it, so
:class:`ScoreWSGI` sits in front of the Flask app (as ``app.wsgi_app``, Flask's own place for
middleware, so Gunicorn and Flask's test client both go through it) and serves those two
routes itself; any other request, and every request of an entry script (whose ``run()``
gets a Flask request), goes on to Flask unchanged.

Nothing about the route is written twice: the request and the answer go through the same
:class:`~triton_score.http.envelope.Envelope` as Flask's hooks (ids, API keys, CORS, the
access line), and the route's body is :class:`~triton_score.http.score_route.ScoreRoute`,
which Flask's view calls too. What only this module does is the WSGI itself: match the two
paths, and send the answer with ``start_response``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Response
from werkzeug.datastructures import Headers
from werkzeug.http import HTTP_STATUS_CODES

from triton_score.http.envelope import Envelope
from triton_score.http.exchange import request_path
from triton_score.http.responses import send
from triton_score.http.score_route import MODEL_RULE, RULE, ScoreRoute, Streamed

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_PREFIX = "/score/"
#: Headers whose values werkzeug rewrites when it sends a response.
_REWRITTEN = frozenset({"location", "content-location"})


def _status_line(status: int) -> str:
    return f"{status} {HTTP_STATUS_CODES.get(status, 'UNKNOWN')}"


#: The status lines of the statuses seen, made once each.
_STATUS_LINES = {status: _status_line(status) for status in HTTP_STATUS_CODES}


class ScoreWSGI:
    """The scoring routes as a WSGI app, in front of ``app`` (the Flask app's ``wsgi_app``).

    :param envelope: the app's envelope, as its Flask hooks use it.
    :param route: the app's ``/score`` routes, as its Flask view uses them.
    """

    def __init__(self, app: WSGIApp, envelope: Envelope, route: ScoreRoute) -> None:
        self.app = app
        self.envelope = envelope
        self.route = route

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST":
            path: str = environ.get("PATH_INFO", "")
            if path == RULE:
                return self.serve(environ, start_response, None)
            if path.startswith(_PREFIX):
                # Flask's <model>: one path segment, not empty (``/score/`` is a 404 there).
                model = request_path(environ)[len(_PREFIX) :]
                if model and "/" not in model:
                    return self.serve(environ, start_response, model)
        return self.app(environ, start_response)

    def serve(
        self, environ: dict[str, Any], start_response: Callable[..., Any], model: str | None
    ) -> Iterable[bytes]:
        """One scoring request, start to end: :meth:`Envelope.open`, the route, the answer's
        headers and access line (:meth:`Envelope.close`), sent."""
        envelope = self.envelope
        exchange, answer = envelope.open(environ)
        try:
            # As Flask's hook notes them: the path's model until the route resolves it.
            exchange.route, exchange.model = (RULE, "") if model is None else (MODEL_RULE, model)
            if answer is None:
                scored = self.route.answer(exchange, model)
                assert not isinstance(scored, Response)  # only entry scripts answer those
                if isinstance(scored, Streamed):
                    # A decoupled model's events: sent as they come (chunked, no length);
                    # the access line is written now, when the stream begins.
                    headers = Headers(scored.headers)
                    headers["Content-Type"] = scored.content_type
                    envelope.close(exchange, scored.status, headers)
                    start_response(_STATUS_LINES[scored.status], headers.to_wsgi_list())
                    return scored.chunks
                answer = scored
            status = answer.status
            if (
                status < 200
                or status in (204, 304)
                or _REWRITTEN.intersection(name.lower() for name in answer.headers)
            ):
                # What werkzeug edits on the way out (no body or length for a 204, a
                # Location made a URI) is left to it: a processor's rare answer.
                response = send(answer)
                envelope.close(exchange, status, response.headers)
                return response(environ, start_response)  # type: ignore[no-any-return]
            headers = Headers(answer.headers)
            headers["Content-Type"] = answer.content_type
            headers["Content-Length"] = str(len(answer.body))
            envelope.close(exchange, status, headers)
        finally:
            exchange.release()
        line = _STATUS_LINES.get(status) or _status_line(status)
        start_response(line, headers.to_wsgi_list())
        return (answer.body,)
