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

from triton_score.model.info import ModelInfo
from triton_score.settings import Settings
from triton_score.triton.generate import StreamError, generate_events
from triton_score.triton.grpc_stream import GrpcGenerate


class UpstreamError(Exception):
    """Triton refused or failed the generation; ``status`` is Triton's (or 502)."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class GenerateStream(Protocol):
    """Where a generation's responses come from."""

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

    def events(self, model: ModelInfo, body: Mapping[str, Any]) -> Generator[dict[str, Any]]:
        events = GrpcGenerate(self.url, idle_s=self.timeout_s).events(model, body)
        try:
            yield from events
        except StreamError as exc:
            raise UpstreamError(exc.message, exc.status) from None
        finally:
            events.close()  # cancels Triton's request when it is not finished


@dataclass(frozen=True)
class HttpGenerateStream:
    """Triton's HTTP endpoint, ``host:port``, and the time allowed between two reads."""

    url: str
    timeout_s: float

    def events(self, model: ModelInfo, body: Mapping[str, Any]) -> Generator[dict[str, Any]]:
        events = generate_events(self.url, model.name, body, timeout_s=self.timeout_s)
        try:
            yield from events
        except StreamError as exc:
            raise UpstreamError(exc.message, exc.status) from None
        finally:
            events.close()  # the connection to Triton is closed, even when abandoned
