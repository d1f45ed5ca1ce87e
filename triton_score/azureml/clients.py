"""The Triton clients a user's entry script creates, made fit for a gevent worker.

azmlinfsrv runs an entry script in *sync* workers: one request at a time per worker, so the
``tritonclient.http.InferenceServerClient`` a script builds in ``init()`` — one connection
by default (``concurrency=1``) — is never contended. ``score serve`` runs the same script in
*gevent* workers, where every request in flight in the worker shares that one client, and
its connection pool (``geventhttpclient``) then goes wrong twice:

1. one connection serialises all of the worker's Triton calls: no two overlap, and Triton's
   dynamic batcher never gets more than one request per worker to merge;
2. the pool's semaphore is not first come, first served: a freed connection goes to
   whichever greenlet asks next in the same turn of the event loop — usually a request that
   just arrived — rather than to one that has been waiting. Measured behind ``wrk -c32``
   (two workers, quiet machine): 88–90 % of the acquisitions took the connection while other
   requests were already waiting for it; the median wait was 0.03 ms, the longest 360–660 ms,
   and p99 was 4–7x azmlinfsrv's (``benchmarks/README.md``).

:func:`adapt_script_clients` fixes both, for clients created afterwards in this process,
without changing the script:

- a client created without an explicit ``concurrency`` gets ``connections``
  (``SCORE_TRITON_CONCURRENCY``, the connections each worker may keep to Triton). The pool
  opens them lazily: a worker opens only as many as it has Triton calls in flight at once;
- every client's connection pool hands a freed connection to the greenlet that has waited
  longest (:class:`~triton_score.triton.pool.FairSemaphore`), so a script that does limit its
  connections queues fairly;
- its ``infer()`` runs whole in a greenlet of its own
  (:func:`triton_score.triton.deadline.shielded`):
  the request's ``SCORING_TIMEOUT_MS`` abandons a call that takes too long, but never
  interrupts it while it sends a large body, which would lose a pool connection for good.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

import tritonclient.http as httpclient

from triton_score.triton.deadline import shielded
from triton_score.triton.pool import make_http_pool_fair

log = logging.getLogger(__name__)

#: Marks the wrapped ``InferenceServerClient.__init__`` (so adapting twice wraps once).
_WRAPPED = "_triton_score_connections"


def make_pool_fair(client: httpclient.InferenceServerClient) -> bool:
    """Give ``client``'s connection pool a :class:`FairSemaphore`; False if it has none we
    recognise (another ``geventhttpclient`` layout), which leaves the client as it was."""
    return make_http_pool_fair(getattr(client, "_client_stub", None))


def adapt_script_clients(connections: int) -> None:
    """From now on in this process, ``tritonclient.http.InferenceServerClient`` (also under
    its old name ``tritonhttpclient``) defaults to ``connections`` connections and queues
    greenlets fairly for them. A ``concurrency`` the caller passes is kept. Idempotent; a
    second call changes the default."""
    if connections < 1:
        raise ValueError(f"connections must be at least 1, got {connections}")
    cls = httpclient.InferenceServerClient
    current = cls.__init__
    if hasattr(current, _WRAPPED):
        setattr(current, _WRAPPED, connections)
        return
    original = current
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self: httpclient.InferenceServerClient, *args: Any, **kwargs: Any) -> None:
        if "concurrency" not in signature.bind_partial(self, *args, **kwargs).arguments:
            kwargs["concurrency"] = getattr(__init__, _WRAPPED)
        original(self, *args, **kwargs)
        make_pool_fair(self)
        infer = self.infer

        @functools.wraps(infer)
        def shielded_infer(*args: Any, **kwargs: Any) -> Any:
            return shielded(lambda: infer(*args, **kwargs))

        self.infer = shielded_infer  # type: ignore[method-assign]

    setattr(__init__, _WRAPPED, connections)
    cls.__init__ = __init__  # type: ignore[method-assign]
