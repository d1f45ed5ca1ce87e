"""Forward ``/v2/...`` to Triton, so one port serves both (as an AzureML endpoint does).

Only inference and read-only introspection pass (see :data:`FORWARDED`); Triton's control
APIs answer 403 here, before a byte of the body is read. An infer request is parsed and
checked against the model's metadata first (:mod:`triton_score.http.v2_infer`): no shared
memory, no priority or timeout of the client's own, no tensor Triton would fail on.

Clients written for Triton (``tritonclient``, ``perf_analyzer``, curl against
``/v2/models/<m>/versions/<v>/infer``) work against the scoring port unchanged, binary
tensor extension included: once checked, bodies and the ``Inference-Header-Content-Length``
header pass through untouched. ``Authorization`` never does: it holds the client's key for
this server (or an AzureML endpoint's), which is no business of Triton's.

:class:`TritonMetrics` fetches Triton's Prometheus metrics (``nv_inference_*``) for
``GET /metrics/triton``, since Triton's metrics port is not reachable from outside.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

from geventhttpclient import HTTPClient

from triton_score.errors import BadRequest, ScoringError, ScoringTimeout, TritonUnavailable
from triton_score.repository.locations import split_address
from triton_score.triton.deadline import Abandoned, shielded
from triton_score.triton.pool import free_connections, make_http_pool_fair

_MODEL = r"/v2/models/[^/]+(?:/versions/[^/]+)?"
#: What a path segment may hold unescaped (RFC 3986 ``pchar``), and ``/``.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
#: An infer path, with the model's name and version (empty: Triton's choice).
INFER = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
#: What the scoring port passes on: inference and read-only introspection. Triton's control
#: APIs (model load/unload, logging and trace settings, shared-memory registration) stay
#: reachable only on Triton's own port, never through a public endpoint.
FORWARDED: dict[str, re.Pattern[str]] = {
    "GET": re.compile(rf"^/v2$|^/v2/models/stats$|^{_MODEL}(?:/ready|/config|/stats)?$"),
    "POST": re.compile(rf"^{_MODEL}/(?:infer|generate|generate_stream)$|^/v2/repository/index$"),
}


class NotForwarded(ScoringError):
    status_code = 403
    code = "not_forwarded"


# Hop-by-hop headers (RFC 9110 7.6.1) and those the WSGI server sets itself.
_DROP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    # Credentials for this server (SCORE_API_KEYS) or the AzureML endpoint, not for Triton.
    "authorization",
    "cookie",
    # Answered by our own server already (the body is read in full before it is sent on);
    # forwarded, Triton would answer "100 Continue" first, a reply a client may take for
    # the answer, leaving the real one on a pooled connection for the next caller.
    "expect",
}


def end_to_end(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` without hop-by-hop ones: those of :data:`_DROP`, and those the request's
    own ``Connection`` header names (RFC 9110 7.6.1)."""
    named = {
        token.strip().lower()
        for key, value in headers.items()
        if key.lower() == "connection"
        for token in value.split(",")
    }
    return {k: v for k, v in headers.items() if k.lower() not in _DROP and k.lower() not in named}


class TritonForwarder:
    """A small HTTP proxy to Triton's HTTP endpoint."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 60.0,
        concurrency: int = 16,
        abandoned: Abandoned | None = None,
    ) -> None:
        self._abandoned = abandoned
        host, port = split_address(url)
        self._client = HTTPClient(
            host,
            port=port,
            concurrency=concurrency,
            connection_timeout=min(timeout_s, 10.0),
            network_timeout=timeout_s,
        )
        # First come, first served past `concurrency` calls, as the hop's (see script_clients).
        make_http_pool_fair(self._client)

    def close(self) -> None:
        self._client.close()

    def free_connections(self) -> int | None:
        """Connections no forwarded call holds now."""
        return free_connections(self._client)

    @staticmethod
    def allowed(method: str, path: str) -> bool:
        pattern = FORWARDED.get(method.upper())
        return bool(pattern and pattern.match(path.split("?", 1)[0]))

    @classmethod
    def check_allowed(cls, method: str, path: str) -> None:
        """:raises NotForwarded: for Triton's control APIs (403), before any body is read."""
        if not cls.allowed(method, path):
            raise NotForwarded(
                f"{method} {path.split('?', 1)[0]} is not forwarded to Triton through the "
                "scoring port: only inference and read-only model information are"
            )

    def forward(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        """Send one request to Triton; returns status, body and end-to-end headers.

        ``path`` is the decoded path (as routed), with its raw query string; it is quoted
        again for the request line, so that a model name that needs escaping reaches Triton
        as the client wrote it, and nothing in it can break the request line.

        :raises NotForwarded: for Triton's control APIs (403).
        """
        self.check_allowed(method, path)
        route, mark, query = path.partition("?")
        target = quote(route, safe=_PATH_SAFE) + mark + query
        send = end_to_end(headers)

        def exchange() -> tuple[int, bytes, list[tuple[str, str]]]:
            # Whole, in one greenlet: a deadline can abandon it but never cut it in half
            # (geventhttpclient keeps a connection slot that a send interrupted never frees).
            response = self._client.request(method, target, body=body, headers=send)
            content = response.read()
            response.release()
            kept = [(k, v) for k, v in response.items() if k.lower() not in _DROP]
            return response.status_code, content, kept

        try:
            # (+1024: the request line and headers)
            return shielded(exchange, self._abandoned, sends=len(body) + 1024)
        except TimeoutError as exc:
            raise ScoringTimeout("Triton did not answer in time") from exc
        except OSError as exc:
            raise TritonUnavailable(f"Triton is unreachable: {type(exc).__name__}") from exc
        except ValueError as exc:  # geventhttpclient's own refusal of a request target
            raise BadRequest(f"the path cannot be forwarded: {exc}") from None


class TritonMetrics:
    """Triton's Prometheus endpoint (``http://host:8002/metrics`` by default), fetched on demand.

    :param url: ``http://host:port/path``, as :meth:`Settings.triton_metrics_endpoint` gives.
    """

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        self.url = url
        self.path = parts.path or "/metrics"
        self._client = HTTPClient(
            parts.hostname or "localhost",
            port=parts.port or 8002,
            concurrency=2,
            connection_timeout=min(timeout_s, 5.0),
            network_timeout=timeout_s,
        )
        # First come, first served past `concurrency` calls, as the hop's (see script_clients).
        make_http_pool_fair(self._client)

    def close(self) -> None:
        self._client.close()

    def free_connections(self) -> int | None:
        """Connections no forwarded call holds now."""
        return free_connections(self._client)

    def scrape(self) -> tuple[int, bytes, str]:
        """Status, body and content type of Triton's metrics page.

        :raises TritonUnavailable: Triton's metrics endpoint cannot be reached (503).
        """
        try:
            response = self._client.get(self.path)
            content = response.read()
            response.release()
        except (TimeoutError, OSError) as exc:
            raise TritonUnavailable(
                f"Triton's metrics endpoint is unreachable: {type(exc).__name__} "
                "(SCORE_TRITON_METRICS_URL)"
            ) from exc
        content_type = response.get("content-type") or "text/plain; version=0.0.4"
        if isinstance(content_type, list):
            content_type = content_type[0]
        return response.status_code, content, content_type
