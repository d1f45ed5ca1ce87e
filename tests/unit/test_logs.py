"""The log without Gunicorn: formats, request ids on every line, print() capture, access lines."""

from __future__ import annotations

import io
import json
import logging

import pytest
from fake_triton import FakeTriton
from flask import Flask, g

from triton_score.http.app import create_app
from triton_score.settings import Settings
from triton_score.telemetry.logs import (
    LOGGER,
    JsonFormatter,
    LogWriter,
    RequestContextFilter,
    _Handler,
    configure_logging,
    logfmt,
)


@pytest.fixture()
def restore_logging():
    logger = logging.getLogger(LOGGER)
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def test_logfmt_quotes_and_escapes() -> None:
    assert logfmt("plain") == "plain"
    assert logfmt("two words") == '"two words"'
    assert logfmt("") == '""'
    assert logfmt("/score/a\nforged line") == '"/score/a\\nforged line"'
    assert logfmt("/score/\u2028x") == '"/score/\\u2028x"'


def records_to(stream: io.StringIO, log_format: str) -> None:
    configure_logging(log_format, "INFO")
    (handler,) = [h for h in logging.getLogger(LOGGER).handlers if isinstance(h, _Handler)]
    handler.setStream(stream)


def test_lines_of_a_request_carry_its_ids_text_and_json(restore_logging) -> None:
    app = Flask("t")
    for log_format in ("text", "json"):
        stream = io.StringIO()
        records_to(stream, log_format)
        logging.getLogger("triton_score.x").info("outside")
        with app.test_request_context("/"):
            g.request_id, g.trace_id = "req-1", "4bf92f3577b34da6a3ce929d0e0e4736"
            logging.getLogger("triton_score.x").info("inside %s", "a request")
        outside, inside = stream.getvalue().splitlines()
        if log_format == "text":
            assert outside.endswith("triton_score.x: outside")
            assert inside.endswith(
                "triton_score.x: inside a request request_id=req-1 "
                "trace_id=4bf92f3577b34da6a3ce929d0e0e4736"
            )
        else:
            assert "request_id" not in json.loads(outside)
            entry = json.loads(inside)
            assert entry["message"] == "inside a request" and entry["logger"] == "triton_score.x"
            assert entry["request_id"] == "req-1" and entry["level"] == "INFO"
            assert entry["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_json_lines_hold_access_fields_and_tracebacks() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("triton_score.access", logging.INFO, "", 0, "GET / 200", (), None)
    record.access = {"status": 200, "stages_ms": {"infer": 1.5}}
    RequestContextFilter().filter(record)
    assert json.loads(formatter.format(record))["stages_ms"] == {"infer": 1.5}
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        failed = logging.LogRecord("x", logging.ERROR, "", 0, "failed", (), sys.exc_info())
    entry = json.loads(formatter.format(failed))
    assert "RuntimeError: boom" in entry["exception"] and entry["message"] == "failed"


def test_print_becomes_log_lines_with_the_request_id(restore_logging) -> None:
    stream, fallback = io.StringIO(), io.StringIO()
    writer = LogWriter(logging.getLogger("triton_score.stdout"), fallback)
    logger = logging.getLogger(LOGGER)
    logger.handlers[:] = [h for h in logger.handlers if not isinstance(h, _Handler)]
    print("before logging is configured", file=writer)  # no handler yet: as it is
    assert fallback.getvalue() == "before logging is configured\n"
    records_to(stream, "json")
    app = Flask("t")
    with app.test_request_context("/"):
        g.request_id = "req-9"
        print("two", "words", file=writer)
        writer.write("partial ")
        writer.write("line\nand the rest")
        writer.flush()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["message"] for e in lines] == ["two words", "partial line", "and the rest"]
    assert {e["request_id"] for e in lines} == {"req-9"}
    assert {e["logger"] for e in lines} == {"triton_score.stdout"}


def test_the_access_line_of_a_forwarded_request(restore_logging, capsys) -> None:
    with FakeTriton() as fake:
        settings = Settings(
            triton_url=fake.url, processors=("none",), metadata_refresh_s=0, log_format="json"
        )
        app = create_app(settings, init=False)
        response = app.test_client().get(
            "/v2/models/m/config?x=secret-in-query", headers={"x-request-id": "acc-1"}
        )
    assert response.status_code == 200
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    (access,) = [e for e in lines if e["logger"] == "triton_score.access"]
    assert access["request_id"] == "acc-1" and access["status"] == 200
    assert access["method"] == "GET" and access["path"] == "/v2/models/m/config"
    assert access["route"] == "/v2/<path:path>" and access["model"] == "m"
    assert set(access["stages_ms"]) == {"forward"} and access["duration_ms"] > 0
    assert "secret-in-query" not in json.dumps(access)  # no query string in the log


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_fast_access_line_is_the_line_logging_writes(restore_logging, log_format) -> None:
    """write_access skips logging's per-record work when only our handler would see the
    line; the line must be the one logging would have written (time aside)."""
    from triton_score.telemetry.logs import ACCESS_LOGGER, write_access

    logging.getLogger("triton_score").handlers.clear()  # another test's may be there
    configure_logging(log_format, "INFO")
    (handler,) = logging.getLogger("triton_score").handlers
    access = logging.getLogger(ACCESS_LOGGER)
    fields = {"method": "POST", "path": "/score/m", "status": 200, "stages_ms": {"infer": 1.5}}
    ids = {"request_id": "r 1", "trace_id": "ab"}
    lines = []
    for slow in (False, True):
        handler.stream = io.StringIO()
        if slow:  # any filter on the way makes it take logging's way
            access.addFilter(lambda record: True)
        try:
            write_access(access, "POST /score/m 200 1.00ms", lambda: fields, ids)
        finally:
            access.filters.clear()
        lines.append(handler.stream.getvalue())
    fast, slow_line = lines
    assert fast.endswith("\n") and fast.count("\n") == 1
    if log_format == "json":
        fast_entry, slow_entry = json.loads(fast), json.loads(slow_line)
        assert fast_entry.pop("time")[:16] == slow_entry.pop("time")[:16]
        assert list(fast_entry.items()) == list(slow_entry.items())
    else:
        # "[2026-12-07 12:00:00,123] [pid] [INFO] ..." : the same but for the milliseconds
        assert fast[:20] == slow_line[:20] and fast[24:] == slow_line[24:], (fast, slow_line)
        assert fast.endswith('request_id="r 1" trace_id=ab\n')


def test_access_lines_wait_for_the_end_of_the_loop_turn_and_keep_the_order() -> None:
    """Under gevent, access lines are joined into one write at the end of the event loop's
    turn; another record, or a flush, writes them first."""
    handler = _Handler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(message)s"))
    turn_ends: list = []
    handler._later = turn_ends.append  # the loop's run_callback, in a gevent worker
    handler.write_line("first access line")
    handler.write_line("second access line")
    assert handler.stream.getvalue() == "" and len(turn_ends) == 1  # one write, scheduled once
    turn_ends.pop()()
    assert handler.stream.getvalue() == "first access line\nsecond access line\n"
    handler.write_line("third access line")
    handler.emit(logging.makeLogRecord({"msg": "a processor's line", "levelno": logging.INFO}))
    assert handler.stream.getvalue().endswith("third access line\na processor's line\n")
    handler.write_line("fourth access line")
    handler.flush()  # as logging.shutdown() does at exit
    assert handler.stream.getvalue().endswith("fourth access line\n")
    turn_ends.clear()
    without_gevent = _Handler(io.StringIO())
    without_gevent.write_line("at once")
    assert without_gevent.stream.getvalue() == "at once\n"
