"""A tiny OTLP/HTTP trace receiver for the tests: ``POST /v1/traces`` bodies, decoded.

Each body is an ``ExportTraceServiceRequest``: protobuf from the runtime (the SDK's OTLP/HTTP
exporter), read with ``opentelemetry-proto``; OTLP/JSON from Triton 2.51 (its
opentelemetry-cpp exporter's default), whose ids are hex strings. Spans are kept flat, ids as
lower-case hex, as a trace backend shows them.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    service: str
    kind: int
    attributes: dict[str, Any] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    status_code: int = 0
    #: Start and end, in nanoseconds since the epoch.
    start_ns: int = 0
    end_ns: int = 0


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _json_value(value: dict[str, Any]) -> Any:
    for kind, found in value.items():
        if kind == "arrayValue":
            return [_json_value(v) for v in found.get("values", [])]
        return int(found) if kind == "intValue" else found
    return None


def _json_attributes(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    return {pair["key"]: _json_value(pair.get("value", {})) for pair in pairs}


def decode_json(body: bytes) -> list[Span]:
    """OTLP/JSON: the protobuf JSON mapping, but trace and span ids in hex."""
    spans = []
    for resource_spans in json.loads(body).get("resourceSpans", []):
        resource = _json_attributes(resource_spans.get("resource", {}).get("attributes", []))
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                spans.append(
                    Span(
                        name=span["name"],
                        trace_id=span.get("traceId", "").lower(),
                        span_id=span.get("spanId", "").lower(),
                        parent_span_id=span.get("parentSpanId", "").lower(),
                        service=str(resource.get("service.name", "")),
                        kind=int(span.get("kind", 0)),
                        attributes=_json_attributes(span.get("attributes", [])),
                        events=tuple(event["name"] for event in span.get("events", [])),
                        status_code=int(span.get("status", {}).get("code", 0)),
                        start_ns=int(span.get("startTimeUnixNano", 0)),
                        end_ns=int(span.get("endTimeUnixNano", 0)),
                    )
                )
    return spans


def decode(body: bytes) -> list[Span]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    Span(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        service=service,
                        kind=span.kind,
                        attributes=_attributes(span.attributes),
                        events=tuple(event.name for event in span.events),
                        status_code=span.status.code,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                    )
                )
    return spans


class OtlpReceiver:
    """Listens on 127.0.0.1 (a free port) in a thread; ``url`` is the OTLP base URL."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, bytes]] = []  # (path, raw body), every POST
        self.spans: list[Span] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                encoding = (self.headers.get("content-encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                with receiver._lock:
                    receiver.posts.append((self.path, body))
                    try:
                        if self.path.rstrip("/") == "/v1/traces":
                            media = self.headers.get("content-type") or ""
                            is_json = "json" in media or body[:1] == b"{"
                            receiver.spans.extend(decode_json(body) if is_json else decode(body))
                    except Exception as exc:  # noqa: BLE001 - reported by the tests
                        receiver.errors.append(f"{type(exc).__name__}: {exc}")
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def wait_for(
        self, condition: Callable[[list[Span]], bool], timeout: float = 20.0
    ) -> list[Span]:
        """The spans received, once ``condition`` holds for them (else after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.snapshot()
            if condition(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)
