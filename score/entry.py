"""triton-score as an AzureML entry script: ``init()`` once per worker, ``run(raw)`` per request.

Point AzureML's inference configuration (or ``azmlinfsrv --entry_script``, or
``AZUREML_ENTRY_SCRIPT``) at this file and it serves the default model of the Triton it
finds, with the processors it finds, exactly as ``score serve`` does — settings come from the
same environment variables (``TRITON_URL``, ``SCORE_MODEL``, ``SCORE_PROCESSORS``,
``AZUREML_MODEL_DIR``...).

The AzureML contract is two module-level functions, so the one :class:`~score.pipeline.Scorer`
must live at module level; it is created by ``init()`` and nowhere else.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from score.errors import ScoringError
from score.pipeline import Scorer
from score.processors.loading import load_processors
from score.repository import find_model_repository
from score.settings import Settings
from score.triton import TritonGateway

log = logging.getLogger("score.entry")
_scorer: Scorer | None = None


def build_scorer(settings: Settings | None = None) -> Scorer:
    """A ready-to-use :class:`Scorer` from ``settings`` (default: the environment)."""
    settings = settings or Settings.from_env()
    repository = settings.model_repository
    if not repository:
        try:
            repository = str(find_model_repository())
        except FileNotFoundError:
            repository = ""  # no repository on disk: processors come from specs only
    registry = load_processors(settings.processors, model_repository=repository or None)
    gateway = TritonGateway(
        settings.triton_url,
        concurrency=settings.triton_concurrency,
        timeout_s=settings.scoring_timeout_ms / 1000,
    )
    return Scorer(settings, gateway, registry)


def init() -> None:
    """Build the Triton client, wait for Triton, read model metadata, load processors."""
    global _scorer
    _scorer = build_scorer()
    _scorer.init()


def run(raw_data: str | bytes) -> Any:
    """Score ``raw_data`` (the request body) on the default model.

    AzureML's server answers 200 with whatever ``run`` returns, so a request error comes back
    as the same JSON body ``score serve`` sends (``{"error": ..., "code": ...}``), and the
    status code is also in ``status_code``.
    """
    if _scorer is None:
        raise RuntimeError("init() has not been called")
    try:
        return _scorer.run(raw_data)
    except ScoringError as exc:
        log.warning("request failed: %s", exc.message)
        return {**exc.to_dict(), "status_code": exc.status_code}


if __name__ == "__main__":  # a quick manual check: python -m score.entry '<json>'
    import sys

    init()
    print(json.dumps(run(sys.argv[1]), default=str))
