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

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from triton_score.errors import ScoringError
from triton_score.http import access, generate, routes
from triton_score.http.auth import ApiKeyAuth, KeyStore
from triton_score.http.cors import Cors
from triton_score.http.forward import TritonForwarder, TritonMetrics
from triton_score.http.responses import (
    EXTENSION,
    error_response,
    http_error,
    unexpected_error,
)
from triton_score.http.shedding import InFlightLimit
from triton_score.http.v2_infer import ModelCatalog
from triton_score.logs import configure_logging
from triton_score.metrics import start_connection_sampler
from triton_score.runtime import Runtime, build_runtime
from triton_score.settings import Settings

log = logging.getLogger("triton_score")


def create_app(
    settings: Settings | None = None, *, init: bool = True, runtime: Runtime | None = None
) -> Flask:
    """Create the scoring app.

    :param settings: defaults to :meth:`Settings.from_env`.
    :param init: wait for Triton and read model metadata now (as a worker does at boot);
        ``False`` defers that to the first request or readiness probe.
    :param runtime: an already built runtime (tests); default :func:`build_runtime`.
    """
    settings = runtime.settings if runtime is not None else settings or Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    rt = runtime or build_runtime(settings)
    app = Flask("triton_score")
    app.config["MAX_CONTENT_LENGTH"] = rt.settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = rt
    app.extensions[routes.FORWARDER] = TritonForwarder(
        rt.settings.triton_url,
        timeout_s=rt.settings.scoring_timeout_ms / 1000,
        abandoned=rt.gateway.abandoned,
    )
    start_connection_sampler(
        rt.metrics,
        {
            "score": rt.gateway.free_connections,
            "v2": app.extensions[routes.FORWARDER].free_connections,
        },
    )
    scorer = rt.scorer
    app.extensions[routes.V2_MODELS] = ModelCatalog(
        known=lambda: scorer.models if scorer is not None else {},
        fetch=rt.gateway.model_info,
        ttl_s=rt.settings.metadata_refresh_s or 10.0,
    )
    app.extensions[routes.TRITON_METRICS] = TritonMetrics(rt.settings.triton_metrics_endpoint())
    app.extensions[routes.IN_FLIGHT] = InFlightLimit(rt.settings.max_in_flight)
    if init:
        rt.init()

    app.register_blueprint(generate.blueprint)  # before the /v2 catch-all's blueprint
    app.register_blueprint(routes.blueprint)
    # before_request hooks run in this order, after_request hooks in the reverse one: the
    # access line is written last, with the final status.
    app.before_request(access.start)
    auth = _api_key_auth(rt)
    if auth is not None:
        app.before_request(auth.take)  # first: no later code sees the Authorization header
    app.before_request(routes.assign_request_id)
    if auth is not None:
        app.before_request(auth.check)
    app.after_request(access.log_request)
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


def _api_key_auth(rt: Runtime) -> ApiKeyAuth | None:
    """The API key check, when ``SCORE_API_KEYS`` or ``SCORE_API_KEYS_FILE`` is set."""
    settings = rt.settings
    if not settings.auth_enabled:
        return None
    auth = ApiKeyAuth(
        KeyStore(settings.api_keys, settings.api_keys_file or None),
        settings.auth_exempt,
        on_failure=rt.metrics.auth_failed,
    )
    exempt = f"; open without a key: {', '.join(settings.auth_exempt)}"
    log.info(
        "API keys required (%d valid now) on every route but / and /v2/health/*%s",
        auth.keys.count,
        exempt if settings.auth_exempt else "",
    )
    return auth
