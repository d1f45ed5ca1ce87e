"""The one place the OpenAI front talks to Triton: ``generate_stream`` over HTTP.

:class:`HttpGenerateStream` opens one request on a connection of its own
(:class:`~triton_score.triton.generate.TritonStream`, unbuffered) and yields each response of
the stream as a JSON object as soon as its SSE event is complete. Events are split on bytes
and decoded whole, so a read that ends inside a character never breaks it. Closing the
iterator closes the connection. Over HTTP Triton cannot cancel the model's work; a gRPC
upstream that can is meant to replace this class behind the same :meth:`events` call.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from triton_score.triton.generate import TritonStream


class UpstreamError(Exception):
    """Triton refused or failed the generation; ``status`` is Triton's (or 502)."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class HttpGenerateStream:
    """Triton's HTTP endpoint, ``host:port``, and the time allowed between two reads."""

    url: str
    timeout_s: float

    def events(self, model: str, body: Mapping[str, Any]) -> Generator[dict[str, Any]]:
        """Each response of the model's stream, as it arrives.

        :raises UpstreamError: Triton answered with an error, before or during the stream.
        :raises TritonUnavailable: Triton cannot be reached.
        """
        path = f"/v2/models/{quote(model, safe='')}/generate_stream"
        stream = TritonStream.open(self.url, path, orjson.dumps(body), timeout_s=self.timeout_s)
        if stream.status != 200:
            raise UpstreamError(_triton_message(stream.read_all()), stream.status)
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
        raise UpstreamError("Triton sent an event that is not JSON") from None
    if not isinstance(found, dict):
        raise UpstreamError("Triton sent an event that is not a JSON object")
    if "error" in found:
        raise UpstreamError(str(found["error"]), 400)
    return found


def _triton_message(body: bytes) -> str:
    try:
        found = orjson.loads(body)
        return str(found.get("error", found)) if isinstance(found, dict) else str(found)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")[:500]
