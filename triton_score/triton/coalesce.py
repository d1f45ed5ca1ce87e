"""Coalescing: requests in flight in one worker, joined into one Triton call.

A gevent worker holds many scoring requests at once. Each used to be its own HTTP call to
Triton, and on a small machine those calls — building, sending, parsing — are most of the
worker's CPU. When several requests for the same model are waiting anyway, one call with
all their rows costs about what one request's call costs: :class:`Coalescer` joins them
along the batch axis, makes one call, and hands every request back exactly its own rows.

What may be joined: requests for the same model and version, asking for the same outputs
with the same ``class_count``, whose inputs have the same names, dtypes and non-batch shape
(:func:`lane_key`). Never joined: a model with ``max_batch_size`` 0 (it has no batch axis),
inputs without a common first dimension, a request with more rows than ``max_batch_size``.

When: nothing ever waits on a timer. A request for an idle lane (no call for its key in
flight) is sent at once, in its own greenlet, exactly as without coalescing. Requests that
arrive while ``calls_per_key`` calls for their key are in flight queue; as soon as a call
returns, the queue (oldest first, up to ``max_batch_size`` rows) goes out as the next call.
So the batch grows with the load, by itself: one request at a time under light load, up to
``max_batch_size`` rows per call when the worker is busy. Triton's dynamic batcher still
merges the calls of all workers.

Failures: a joined call that Triton refuses with a 4xx is retried request by request, so
one bad request (a value the model rejects) fails alone with its own 4xx and never its
neighbours. Any other failure — a timeout above all, which would only double the wait — goes
to every request of the call, unretried.

Invisible to processors: ``postprocess`` and ``predict()`` see the arrays they would see
without it (row slices of the joined outputs).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import gevent
import gevent.event
import numpy as np

from triton_score.errors import ScoringError, TritonError
from triton_score.model.info import ModelInfo
from triton_score.serve.worker import gevent_patched
from triton_score.settings import COALESCE_MODES as MODES

log = logging.getLogger(__name__)


class Gateway(Protocol):
    """What is coalesced: a :class:`triton_score.triton.gateway.TritonGateway`'s ``infer``."""

    def infer(
        self,
        model: ModelInfo,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, int] | None = None,
        *,
        request_id: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, np.ndarray]: ...


def coalesces(mode: str, model: ModelInfo) -> bool:
    """Whether ``model``'s requests are coalesced under ``SCORE_COALESCE=mode``.

    ``on`` joins for every model with a batch axis (``max_batch_size`` > 0). ``off`` never.
    ``auto`` (the default) joins for every model whose calls can hold several requests
    (``max_batch_size`` > 1), with or without Triton's dynamic batcher. Measured side by side
    on one Triton (``digits_onnx``, which has ``dynamic_batching``; 2 workers, wrk, 3 runs of
    5 s, a quiet 2-core machine): ``on`` served 1.4x the requests of ``off`` at 8 connections
    (2 runs of 3; the third equal) and 2.0x at 32 (721-743 against 353-378 req/s), and the
    same at 1 connection (nothing waits when a worker is idle). Each request that is its
    own Triton call costs the worker its own HTTP exchange; joined, the worker makes one per
    batch and Triton's batcher still merges the calls of all workers. Without a dynamic
    batcher coalescing is the only batching: Triton's mean batch went from 1.0 to 5.0.
    ``max_batch_size`` 1 leaves nothing to join.
    """
    if mode == "off" or model.max_batch_size <= 0:
        return False
    if mode == "on":
        return True
    return model.max_batch_size > 1


def in_gevent_worker() -> bool:
    """Whether this process is gevent-patched (a ``score serve`` worker). Elsewhere — a sync
    server, a threaded test client — requests are threads, and gevent's greenlets and
    events cannot be shared across threads: nothing is coalesced there."""
    return gevent_patched()


def batch_rows(inputs: Mapping[str, np.ndarray]) -> int | None:
    """The common first dimension of ``inputs``; ``None`` when they have none."""
    rows = None
    for array in inputs.values():
        if array.ndim == 0 or (rows is not None and array.shape[0] != rows):
            return None
        rows = array.shape[0]
    return rows


def lane_key(
    model: ModelInfo, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, int] | None
) -> Hashable:
    """Requests with equal keys may share a Triton call."""
    wanted = None if outputs is None else tuple(sorted(outputs.items()))
    shapes = tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in inputs.items()))
    return (model.name, model.version, model.max_batch_size, wanted, shapes)


@dataclass(eq=False)
class _Waiter:
    """One request waiting in a lane, and what it gets back."""

    inputs: Mapping[str, np.ndarray]
    rows: int
    request_id: str
    headers: Mapping[str, str] | None
    done: gevent.event.Event = field(default_factory=gevent.event.Event)
    result: dict[str, np.ndarray] | None = None
    error: BaseException | None = None

    def finish(
        self, result: dict[str, np.ndarray] | None = None, error: BaseException | None = None
    ) -> None:
        self.result, self.error = result, error
        self.done.set()


@dataclass(eq=False)
class _Lane:
    """Requests for one key that wait for a call, and how many calls are in flight."""

    pending: deque[_Waiter] = field(default_factory=deque)
    calls: int = 0


class Coalescer:
    """Joins one worker's concurrent :meth:`infer` calls per :func:`lane_key`.

    :param gateway: the worker's :class:`~triton_score.triton.gateway.TritonGateway`; its ``infer``
        is looked up at each call (so whatever wraps or replaces it later is used).
    :param mode: ``SCORE_COALESCE``: ``auto``, ``on`` or ``off`` (see :func:`coalesces`).
    :param calls_per_key: Triton calls in flight per key (``SCORE_COALESCE_CALLS``); more
        requests than that wait for the next call, which takes them all.
    :param observe: called with (model, requests) for every Triton call made for a lane
        (``score_coalesced_requests``).
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        mode: str = "auto",
        calls_per_key: int = 2,
        observe: Callable[[str, int], None] = lambda model, requests: None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"SCORE_COALESCE={mode!r}: choose among {', '.join(MODES)}")
        if calls_per_key < 1:
            raise ValueError(f"SCORE_COALESCE_CALLS must be at least 1, got {calls_per_key}")
        self._gateway = gateway
        self.mode = mode
        self.calls_per_key = calls_per_key
        self._observe = observe
        self._lanes: dict[Hashable, _Lane] = {}

    def infer(
        self,
        model: ModelInfo,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, int] | None = None,
        *,
        request_id: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, np.ndarray]:
        """As :meth:`TritonGateway.infer`, possibly sharing the Triton call."""
        joinable = coalesces(self.mode, model) and in_gevent_worker()
        rows = batch_rows(inputs) if joinable else None
        if rows is None or not 0 < rows <= model.max_batch_size:
            return self._gateway.infer(
                model, inputs, outputs, request_id=request_id, headers=headers
            )
        key = lane_key(model, inputs, outputs)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        if lane.calls < self.calls_per_key and not lane.pending:
            # An idle lane: go at once, in this greenlet (its deadline applies to the call).
            lane.calls += 1
            try:
                self._observe(model.name, 1)
                return self._gateway.infer(
                    model, inputs, outputs, request_id=request_id, headers=headers
                )
            finally:
                self._hand_on(key, lane, model, outputs)
        waiter = _Waiter(inputs, rows, request_id, headers)
        lane.pending.append(waiter)
        if lane.calls < self.calls_per_key:
            lane.calls += 1
            gevent.spawn(self._drain, key, lane, model, outputs)
        try:
            waiter.done.wait()
        finally:
            if not waiter.done.is_set() and waiter in lane.pending:
                lane.pending.remove(waiter)  # its deadline passed while it queued: not sent
        if waiter.error is not None:
            raise waiter.error
        assert waiter.result is not None
        return waiter.result

    # -- the lane's calls ------------------------------------------------------------------
    def _hand_on(
        self, key: Hashable, lane: _Lane, model: ModelInfo, outputs: Mapping[str, int] | None
    ) -> None:
        """A call of ``lane`` returned: its slot serves the queue, or is given back."""
        if lane.pending:
            gevent.spawn(self._drain, key, lane, model, outputs)
            return
        lane.calls -= 1
        if lane.calls == 0 and self._lanes.get(key) is lane:
            del self._lanes[key]

    def _drain(
        self, key: Hashable, lane: _Lane, model: ModelInfo, outputs: Mapping[str, int] | None
    ) -> None:
        """Send the lane's queue, oldest first, one joined call at a time, until it is empty.

        Runs in a greenlet of its own, so no single request's deadline can cut a call that
        carries other requests too.
        """
        try:
            while lane.pending:
                batch = [lane.pending.popleft()]
                total = batch[0].rows
                while lane.pending and total + lane.pending[0].rows <= model.max_batch_size:
                    waiter = lane.pending.popleft()
                    batch.append(waiter)
                    total += waiter.rows
                self._observe(model.name, len(batch))
                self._send(model, outputs, batch)
        finally:
            lane.calls -= 1
            if lane.calls == 0 and not lane.pending and self._lanes.get(key) is lane:
                del self._lanes[key]

    def _send(
        self, model: ModelInfo, outputs: Mapping[str, int] | None, batch: list[_Waiter]
    ) -> None:
        """One Triton call for ``batch``; every waiter is finished when it returns."""
        if len(batch) == 1:
            self._send_one(model, outputs, batch[0])
            return
        first = batch[0]
        joined = {
            name: np.concatenate([w.inputs[name] for w in batch], axis=0) for name in first.inputs
        }
        # Triton logs this id with the call: every request's id, to find any of them there.
        ids = ",".join(w.request_id for w in batch if w.request_id)
        try:
            result = self._gateway.infer(
                model, joined, outputs, request_id=ids, headers=first.headers
            )
        except ScoringError as exc:
            if 400 <= exc.status_code < 500:
                # Some request of the batch is bad: find it by sending each alone.
                log.info(
                    "model %s: a call joining %d requests was refused (%d: %s); "
                    "sending them one by one",
                    model.name,
                    len(batch),
                    exc.status_code,
                    exc.message,
                )
                gevent.joinall([gevent.spawn(self._send_one, model, outputs, w) for w in batch])
                return
            for waiter in batch:
                waiter.finish(error=exc)
            return
        except BaseException as exc:
            for waiter in batch:
                waiter.finish(error=exc)
            if not isinstance(exc, Exception):
                raise  # GreenletExit, KeyboardInterrupt: the worker is going away
            return
        total = sum(w.rows for w in batch)
        odd = [n for n, a in result.items() if a.ndim == 0 or a.shape[0] != total]
        if odd:
            log.error(
                "model %s: output %s has no batch dimension of %d rows; cannot split it",
                model.name,
                odd[0],
                total,
            )
            error = TritonError(f"model {model.name!r} returned outputs that cannot be split")
            for waiter in batch:
                waiter.finish(error=error)
            return
        start = 0
        for waiter in batch:
            end = start + waiter.rows
            waiter.finish({name: array[start:end] for name, array in result.items()})
            start = end

    def _send_one(
        self, model: ModelInfo, outputs: Mapping[str, int] | None, waiter: _Waiter
    ) -> None:
        try:
            result = self._gateway.infer(
                model, waiter.inputs, outputs, request_id=waiter.request_id, headers=waiter.headers
            )
        except BaseException as exc:
            waiter.finish(error=exc)
            if not isinstance(exc, Exception):
                raise
            return
        waiter.finish(result)
