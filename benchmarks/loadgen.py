"""A small HTTP load generator: fixed concurrency, keep-alive connections, every request kept.

``wrk`` is not installable by the README's command; this is what the load and fault tests
use (``tests/load/test_load.py``), and a command of its own::

    python benchmarks/loadgen.py http://127.0.0.1:5001/score/digits_onnx \\
        --body @request.json --concurrency 16 --requests 50000
    python benchmarks/loadgen.py URL --duration 30 --json results.jsonl

Each of ``concurrency`` threads owns one keep-alive connection (``http.client``) and sends
requests back to back until ``requests`` have been sent in all or ``duration`` seconds have
passed. Every request becomes a :class:`Record`: when it started and ended (``time.time()``,
so it can be set against other clocks), its status, and the error, classified by when it
happened:

==============  ==============================================================================
``refused``     the connection was refused (nothing listens)
``reset``       the connection was reset or closed before any byte of an answer
``truncated``   the status line arrived, then the connection broke: a reset in mid-answer
``timeout``     no answer within ``timeout`` seconds
``other``       anything else (the exception's type is in ``detail``)
==============  ==============================================================================

A connection that failed is opened again for the next request, after ``backoff`` seconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

ERROR_KINDS = ("refused", "reset", "truncated", "timeout", "other")


@dataclass
class Record:
    """One request: ``status`` is 0 when ``error`` is set."""

    index: int
    started: float
    ended: float
    status: int = 0
    error: str = ""
    detail: str = ""
    #: Response headers of interest (``Retry-After``), when answered.
    retry_after: str = ""

    @property
    def latency(self) -> float:
        return self.ended - self.started


@dataclass
class Results:
    records: list[Record] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    def statuses(self) -> Counter[int]:
        return Counter(r.status for r in self.records if not r.error)

    def errors(self) -> Counter[str]:
        return Counter(r.error for r in self.records if r.error)

    def summary(self) -> dict[str, object]:
        latencies = sorted(r.latency for r in self.records)
        elapsed = max(self.ended - self.started, 1e-9)

        def pct(p: float) -> float:
            if not latencies:
                return 0.0
            return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

        return {
            "requests": len(self.records),
            "seconds": round(elapsed, 3),
            "rps": round(len(self.records) / elapsed, 1),
            "statuses": dict(sorted(self.statuses().items())),
            "errors": dict(sorted(self.errors().items())),
            "latency_ms": {
                "mean": round(statistics.fmean(latencies) * 1000, 3) if latencies else 0.0,
                "p50": round(pct(50), 3),
                "p90": round(pct(90), 3),
                "p99": round(pct(99), 3),
                "max": round(latencies[-1] * 1000, 3) if latencies else 0.0,
            },
        }


def _classify(exc: BaseException, answered: bool) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    broken = (
        ConnectionError,  # reset, aborted, broken pipe
        http.client.RemoteDisconnected,
        http.client.IncompleteRead,
        http.client.BadStatusLine,
    )
    if isinstance(exc, broken):
        return "truncated" if answered else "reset"
    return "other"


class LoadGenerator:
    """Sends ``body`` to ``url`` from ``concurrency`` threads; see the module's docstring.

    :param on_record: called with each :class:`Record` as it completes (from the threads).
    :param before: called with the request's index before it is sent (e.g. to sample the
        server's processes at a given request); from the threads.
    """

    def __init__(
        self,
        url: str,
        *,
        method: str = "POST",
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        concurrency: int = 16,
        timeout: float = 30.0,
        backoff: float = 0.0,
        on_record: Callable[[Record], None] | None = None,
        before: Callable[[int], None] | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.method = method
        self.body = body
        self.headers = {"content-type": "application/json", **(headers or {})}
        self.concurrency = concurrency
        self.timeout = timeout
        self.backoff = backoff
        self.on_record = on_record
        self.before = before
        self._lock = threading.Lock()
        self._next = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask the threads to stop after their current request."""
        self._stop.set()

    def _take(self, limit: int | None, deadline: float | None) -> int | None:
        if self._stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
            return None
        with self._lock:
            if limit is not None and self._next >= limit:
                return None
            index = self._next
            self._next += 1
            return index

    def _one(self, connection: http.client.HTTPConnection, index: int) -> tuple[Record, bool]:
        """One request; the flag says whether the connection may be used again."""
        started = time.time()
        answered = False
        try:
            connection.request(self.method, self.path, body=self.body, headers=self.headers)
            response = connection.getresponse()
            answered = True
            response.read()
            record = Record(
                index, started, time.time(), response.status,
                retry_after=response.getheader("Retry-After", ""),
            )  # fmt: skip
            return record, not response.will_close
        except Exception as exc:  # noqa: BLE001 - every failure is a record
            kind = _classify(exc, answered)
            return Record(index, started, time.time(), 0, kind, type(exc).__name__), False

    def _loop(self, limit: int | None, deadline: float | None, out: list[Record]) -> None:
        connection: http.client.HTTPConnection | None = None
        while (index := self._take(limit, deadline)) is not None:
            if self.before is not None:
                self.before(index)
            if connection is None:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            record, reusable = self._one(connection, index)
            if not reusable:
                connection.close()
                connection = None
                if record.error and self.backoff > 0:
                    time.sleep(self.backoff)
            out.append(record)
            if self.on_record is not None:
                self.on_record(record)
        if connection is not None:
            connection.close()

    def run(self, requests: int | None = None, duration: float | None = None) -> Results:
        """Send ``requests`` requests, or for ``duration`` seconds (or until :meth:`stop`)."""
        if requests is None and duration is None:
            raise ValueError("give requests, duration or both")
        deadline = time.monotonic() + duration if duration is not None else None
        per_thread: list[list[Record]] = [[] for _ in range(self.concurrency)]
        threads = [
            threading.Thread(target=self._loop, args=(requests, deadline, out), daemon=True)
            for out in per_thread
        ]
        results = Results(started=time.time())
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results.ended = time.time()
        results.records = sorted((r for out in per_thread for r in out), key=lambda r: r.index)
        return results


def run(url: str, *, requests: int | None = None, duration: float | None = None, **kw: object):
    """:class:`LoadGenerator` ``(url, **kw).run(requests, duration)`` in one call."""
    return LoadGenerator(url, **kw).run(requests, duration)  # type: ignore[arg-type]


def _body(value: str) -> bytes:
    if value.startswith("@"):
        with open(value[1:], "rb") as file:
            return file.read()
    return value.encode()


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--method", default=None, help="default: POST with a body, else GET")
    parser.add_argument("--body", default="", help="the request body, or @FILE")
    parser.add_argument("-H", "--header", action="append", default=[], help="'name: value'")
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-n", "--requests", type=int, default=None)
    parser.add_argument("-d", "--duration", type=float, default=None, help="seconds")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--backoff", type=float, default=0.0, help="seconds after an error")
    parser.add_argument("--json", default="", help="write every record to this JSON-lines file")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.requests is None and args.duration is None:
        args.duration = 10.0
    body = _body(args.body)
    headers = dict(h.split(":", 1) for h in args.header)
    generator = LoadGenerator(
        args.url,
        method=args.method or ("POST" if body else "GET"),
        body=body,
        headers={k.strip(): v.strip() for k, v in headers.items()},
        concurrency=args.concurrency,
        timeout=args.timeout,
        backoff=args.backoff,
    )
    results = generator.run(args.requests, args.duration)
    if args.json:
        with open(args.json, "w") as file:
            for record in results.records:
                file.write(json.dumps(asdict(record)) + "\n")
    print(json.dumps(results.summary(), indent=2))
    failed = sum(results.errors().values()) + sum(
        n for status, n in results.statuses().items() if status >= 400
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
