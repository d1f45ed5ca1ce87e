"""Encode what a postprocessor returns into an HTTP response.

A postprocessor returns a JSON-able value (numpy included), ``bytes``, or a :class:`Response`
when it chooses the status, headers or content type itself (an image, a CSV file, a 202).
:func:`render` turns any of them into an :class:`Encoded` response the web layer sends as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from triton_score.errors import ScoringError

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
#: Headers the server computes itself; a processor may not set them.
_RESERVED_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive"}


def jsonable(value: Any) -> Any:
    """What JSON encoders cannot encode themselves (numpy arrays and scalars, bytes, sets,
    tuples) as plain values; a ``default=`` for :func:`json.dumps` too."""
    if isinstance(value, np.ndarray):  # object/bytes arrays orjson cannot serialise natively
        return [jsonable(v) if isinstance(v, np.ndarray | bytes) else v for v in value.tolist()]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _decode_bytes(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):
        return [_decode_bytes(v) for v in value]
    return value


def encode_json(value: Any) -> bytes:
    """JSON-encode ``value``; numpy arrays and scalars become lists and numbers."""
    if isinstance(value, np.ndarray) and value.dtype == np.object_:
        value = _decode_bytes(value.tolist())
    return orjson.dumps(value, default=jsonable, option=_OPTIONS)


def encode_response(value: Any) -> tuple[bytes, str]:
    """Body and content type for a postprocessor's return value.

    ``bytes`` go out as ``application/octet-stream``; everything else as JSON.
    """
    if isinstance(value, bytes | bytearray):
        return bytes(value), OCTET_STREAM
    return encode_json(value), JSON


@dataclass(frozen=True)
class Response:
    """A response a processor shapes itself; return it from ``postprocess``.

    :param body: ``bytes`` (sent as they are), ``str`` (UTF-8), ``None`` (an empty body, for
        a 202 or 204), or anything JSON-able (encoded as the default response is).
    :param status: the HTTP status code (100..599).
    :param headers: extra response headers. ``Content-Length`` and hop-by-hop headers are the
        server's; the request-id headers are always added.
    :param content_type: the ``Content-Type``; default by body: ``application/octet-stream``
        for bytes, ``text/plain; charset=utf-8`` for str, ``application/json`` otherwise.
        A ``text/*`` type without a charset gets ``; charset=utf-8`` when the body is a str.

    Example: ``Response(png_bytes, content_type="image/png")``, ``Response(csv_text,
    content_type="text/csv")``, ``Response({"job": job_id}, status=202)``.
    """

    body: Any = None
    status: int = 200
    headers: Mapping[str, str] | None = field(default=None)
    content_type: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.status, int) or isinstance(self.status, bool):
            raise TypeError(f"Response status must be an int, got {type(self.status).__name__}")
        if not 100 <= self.status <= 599:
            raise ValueError(f"Response status {self.status} is not an HTTP status (100..599)")
        for name, value in (self.headers or {}).items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(f"Response header {name!r}: names and values must be str")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"Response header {name!r} is set by the server, not processors")
            if "\n" in value or "\r" in value:
                raise ValueError(f"Response header {name!r}: line breaks are not allowed")
        if self.content_type is not None and not isinstance(self.content_type, str):
            raise TypeError("Response content_type must be a str")


@dataclass(frozen=True)
class Encoded:
    """An HTTP response ready to send: what :func:`render` returns."""

    body: bytes
    content_type: str
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def _with_charset(content_type: str) -> str:
    if content_type.lower().startswith("text/") and "charset=" not in content_type.lower():
        return f"{content_type}; charset=utf-8"
    return content_type


def render(value: Any) -> Encoded:
    """The response for whatever a postprocessor returned (a :class:`Response` or a value)."""
    if not isinstance(value, Response):
        body, content_type = encode_response(value)
        return Encoded(body, content_type)
    headers = dict(value.headers or {})
    declared = value.content_type
    for name in [n for n in headers if n.lower() == "content-type"]:
        declared = declared or headers[name]
        del headers[name]
    if value.body is None:
        body, default = b"", "text/plain; charset=utf-8"
    elif isinstance(value.body, bytes | bytearray | memoryview):
        body, default = bytes(value.body), OCTET_STREAM
    elif isinstance(value.body, str):
        body, default = value.body.encode("utf-8"), "text/plain; charset=utf-8"
        declared = _with_charset(declared) if declared else None
    else:
        body, default = encode_json(value.body), JSON
    return Encoded(body, declared or default, value.status, headers)


def encode_error(error: ScoringError, request_id: str = "") -> Encoded:
    """The answer for ``error``: its one JSON shape (``{"error", "code", ..., "request_id"}``),
    status and headers (``Retry-After``, ``WWW-Authenticate``...)."""
    return Encoded(
        encode_json(error.to_dict(request_id)), JSON, error.status_code, dict(error.headers)
    )
