"""Triton's generate extension over HTTP, read as it arrives.

One request on a connection of its own (``http.client``, which gevent makes cooperative),
its answer read with ``read1``: each chunk Triton has sent, never waiting for more, so a
server-sent event goes on the moment it arrives. Used by the ``/v2`` generate forwarder
(:mod:`triton_score.http.generate`) and the OpenAI front's upstream
(:mod:`triton_score.llm.upstream`). Closing the stream closes the connection (Triton 2.51
then cancels a ``generate_stream`` request too; its documentation promises cancellation over
gRPC only: :mod:`.grpc_stream`).
"""

from __future__ import annotations

import http.client
from collections.abc import Generator
from typing import Any

from triton_score.errors import TritonUnavailable
from triton_score.repository.locations import split_address

#: The most read from the socket at once.
READ_BYTES = 64 * 1024


class TritonStream:
    """One request to Triton's HTTP endpoint on a connection of its own, read as it arrives."""

    def __init__(self, connection: http.client.HTTPConnection, answer: Any) -> None:
        self._connection = connection
        self._answer = answer
        self.status: int = answer.status
        self.content_type: str = answer.getheader("Content-Type") or "application/json"

    @classmethod
    def open(cls, url: str, path: str, body: bytes, *, timeout_s: float) -> TritonStream:
        """:raises TritonUnavailable: Triton cannot be reached."""
        host, port = split_address(url)
        connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
        try:
            connection.request(
                "POST", path, body=body, headers={"Content-Type": "application/json"}
            )
            answer = connection.getresponse()
        except OSError as exc:
            connection.close()
            raise TritonUnavailable(f"Triton is unreachable: {type(exc).__name__}") from exc
        return cls(connection, answer)

    def read_all(self) -> bytes:
        try:
            return bytes(self._answer.read())
        finally:
            self._connection.close()

    def chunks(self) -> Generator[bytes]:
        """What Triton sends, chunk by chunk; closing the iterator closes the connection."""
        try:
            while True:
                chunk = self._answer.read1(READ_BYTES)
                if not chunk:
                    return
                yield chunk
        except OSError:  # Triton went away mid-stream: the stream ends
            return
        finally:
            self._connection.close()
