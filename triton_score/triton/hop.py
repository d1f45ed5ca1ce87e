"""The lean Triton hop: one inference as one HTTP request, built and parsed by hand.

``tritonclient.http`` builds an ``InferInput`` and an ``InferRequestedOutput`` object per
tensor, serialises through several intermediate buffers, and parses the answer into an
``InferResult`` that copies each output out of the body. On a 2-core machine that was a fifth
of a worker's CPU per request (issue 8's profile). The KServe v2 protocol with the *binary
tensor extension* is simple enough to speak directly:

request
    ``POST /v2/models/<model>/infer`` with ``Inference-Header-Content-Length: N``; the body
    is an N-byte JSON header, then every input's raw bytes in the order the header lists
    them, each announced by ``parameters.binary_data_size``::

        {"id": "...", "parameters": {"timeout": 60000000},
         "inputs": [{"name": "image", "shape": [1, 8, 8], "datatype": "FP32",
                     "parameters": {"binary_data_size": 256}}],
         "outputs": [{"name": "probabilities",
                      "parameters": {"binary_data": true, "classification": 1}}]}

answer
    the same layout: ``Inference-Header-Content-Length`` of the JSON header, whose
    ``outputs`` give name, shape, datatype and ``binary_data_size``; the tensors follow.

Tensor bytes are little-endian, C order. A BYTES tensor is each element as a 4-byte
little-endian length then its bytes. Classification results (``class_count`` > 0) come back
as BYTES ``"score:index[:label]"``. BF16 travels as the upper half of an FP32 (numpy has no
bfloat16: callers hand FP32 arrays in and get FP32 arrays out, as with ``tritonclient``).

The connection: a ``geventhttpclient.HTTPClient`` (what ``tritonclient`` uses underneath)
with ``concurrency`` kept-alive connections, whose pool queues greenlets first come, first
served (:class:`~triton_score.triton.pool.FairSemaphore`): past ``concurrency`` calls in
flight, the oldest waiter gets the next free connection, so no request starves.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson
from geventhttpclient import HTTPClient
from tritonclient.utils import InferenceServerException

from triton_score.codecs.v2 import (
    HEADER_LENGTH,
    decode_response,
    tensor_buffer,
)
from triton_score.model.info import ModelInfo
from triton_score.repository.locations import split_address
from triton_score.triton.deadline import Abandoned, shielded
from triton_score.triton.pool import free_connections, make_http_pool_fair

log = logging.getLogger(__name__)


# -- encoding -------------------------------------------------------------------------------
def encode_request(
    model: ModelInfo,
    inputs: Mapping[str, np.ndarray],
    outputs: Mapping[str, int],
    *,
    request_id: str = "",
    timeout_us: int = 0,
    shared: Mapping[str, tuple[str, int, int]] | None = None,
) -> tuple[bytes | BodyParts, int]:
    """The body of one inference request and the length of its JSON header (a
    :class:`BodyParts` from :data:`LARGE_BODY_BYTES` on).

    :param outputs: output name -> ``class_count`` (0: the raw tensor).
    :param timeout_us: Triton's request ``timeout`` in microseconds (0: none). Best effort:
        Triton drops a request that waited that long in a dynamic batcher's queue; a request
        already executing runs to its end.
    :param shared: inputs already written to a registered system shared memory region, as
        name -> ``(region, offset, byte_size)`` (:mod:`triton_score.triton.shm`): the header points
        Triton there and the body carries none of their bytes.
    """
    header_inputs = []
    blobs: list[Any] = []
    for name, array in inputs.items():
        spec = model.input(name)
        datatype = spec.datatype if spec is not None else "BYTES"
        where = shared.get(name) if shared else None
        if where is not None:
            region, offset, byte_size = where
            parameters: dict[str, Any] = {
                "shared_memory_region": region,
                "shared_memory_offset": offset,
                "shared_memory_byte_size": byte_size,
            }
        else:
            blob = tensor_buffer(array, datatype)
            blobs.append(blob)
            parameters = {
                "binary_data_size": blob.nbytes if isinstance(blob, np.ndarray) else len(blob)
            }
        header_inputs.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": parameters,
            }
        )
    header_outputs = []
    for name, count in outputs.items():
        wanted: dict[str, Any] = {"binary_data": True}
        if count:
            wanted["classification"] = count
        header_outputs.append({"name": name, "parameters": wanted})
    request: dict[str, Any] = {"inputs": header_inputs, "outputs": header_outputs}
    if request_id:
        request["id"] = request_id
    if timeout_us > 0:
        request["parameters"] = {"timeout": timeout_us}
    header = orjson.dumps(request)
    size = len(header) + sum(b.nbytes if isinstance(b, np.ndarray) else len(b) for b in blobs)
    if size >= LARGE_BODY_BYTES:
        return BodyParts([header, *blobs]), len(header)
    # One buffer, so the request goes out in one write (the client joins it to the head).
    return b"".join([header, *blobs]), len(header)


#: From this size on a request body is sent buffer by buffer (:class:`BodyParts`): no join,
#: so a worker holds a large tensor once (the request it came in), not twice more.
LARGE_BODY_BYTES = 4 * 1024 * 1024


class BodyParts:
    """A request body made of several buffers (the JSON header, then each tensor's own
    memory), sent without joining them.

    ``geventhttpclient`` sends a body that is not ``bytes`` with ``socket.sendfile``, which
    under gevent sends whatever ``read`` returns: here each buffer, whole, as a
    zero-copy ``memoryview``. ``len()`` gives the Content-Length.
    """

    mode = "rb"

    def __init__(self, parts: list[Any]) -> None:
        self._parts = [memoryview(part).cast("B") for part in parts]
        self._size = sum(part.nbytes for part in self._parts)
        self._next = 0

    def __len__(self) -> int:
        return self._size

    def __bytes__(self) -> bytes:
        return b"".join(self._parts)

    def read(self, size: int = -1) -> memoryview | bytes:  # a whole buffer
        if self._next >= len(self._parts):
            return b""
        self._next += 1
        return self._parts[self._next - 1]

    def seek(self, offset: int, whence: int = 0) -> int:
        """Start over. gevent's ``sendfile`` calls this once when it is done, sent or not:
        so a retry on a fresh connection (geventhttpclient retries when a kept-alive one
        turns out closed) sends the whole body again."""
        self._next = 0
        return 0


def error_message(body: bytes) -> str:
    """Triton's ``{"error": "..."}`` whatever the Content-Type says; else the raw text."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", errors="replace").strip()
    if isinstance(parsed, dict) and "error" in parsed:
        return str(parsed["error"])
    return body.decode("utf-8", errors="replace").strip()


# -- the connection -------------------------------------------------------------------------
class Hop:
    """Kept-alive connections to one Triton, for inference requests built by
    :func:`encode_request`. Create it after the worker forks (gevent), never share it
    across threads.

    :param url: ``host:port`` of Triton's HTTP endpoint.
    :param concurrency: connections kept (opened lazily: as many as calls in flight).
    :param timeout_s: network timeout of a call; its expiry is a socket timeout.
    :param abandoned: counts the calls a request deadline left running.
    """

    def __init__(
        self,
        url: str,
        *,
        concurrency: int = 64,
        timeout_s: float = 60.0,
        abandoned: Abandoned | None = None,
    ) -> None:
        #: Calls a deadline abandoned that still hold a connection (see :mod:`.deadline`).
        self.abandoned = abandoned
        host, port = split_address(url)
        self._client = HTTPClient(
            host,
            port=port,
            concurrency=concurrency,
            connection_timeout=min(timeout_s, 10.0),
            network_timeout=timeout_s,
        )
        # geventhttpclient's pool hands a freed connection to whoever asks in the same turn of
        # the event loop, not to the greenlet that waited longest (see script_clients).
        if not make_http_pool_fair(self._client):
            # another geventhttpclient layout: still correct, only not first come first served
            log.warning("geventhttpclient's connection pool not recognised; left as it is")

    def close(self) -> None:
        self._client.close()

    def free_connections(self) -> int | None:
        """Connections no call holds now (``None``: a pool this runtime does not know)."""
        return free_connections(self._client)

    def infer(
        self,
        model: str,
        body: bytes | BodyParts,
        header_length: int,
        headers: Mapping[str, str] | None,
        outputs: Mapping[str, int],
        *,
        version: str = "",
    ) -> dict[str, np.ndarray]:
        """POST one encoded request; the outputs named in ``outputs``, decoded.

        :param version: the model version to run; empty: the one Triton's policy chooses.

        :raises InferenceServerException: Triton answered with an error status (its message
            and status), for :func:`triton_score.triton.gateway.translate_errors` to map.
        """
        request_headers = {
            HEADER_LENGTH: str(header_length),
            "Content-Type": "application/octet-stream",
        }
        if headers:
            request_headers.update(headers)
        path = f"/v2/models/{quote(model, safe='')}"
        path += f"/versions/{quote(version, safe='')}/infer" if version else "/infer"

        def exchange() -> tuple[int, bytes, Any]:
            # Whole, in one greenlet (triton_score.triton.deadline): a deadline abandons the call
            # but never interrupts a send, which would lose the pool's connection slot.
            response = self._client.request(
                "POST",
                path,
                body=body,  # type: ignore[arg-type]  # BodyParts: a file-like read() and len()
                headers=request_headers,
            )
            return response.status_code, response.read(), response.get(HEADER_LENGTH)

        # (+512: the request line and headers, a few hundred bytes)
        status, data, length = shielded(exchange, self.abandoned, sends=len(body) + 512)
        if status != 200:
            raise InferenceServerException(error_message(data), status=str(status))
        if isinstance(length, list):  # a repeated header: geventhttpclient lists the values
            length = length[0]
        try:
            decoded = decode_response(data, int(length) if length is not None else None)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # JSONDecodeError is a ValueError; TypeError and AttributeError: a field of the
            # wrong type (a list where a dict or a name belongs), so no malformed answer
            # escapes as an internal error.
            log.error("Triton's answer for model %s could not be parsed: %s", model, exc)
            raise InferenceServerException(
                f"Triton's answer could not be parsed: {exc}", status="500"
            ) from exc
        missing = [name for name in outputs if name not in decoded]
        if missing:
            raise InferenceServerException(f"Triton returned no output {missing[0]!r}", "500")
        return {name: decoded[name] for name in outputs}
