"""The Flask app factory.

``create_app()`` builds one app per Gunicorn worker (Gunicorn runs
``triton_score.http.app:create_app()`` after forking, so each worker gets its own Triton client)::

    settings (env)  ->  processors loaded  ->  Triton gateway  ->  Scorer.init()
                                                                   (wait for Triton,
                                                                    read model metadata)

Per-app state lives in ``app.extensions["score"]`` (a :class:`Runtime`), reached from views
through :func:`runtime`; there are no module-level singletons.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from flask import Flask, Response, current_app, g
from werkzeug.exceptions import HTTPException

from triton_score.codecs.response import encode_json
from triton_score.entry_script import EntryScript
from triton_score.errors import ScoringError, TritonUnavailable
from triton_score.http.forward import TritonForwarder
from triton_score.metrics import Metrics
from triton_score.pipeline import Scorer
from triton_score.processors.loading import load_processors
from triton_score.settings import Settings
from triton_score.triton import TritonGateway

log = logging.getLogger("score")
EXTENSION = "score"


@dataclass
class Runtime:
    """Everything one app (one worker) needs to serve."""

    settings: Settings
    gateway: TritonGateway
    metrics: Metrics
    forwarder: TritonForwarder
    scorer: Scorer | None = None
    entry_script: EntryScript | None = None

    def is_ready(self) -> bool:
        if self.scorer is not None:
            return self.scorer.is_ready()
        return self.gateway.is_ready()


def runtime() -> Runtime:
    """The :class:`Runtime` of the app handling the current request."""
    return current_app.extensions[EXTENSION]


def error_response(exc: ScoringError) -> Response:
    body = exc.to_dict()
    request_id = g.get("request_id")
    if request_id:
        body.setdefault("request_id", request_id)
    response = Response(encode_json(body), status=exc.status_code, mimetype="application/json")
    if isinstance(exc, TritonUnavailable):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


def _configure_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
        )
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def create_app(settings: Settings | None = None, *, init: bool = True) -> Flask:
    """Create the scoring app.

    :param settings: defaults to :meth:`Settings.from_env`.
    :param init: wait for Triton and read model metadata now (as a worker does at boot);
        ``False`` defers that to the first request or readiness probe.
    """
    _configure_logging()
    settings = settings or Settings.from_env()
    app = Flask("score")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]

    gateway = TritonGateway(
        settings.triton_url,
        concurrency=settings.triton_concurrency,
        timeout_s=settings.scoring_timeout_ms / 1000,
    )
    metrics = Metrics(settings.prometheus_multiproc_dir)
    forwarder = TritonForwarder(settings.triton_url, timeout_s=settings.scoring_timeout_ms / 1000)
    rt = Runtime(settings=settings, gateway=gateway, metrics=metrics, forwarder=forwarder)
    if settings.entry_script:
        rt.entry_script = EntryScript(settings.entry_script)
        log.info("serving AzureML entry script %s", settings.entry_script)
        if init:
            rt.entry_script.init()
    else:
        registry = load_processors(settings.processors, model_repository=settings.model_repository)
        rt.scorer = Scorer(settings, gateway, registry, observe=metrics.observe_stage)
        if init:
            rt.scorer.init()
    app.extensions[EXTENSION] = rt

    from triton_score.http import routes  # noqa: PLC0415 - routes import this module

    app.register_blueprint(routes.blueprint)
    app.before_request(routes.assign_request_id)
    app.after_request(routes.echo_request_id)
    app.register_error_handler(ScoringError, error_response)
    app.register_error_handler(HTTPException, routes.http_error)
    app.register_error_handler(Exception, routes.unexpected_error)
    return app
