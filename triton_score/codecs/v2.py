"""The KServe v2 inference protocol's binary tensor extension, written once.

Both peers of the gateway speak it: clients may send ``/score`` a binary request and ask for
a binary answer (:mod:`triton_score.codecs.binary`), and the hop to Triton sends binary
requests and reads Triton's answers (:mod:`triton_score.triton.hop`). The format, as Triton
documents it: a JSON header (its length in ``Inference-Header-Content-Length``), then each
tensor's bytes in the order of the header's entries, each entry giving its
``binary_data_size``. Numbers are little-endian; a BYTES element is a 4-byte little-endian
length then its bytes; BF16 is the upper 16 bits of each FP32.

Everything here raises ``ValueError`` for bytes that do not hold together; each side says
what that means for it (a client's 400, Triton's unparseable answer).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson

from triton_score.model.info import NUMPY_DTYPES

#: The header that marks a binary request or response and gives its JSON header's length.
HEADER_LENGTH = "Inference-Header-Content-Length"

#: Triton datatype -> its numpy dtype on the wire, little-endian: the one table, made from
#: the model metadata's (BYTES and BF16 have no fixed-size numpy form; handled apart).
WIRE_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(numpy_type).newbyteorder("<")
    for name, numpy_type in NUMPY_DTYPES.items()
    if name != "BYTES"
}
#: The other way: a wire dtype's ``str`` (``"<f4"``) -> Triton datatype.
DATATYPES: dict[str, str] = {dtype.str: name for name, dtype in WIRE_DTYPES.items()}
#: A BYTES element's length prefix; also the fewest bytes an element takes.
LENGTH_PREFIX = struct.Struct("<I")
#: A BF16 tensor on the wire: the upper 16 bits of each FP32.
BF16_BITS = np.dtype("<u2")


# -- encoding -------------------------------------------------------------------------------
def tensor_bytes(array: np.ndarray, datatype: str) -> bytes:
    """The wire bytes of one tensor of ``datatype``."""
    if datatype == "BYTES":
        return encode_bytes(array)
    if datatype == "BF16":
        # The upper 16 bits of each FP32 are its bfloat16 (truncation, as tritonclient does).
        bits = np.ascontiguousarray(array, dtype="<f4").view("<u4") >> 16
        return bits.astype("<u2").tobytes()
    dtype = WIRE_DTYPES.get(datatype)
    if dtype is None:
        raise ValueError(f"datatype {datatype!r} cannot travel as binary data")
    # A no-op for the usual C-ordered little-endian array; converts anything else.
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def tensor_buffer(array: np.ndarray, datatype: str) -> bytes | np.ndarray:
    """:func:`tensor_bytes` without its copy for the usual numeric tensor: the C-ordered,
    little-endian array itself (``bytes.join`` reads its buffer), so a large tensor is copied
    once into the request body, not twice."""
    dtype = WIRE_DTYPES.get(datatype)
    if dtype is None:
        return tensor_bytes(array, datatype)
    return np.ascontiguousarray(array, dtype=dtype)


def encode_bytes(array: np.ndarray) -> bytes:
    """A BYTES tensor: each element (``bytes``, or ``str`` as UTF-8) length-prefixed."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        if isinstance(item, str):
            data = item.encode("utf-8")
        elif isinstance(item, bytes | bytearray | memoryview):
            data = bytes(item)
        elif isinstance(item, np.bytes_):
            data = item.tobytes()
        else:
            data = str(item).encode("utf-8")
        parts.append(LENGTH_PREFIX.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


# -- decoding -------------------------------------------------------------------------------
def decode_bytes(buffer: bytes | memoryview, offset: int, size: int, count: int) -> np.ndarray:
    """``count`` length-prefixed elements that fill ``buffer[offset:offset+size]`` exactly,
    as an object array of ``bytes`` (the only copy: each element becomes a Python object).
    The count is held to the size before the array is made: 4 bytes per element at least."""
    if count > size // LENGTH_PREFIX.size:
        raise ValueError(f"a BYTES tensor of {size} bytes cannot hold {count} elements")
    items = np.empty(count, dtype=object)
    end = offset + size
    view = memoryview(buffer)
    position = offset
    for index in range(count):
        if position + 4 > end:
            raise ValueError(f"BYTES data ends after {index} of {count} elements")
        (length,) = LENGTH_PREFIX.unpack_from(view, position)
        position += 4
        if position + length > end:
            raise ValueError(f"BYTES element {index} runs past binary_data_size")
        items[index] = bytes(view[position : position + length])
        position += length
    if position != end:
        raise ValueError(
            f"binary_data_size is {size} bytes; its {count} elements use {position - offset}"
        )
    return items


def _size(value: Any) -> bool:
    """Whether ``value`` is a size Triton may send: a non-negative int (not a bool)."""
    return type(value) is int and value >= 0


def decode_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """Outputs of a Triton answer: name -> array.

    Numeric outputs are read-only ``np.frombuffer`` views over ``body`` (no copy); BYTES
    outputs are object arrays of ``bytes``; BF16 comes back as FP32.

    Triton is trusted with nothing: header length, shapes and ``binary_data_size`` must be
    non-negative ints that fit the body, and each output's size must fit its shape.

    :param header_length: the answer's ``Inference-Header-Content-Length``; ``None`` when the
        whole body is JSON (outputs sent as JSON ``data``).
    :raises ValueError: an answer that does not hold together (also ``KeyError``,
        ``TypeError``: a missing or mistyped field).
    """
    if header_length is None:
        size = len(body)
    elif _size(header_length) and header_length <= len(body):
        size = header_length
    else:
        raise ValueError(f"header length {header_length!r} does not fit a {len(body)}-byte answer")
    header = orjson.loads(memoryview(body)[:size])
    outputs = header.get("outputs", []) if isinstance(header, dict) else None
    if not isinstance(outputs, list):
        raise ValueError('the answer is not a JSON object with a list of "outputs"')
    offset = size
    result: dict[str, np.ndarray] = {}
    for output in outputs:
        name, datatype, shape = output["name"], output["datatype"], output["shape"]
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"output {name!r}: shape {shape!r} is not non-negative ints")
        binary_size = (output.get("parameters") or {}).get("binary_data_size")
        if binary_size is None:
            result[name] = _from_json(output.get("data", []), datatype, shape)
            continue
        if not _size(binary_size):
            raise ValueError(f"output {name!r}: binary_data_size {binary_size!r}")
        count = math.prod(shape)  # np.prod costs ~10x more on a list this small
        if offset + binary_size > len(body):
            raise ValueError(f"output {name!r} runs past the end of Triton's answer")
        if datatype == "BYTES":
            array = decode_bytes(body, offset, binary_size, count).reshape(shape)
        else:
            dtype = BF16_BITS if datatype == "BF16" else WIRE_DTYPES[datatype]
            if count * dtype.itemsize != binary_size:
                raise ValueError(f"output {name!r}: {binary_size} bytes for shape {shape}")
            flat = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
            if datatype == "BF16":
                flat = (flat.astype("<u4") << 16).view("<f4")
            array = flat.reshape(shape)
        result[name] = array
        offset += binary_size
    return result


def _from_json(data: Any, datatype: str, shape: list[int]) -> np.ndarray:
    if datatype == "BYTES":
        if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
            raise ValueError("BYTES output data is not a list of strings")
        return np.array([d.encode("utf-8") for d in data], dtype=object).reshape(shape)
    dtype = np.dtype("<f4") if datatype == "BF16" else WIRE_DTYPES[datatype]
    return np.asarray(data, dtype=dtype).reshape(shape)
