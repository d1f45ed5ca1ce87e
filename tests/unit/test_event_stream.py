"""A decoupled model's SSE body (``_EventStream``): each value an event, one error event on a
failure, and the stream's request ended exactly once, also when the body is never read."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson

from triton_score.errors import BadRequest
from triton_score.http.score_route import _EventStream
from triton_score.telemetry.metrics import Metrics


class Values:
    def __init__(self, items: list[object], fail: Exception | None = None) -> None:
        self.items, self.fail, self.closed = iter(items), fail, 0

    def __iter__(self) -> Iterator[object]:
        return self

    def __next__(self) -> object:
        try:
            return next(self.items)
        except StopIteration:
            if self.fail is not None:
                raise self.fail from None
            raise

    def close(self) -> None:
        self.closed += 1


def _stream(values: Values) -> tuple[_EventStream, list[tuple[int, str]], Metrics]:
    metrics = Metrics()
    ended: list[tuple[int, str]] = []
    meter = metrics.stream("m", time.perf_counter())
    return _EventStream(values, "rid", meter, lambda *a: ended.append(a)), ended, metrics


def _outcomes(metrics: Metrics) -> dict[str, float]:
    return {
        labels[1]: child._value.get()
        for (name, labels), child in metrics._children.items()
        if name == "score_streams"
    }


def test_each_value_is_an_event_and_the_end_is_recorded_once() -> None:
    values = Values([{"a": 1}, {"a": 2}])
    stream, ended, metrics = _stream(values)
    assert list(stream) == [b'data: {"a":1}\n\n', b'data: {"a":2}\n\n']
    stream.close()  # the WSGI server closes it after reading it whole
    assert ended == [(200, "")] and values.closed == 1
    assert _outcomes(metrics) == {"completed": 1}


def test_a_failure_is_one_error_event_then_the_end() -> None:
    values = Values([{"a": 1}], fail=BadRequest("no more"))
    stream, ended, metrics = _stream(values)
    events = list(stream)
    assert events[0] == b'data: {"a":1}\n\n' and events[1].startswith(b"event: error\ndata: ")
    assert orjson.loads(events[1].split(b"data: ", 1)[1])["error"] == "no more"
    assert len(events) == 2 and ended == [(200, "")]
    assert _outcomes(metrics) == {"failed": 1}


def test_a_body_never_read_still_ends_its_request() -> None:
    values = Values([{"a": 1}])
    stream, ended, metrics = _stream(values)
    stream.close()  # the client went away before the first write
    stream.close()
    assert ended == [(499, "")] and values.closed == 1
    assert _outcomes(metrics) == {"cancelled": 1}
