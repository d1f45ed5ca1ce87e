"""Encode what a postprocessor returns into an HTTP body (JSON that understands numpy)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


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
        return bytes(value), "application/octet-stream"
    return encode_json(value), "application/json"
