"""A decoupled model's responses to input tensors, as they come: what ``/score`` streams.

Over Triton's gRPC stream when ``SCORE_TRITON_GRPC_URL`` names its endpoint
(:mod:`triton_score.triton.grpc_stream`, where Triton documents cancellation), else over HTTP's
``generate_stream`` (:mod:`triton_score.triton.generate`), whose JSON body holds each input as
a value (one element) or a flat list, and whose responses become arrays again. Either way,
closing the generator ends Triton's request (gRPC: cancelled; HTTP: its connection closed).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from triton_score.model.info import ModelInfo
from triton_score.triton.generate import StreamError, generate_events
from triton_score.triton.grpc_stream import GrpcGenerate

__all__ = ["StreamError", "Streams"]


def _json_value(array: np.ndarray) -> Any:
    """An input tensor as the generate extension's JSON takes it."""
    flat = np.asarray(array).reshape(-1)
    values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in flat.tolist()]
    return values[0] if len(values) == 1 else values


def _array(value: Any) -> np.ndarray:
    """An output of a generate response as an array (strings: an object array of bytes)."""
    items = value if isinstance(value, list) else [value]
    if items and all(isinstance(v, str) for v in items):
        array = np.empty(len(items), dtype=object)
        array[:] = [v.encode("utf-8") for v in items]
        return array
    return np.asarray(items)


@dataclass(frozen=True)
class Streams:
    """Where a decoupled model's streams go: gRPC when ``grpc_url`` is set, else HTTP."""

    http_url: str
    grpc_url: str
    idle_s: float

    def tensors(
        self,
        model: ModelInfo,
        inputs: Mapping[str, np.ndarray],
        request_id: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> Generator[dict[str, np.ndarray]]:
        """Each response's outputs, as arrays; ``headers`` (a ``traceparent``) go to Triton.

        :raises StreamError: Triton refused or failed the request.
        :raises TritonUnavailable: Triton cannot be reached.
        """
        if self.grpc_url:
            responses = GrpcGenerate(self.grpc_url, idle_s=self.idle_s).tensors(
                model, inputs, request_id, headers
            )
            try:
                yield from responses
            finally:
                responses.close()
            return
        outputs = {spec.name for spec in model.outputs}
        body = {name: _json_value(array) for name, array in inputs.items()}
        events = generate_events(
            self.http_url, model.name, body, timeout_s=self.idle_s, headers=headers
        )
        try:
            for event in events:
                yield {name: _array(v) for name, v in event.items() if name in outputs}
        finally:
            events.close()
