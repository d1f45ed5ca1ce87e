"""The Flask app factory.

``create_app()`` builds one app per Gunicorn worker (Gunicorn runs
``triton_score.http.app:create_app()`` after forking, so each worker gets its own Triton
client). The runtime comes from :func:`~triton_score.runtime.build_runtime`, the same one
the entry script and the tests use::

    settings (env) -> build_runtime() -> Runtime.init()      -> routes
                      (processors,       (wait for Triton,
                       Triton gateway)    read model metadata)

Per-app state lives in ``app.extensions["triton_score"]`` (a
:class:`~triton_score.runtime.Runtime`), reached from views through
:func:`~triton_score.http.responses.runtime`; there are no module-level singletons.
"""

from __future__ import annotations

import logging
import sys

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from triton_score.errors import ScoringError
from triton_score.http import routes
from triton_score.http.cors import Cors
from triton_score.http.forward import TritonForwarder
from triton_score.http.responses import (
    EXTENSION,
    error_response,
    http_error,
    unexpected_error,
)
from triton_score.runtime import Runtime, build_runtime
from triton_score.settings import Settings

log = logging.getLogger("triton_score")


def _configure_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
        )
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def create_app(
    settings: Settings | None = None, *, init: bool = True, runtime: Runtime | None = None
) -> Flask:
    """Create the scoring app.

    :param settings: defaults to :meth:`Settings.from_env`.
    :param init: wait for Triton and read model metadata now (as a worker does at boot);
        ``False`` defers that to the first request or readiness probe.
    :param runtime: an already built runtime (tests); default :func:`build_runtime`.
    """
    _configure_logging()
    rt = runtime or build_runtime(settings)
    app = Flask("triton_score")
    app.config["MAX_CONTENT_LENGTH"] = rt.settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = rt
    app.extensions[routes.FORWARDER] = TritonForwarder(
        rt.settings.triton_url, timeout_s=rt.settings.scoring_timeout_ms / 1000
    )
    if init:
        rt.init()

    app.register_blueprint(routes.blueprint)
    app.before_request(routes.assign_request_id)
    app.after_request(routes.echo_request_id)
    if rt.settings.cors_origins:  # AML_CORS_ORIGINS
        cors = Cors(rt.settings.cors_origins)
        log.info("CORS enabled for %s", ", ".join(rt.settings.cors_origins))

        def add_cors_headers(response: Response) -> Response:
            return cors.apply(request, response)

        app.after_request(add_cors_headers)
    app.register_error_handler(ScoringError, error_response)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)
    return app
