"""Forward ``/v2/...`` to Triton, so one port serves both (as an AzureML endpoint does).

Clients written for Triton (``tritonclient``, ``perf_analyzer``, curl against
``/v2/models/<m>/versions/<v>/infer``) work against the scoring port unchanged, binary
tensor extension included: bodies and the ``Inference-Header-Content-Length`` header pass
through untouched.
"""

from __future__ import annotations

from collections.abc import Mapping

from geventhttpclient import HTTPClient

from score.errors import ScoringTimeout, TritonUnavailable

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

    def forward(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        """Send one request to Triton; returns status, body and end-to-end headers."""
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
