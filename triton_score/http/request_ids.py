"""Request ids, taken and echoed as AzureML's inference server does.

- ``x-request-id`` is the client's, or a new UUID when it sent none;
- ``x-ms-client-request-id`` (or the deprecated ``x-ms-request-id``) is the client's own id,
  echoed back, and reported as ``x-ms-request-id`` (which is ``x-request-id`` when the client
  sent neither).

An id longer than :data:`MAX_ID_LENGTH` characters, or with unprintable ones, is refused with
a 431 before anything else happens (AzureML's server refuses them too), so a log line or a
response header never carries what a client smuggled into one.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from triton_score.codecs.request import REQUEST_ID
from triton_score.errors import HTTPFailure

MS_REQUEST_ID = "x-ms-request-id"
MS_CLIENT_REQUEST_ID = "x-ms-client-request-id"
#: AzureML's server refuses longer ids with 431; so do we.
MAX_ID_LENGTH = 100

#: Each id header as its WSGI environ key.
_ENVIRON_KEYS = {
    name: "HTTP_" + name.upper().replace("-", "_")
    for name in (REQUEST_ID, MS_CLIENT_REQUEST_ID, MS_REQUEST_ID)
}


def take_ids(environ: Mapping[str, Any]) -> tuple[str, str]:
    """``(request id, client request id)`` of a request, from its WSGI environ.

    :raises HTTPFailure: 431, an id that is too long or unprintable.
    """
    incoming = {name: environ.get(key, "") for name, key in _ENVIRON_KEYS.items()}
    for name, value in incoming.items():
        if len(value) > MAX_ID_LENGTH or not value.isprintable():
            raise HTTPFailure(
                f"{name} must be printable and at most {MAX_ID_LENGTH} characters",
                431,
                "bad_request_id",
            )
    # A uuid4 costs a few microseconds of os.urandom: make one only when the client sent none.
    request_id = incoming[REQUEST_ID] or str(uuid.uuid4())
    return request_id, incoming[MS_CLIENT_REQUEST_ID] or incoming[MS_REQUEST_ID]


def id_headers(request_id: str, client_request_id: str) -> list[tuple[str, str]]:
    """The id headers of an answer."""
    headers = [(REQUEST_ID, request_id), (MS_REQUEST_ID, client_request_id or request_id)]
    if client_request_id:
        headers.append((MS_CLIENT_REQUEST_ID, client_request_id))
    return headers
