"""Keep each worker's model metadata fresh while Triton reloads models.

Triton may reload a model with a new ``config.pbtxt`` or a new version folder (explicit model
control, or ``--model-control-mode=poll``). A worker reads metadata once, at start-up, and
never per request; so every ``SCORE_METADATA_REFRESH_S`` seconds (default 10, 0 = off) a
:class:`MetadataRefresher` reads every model's metadata and config again and lets
:meth:`~triton_score.scoring.Scorer.refresh` swap what changed (re-running the processor's
``load(model)``, with one log line per model).

Under Gunicorn's gevent workers it is a greenlet; elsewhere (Flask's test client, AzureML's
sync workers) a daemon thread. Either way it has a Triton client of its own:
``tritonclient.http`` is not thread-safe, so it never shares the worker's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from triton_score.errors import ScoringError
from triton_score.scoring import Scorer
from triton_score.serve.worker import gevent_patched
from triton_score.triton.gateway import TritonGateway

log = logging.getLogger(__name__)


class MetadataRefresher:
    """Calls ``scorer.refresh(gateway)`` every ``interval_s`` seconds until stopped.

    :param connect: builds the refresher's own gateway, in the greenlet or thread that uses it.
    """

    def __init__(
        self, scorer: Scorer, interval_s: float, connect: Callable[[], TritonGateway]
    ) -> None:
        self.scorer = scorer
        self.interval_s = interval_s
        self.connect = connect
        self._stop = threading.Event()  # gevent's own Event once threading is patched
        self._task: Any = None

    def start(self) -> MetadataRefresher:
        if self._task is not None:
            raise RuntimeError("the metadata refresher is already running")
        if gevent_patched():
            import gevent

            self._task, kind = gevent.spawn(self._loop), "a greenlet"
        else:
            self._task, kind = (
                threading.Thread(target=self._loop, name="triton-score-metadata", daemon=True),
                "a thread",
            )
            self._task.start()
        log.info(
            "model metadata is read again every %g s, in %s (SCORE_METADATA_REFRESH_S)",
            self.interval_s,
            kind,
        )
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            task.join(timeout)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._stop.is_set()

    def _loop(self) -> None:
        gateway = self.connect()
        try:
            while not self._stop.wait(self.interval_s):
                self.run_once(gateway)
        finally:
            gateway.close()

    def run_once(self, gateway: TritonGateway) -> list[str]:
        """One round; never raises (a failed round is retried at the next interval)."""
        try:
            return self.scorer.refresh(gateway)
        except ScoringError as exc:  # Triton away for a moment: the next round will tell
            log.debug("metadata refresh skipped: %s", exc.message)
        except Exception:  # the refresher must outlive any one failure
            log.exception("metadata refresh failed")
        return []
