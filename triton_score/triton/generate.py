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
from collections.abc import Generator, Mapping
from typing import Any
from urllib.parse import quote

import orjson

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
    def open(
        cls,
        url: str,
        path: str,
        body: bytes,
        *,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> TritonStream:
        """:raises TritonUnavailable: Triton cannot be reached."""
        host, port = split_address(url)
        connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
        try:
            connection.request(
                "POST",
                path,
                body=body,
                headers={"Content-Type": "application/json", **(headers or {})},
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


class StreamError(Exception):
    """Triton refused or failed a streamed request, before or during the stream: its
    message, and an HTTP-like status (Triton's own, or 502)."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def generate_events(
    url: str,
    model: str,
    body: Mapping[str, Any],
    *,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
) -> Generator[dict[str, Any]]:
    """Each response of ``generate_stream`` of ``model`` to ``body``, as a JSON object, as
    soon as its server-sent event is complete. Events are split on bytes and decoded whole,
    so a read that ends inside a character never breaks it. Closing the generator closes the
    connection.

    :raises StreamError: Triton answered with an error, before or during the stream.
    :raises TritonUnavailable: Triton cannot be reached.
    """
    path = f"/v2/models/{quote(model, safe='')}/generate_stream"
    stream = TritonStream.open(url, path, orjson.dumps(body), timeout_s=timeout_s, headers=headers)
    if stream.status != 200:
        raise StreamError(_triton_message(stream.read_all()), stream.status)
    chunks = stream.chunks()  # a generator: closing it closes the connection
    try:
        pending = b""
        for chunk in chunks:
            pending += chunk
            *events, pending = pending.replace(b"\r\n", b"\n").split(b"\n\n")
            for event in events:
                found = _data(event)
                if found is not None:
                    yield found
        found = _data(pending)
        if found is not None:
            yield found
    finally:
        chunks.close()  # the connection to Triton is closed, even when abandoned


def _data(event: bytes) -> dict[str, Any] | None:
    lines = [line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    try:
        found = orjson.loads(b"\n".join(lines))
    except orjson.JSONDecodeError:
        raise StreamError("Triton sent an event that is not JSON") from None
    if not isinstance(found, dict):
        raise StreamError("Triton sent an event that is not a JSON object")
    if "error" in found:
        raise StreamError(str(found["error"]), 400)
    return found


def _triton_message(body: bytes) -> str:
    try:
        found = orjson.loads(body)
        return str(found.get("error", found)) if isinstance(found, dict) else str(found)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")[:500]
