"""One access line per request, with the pipeline's stage timings.

:func:`log_exchange` writes it when the answer is ready, from the request's
:class:`~triton_score.http.exchange.Exchange`: its clock (started when the request reached
us), route, model and stage timings (a scoring request's are its
:class:`~triton_score.scoring.RequestTelemetry`'s; the ``/v2`` forwarder adds its own). The
line is at INFO on logger ``triton_score.access``:

text (the request id is appended by the log format, as for every line of a request)::

    POST /score/digits_onnx 200 4.21ms route=/score/<model> model=digits_onnx
    remote=10.0.0.7 preprocess_ms=0.310 infer_ms=3.520 postprocess_ms=0.110 request_id=...

JSON (``SCORE_LOG_FORMAT=json``), the same as fields: ``method``, ``path``, ``route``,
``model``, ``status``, ``duration_ms``, ``stages_ms`` ({stage: ms}), ``remote``,
``request_id`` (and ``trace_id`` when tracing is on).

No header, query string or body is logged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from triton_score.http.exchange import Exchange
from triton_score.telemetry.logs import ACCESS_LOGGER, logfmt, write_access

access_log = logging.getLogger(ACCESS_LOGGER)


def log_exchange(exchange: Exchange, status: int) -> None:
    """The access line of ``exchange``, answered with ``status``."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    elapsed_ms = (time.perf_counter() - exchange.started) * 1000
    environ = exchange.environ
    method, path, remote = (
        environ.get("REQUEST_METHOD", ""),
        exchange.path,
        environ.get("REMOTE_ADDR") or "",
    )
    route, model, timings = exchange.route, exchange.model, exchange.stages
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

    ids = {"request_id": exchange.request_id} if exchange.request_id else {}
    if exchange.trace_id:
        ids["trace_id"] = exchange.trace_id
    write_access(access_log, " ".join(parts), fields, ids)
