"""triton-score as an AzureML entry script: ``init()`` once per worker, ``run()`` per request.

The template's ``score/score.py`` is ``from triton_score.entry import init, run``. AzureML's
server (azmlinfsrv) runs it as any entry script: ``init()`` builds the runtime with
:func:`~triton_score.runtime.build_runtime` (the same settings and processors as ``score
serve``: ``TRITON_URL``, ``SCORE_MODEL``, ``SCORE_PROCESSORS``, ``AZUREML_MODEL_DIR``, the
code directory beside the script...) and ``run()`` scores the default model. ``score serve``
recognises these two functions and serves natively instead (every model, ``/v2``).

The AzureML contract is two module-level functions, so the one runtime lives at module
level; ``init()`` creates it and nothing else does.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

import orjson

from triton_score.codecs.request import REQUEST_ID, header
from triton_score.codecs.response import Encoded, Response, encode_json, render
from triton_score.errors import ScoringError
from triton_score.runtime import Runtime, build_runtime

log = logging.getLogger(__name__)
_runtime: Runtime | None = None


def init() -> None:
    """Build the Triton client, wait for Triton, read model metadata, load processors."""
    global _runtime
    _runtime = build_runtime(as_entry_script=True)
    _runtime.init()


def run(raw_data: str | bytes, request_headers: Mapping[str, str] | None = None) -> Any:
    """Score ``raw_data`` (the request body) on the default model.

    AzureML's server passes ``request_headers`` because this signature asks for them: the
    content type and ``x-request-id`` reach the processors. A request error is the same JSON
    body ``score serve`` sends (``{"error", "code", "request_id"}`` plus ``status_code``);
    under AzureML's server it goes out with that status code (as an ``AMLResponse``), since
    that server answers 200 to anything else ``run`` returns.
    """
    if _runtime is None or _runtime.scorer is None:
        raise RuntimeError("init() has not been called")
    headers = dict(request_headers or {})
    try:
        result = _runtime.scorer.run(raw_data, headers)
        if isinstance(result, Response) and "azureml_inference_server_http" in sys.modules:
            return _aml_response(render(result))  # a processor's own status and headers
        return _plain(result)
    except ScoringError as exc:
        log.warning("request failed: %s", exc.message)
        body = {**exc.to_dict(header(headers, REQUEST_ID)), "status_code": exc.status_code}
        # Served by azmlinfsrv: its app is built (its api modules alone may be imported
        # anywhere, e.g. by score serve for an entry script's imports).
        if "azureml_inference_server_http.server.aml_blueprint" in sys.modules:
            from azureml_inference_server_http.api.aml_response import AMLResponse

            return AMLResponse(body, exc.status_code, exc.headers, json_str=True)
        return body


def _plain(result: Any) -> Any:
    """``run()``'s contract: a value ``json.dumps`` can write, as AzureML's server dumps it.
    The default codec hands numpy arrays on to orjson (no ``tolist()`` on the fast path), so
    a result holding arrays becomes plain lists and numbers here."""
    if result is None or isinstance(result, str | bytes | bytearray | int | float | Response):
        return result
    return orjson.loads(encode_json(result))


def _aml_response(encoded: Encoded) -> Any:
    from azureml_inference_server_http.api.aml_response import AMLResponse

    headers = {**encoded.headers, "Content-Type": encoded.content_type}
    return AMLResponse(encoded.body, encoded.status, headers)


def main() -> int:
    """A quick manual check: ``python -m triton_score.entry '<json>'``."""
    init()
    print(json.dumps(run(sys.argv[1]), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
