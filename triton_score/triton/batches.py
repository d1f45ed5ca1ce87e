"""Requests larger than the model's batch: split into Triton calls, joined back in order.

Triton refuses a call with more rows than the model's ``max_batch_size``. A scoring request
may send more (up to its rows limit, ``SCORE_MAX_ROWS`` or the processor's ``max_rows``,
checked by :func:`~triton_score.model.validation.validate_inputs`): :class:`Batches` stands in
front of the worker's way to Triton (the coalescer, else the gateway) and cuts such a
request along the batch axis into calls of at most ``max_batch_size`` rows, then joins each
output back, row for row, in the order the rows came. It is the one place this happens: the
default codec's call and every ``triton.infer`` of a processor's ``predict()`` go through it,
so processors never split by hand.

A request within ``max_batch_size`` (nearly all of them) costs one comparison here and goes on
unchanged. Under gevent the parts are sent :data:`PARALLEL_CALLS` at a time, through the
coalescer (which may join them with other requests' rows, and lets Triton's dynamic batcher
and model instances work on several at once); elsewhere (threads, AzureML's sync workers)
one after the other. A part that fails fails the request with its error; the parts not yet
answered are abandoned (a part already sent runs to its end, as any abandoned call).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np

from triton_score.errors import TritonError
from triton_score.model.info import ModelInfo
from triton_score.serve.worker import gevent_patched
from triton_score.triton.coalesce import Gateway, batch_rows

log = logging.getLogger(__name__)

#: Parts of one request in flight at once under gevent. Two per model keep Triton busy
#: while the worker encodes the next part (``SCORE_COALESCE_CALLS`` is 2 by default); four
#: let a model with several instances work on several parts, and bound what one large request
#: takes of the worker's connections to Triton (``SCORE_TRITON_CONCURRENCY``, 64).
PARALLEL_CALLS = 4

#: One call's inputs (a slice of the request's rows), and its outputs.
Part = Mapping[str, np.ndarray]
Answer = dict[str, np.ndarray]


class Batches:
    """The worker's way to Triton for requests of any number of rows.

    :param gateway: where each call goes: the worker's
        :class:`~triton_score.triton.coalesce.Coalescer`, or its
        :class:`~triton_score.triton.gateway.TritonGateway`.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def infer(
        self,
        model: ModelInfo,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, int] | None = None,
        *,
        request_id: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, np.ndarray]:
        """As :meth:`TritonGateway.infer`, for any number of rows: the outputs of all rows,
        in order. Inputs must be validated
        (:func:`~triton_score.model.validation.validate_inputs`)."""
        rows = batch_rows(inputs) if model.batching else None
        if rows is None or rows <= model.max_batch_size:
            return self.gateway.infer(
                model, inputs, outputs, request_id=request_id, headers=headers
            )
        step = model.max_batch_size
        parts = [
            {name: array[start : start + step] for name, array in inputs.items()}
            for start in range(0, rows, step)
        ]
        log.debug("model %s: %d rows in %d calls (%s)", model.name, rows, len(parts), request_id)

        def call(part: Part) -> Answer:
            return self.gateway.infer(model, part, outputs, request_id=request_id, headers=headers)

        with _each(call, parts) as answers:
            results = list(answers)
        return join(model, results, [batch_rows(part) or 0 for part in parts])


@contextmanager
def _each(call: Callable[[Part], Answer], parts: Sequence[Part]) -> Iterator[Iterator[Answer]]:
    """``call(part)`` for every part, answers in order: :data:`PARALLEL_CALLS` at a time in
    greenlets under gevent (killed, if not done, when the caller leaves: an error, its
    deadline), one after the other elsewhere."""
    if not gevent_patched():
        yield (call(part) for part in parts)
        return
    from gevent.pool import Pool  # gevent is imported in a worker only

    pool = Pool(PARALLEL_CALLS)
    try:
        yield pool.imap(call, parts)
    finally:
        pool.kill(block=False)


def join(
    model: ModelInfo, results: list[dict[str, np.ndarray]], rows: list[int]
) -> dict[str, np.ndarray]:
    """The outputs of consecutive parts of ``rows`` rows each, as one: concatenated along
    the batch axis. An output without that axis cannot be joined: the model's fault, a 500."""
    joined: dict[str, np.ndarray] = {}
    for name in results[0]:
        arrays = [result[name] for result in results]
        if any(a.ndim == 0 or a.shape[0] != n for a, n in zip(arrays, rows, strict=True)):
            log.error(
                "model %s: output %s has no batch dimension of each call's rows; cannot join "
                "the calls of a request larger than max_batch_size",
                model.name,
                name,
            )
            raise TritonError(f"model {model.name!r} returned outputs that cannot be joined")
        joined[name] = np.concatenate(arrays, axis=0)
    return joined
