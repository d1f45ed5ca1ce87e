"""triton-score as an AzureML entry script: ``init()`` once per worker, ``run(raw)`` per request.

Point AzureML's inference configuration (or ``azmlinfsrv --entry_script``, or
``AZUREML_ENTRY_SCRIPT``) at this file and it serves the default model of the Triton it
finds, with the processors it finds, exactly as ``score serve`` does — settings come from the
same environment variables (``TRITON_URL``, ``SCORE_MODEL``, ``SCORE_PROCESSORS``,
``AZUREML_MODEL_DIR``...).

The AzureML contract is two module-level functions, so the one :class:`~triton_score.pipeline.Scorer`
must live at module level; it is created by ``init()`` and nowhere else.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

from triton_score.errors import ScoringError
from triton_score.pipeline import Scorer
from triton_score.processors.loading import load_processors
from triton_score.repository import find_model_repository
from triton_score.settings import Settings
from triton_score.triton import TritonGateway

log = logging.getLogger("triton_score.entry")
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


def run(raw_data: str | bytes, request_headers: Mapping[str, str] | None = None) -> Any:
    """Score ``raw_data`` (the request body) on the default model.

    AzureML's server passes ``request_headers`` because this signature asks for them: the
    content type and ``x-request-id`` reach the processors. A request error is the same JSON
    body ``score serve`` sends (``{"error", "code", "request_id"}`` plus ``status_code``);
    under AzureML's server it goes out with that status code (as an ``AMLResponse``), since
    that server answers 200 to anything else ``run`` returns.
    """
    if _scorer is None:
        raise RuntimeError("init() has not been called")
    headers = dict(request_headers or {})
    try:
        return _scorer.run(raw_data, headers)
    except ScoringError as exc:
        log.warning("request failed: %s", exc.message)
        body = {**exc.to_dict(), "status_code": exc.status_code}
        request_id = _header(headers, "x-request-id")
        if request_id:
            body.setdefault("request_id", request_id)
        if "azureml_inference_server_http" in sys.modules:  # served by azmlinfsrv
            from azureml_inference_server_http.api.aml_response import AMLResponse

            return AMLResponse(body, exc.status_code, json_str=True)
        return body


def _header(headers: Mapping[str, str], name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name), "")


if __name__ == "__main__":  # a quick manual check: python -m triton_score.entry '<json>'
    init()
    print(json.dumps(run(sys.argv[1]), default=str))
