"""CORS for the origins in ``AML_CORS_ORIGINS``, as azmlinfsrv (with flask-cors) answers.

``AML_CORS_ORIGINS`` is a comma-separated list: exact origins (``https://app.example.com``,
compared without regard to case), ``*`` for any origin, or regular expressions (an entry
with any of ``*\\]?$^[]()``, matched from the start, as flask-cors reads it). For a request
whose ``Origin`` is allowed, every response carries:

- ``Access-Control-Allow-Origin``: that origin;
- ``Vary: Origin`` when the answer depends on the origin (several origins, or a pattern);
- on a preflight (``OPTIONS`` with ``Access-Control-Request-Method`` GET or POST):
  ``Access-Control-Allow-Methods: GET, POST`` and ``Access-Control-Allow-Headers`` echoing
  the requested headers.

Requests from other origins, and requests without ``Origin``, get no CORS headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from flask import Request, Response

ALLOW_ORIGIN = "Access-Control-Allow-Origin"
ALLOW_METHODS = "Access-Control-Allow-Methods"
ALLOW_HEADERS = "Access-Control-Allow-Headers"
REQUEST_METHOD = "Access-Control-Request-Method"
REQUEST_HEADERS = "Access-Control-Request-Headers"
#: The methods azmlinfsrv allows cross-origin.
METHODS = ("GET", "POST")
_PATTERN_HINTS = frozenset("*\\]?$^[]()")


class Cors:
    """The allowed origins, and what to add to a response."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.exact: set[str] = set()
        self.patterns: list[re.Pattern[str]] = []
        for origin in (o.strip() for o in origins):
            if not origin:
                continue
            if origin == "*":
                self.patterns.append(re.compile(".*"))
            elif _PATTERN_HINTS.isdisjoint(origin):
                self.exact.add(origin.casefold())
            else:
                try:
                    self.patterns.append(re.compile(origin, re.IGNORECASE))
                except re.error as exc:
                    raise ValueError(
                        f"AML_CORS_ORIGINS: {origin!r} is not a valid pattern"
                    ) from exc
        #: Whether the answer depends on the request's origin (for ``Vary``).
        self.varies = len(self.exact) + len(self.patterns) > 1 or bool(self.patterns)

    def allows(self, origin: str) -> bool:
        return origin.casefold() in self.exact or any(p.match(origin) for p in self.patterns)

    def apply(self, request: Request, response: Response) -> Response:
        origin = request.headers.get("Origin", "")
        if not origin or ALLOW_ORIGIN in response.headers or not self.allows(origin):
            return response
        response.headers[ALLOW_ORIGIN] = origin
        if (
            request.method == "OPTIONS"
            and request.headers.get(REQUEST_METHOD, "").upper() in METHODS
        ):
            asked = request.headers.get(REQUEST_HEADERS, "")
            headers = sorted(h.strip() for h in asked.split(",") if h.strip())
            if headers:
                response.headers[ALLOW_HEADERS] = ", ".join(headers)
            response.headers[ALLOW_METHODS] = ", ".join(METHODS)
        if self.varies:
            response.headers.add("Vary", "Origin")
        return response
