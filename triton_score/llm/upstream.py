"""The one place the OpenAI front talks to Triton: a stream of generate responses.

Two upstreams, one call (:meth:`events`), chosen by :func:`upstream_for`:

- :class:`GrpcGenerateStream` (when ``SCORE_TRITON_GRPC_URL`` is set; ``score serve`` sets it
  for the Triton it starts): Triton's gRPC stream
  (:mod:`triton_score.triton.grpc_stream`). Closing the iterator (the client went away, a
  stop sequence was met) **cancels Triton's request**, so the model stops generating.
- :class:`HttpGenerateStream`: ``generate_stream`` over HTTP, one request on a connection of
  its own (:class:`~triton_score.triton.generate.TritonStream`, unbuffered), each response
  yielded as soon as its SSE event is complete. Events are split on bytes and decoded whole,
  so a read that ends inside a character never breaks it. Closing the iterator closes the
  connection; Triton 2.51 then cancels the request too, though its documentation promises
  that for gRPC only.

Neither buffers: a response is read from Triton when the client has taken the one before, so
a slow reader holds back its own stream only (and Triton's flow control holds the rest).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import orjson

from triton_score.model.info import ModelInfo
from triton_score.settings import Settings
from triton_score.triton.generate import TritonStream
from triton_score.triton.grpc_stream import GrpcGenerate, GrpcGenerateError


class UpstreamError(Exception):
    """Triton refused or failed the generation; ``status`` is Triton's (or 502)."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class GenerateStream(Protocol):
    """Where a generation's responses come from."""

    @property
    def cancels(self) -> bool:
        """Whether closing :meth:`events` early cancels the model's work at Triton."""
        ...

    def events(self, model: ModelInfo, body: Mapping[str, Any]) -> Generator[dict[str, Any]]:
        """Each response of the model's stream, as it arrives.

        :raises UpstreamError: Triton answered with an error, before or during the stream.
        :raises TritonUnavailable: Triton cannot be reached.
        """
        ...


def upstream_for(settings: Settings) -> GenerateStream:
    """gRPC when ``SCORE_TRITON_GRPC_URL`` names Triton's gRPC endpoint, else HTTP."""
    if settings.triton_grpc_url:
        return GrpcGenerateStream(settings.triton_grpc_url, settings.stream_idle_s)
    return HttpGenerateStream(settings.triton_url, settings.stream_idle_s)


@dataclass(frozen=True)
class GrpcGenerateStream:
    """Triton's gRPC endpoint, ``host:port``, and the time allowed between two responses."""

    url: str
    timeout_s: float
    cancels: bool = True

    def events(self, model: ModelInfo, body: Mapping[str, Any]) -> Generator[dict[str, Any]]:
        events = GrpcGenerate(self.url, idle_s=self.timeout_s).events(model, body)
        try:
            yield from events
        except GrpcGenerateError as exc:
            raise UpstreamError(exc.message, exc.status) from None
        finally:
            events.close()  # cancels Triton's request when it is not finished


@dataclass(frozen=True)
class HttpGenerateStream:
    """Triton's HTTP endpoint, ``host:port``, and the time allowed between two reads."""

    url: str
    timeout_s: float
    cancels: bool = False

    def events(self, model: ModelInfo, body: Mapping[str, Any]) -> Generator[dict[str, Any]]:
        """Each response of the model's stream, as it arrives.

        :raises UpstreamError: Triton answered with an error, before or during the stream.
        :raises TritonUnavailable: Triton cannot be reached.
        """
        path = f"/v2/models/{quote(model.name, safe='')}/generate_stream"
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
