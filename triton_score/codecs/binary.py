"""The KServe/Triton v2 *binary tensor extension* and raw ``application/octet-stream`` tensors.

Triton's own binary format, so a body that works at Triton's ``/v2/models/<m>/infer`` works
at ``/score/<m>``::

    Inference-Header-Content-Length: N
    <N bytes: the v2 JSON inference header>        {"inputs": [{"name": "image",
                                                    "shape": [1, 8, 8], "datatype": "FP32",
                                                    "parameters": {"binary_data_size": 256}}]}
    <the tensors' raw bytes, in the order of "inputs", little-endian>

An input may still carry JSON ``data`` instead of ``binary_data_size``. BYTES elements are
each a 4-byte little-endian length followed by the bytes.

Numeric tensors are ``np.frombuffer`` *views* over the request body: a 50 MB tensor costs no
second 50 MB in the worker. The answer comes back in the same format when the request asks
for binary outputs (``"parameters": {"binary_data": true}`` on an output, or
``"binary_data_output": true`` on the request), as Triton answers it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from triton_score.codecs.v2 import (
    DATATYPES,
    HEADER_LENGTH,
    LENGTH_PREFIX,
    decode_bytes,
    encode_bytes,
)
from triton_score.errors import BadRequest, InvalidInput
from triton_score.model.info import ModelInfo, TensorSpec

#: The query parameter that gives a raw octet-stream tensor its shape (``?shape=1,8,8``).
SHAPE_PARAMETER = "shape"


def header_length(value: str, body_size: int) -> int:
    """The JSON header's length from ``Inference-Header-Content-Length``, checked against the
    body: a 400 when it is not a number or points past the body's end."""
    try:
        length = int(value.strip())
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} must be a number of bytes, got {value!r}") from None
    if not 0 < length <= body_size:
        raise BadRequest(
            f"{HEADER_LENGTH} is {length}, but the body has {body_size} bytes: "
            "the JSON header must be 1 to the body's size"
        )
    return length


def parse_header(body: bytes, length: int) -> Any:
    """The v2 JSON inference header at the start of ``body`` (parsed without copying it)."""
    try:
        return orjson.loads(memoryview(body)[:length])
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"the first {length} bytes ({HEADER_LENGTH}) are not a valid JSON header: {exc.msg}"
        ) from None


def little_endian(spec: TensorSpec) -> np.dtype[Any]:
    """The wire dtype of a numeric input: the model's, little-endian as Triton sends it."""
    if spec.numpy_dtype is None or spec.is_bytes:
        raise InvalidInput(spec.name, f"datatype {spec.datatype} cannot be sent as raw numbers")
    return np.dtype(spec.numpy_dtype).newbyteorder("<")


#: numpy's limit on array dimensions (32 before numpy 2, 64 after): stay under both.
MAX_DIMENSIONS = 32
#: The fewest bytes a BYTES element takes on the wire: its 4-byte length prefix.
BYTES_ELEMENT_MIN_BYTES = LENGTH_PREFIX.size


def client_shape(name: str, shape: Any) -> list[int]:
    """A shape a client sent, checked before anything is allocated from it: a list of at
    most :data:`MAX_DIMENSIONS` non-negative integers (not booleans). Every decoder of client
    tensors holds it to the bytes or data actually given before it builds an array from it
    (:func:`elements_within`, or an exact size check), and reshapes with :func:`reshaped`.
    """
    if not isinstance(shape, list):
        raise InvalidInput(name, '"shape" must be a list of non-negative integers')
    if len(shape) > MAX_DIMENSIONS:
        raise InvalidInput(name, f'"shape" has more than {MAX_DIMENSIONS} dimensions')
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(name, '"shape" must be a list of non-negative integers')
    return shape


def elements_within(name: str, shape: list[int], most: int, why: str) -> int:
    """The element count of ``shape`` (Python ints: no overflow), refused when it is more
    than the ``most`` elements the bytes given can hold (``why`` says why)."""
    count = math.prod(shape)
    if count > most:
        raise InvalidInput(name, f"shape {shape} has {count} elements; {why}")
    return count


def reshaped(name: str, array: np.ndarray, shape: list[int]) -> np.ndarray:
    """``array.reshape(shape)``, and a 400 naming the input for a shape numpy cannot build
    (a zero-size shape whose other dimensions overflow, say ``[0, 2**62, 2**62]``)."""
    try:
        return array.reshape(shape)
    except ValueError as exc:
        raise InvalidInput(name, f"cannot use shape {shape}: {exc}") from None


def binary_input(
    spec: TensorSpec, entry: Mapping[str, Any], body: bytes, offset: int, size: int
) -> np.ndarray:
    """Input ``spec`` from ``size`` bytes of ``body`` at ``offset``: a read-only view for
    numbers; an object array of ``bytes`` for BYTES (the one form that must be copied)."""
    if "shape" not in entry:
        raise InvalidInput(spec.name, 'binary data needs "shape": a list of non-negative integers')
    shape = client_shape(spec.name, entry["shape"])
    if spec.is_bytes:
        # Each element takes 4 bytes at least (its length prefix): bound the count by the
        # bytes given before the object array is made (8 bytes per element, zero-filled).
        most = size // BYTES_ELEMENT_MIN_BYTES
        count = elements_within(
            spec.name,
            shape,
            most,
            f"binary_data_size {size} holds at most {most} BYTES elements "
            f"({BYTES_ELEMENT_MIN_BYTES} bytes each at least)",
        )
        return reshaped(spec.name, _bytes_elements(spec, body, offset, size, count), shape)
    dtype = little_endian(spec)
    count = math.prod(shape)
    if count * dtype.itemsize != size:
        raise InvalidInput(
            spec.name,
            f"binary_data_size is {size} bytes, but shape {shape} of {spec.datatype} "
            f"needs {count * dtype.itemsize}",
        )
    return reshaped(spec.name, np.frombuffer(body, dtype=dtype, count=count, offset=offset), shape)


def _bytes_elements(
    spec: TensorSpec, body: bytes, offset: int, size: int, count: int
) -> np.ndarray:
    try:
        return decode_bytes(body, offset, size, count)
    except ValueError as exc:
        raise InvalidInput(spec.name, str(exc)) from None


def raw_tensor(model: ModelInfo, body: bytes, shape_text: str | None) -> dict[str, np.ndarray]:
    """An ``application/octet-stream`` body as the one input of ``model``.

    The shape is ``?shape=1,8,8`` when given; otherwise it is inferred when only the first
    dimension is variable (the batch of a batching model) and the bytes divide evenly.
    """
    if len(model.inputs) != 1:
        raise BadRequest(
            f"a raw application/octet-stream body fits models with exactly one input; "
            f"{model.name!r} has {[i.name for i in model.inputs]}: send the v2 binary form "
            f"({HEADER_LENGTH}) or JSON"
        )
    spec = model.inputs[0]
    dtype = little_endian(spec)
    if len(body) % dtype.itemsize:
        raise InvalidInput(
            spec.name,
            f"{len(body)} bytes is not a whole number of {spec.datatype} values "
            f"({dtype.itemsize} bytes each)",
        )
    count = len(body) // dtype.itemsize
    shape = _parse_shape(spec, shape_text) if shape_text else _infer_shape(spec, count)
    if math.prod(shape) != count:
        raise InvalidInput(
            spec.name,
            f"shape {shape} needs {math.prod(shape) * dtype.itemsize} bytes, the body has "
            f"{len(body)}",
        )
    return {spec.name: reshaped(spec.name, np.frombuffer(body, dtype=dtype), shape)}


def _parse_shape(spec: TensorSpec, text: str) -> list[int]:
    try:
        shape = [int(d) for d in text.split(",")]
    except ValueError:
        shape = [-1]
    if not shape or any(d < 0 for d in shape) or len(shape) > MAX_DIMENSIONS:
        raise InvalidInput(spec.name, f"?shape= must be non-negative integers like 1,8,8: {text!r}")
    return shape


def _infer_shape(spec: TensorSpec, count: int) -> list[int]:
    rest = spec.shape[1:]
    if not spec.shape or any(d < 0 for d in rest):
        raise InvalidInput(
            spec.name,
            f"shape {spec.describe_shape()} cannot be inferred from the byte count: "
            "add ?shape=... to the URL",
        )
    if spec.shape[0] >= 0:
        return list(spec.shape)  # fixed: the size check that follows says whether it fits
    row = math.prod(rest)
    if row == 0 or count % row:
        raise InvalidInput(
            spec.name,
            f"{count} values are not a whole number of rows of shape {list(rest)} "
            f"({row} values each)",
        )
    return [count // row, *rest]


# -- binary out ------------------------------------------------------------------------------
def binary_outputs(payload: Any) -> set[str] | bool:
    """Which outputs a v2 request wants as binary data: ``True`` for all of them
    (``"parameters": {"binary_data_output": true}``), else the names whose entry in
    ``outputs`` says ``"parameters": {"binary_data": true}`` (an empty set: JSON as usual)."""
    if not isinstance(payload, Mapping):
        return set()
    parameters = payload.get("parameters")
    if isinstance(parameters, Mapping) and parameters.get("binary_data_output") is True:
        return True
    entries = payload.get("outputs")
    if not isinstance(entries, list):
        return set()
    return {
        entry["name"]
        for entry in entries
        if isinstance(entry, Mapping)
        and isinstance(entry.get("name"), str)
        and isinstance(entry.get("parameters"), Mapping)
        and entry["parameters"].get("binary_data") is True
    }


def _serialize(array: np.ndarray) -> tuple[str, bytes]:
    """Datatype and little-endian bytes of one output (length-prefixed elements for BYTES)."""
    if array.dtype == np.object_:
        return "BYTES", encode_bytes(array)
    wire = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return DATATYPES.get(wire.dtype.str, "BYTES"), wire.tobytes()


def encode_binary(
    outputs: Mapping[str, np.ndarray],
    model: ModelInfo,
    binary: set[str] | bool,
    request_id: Any = None,
) -> tuple[bytes, int]:
    """Triton's binary response: the body and the JSON header's length (the value of the
    ``Inference-Header-Content-Length`` response header). Outputs not in ``binary`` go in
    the header as JSON ``data``, as Triton puts them."""
    entries, tail = [], []
    for name, array in outputs.items():
        datatype, raw = _serialize(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary is True or name in binary:  # type: ignore[operator]
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [v.decode("utf-8", "replace") for v in _as_bytes(array)]
        else:
            entry["data"] = np.ascontiguousarray(array).ravel()
        entries.append(entry)
    header: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if isinstance(request_id, str) and request_id:
        header["id"] = request_id
    header["outputs"] = entries
    encoded = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    return b"".join([encoded, *tail]), len(encoded)


def _as_bytes(array: np.ndarray) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in array.ravel()]
