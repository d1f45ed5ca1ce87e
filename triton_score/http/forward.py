"""Forward ``/v2/...`` to Triton, so one port serves both (as an AzureML endpoint does).

Only inference and read-only introspection pass (see :data:`FORWARDED`); Triton's control
APIs answer 403 here.

Clients written for Triton (``tritonclient``, ``perf_analyzer``, curl against
``/v2/models/<m>/versions/<v>/infer``) work against the scoring port unchanged, binary
tensor extension included: bodies and the ``Inference-Header-Content-Length`` header pass
through untouched. ``Authorization`` never does: it holds the client's key for this server
(or an AzureML endpoint's), which is no business of Triton's.

:class:`TritonMetrics` fetches Triton's Prometheus metrics (``nv_inference_*``) for
``GET /metrics/triton``, since Triton's metrics port is not reachable from outside.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from geventhttpclient import HTTPClient

from triton_score.errors import ScoringError, ScoringTimeout, TritonUnavailable

_MODEL = r"/v2/models/[^/]+(?:/versions/[^/]+)?"
#: What the scoring port passes on: inference and read-only introspection. Triton's control
#: APIs (model load/unload, logging and trace settings, shared-memory registration) stay
#: reachable only on Triton's own port, never through a public endpoint.
FORWARDED: dict[str, re.Pattern[str]] = {
    "GET": re.compile(rf"^/v2$|^/v2/models/stats$|^{_MODEL}(?:/ready|/config|/stats)?$"),
    "POST": re.compile(rf"^{_MODEL}/infer$|^/v2/repository/index$"),
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
}


class TritonForwarder:
    """A small HTTP proxy to Triton's HTTP endpoint."""

    def __init__(self, url: str, *, timeout_s: float = 60.0, concurrency: int = 16) -> None:
        host, _, port = url.rpartition(":")
        self._client = HTTPClient(
            host or url,
            port=int(port) if port.isdigit() else 8000,
            concurrency=concurrency,
            connection_timeout=min(timeout_s, 10.0),
            network_timeout=timeout_s,
        )

    def close(self) -> None:
        self._client.close()

    @staticmethod
    def allowed(method: str, path: str) -> bool:
        pattern = FORWARDED.get(method.upper())
        return bool(pattern and pattern.match(path.split("?", 1)[0]))

    def forward(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        """Send one request to Triton; returns status, body and end-to-end headers.

        :raises NotForwarded: for Triton's control APIs (403).
        """
        if not self.allowed(method, path):
            raise NotForwarded(
                f"{method} {path.split('?', 1)[0]} is not forwarded to Triton through the "
                "scoring port: only inference and read-only model information are"
            )
        send = {k: v for k, v in headers.items() if k.lower() not in _DROP}
        try:
            response = self._client.request(method, path, body=body, headers=send)
            content = response.read()
            response.release()
        except TimeoutError as exc:
            raise ScoringTimeout("Triton did not answer in time") from exc
        except OSError as exc:
            raise TritonUnavailable(f"Triton is unreachable: {type(exc).__name__}") from exc
        kept = [(k, v) for k, v in response.items() if k.lower() not in _DROP]
        return response.status_code, content, kept


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

    def close(self) -> None:
        self._client.close()

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
