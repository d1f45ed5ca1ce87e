"""The handle ``predict()`` gets: several Triton calls in one request, as the pipeline does.

Kept apart from :mod:`triton_score.triton.gateway` so that writing (and importing) a processor never
imports ``tritonclient`` (and gevent) before a Gunicorn worker has monkey-patched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from triton_score.model.info import ModelInfo
from triton_score.model.validation import RowsLimit, validate_inputs, validate_outputs
from triton_score.telemetry.tracing import NO_TRACING, Tracing

if TYPE_CHECKING:
    from triton_score.triton.batches import Batches
    from triton_score.triton.coalesce import Coalescer
    from triton_score.triton.gateway import TritonGateway

#: Output name -> ``class_count`` (0 asks for the raw tensor).
OutputRequest = Mapping[str, int]


class Triton:
    """What a processor's ``predict(inputs, request, model, triton)`` calls Triton with.

    Every call goes through the worker's one :class:`TritonGateway` (never a new client),
    with the checks and error mapping of the single-call pipeline: inputs and outputs are
    validated against the called model's metadata (a 400 naming the input), and Triton's
    failures keep their meaning (4xx, 503, 504).

    :param gateway: the worker's gateway, its coalescer (which joins the calls of
        concurrent requests: invisible here, each call gets its own rows back), or the
        :class:`~triton_score.triton.batches.Batches` in front of them, which splits a call of more
        rows than the model's ``max_batch_size`` (the scorer's).
    :param rows: the request's rows limit (``SCORE_MAX_ROWS``, the processor's ``max_rows``):
        a call may send that many rows, split into calls of ``max_batch_size`` by
        :class:`~triton_score.triton.batches.Batches`; ``None``: at most ``max_batch_size``.
    :param lookup: model name -> :class:`ModelInfo` (the worker's cached metadata).
    :param request_id: passed on to Triton with every call.
    :param tracing: each call's validation is a ``validate`` span, and the current span's
        ``traceparent`` (the request's ``infer`` span) goes to Triton with the call.
    """

    def __init__(
        self,
        gateway: TritonGateway | Coalescer | Batches,
        lookup: Callable[[str], ModelInfo],
        request_id: str = "",
        tracing: Tracing = NO_TRACING,
        *,
        rows: RowsLimit | None = None,
    ) -> None:
        self._gateway = gateway
        self._rows = rows
        self._lookup = lookup
        self.request_id = request_id
        self._tracing = tracing

    def model(self, name: str) -> ModelInfo:
        """The metadata of model ``name`` (any model Triton serves; read once per worker)."""
        return self._lookup(name)

    def infer(
        self,
        model: str | ModelInfo,
        inputs: Mapping[str, Any],
        outputs: OutputRequest | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` (a name or a :class:`ModelInfo`) on ``inputs``.

        :param inputs: input name -> array (or nested lists); safe conversions are applied.
        :param outputs: output name -> ``class_count`` (0 = the raw tensor); ``None`` = all.
        :return: output name -> numpy array, as ``postprocess`` receives them.
        """
        info = model if isinstance(model, ModelInfo) else self._lookup(model)
        with self._tracing.span("validate", info.name, self.request_id):
            checked = validate_inputs(info, inputs, rows=self._rows)
            wanted = validate_outputs(info, outputs)
        return self._gateway.infer(
            info, checked, wanted, request_id=self.request_id, headers=self._tracing.headers()
        )
