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
import re

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from triton_score.errors import ScoringError
from triton_score.http import generate, openai, routes
from triton_score.http.auth import ApiKeyAuth, KeyStore
from triton_score.http.cors import Cors
from triton_score.http.envelope import Envelope
from triton_score.http.exchange import current
from triton_score.http.forward import TritonForwarder, TritonMetrics
from triton_score.http.health_port import HealthPort
from triton_score.http.responses import (
    EXTENSION,
    error_response,
    http_error,
    send,
    unexpected_error,
)
from triton_score.http.score_route import ScoreRoute
from triton_score.http.score_wsgi import ScoreWSGI
from triton_score.http.server_version import server_version_headers
from triton_score.http.shedding import InFlightLimit
from triton_score.http.v2_infer import ModelCatalog
from triton_score.runtime import Runtime, build_runtime
from triton_score.settings import Settings
from triton_score.telemetry.logs import configure_logging
from triton_score.telemetry.metrics import start_connection_sampler

log = logging.getLogger("triton_score")
_V2_MODEL = re.compile(r"models/([^/]+)")


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
    in_flight = InFlightLimit(rt.settings.max_in_flight)
    app.extensions[routes.IN_FLIGHT] = in_flight
    score_route = ScoreRoute(rt, in_flight)
    app.extensions[routes.SCORE_ROUTE] = score_route
    if init:
        rt.init()

    app.register_blueprint(generate.blueprint)  # before the /v2 catch-all's blueprint
    app.register_blueprint(openai.blueprint)
    app.register_blueprint(routes.blueprint)
    cors = Cors(rt.settings.cors_origins) if rt.settings.cors_origins else None
    if cors is not None:  # AML_CORS_ORIGINS
        log.info("CORS enabled for %s", ", ".join(rt.settings.cors_origins))
    health_port = (  # SEPERATE_HEALTH_ENDPOINT: only the probes on that port
        HealthPort(rt.settings.health_port) if rt.settings.separate_health_endpoint else None
    )
    envelope = Envelope(
        _api_key_auth(rt),
        cors,
        health_port=health_port,
        server_version=server_version_headers(rt.settings),
    )
    _wrap_in(app, envelope)
    if rt.entry_script is None:
        # A native deployment's POST /score skips Flask's request cycle; the same envelope
        # and route serve it (an entry script's run() gets a Flask request: Flask serves it).
        app.wsgi_app = ScoreWSGI(app.wsgi_app, envelope, score_route)  # type: ignore[method-assign]
    app.register_error_handler(ScoringError, error_response)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)
    return app


def _wrap_in(app: Flask, envelope: Envelope) -> None:
    """Run ``envelope`` around every request Flask serves: first before, last after."""

    def open_exchange() -> Response | None:
        _, answer = envelope.open(request.environ)
        return send(answer) if answer is not None else None

    def close_exchange(response: Response) -> Response:
        found = current()
        if found is not None:
            seen = request._get_current_object()  # type: ignore[attr-defined]
            rule = seen.url_rule
            found.route = rule.rule if rule is not None else ""
            if not found.model:
                found.model = _model_in_path(seen.view_args or {})
            envelope.close(found, response.status_code, response.headers)
        return response

    def release_exchange(_: BaseException | None) -> None:
        found = current()
        if found is not None:
            found.release()

    app.before_request_funcs.setdefault(None, []).insert(0, open_exchange)
    app.after_request(close_exchange)
    app.teardown_request(release_exchange)


def _model_in_path(view_args: dict[str, object]) -> str:
    """The model a route's path names (``/v2/models/<m>/...`` included), for the access line
    of a request that did not get as far as resolving it."""
    if view_args.get("model"):
        return str(view_args["model"])
    found = _V2_MODEL.match(str(view_args.get("path", "")))
    return found.group(1) if found else ""


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
