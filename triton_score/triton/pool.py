"""A connection pool for greenlets that serves them first come, first served.

``geventhttpclient``'s pool (the lean hop's, the ``/v2`` forwarder's, and that of every
``tritonclient.http`` client) guards its connections with a semaphore that is not fair: a
freed connection goes to whichever greenlet asks next in the same turn of the event loop,
usually a request that just arrived, rather than to one that has waited. Behind ``wrk -c32``
88-90 % of acquisitions jumped the queue, and p99 was 4-7x azmlinfsrv's. :func:`make_http_pool_fair`
swaps in a :class:`FairSemaphore`; :func:`free_connections` reads it for the metrics.
"""

from __future__ import annotations

import logging
from collections import deque

import gevent.event
import gevent.lock

log = logging.getLogger(__name__)


class FairSemaphore:
    """A counting semaphore for greenlets that serves waiters first come, first served.

    ``release()`` hands the slot straight to the oldest waiter, so a greenlet that asks later
    (even in the same turn of the event loop, before the waiter has run) cannot take it.
    Only what ``geventhttpclient``'s connection pool uses: ``acquire()`` and ``release()``.
    """

    def __init__(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"a semaphore needs at least one slot, got {value}")
        self._free = value
        self._waiters: deque[gevent.event.Event] = deque()

    @property
    def free(self) -> int:
        """Slots no greenlet holds now (0 while greenlets wait for one)."""
        return self._free

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        if not blocking:
            return False
        turn = gevent.event.Event()
        self._waiters.append(turn)
        try:
            granted = turn.wait(timeout)
        except BaseException:  # a gevent Timeout or a kill while waiting
            if turn.is_set():  # the slot was handed over already: pass it on, or it is lost
                self.release()
            else:
                self._waiters.remove(turn)
            raise
        if not granted:  # timed out (no greenlet switch since: it cannot be set now)
            self._waiters.remove(turn)
        return bool(granted)

    def release(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()  # the slot goes to the oldest waiter, not back
        else:
            self._free += 1

    @property
    def waiting(self) -> int:
        return len(self._waiters)


def make_http_pool_fair(http: object) -> bool:
    """Give a ``geventhttpclient.HTTPClient``'s connection pool a :class:`FairSemaphore`
    (tritonclient's clients and the lean hop both hold one); False if it has none we
    recognise, which leaves the pool as it was."""
    pool = getattr(http, "_connection_pool", None)
    semaphore = getattr(pool, "_semaphore", None)
    size = getattr(pool, "size", None)
    if isinstance(semaphore, FairSemaphore):
        return True
    if (
        not isinstance(semaphore, gevent.lock.Semaphore)
        or not isinstance(size, int)
        or size < 1
        or semaphore.counter != size  # in use already: swapping it now would lose slots
    ):
        log.debug("connection pool of %r not recognised; left as it is", http)
        return False
    pool._semaphore = FairSemaphore(size)  # type: ignore[union-attr]
    return True


def free_connections(http: object) -> int | None:
    """Free slots of a ``geventhttpclient.HTTPClient``'s pool made fair by
    :func:`make_http_pool_fair`; ``None`` for a pool it did not recognise."""
    semaphore = getattr(getattr(http, "_connection_pool", None), "_semaphore", None)
    return semaphore.free if isinstance(semaphore, FairSemaphore) else None
