"""The server's log: plain text or JSON lines, every line of a request with its request id.

- :func:`configure_logging` sets up the ``triton_score`` logger (``SCORE_LOG_FORMAT``,
  ``SCORE_LOG_LEVEL``): one handler on stderr, as Gunicorn's own log;
- every record emitted while a request is handled carries ``request_id`` (and ``trace_id``
  when tracing is on), from the request's exchange (:data:`CURRENT_REQUEST`): a suffix
  ``request_id=...`` in text, fields in JSON;
- :class:`LogWriter` stands in for ``sys.stdout`` in Gunicorn workers
  (:func:`capture_stdout`), so a processor's ``print()`` becomes a log line of logger
  ``triton_score.stdout``, with the request id of the request that printed. The request
  context is per greenlet under gevent, so concurrent requests keep their own ids;
- the access line (one per request, logger ``triton_score.access``) is written by
  :mod:`triton_score.http.access` with its fields in ``record.access``, which the JSON
  formatter puts at the top level.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Protocol, TextIO

from triton_score.serve.worker import gevent_patched

LOGGER = "triton_score"
ACCESS_LOGGER = "triton_score.access"
STDOUT_LOGGER = "triton_score.stdout"
TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s%(context)s"
#: ``json.dumps(entry, default=str, ensure_ascii=False)``, with its encoder made once: dumps()
#: builds a new encoder on each call when given options (a tenth of a JSON line's cost).
_to_json = json.JSONEncoder(default=str, ensure_ascii=False).encode
#: A line a process prints without a newline is logged once this long.
MAX_PENDING = 64 * 1024


class _HasIds(Protocol):
    request_id: str
    trace_id: str


#: The request being handled in this greenlet or thread: the web layer's
#: :class:`~triton_score.http.exchange.Exchange`, set for the span of one request.
CURRENT_REQUEST: ContextVar[_HasIds | None] = ContextVar("triton_score_request", default=None)


def request_context() -> dict[str, str]:
    """``request_id`` (and ``trace_id``, when set) of the request being handled, if any.

    Ours come from :data:`CURRENT_REQUEST`. Code of ours that runs in another server's Flask
    app (an entry script's helpers under AzureML's server) has none: ``flask.g``'s
    ``request_id``/``trace_id`` are used there, when that app keeps them.
    """
    current = CURRENT_REQUEST.get()
    if current is not None:
        request_id, trace_id = current.request_id, current.trace_id
    else:
        try:
            from flask import g, has_request_context
        except ImportError:  # pragma: no cover - flask is a dependency
            return {}
        if not has_request_context():
            return {}
        request_id, trace_id = g.get("request_id"), g.get("trace_id")
    fields = {}
    if request_id:
        fields["request_id"] = str(request_id)
    if trace_id:
        fields["trace_id"] = str(trace_id)
    return fields


def logfmt(value: object) -> str:
    """``value`` as one token of a ``key=value`` line: quoted when it has spaces or quotes,
    control characters escaped (a percent-decoded path may hold a newline)."""
    text = str(value)
    if not text or not text.isprintable() or any(c in text for c in ' "='):
        return json.dumps(text)
    return text


class RequestContextFilter(logging.Filter):
    """Adds ``request_id``/``trace_id`` (and the text ``context`` suffix) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "request_fields", None)
        if fields is None:
            fields = request_context()
            record.request_fields = fields
        record.context = "".join(f" {k}={logfmt(v)}" for k, v in fields.items())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``pid``, ``message``, the
    request's ids, an access line's fields, ``exception`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "request_fields", None) or {})
        entry.update(getattr(record, "access", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _to_json(entry)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that configuring again replaces it (and leaves anyone else's alone).

    Access lines reach it through :meth:`write_line`. Under gevent they are joined: the
    lines of the requests that finish in one turn of the event loop go out in one write, at
    the end of that turn (a write to stderr per line was a twentieth of a busy worker's CPU).
    A line waits microseconds, never for another request; any other record, a ``flush()``
    and logging's own shutdown at exit write the waiting lines first, so the log keeps its
    order.
    """

    #: Our formatter's kind ("text" or "json"), for :func:`write_access`.
    kind = "text"

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._waiting: list[str] = []
        # The event loop's "at the end of this turn", when gevent runs the process.
        self._later: Callable[[Callable[[], None]], Any] | None = None
        if gevent_patched():
            from gevent import get_hub

            self._later = get_hub().loop.run_callback

    def write_line(self, line: str) -> None:
        """Write one formatted line (an access line), joined with others under gevent.

        Called by the request's greenlet, on the event loop's own thread (never from the
        offload pool's threads: the access line is written when the answer is sent)."""
        if self._later is None:
            self._write(line + self.terminator)
            return
        if not self._waiting:
            self._later(self._write_waiting)
        self._waiting.append(line + self.terminator)

    def _write_waiting(self) -> None:
        if self._waiting:
            text, self._waiting = "".join(self._waiting), []
            self._write(text)

    def _write(self, text: str) -> None:
        self.acquire()
        try:
            self.stream.write(text)
            super().flush()
        except Exception:  # noqa: BLE001 - as logging does: a broken stream never fails a request
            self.handleError(logging.makeLogRecord({"msg": text.rstrip()}))
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        self._write_waiting()
        super().emit(record)

    def flush(self) -> None:
        self._write_waiting()
        super().flush()


class _Clock:
    """``asctime`` as :class:`logging.Formatter` writes it (local time, ``,mmm``), with the
    part before the milliseconds made once a second, not once a line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def asctime(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._prefix},{int((now - second) * 1000):03d}"


_clock = _Clock()


def _only_handler(logger: logging.Logger) -> _Handler | None:
    """Our handler, when it is the only thing ``logger``'s INFO records reach: no other
    handler or filter on the way, so a line written straight to it is what logging would
    have written. ``None`` otherwise (a test's capture, an extra handler): use logging."""
    if logger.handlers or logger.filters or logger.disabled or not logger.propagate:
        return None
    parent = logger.parent
    if parent is None or parent.name != LOGGER or parent.propagate or parent.filters:
        return None
    handlers = parent.handlers
    if len(handlers) != 1 or type(handlers[0]) is not _Handler:
        return None
    handler = handlers[0]
    filters = handler.filters
    if len(filters) != 1 or type(filters[0]) is not RequestContextFilter:
        return None
    if not parent.isEnabledFor(logging.INFO) or handler.level > logging.INFO:
        return None
    return handler


def write_access(
    logger: logging.Logger,
    message: str,
    fields: Callable[[], dict[str, Any]],
    ids: dict[str, str],
) -> None:
    """One access line: ``message`` (text) or ``fields()`` (JSON), with the request's ``ids``.

    Once per request, so it skips what logging does per record (a ``LogRecord``, the
    caller's frame, the filters, ``%`` formatting) when our handler is the only one that
    would see it; the line is the same either way (``tests/unit/test_logs.py`` compares them).
    """
    handler = _only_handler(logger)
    if handler is None:
        logger.info(message, extra={"access": fields(), "request_fields": ids})
        return
    now = time.time()
    if handler.kind == "json":
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int((now - int(now)) * 1000):03d}Z",
            "level": "INFO",
            "logger": logger.name,
            "pid": os.getpid(),
            "message": message,
            **ids,
            **fields(),
        }
        line = _to_json(entry)
    else:
        context = "".join(f" {k}={logfmt(v)}" for k, v in ids.items())
        line = f"[{_clock.asctime(now)}] [{os.getpid()}] [INFO] {logger.name}: {message}{context}"
    handler.write_line(line)


def configure_logging(log_format: str = "text", level: str | int = "INFO") -> None:
    """(Re)configure the ``triton_score`` logger: one handler on stderr in ``log_format``."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        if isinstance(handler, _Handler):
            handler.flush()  # its waiting lines, if any
            logger.removeHandler(handler)
    handler = _Handler(sys.stderr)
    handler.kind = "json" if log_format == "json" else "text"
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else _text_formatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def _text_formatter() -> logging.Formatter:
    return logging.Formatter(TEXT_FORMAT, defaults={"context": ""})


class LogWriter(io.TextIOBase):
    """A text stream whose every line becomes an INFO record of ``logger``.

    Partial lines wait for their newline per thread (per greenlet under gevent), so two
    requests printing at once do not mix their words. Until the ``triton_score`` log has a
    handler (early in a worker's life), and for anything the log itself would print here,
    lines go to ``fallback`` as they are.
    """

    def __init__(self, logger: logging.Logger, fallback: TextIO | None) -> None:
        super().__init__()
        self._logger = logger
        self._fallback = fallback
        self._pending: dict[int, str] = {}
        self._emitting: set[int] = set()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        ident = threading.get_ident()
        buffered = self._pending.pop(ident, "") + text
        *lines, rest = buffered.split("\n")
        for line in lines:
            self._emit(ident, line)
        if len(rest) > MAX_PENDING:
            self._emit(ident, rest)
        elif rest:
            self._pending[ident] = rest
        return len(text)

    def flush(self) -> None:
        ident = threading.get_ident()
        rest = self._pending.pop(ident, "")
        if rest:
            self._emit(ident, rest)

    def _emit(self, ident: int, line: str) -> None:
        line = line.rstrip("\r")
        configured = any(isinstance(h, _Handler) for h in logging.getLogger(LOGGER).handlers)
        if ident in self._emitting or not configured:
            if self._fallback is not None:
                self._fallback.write(line + "\n")
                self._fallback.flush()
            return
        self._emitting.add(ident)
        try:
            self._logger.info("%s", line)
        finally:
            self._emitting.discard(ident)


def capture_stdout() -> None:
    """Send this process's ``print()`` output to the log (a Gunicorn worker calls it)."""
    if not isinstance(sys.stdout, LogWriter):
        sys.stdout = LogWriter(logging.getLogger(STDOUT_LOGGER), sys.stdout)
