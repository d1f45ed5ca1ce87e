"""Shedding overload: at most ``SCORE_MAX_IN_FLIGHT`` scoring requests in flight per worker.

A gevent worker accepts up to ``SCORE_WORKER_CONNECTIONS`` connections and starts every
request it reads. When requests arrive faster than the worker (or Triton) finishes them, they
pile up inside it: each waits longer, until ``SCORING_TIMEOUT_MS`` answers 504 after the
client has waited the whole timeout, and the worker spent memory and CPU on work nobody gets.
:class:`InFlightLimit` refuses the request beyond the limit at once instead, with a 503 and
``Retry-After`` (:class:`~triton_score.errors.Overloaded`), before its body is read: a load
balancer or client retries elsewhere or later, and the requests already admitted keep their
latency.

Only ``/score`` is limited. The probes, ``/metrics`` and ``/v2`` are never shed: a worker that
is busy is not dead, and Kubernetes must not restart it for being busy.

Each shed request is counted (``score_requests_shed_total``); the log says so at WARNING the
first time and then at most once a minute, with how many were shed since (DEBUG otherwise), so
an overload does not also flood the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("triton_score")

#: Seconds between two WARNING lines about shed requests.
WARN_EVERY_S = 60.0


class InFlightLimit:
    """A count of the worker's scoring requests in flight, refused beyond ``limit``.

    :param limit: requests admitted at once; 0 admits all (the count is still kept).
    """

    def __init__(
        self,
        limit: int,
        *,
        warn_every_s: float = WARN_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.in_flight = 0
        self.shed_total = 0
        self._warn_every_s = warn_every_s
        self._clock = clock
        self._warned_at: float | None = None
        self._shed_since_warning = 0
        # Under gevent, nothing yields between the test and the increment, so the lock is
        # never contended; it keeps the count right in a threaded server (Flask's own).
        self._lock = threading.Lock()

    def enter(self) -> bool:
        """Admit one request (``True``; call :meth:`leave` when it is answered) or refuse it."""
        with self._lock:
            if self.limit and self.in_flight >= self.limit:
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def shed(self, model: str) -> None:
        """Note a refused request: a WARNING line now and then, DEBUG in between."""
        self.shed_total += 1
        self._shed_since_warning += 1
        now = self._clock()
        if self._warned_at is None or now - self._warned_at >= self._warn_every_s:
            log.warning(
                "overloaded: %d scoring request(s) answered 503 since %s (model %s), each "
                "beyond SCORE_MAX_IN_FLIGHT=%d in flight in this worker; next such line in "
                "%.0f s at the earliest (score_requests_shed_total counts them all)",
                self._shed_since_warning,
                "the last such line" if self._warned_at is not None else "start",
                model,
                self.limit,
                self._warn_every_s,
            )
            self._warned_at = now
            self._shed_since_warning = 0
        else:
            log.debug("overloaded: request for model %s shed (503)", model)
