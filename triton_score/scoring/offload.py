"""CPU-heavy processor stages in a thread pool, so one request does not stall its worker.

A gevent worker runs all its requests in one OS thread: while one request decodes a photo,
tokenizes a page or reshapes a large array, the others (and the health probes) wait, since a
greenlet only yields on I/O. :class:`Offloader` runs a processor's ``preprocess``, its
``outputs()`` method and ``postprocess`` in a gevent :class:`~gevent.threadpool.ThreadPool`
instead: the request's greenlet waits for the thread as it waits for a socket, and the event
loop goes on serving the others.

- **What**: ``SCORE_OFFLOAD=auto`` (the default) offloads the processors that declare
  ``offload = True`` (the ImageNet and QA examples do); ``on`` every processor's stages, the
  default codec's included; ``off`` none. A stage of a few microseconds (the digits example)
  loses more on the hop to a thread and back than it gains, so ``auto`` leaves it inline.
- **Never ``predict`` and never a Triton call**: ``tritonclient.http`` and geventhttpclient
  are gevent-based and not thread-safe; the pool only ever runs code that does not call Triton.
- **Only under gevent** (Gunicorn's gevent workers, which monkey-patch): in-process Flask and
  an entry script run by azmlinfsrv's sync workers have no event loop to keep free, and run
  every stage inline.
- **Why it helps even with the GIL**: numpy, Pillow and most tokenizers release it while they
  compute, so up to one thread per core runs in parallel with the event loop. Pure-Python
  code holds it, but Python hands it over every ``sys.getswitchinterval()`` (5 ms), so the
  event loop still answers probes and starts other requests within milliseconds.
- **The request's context goes along**: a thread does not inherit the greenlet's
  ``contextvars`` (where Flask keeps the request, and so ``g.request_id``), so the stage runs
  in a copy of them (:func:`contextvars.copy_context`): its log lines and ``print()`` carry
  the request id and trace id as inline ones do.
- **Timeouts**: ``SCORING_TIMEOUT_MS`` still answers 504 on time (the gevent timeout fires in
  the waiting greenlet), but a thread cannot be interrupted: the stage runs to its end, its
  result is dropped, and its thread is busy until then.
- **Pool**: ``SCORE_OFFLOAD_THREADS`` threads per worker (4), created on first use, in the
  worker (after Gunicorn forks). A pool of our own, not the hub's: gevent resolves host names
  in the hub's pool, and a Triton connection must not wait behind a photo decode.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from triton_score.serve.worker import gevent_patched

if TYPE_CHECKING:
    from gevent.threadpool import ThreadPool

    from triton_score.processors import Processor

log = logging.getLogger(__name__)

#: The stages that may run in a thread: never ``predict`` (it calls Triton).
STAGES = frozenset({"preprocess", "outputs", "postprocess"})


class Offloader:
    """Runs processor stages in a thread pool when the settings and the processor say so.

    :param mode: ``auto``, ``on`` or ``off`` (``SCORE_OFFLOAD``).
    :param threads: the pool's size (``SCORE_OFFLOAD_THREADS``).
    :param active: whether this process runs under gevent; default: asked on first use.
    """

    def __init__(self, mode: str = "auto", threads: int = 4, *, active: bool | None = None):
        self.mode = mode
        self.threads = threads
        self._active = active
        self._pool: ThreadPool | None = None

    @property
    def active(self) -> bool:
        if self._active is None:
            self._active = self.mode != "off" and gevent_patched()
        return self._active

    def wanted(self, processor: Processor, stage: str) -> bool:
        """Whether ``stage`` of ``processor`` runs in the pool."""
        if self.mode == "off" or stage not in STAGES:
            return False
        if self.mode == "auto" and not processor.offload:
            return False
        if stage == "outputs" and not processor.computes_outputs:
            return False  # a constant: nothing to compute, the hop would cost more
        return self.active

    def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in a pool thread, in a copy of the caller's context; the
        calling greenlet waits (and yields), and gets the result or the exception."""
        context = contextvars.copy_context()
        return self._threads().apply(context.run, (function, *args))

    def _threads(self) -> ThreadPool:
        if self._pool is None:
            from gevent.threadpool import ThreadPool

            self._pool = ThreadPool(self.threads)
            log.info("processor stages offloaded to %d threads (SCORE_OFFLOAD)", self.threads)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.kill()
            self._pool = None
