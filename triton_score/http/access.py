"""One access line per request, with the pipeline's stage timings.

:func:`start` (the first ``before_request`` hook) notes the time; a scoring request's
stage timings are its :class:`~triton_score.scoring.RequestTelemetry`'s, which the route
puts in ``flask.g.stages`` (per greenlet under gevent), and other views add theirs with
:func:`record_stage`; the views note the model (``g.model``); :func:`log_request` (the last
``after_request`` hook) writes the line, at INFO on logger ``triton_score.access``:

text (the request id is appended by the log format, as for every line of a request)::

    POST /score/digits_onnx 200 4.21ms route=/score/<model> model=digits_onnx
    remote=10.0.0.7 preprocess_ms=0.310 infer_ms=3.520 postprocess_ms=0.110 request_id=...

JSON (``SCORE_LOG_FORMAT=json``), the same as fields: ``method``, ``path``, ``route``,
``model``, ``status``, ``duration_ms``, ``stages_ms`` ({stage: ms}), ``remote``,
``request_id`` (and ``trace_id`` when tracing set ``g.trace_id``).

No header, query string or body is logged.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from flask import Response, g, has_request_context, request

from triton_score.logs import ACCESS_LOGGER, logfmt, request_context, write_access

access_log = logging.getLogger(ACCESS_LOGGER)
_V2_MODEL = re.compile(r"models/([^/]+)")


def start() -> None:
    g.access_started = time.perf_counter()


def record_stage(stage: str, seconds: float) -> None:
    """Add ``seconds`` to the current request's ``stage`` (nothing outside a request)."""
    if not has_request_context():
        return
    stages: dict[str, float] = g.setdefault("stages", {})
    stages[stage] = stages.get(stage, 0.0) + seconds


def _model() -> str:
    model = g.get("model")
    if model:
        return str(model)
    args = request.view_args or {}
    if args.get("model"):
        return str(args["model"])
    found = _V2_MODEL.match(str(args.get("path", "")))
    return found.group(1) if found else ""


def log_request(response: Response) -> Response:
    if not access_log.isEnabledFor(logging.INFO):
        return response
    started = g.get("access_started")
    elapsed_ms = (time.perf_counter() - started) * 1000 if started is not None else 0.0
    seen = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
    method, path, remote, status = (
        seen.method,
        seen.path,
        seen.remote_addr or "",
        response.status_code,
    )
    route = seen.url_rule.rule if seen.url_rule is not None else ""
    model = _model()
    timings = g.get("stages") or {}
    parts = [
        logfmt(method),
        logfmt(path),
        str(status),
        f"{elapsed_ms:.2f}ms",
        f"route={logfmt(route or '-')}",
        f"model={logfmt(model or '-')}",
        f"remote={logfmt(remote or '-')}",
        *(f"{logfmt(name)}_ms={seconds * 1000:.3f}" for name, seconds in timings.items()),
    ]

    def fields() -> dict[str, Any]:  # for JSON lines only: a text line never builds it
        return {
            "method": method,
            "path": path,
            "route": route,
            "model": model,
            "status": status,
            "duration_ms": round(elapsed_ms, 3),
            "stages_ms": {name: round(seconds * 1000, 3) for name, seconds in timings.items()},
            "remote": remote,
        }

    write_access(access_log, " ".join(parts), fields, request_context())
    return response
