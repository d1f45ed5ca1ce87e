"""Read a request body of known length into one ``bytes`` object: memory follows the bytes
received, and the result is never copied.

A ``Content-Length`` is only a claim. Sizing a buffer from it before the body arrives lets a
client that sends headers alone make the worker commit (and zero-fill) up to the body limit,
per connection, for as long as the request deadline allows. So the buffer grows as the body
arrives: it starts at :data:`FIRST_BYTES` and doubles, capped at the claimed length, and each
growth happens only once the bytes before it are in. A worker never holds more than about
twice what it was actually sent.

Within that buffer the body is read in place (``readinto``), not through ``read()`` chunks:
Werkzeug's ``get_data()`` collects a body in a growing ``bytearray`` and copies it into
``bytes`` at the end (the body twice, for a moment). Here the last growth makes the
``io.BytesIO`` buffer exactly ``length`` bytes, and ``getvalue()`` hands that very buffer out
as ``bytes`` (CPython does not copy when the buffer is exactly the value's size and no view
is left open). The numpy arrays the default codec makes are views over it: one copy of the
body in the worker, start to finish.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import IO, Any

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import get_content_length, get_input_stream

from triton_score.errors import BadRequest, BodyTooLarge

#: Read this much at a time at most.
CHUNK_BYTES = 1 << 20
#: The buffer's first size: what a header-only client can make a worker reserve.
FIRST_BYTES = 64 * 1024


class IncompleteBody(Exception):
    """The client sent fewer bytes than its ``Content-Length`` said (it went away)."""


def read_exactly(stream: IO[bytes], length: int) -> bytes:
    """``length`` bytes from ``stream`` as one ``bytes`` object, read in place.

    :raises IncompleteBody: the stream ended first.
    """
    if length <= 0:
        return b""
    # werkzeug's request.stream has readinto(); a bare WSGI stream may have read() only.
    readinto = getattr(stream, "readinto", None) or _reader(stream)
    buffer = io.BytesIO()
    position = capacity = 0
    while position < length:
        # Grow only once the bytes so far are in: a claim alone reserves FIRST_BYTES.
        capacity = min(length, max(FIRST_BYTES, 2 * capacity))
        buffer.seek(capacity - 1)
        buffer.write(b"\0")
        with buffer.getbuffer() as view:  # released before the next growth and getvalue()
            while position < capacity:
                read = readinto(view[position : min(capacity, position + CHUNK_BYTES)])
                if not read:
                    raise IncompleteBody(f"the body ended after {position} of {length} bytes")
                position += read
    return buffer.getvalue()


def _reader(stream: IO[bytes]) -> Callable[[memoryview], int]:
    def readinto(target: memoryview) -> int:
        data = stream.read(len(target))
        target[: len(data)] = data
        return len(data)

    return readinto


def read_body(environ: dict[str, Any], limit: int, source: str) -> bytes:
    """A request's body, from its WSGI environ, refused with a 413 naming ``limit`` (and the
    setting or rule it comes from, ``source``) when it is larger.

    A ``Content-Length`` above the limit is refused before a byte of the body is read; a body
    without one (chunked) is read up to the limit only.
    """
    length = get_content_length(environ)
    if length is not None and length > limit:
        raise BodyTooLarge(limit, length, source=source)
    if length is not None:
        try:  # in place: the body is held once, and tensors are views over it
            return read_exactly(environ["wsgi.input"], length)
        except IncompleteBody as exc:
            raise BadRequest(str(exc)) from None
    # Chunked: the server ends the stream (wsgi.input_terminated; otherwise werkzeug gives an
    # empty one). Read one byte more than the limit, and refuse a body that has it.
    stream = get_input_stream(environ, max_content_length=limit + 1)
    chunks, size = [], 0
    try:
        while size <= limit:
            chunk = stream.read(min(CHUNK_BYTES, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except RequestEntityTooLarge:
        raise BodyTooLarge(limit, source=source) from None
    if size > limit:
        raise BodyTooLarge(limit, source=source)
    return b"".join(chunks)
