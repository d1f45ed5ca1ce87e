"""The request deadline (``SCORING_TIMEOUT_MS``), and how a call to Triton survives it.

Each scoring and ``/v2`` request runs under one :func:`request_deadline`: a gevent timeout
that raises :class:`~triton_score.errors.ScoringTimeout` (a 504) wherever the request's
greenlet happens to be waiting when it fires.

That is fine while the greenlet waits for a *response*, but not while it is *sending*:
geventhttpclient's ``HTTPClient.request()`` takes a slot of its connection pool, and gives it
back on a socket error only. A timeout that interrupts a blocked ``sendall`` (a large body,
a Triton that does not read: paused, throttled, far away) is no socket error, so the slot is
lost for good; after ``concurrency`` such losses every later call of that worker waits for a
slot until its own 504, forever, while readiness still answers 200.

:func:`shielded` closes that hole: the call runs whole (send, read, give the connection back)
in a child greenlet, and the request's greenlet only *waits* for it. When the deadline fires,
it fires in the waiter; the child is abandoned, not killed, and ends on its own (Triton
answers, or the client's network timeout fails it): either way its connection goes back to
the pool. Abandoned calls still running are counted (``score_triton_abandoned_calls``), so a
stalled Triton shows on ``/metrics`` before the pool runs dry.

A send can only block once the kernel's buffers are full; a small body goes out whole in the
first ``send()``, without yielding (gevent's ``sendall`` waits only when the socket does), so
a deadline cannot land in it: :func:`may_block` tells the callers, which run those inline
(the greenlet costs ~15 µs, a tenth of a small request's own work in the worker).

Only under gevent (a Gunicorn gevent worker): elsewhere (Flask's threaded test server,
azmlinfsrv's sync workers) no deadline interrupts I/O, and the call runs inline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

from triton_score.errors import ScoringTimeout
from triton_score.serve.worker import gevent_patched

log = logging.getLogger(__name__)
T = TypeVar("T")


#: Bodies up to this size are sent inline. A pooled connection is idle when it is handed out
#: (its last answer was read in full, so nothing of ours is queued), and Linux gives a TCP
#: socket at least ``tcp_wmem``'s minimum of send buffer (4 KiB; 16 KiB by default): a
#: request this small goes out in one ``send()``, which never waits.
INLINE_SEND_BYTES = 4 * 1024


def may_block(body_bytes: int) -> bool:
    """Whether sending ``body_bytes`` might wait for the peer (and so for a deadline)."""
    return body_bytes > INLINE_SEND_BYTES


def request_deadline(timeout_ms: int) -> AbstractContextManager[object]:
    """A gevent timeout of ``timeout_ms`` for the whole request; none when ``timeout_ms`` is
    0 or outside gevent (nothing there could interrupt the request's I/O)."""
    if timeout_ms <= 0 or not gevent_patched():
        return nullcontext()
    from gevent import Timeout  # gevent is imported in a worker only

    return Timeout(
        timeout_ms / 1000,
        ScoringTimeout(f"scoring took longer than SCORING_TIMEOUT_MS={timeout_ms}"),
    )


class Abandoned:
    """What a worker knows of the calls its deadlines abandoned: how many still run.

    :param on_change: told +1 when a call is abandoned, -1 when an abandoned call ends
        (a livesum gauge of the metrics).
    """

    def __init__(self, on_change: Callable[[int], None] | None = None) -> None:
        self.running = 0
        self.total = 0
        self._on_change = on_change

    def started(self) -> None:
        self.running += 1
        self.total += 1
        if self._on_change is not None:
            self._on_change(1)

    def ended(self) -> None:
        self.running -= 1
        if self._on_change is not None:
            self._on_change(-1)


#: Calls abandoned when no :class:`Abandoned` of the app's is given (tests, tools).
_UNCOUNTED = Abandoned()


def shielded(
    call: Callable[[], T], abandoned: Abandoned | None = None, *, sends: int | None = None
) -> T:
    """``call()``, run so that a deadline firing meanwhile cannot interrupt it.

    Under gevent the call runs in a child greenlet and this one waits; a timeout (or any
    exception) raised while waiting leaves the child running to its own end. ``call`` must
    do the whole exchange, including reading the response and returning the connection.

    :param sends: the bytes the call sends, when known: a send that cannot wait
        (:func:`may_block`) runs inline, with no greenlet.
    """
    if not gevent_patched() or (sends is not None and not may_block(sends)):
        return call()
    import gevent

    outcome: list[Any] = []
    waiting = True
    counter = abandoned or _UNCOUNTED

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiter, or dropped
            outcome.append((False, exc))
        finally:
            if not waiting:  # nobody waits any more: the call was abandoned
                counter.ended()

    child = gevent.spawn(run)
    try:
        child.join()
    except BaseException:
        if not child.dead:
            waiting = False
            counter.started()
            log.debug("a Triton call outlived its request's deadline; left to finish")
        raise
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value
