"""Decode an HTTP request body into a :class:`Request`, the object preprocessors receive."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson

from triton_score.codecs.binary import HEADER_LENGTH, header_length, parse_header
from triton_score.errors import BadRequest

#: Media types that say nothing about the body: none at all, and the form type that curl
#: (``-d``, ``--data-binary``) and urllib (``data=``) send when not told otherwise.
UNSTATED_MEDIA_TYPES = frozenset({"", "application/x-www-form-urlencoded"})
#: Bodies of these types are tried as JSON, and stay raw bytes if they do not parse: the
#: unstated ones, and ``text/plain``, which AzureML's clients send JSON as.
SNIFFED_MEDIA_TYPES = UNSTATED_MEDIA_TYPES | {"text/plain"}


@dataclass(frozen=True)
class Request:
    """One scoring request, as a preprocessor sees it.

    :param body: the raw body bytes.
    :param content_type: the media type, lower-case, without parameters: ``application/json``
        for ``Application/JSON; charset=utf-8`` (the whole header stays in ``headers``).
    :param headers: request headers (case-insensitive lookup through :meth:`header`).
    :param id: the request id (``x-request-id``), also sent back to the client.
    :param json: the parsed JSON body, or ``None`` when the body is not JSON.
    :param query: the URL's query parameters (``?top_k=3``), read-only; a repeated parameter
        keeps its first value. Empty by default.
    :param state: a dict of this request's own, empty at first: what ``preprocess`` puts
        there, ``predict`` and ``postprocess`` read (the processor instance is shared by all
        requests of a worker; this dict is not).
    """

    body: bytes
    content_type: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    id: str = ""
    json: Any = None
    query: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    state: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # A copy behind a read-only view: neither a processor nor whoever built the mapping
        # can change one request's parameters afterwards.
        object.__setattr__(self, "query", MappingProxyType(dict(self.query)))

    @property
    def is_json(self) -> bool:
        return self.json is not None

    def header(self, name: str, default: str = "") -> str:
        """The value of header ``name`` (any case), or ``default``."""
        return header(self.headers, name, default)


#: The request-id header AzureML's server and ours read and echo.
REQUEST_ID = "x-request-id"


def header(headers: Mapping[str, str], name: str, default: str = "") -> str:
    """Look a header up in a plain mapping, ignoring case (the one place that does)."""
    found = headers.get(name)
    if found is not None:
        return found
    lower = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lower), default)


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def is_json_media_type(media_type: str) -> bool:
    return media_type in ("application/json", "text/json") or media_type.endswith("+json")


def decode_request(
    body: bytes,
    content_type: str = "",
    headers: Mapping[str, str] | None = None,
    request_id: str = "",
    query: Mapping[str, str] | None = None,
) -> Request:
    """Parse ``body``: JSON when the content type says so, or when there is none and the
    body parses; raw bytes otherwise (images, audio, ``application/octet-stream``...).

    With ``Inference-Header-Content-Length`` (the v2 binary tensor extension) ``json`` is the
    JSON header at the start of the body, whatever the content type; the tensors' bytes
    stay in ``body``, where the default codec reads them (:mod:`triton_score.codecs.binary`).

    ``headers``, when a ``dict``, is kept as it is (the caller's copy: the web layer makes
    one per request), not copied again.

    :raises BadRequest: empty body, or a JSON body that is not UTF-8 or not valid JSON.
    """
    if not body:
        raise BadRequest("the request body is empty; send the model's inputs (see /swagger.json)")
    if headers is None:
        headers = {}
    elif not isinstance(headers, dict):
        headers = dict(headers)
    media_type = _media_type(content_type)
    parsed = None
    binary_header = header(headers, HEADER_LENGTH)
    if binary_header:
        parsed = parse_header(body, header_length(binary_header, len(body)))
    elif is_json_media_type(media_type):
        parsed = _parse_json(body, strict=True)
    elif media_type in SNIFFED_MEDIA_TYPES:
        parsed = _parse_json(body, strict=False)
    return Request(
        body=body,
        content_type=media_type,
        headers=headers,
        id=request_id,
        json=parsed,
        query=query or {},
    )


def _parse_json(body: bytes, *, strict: bool) -> Any:
    try:
        return orjson.loads(body)  # ~2x faster than json on large tensors
    except orjson.JSONDecodeError as exc:
        if not strict:
            return None
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise BadRequest(f"the JSON body is not valid UTF-8 (byte {bad.start})") from None
        raise BadRequest(
            f"the body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
