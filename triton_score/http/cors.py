"""CORS for the origins in ``AML_CORS_ORIGINS``, as azmlinfsrv (with flask-cors) answers.

``AML_CORS_ORIGINS`` is a comma-separated list: exact origins (``https://app.example.com``,
compared without regard to case), ``*`` for any origin, or regular expressions (an entry
with any of ``*\\]?$^[]()``). A pattern must match the **whole** origin: flask-cors (and so
azmlinfsrv) matches from the start only, so ``https://app\\.example\\.com`` — the careful way
to write one exact origin — would also allow ``https://app.example.com.evil.net``. For a
request whose ``Origin`` is allowed, every response carries:

- ``Access-Control-Allow-Origin``: that origin;
- on a preflight (``OPTIONS`` with ``Access-Control-Request-Method`` GET or POST):
  ``Access-Control-Allow-Methods: GET, POST`` and ``Access-Control-Allow-Headers`` echoing
  the requested headers.

Requests from other origins, and requests without ``Origin``, get no CORS headers. Every
response carries ``Vary: Origin``, since whether it has them depends on that header: a
shared cache must not hand one origin's answer (or the answer without ``Origin``) to another.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from werkzeug.datastructures import Headers

ALLOW_ORIGIN = "Access-Control-Allow-Origin"
ALLOW_METHODS = "Access-Control-Allow-Methods"
ALLOW_HEADERS = "Access-Control-Allow-Headers"
REQUEST_METHOD = "Access-Control-Request-Method"
REQUEST_HEADERS = "Access-Control-Request-Headers"
#: The methods azmlinfsrv allows cross-origin.
METHODS = ("GET", "POST")
_PATTERN_HINTS = frozenset("*\\]?$^[]()")
_REQUEST_METHOD_KEY = "HTTP_ACCESS_CONTROL_REQUEST_METHOD"
_REQUEST_HEADERS_KEY = "HTTP_ACCESS_CONTROL_REQUEST_HEADERS"


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

    def allows(self, origin: str) -> bool:
        return origin.casefold() in self.exact or any(p.fullmatch(origin) for p in self.patterns)

    def apply(self, environ: Mapping[str, Any], headers: Headers) -> None:
        """Add to a response's ``headers`` what the request (its WSGI ``environ``) calls for."""
        if "origin" not in {v.strip().lower() for v in headers.get_all("Vary")}:
            headers.add("Vary", "Origin")
        origin = environ.get("HTTP_ORIGIN", "")
        if not origin or ALLOW_ORIGIN in headers or not self.allows(origin):
            return
        headers[ALLOW_ORIGIN] = origin
        if (
            environ.get("REQUEST_METHOD") == "OPTIONS"
            and environ.get(_REQUEST_METHOD_KEY, "").upper() in METHODS
        ):
            asked = environ.get(_REQUEST_HEADERS_KEY, "")
            names = sorted(h.strip() for h in asked.split(",") if h.strip())
            if names:
                headers[ALLOW_HEADERS] = ", ".join(names)
            headers[ALLOW_METHODS] = ", ".join(METHODS)
