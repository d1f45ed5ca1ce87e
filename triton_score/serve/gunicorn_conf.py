"""Gunicorn settings for the scoring server (the repo's ``gunicorn.conf.py`` imports this).

Why gevent workers: AzureML's server runs sync workers, so at most ``WORKER_COUNT`` requests
are ever in flight and Triton's dynamic batcher has nothing to batch. A gevent worker keeps
many requests in flight (``tritonclient.http`` is itself gevent-based: one client per worker
serves all its greenlets), so concurrent requests reach Triton together and get batched.

Environment (:class:`~triton_score.settings.ProcessSettings`, read once when Gunicorn loads
this file; settings that cannot be read are refused by :func:`on_starting`):

- ``WORKER_COUNT`` (1, as in AzureML): worker processes;
- ``WORKER_TIMEOUT`` (300): seconds a silent worker is given before it is restarted;
- ``SCORE_HOST`` / ``SCORE_PORT`` (127.0.0.1 / 5001): the bind address; images bind 0.0.0.0;
  with ``SEPERATE_HEALTH_ENDPOINT=true``, also ``HEALTH_PORT`` (5000) on the same host, for
  the probes only (:mod:`triton_score.http.health_port`);
- ``SCORE_WORKER_CONNECTIONS`` (256): concurrent requests per worker;
- ``SCORE_GRACEFUL_TIMEOUT`` (30): seconds in-flight requests get to finish on SIGTERM
  (``score serve`` first answers readiness 503 for ``SCORE_DRAIN_S``: see
  :mod:`triton_score.serve.supervisor`);
- ``SCORE_ACCESS_LOG`` (unset): set to ``-`` for Gunicorn's own access log on stdout, beside
  ours. The app writes one access line per request itself (logger ``triton_score.access``,
  with the request id, model and stage timings, in ``SCORE_LOG_FORMAT``), so this is only for
  tools that expect Gunicorn's format;
- ``SCORE_LOG_LEVEL`` (INFO): Gunicorn's level too; ``SCORE_LOG_FORMAT=json`` puts Gunicorn's
  own lines in the same JSON lines as ours.

In each worker, ``print()`` output goes to the log with the request id of the request that
printed (:func:`triton_score.telemetry.logs.capture_stdout`).
"""

import os

from triton_score.settings import ProcessSettings, Settings


def _read_settings() -> tuple[ProcessSettings, Settings]:
    """This server's settings; the defaults when they cannot be read, so that Gunicorn gets as
    far as :func:`on_starting`, which refuses them in one line."""
    try:
        return ProcessSettings.from_env(), Settings.from_env()
    except (ValueError, TypeError):
        return ProcessSettings(), Settings()


_process, _settings = _read_settings()
wsgi_app = "triton_score.http.app:create_app()"
bind = [f"{_process.host}:{_process.port}"]
if _settings.separate_health_endpoint:  # SEPERATE_HEALTH_ENDPOINT: the probes' own port
    _health = f"{_process.host}:{_settings.health_port}"
    if _health != bind[0]:
        bind.append(_health)
workers = _process.workers
worker_class = "gevent"
worker_connections = _process.worker_connections
timeout = _process.worker_timeout_s
graceful_timeout = _process.graceful_timeout_s
keepalive = 5
accesslog = _process.access_log or None
errorlog = "-"
loglevel = _settings.log_level.lower()
proc_name = "triton-score"
if _settings.log_format == "json":
    # Gunicorn's own lines (booting, worker timeouts and restarts: what matters at 3 a.m.)
    # in the same JSON lines as ours, so one log pipeline parses everything.
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "triton_score.telemetry.logs.JsonFormatter"}},
        "handlers": {
            "error_console": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            },
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            },
        },
        "loggers": {
            "gunicorn.error": {
                "level": loglevel.upper(),
                "handlers": ["error_console"],
                "propagate": False,
            },
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
    }
# Gunicorn >= 24 opens a control socket at a fixed path under $HOME: two servers on one
# machine (tests, several deployments) would fight over it, and nothing here uses it.
control_socket_disable = True


def on_starting(server):  # gunicorn hook signature
    """In the master, before any worker: refuse settings that cannot serve (exit code 2, one
    line), warn when nothing but the network stands between the port and its clients, and
    make the token of this server's shared memory region names (:func:`server_token`)."""
    import logging
    import sys

    from triton_score.settings import environment, insecure_bind_warning, settings_error
    from triton_score.triton.shm import server_token

    server_token()  # before any fork: the workers' region names carry the master's token

    refused = settings_error(environment())
    if refused:
        print(f"error: {refused}", file=sys.stderr, flush=True)
        raise SystemExit(2)  # the master's own start: Gunicorn has forked nothing yet
    host = _process.host
    warning = insecure_bind_warning(Settings.from_env(), host)
    if warning:
        logging.getLogger("gunicorn.error").warning(warning)


def post_worker_init(worker):  # gunicorn hook signature
    """When ``score serve`` stops (the drain file exists), let SIGTERM shrink the listen
    queue to its minimum first.

    Gunicorn's worker keeps accepting for up to a second after SIGTERM, then closes the
    listening socket, and the kernel resets every connection still in its queue, accepted
    by the kernel but by no worker: the client sees a reset, not a refusal. With the queue at
    its minimum, new connections wait at the SYN instead (the client tries again and is
    refused once the socket is closed), and at most one is reset. Only when draining: SIGTERM
    also ends the old workers of a reload, which share the socket with the new ones.
    """
    drain_file = _process.drain_file
    if not drain_file:
        return
    import contextlib
    import signal

    stop = worker.handle_exit

    def handle_exit(signum, frame):
        if os.path.exists(drain_file):
            for sock in worker.sockets:
                with contextlib.suppress(OSError):
                    sock.listen(0)
        stop(signum, frame)

    signal.signal(signal.SIGTERM, handle_exit)


def post_fork(server, worker):  # gunicorn hook signature
    """In the new worker: what processors print() becomes log lines with the request id;
    metrics that know their process without asking for its pid on every update."""
    from triton_score.telemetry.logs import capture_stdout
    from triton_score.telemetry.metrics import pin_process_identity

    capture_stdout()
    pin_process_identity()


def worker_exit(server, worker):  # gunicorn hook signature
    """In the exiting worker: unregister and unlink its shared memory region; write the
    captures still queued (``SCORE_CAPTURE``)."""
    from triton_score.http.responses import EXTENSION
    from triton_score.triton.shm import close_all

    close_all()
    runtime = getattr(getattr(worker, "wsgi", None), "extensions", {}).get(EXTENSION)
    capture = getattr(getattr(runtime, "scorer", None), "capture", None)
    if capture is not None:
        capture.close()


def child_exit(server, worker):  # gunicorn hook signature
    """Drop a dead worker's live gauges from the shared Prometheus files, and remove the
    shared memory region it could not remove itself (killed: SIGKILL, OOM, timeout)."""
    if _process.prometheus_multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
    try:
        from triton_score.triton.shm import cleanup_dead_worker

        removed = cleanup_dead_worker(worker.pid, Settings.from_env().triton_url)
        if removed:
            server.log.info("removed shared memory of dead worker %s: %s", worker.pid, removed)
    except Exception:  # noqa: BLE001 - the master must go on whatever happens here
        server.log.warning("could not clean the shared memory of worker %s", worker.pid)
