"""The default codec: JSON tensors <-> named numpy arrays, guided by the model's metadata.

It serves any model without a processor. Two request forms are accepted::

    {"inputs": {"image": [[[0, 1, ...]]]}}                         # name -> nested list
    {"inputs": [{"name": "image", "shape": [1, 8, 8],              # KServe v2 style
                 "datatype": "FP32", "data": [0, 1, ...]}]}

Either may add ``"outputs"``: a list of output names, or of objects
``{"name": "probabilities", "class_count": 3}`` (the v2 form
``{"name": ..., "parameters": {"classification": 3}}`` works too).

Two binary forms carry the tensors' bytes as they are (:mod:`triton_score.codecs.binary`):
the v2 binary tensor extension (``Inference-Header-Content-Length``, exactly Triton's), and a
raw ``application/octet-stream`` body for a model with one input (``?shape=1,8,8``, or
inferred from the byte count).

The response is ``{"model_name", "model_version", "outputs": {name: nested list}}``; BYTES
outputs (including classification results ``"score:index:label"``) are strings. Numeric
outputs go to orjson as numpy arrays (no ``tolist()``). A request that asks for binary
outputs gets Triton's binary response instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from triton_score.codecs import binary
from triton_score.codecs.request import Request, header
from triton_score.codecs.response import OCTET_STREAM, Response
from triton_score.errors import BadRequest, InvalidInput
from triton_score.model.info import ModelInfo, TensorSpec
from triton_score.model.validation import input_spec


def _to_array(spec: TensorSpec, value: Any) -> np.ndarray:
    """A JSON value as an array for ``spec``; the dtype/shape checks follow in validation.

    numpy does the walking (a 224x224x3 image is ~150k leaves): the element type is read off
    the resulting array's dtype, not checked leaf by leaf in Python.
    """
    ragged = InvalidInput(spec.name, "not a rectangular array (ragged nested lists)")
    if spec.is_bytes:
        try:
            array = np.array(value, dtype=np.object_)
        except ValueError:
            raise ragged from None
        flat = array.ravel()
        if not all(isinstance(v, str) for v in flat):
            if any(isinstance(v, list) for v in flat):
                raise ragged
            raise InvalidInput(spec.name, "expected strings (BYTES data), got non-string values")
        encoded = np.fromiter((v.encode("utf-8") for v in flat), dtype=np.object_, count=flat.size)
        return encoded.reshape(array.shape)
    try:
        array = np.asarray(value)
    except ValueError:
        raise ragged from None
    if array.dtype.kind in "USO":
        if array.dtype.kind == "O":
            raise InvalidInput(spec.name, "expected a rectangular array of numbers")
        raise InvalidInput(
            spec.name, f"expected numbers ({spec.datatype} data), got non-numeric values"
        )
    if array.dtype.kind == "b" and spec.datatype != "BOOL":
        raise InvalidInput(spec.name, f"expected {spec.datatype} data, got booleans")
    return array


def _v2_input(model: ModelInfo, entry: Any) -> tuple[str, np.ndarray]:
    if not isinstance(entry, Mapping) or "name" not in entry or "data" not in entry:
        raise BadRequest('each entry of "inputs" needs "name" and "data" (and "shape")')
    name = str(entry["name"])
    spec = input_spec(model, name)
    if "datatype" in entry and entry["datatype"] != spec.datatype:
        raise InvalidInput(name, f"datatype must be {spec.datatype}, got {entry['datatype']!r}")
    # The shape is checked before the data becomes an array; then it must fit that data.
    shape = binary.client_shape(name, entry["shape"]) if "shape" in entry else None
    array = _to_array(spec, entry["data"])
    if shape is not None:
        needed = math.prod(shape)  # Python ints: no overflow, unlike np.prod
        if needed != array.size:
            raise InvalidInput(
                name, f"shape {shape} needs {needed} elements, data has {array.size}"
            )
        array = binary.reshaped(name, array, shape)
    return name, array


def _binary_inputs(request: Request, model: ModelInfo) -> dict[str, np.ndarray]:
    """The inputs of a v2 binary request: each ``binary_data_size`` slice of the body after
    the JSON header, in order, as a view; JSON ``data`` inputs as usual."""
    payload, body = request.json, request.body
    entries = payload.get("inputs") if isinstance(payload, Mapping) else None
    if not isinstance(entries, list):
        raise BadRequest('the binary request\'s JSON header needs "inputs": a list of v2 tensors')
    offset = binary.header_length(request.header(binary.HEADER_LENGTH), len(body))
    arrays = {}
    for entry in entries:
        parameters = entry.get("parameters") if isinstance(entry, Mapping) else None
        size = parameters.get("binary_data_size") if isinstance(parameters, Mapping) else None
        if size is None:
            name, array = _v2_input(model, entry)
        else:
            name = str(entry.get("name"))
            spec = input_spec(model, name)
            if "datatype" in entry and entry["datatype"] != spec.datatype:
                raise InvalidInput(
                    name, f"datatype must be {spec.datatype}, got {entry['datatype']!r}"
                )
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(name, "binary_data_size must be a non-negative integer")
            if offset + size > len(body):
                raise InvalidInput(
                    name,
                    f"binary_data_size {size} runs past the body's end "
                    f"({len(body) - offset} bytes left after the header)",
                )
            array = binary.binary_input(spec, entry, body, offset, size)
            offset += size
        arrays[name] = array
    if offset != len(body):
        raise BadRequest(
            f"the body has {len(body) - offset} bytes after the last binary input "
            "(binary_data_size values do not add up)"
        )
    return arrays


def decode_inputs(request: Request, model: ModelInfo) -> dict[str, np.ndarray]:
    """The request's tensors as arrays (unvalidated: :func:`validate_inputs` follows)."""
    if request.header(binary.HEADER_LENGTH):
        return _binary_inputs(request, model)
    if request.json is None and request.content_type == OCTET_STREAM:
        return binary.raw_tensor(model, request.body, request.query.get(binary.SHAPE_PARAMETER))
    payload = request.json
    if not isinstance(payload, Mapping) or "inputs" not in payload:
        raise BadRequest(
            'expected a JSON object with "inputs": {"<name>": <nested list>, ...} '
            f"for model {model.name!r} (inputs: {[i.name for i in model.inputs]})"
        )
    inputs = payload["inputs"]
    if isinstance(inputs, Mapping):
        arrays = {}
        for name, value in inputs.items():
            arrays[name] = _to_array(input_spec(model, name), value)
        return arrays
    if isinstance(inputs, list):
        return dict(_v2_input(model, entry) for entry in inputs)
    raise BadRequest('"inputs" must be an object (name -> data) or a list of v2 tensors')


def decode_outputs(request: Request) -> dict[str, int] | None:
    """Requested outputs and their ``class_count``; ``None`` when the request names none.

    An empty ``"outputs": []`` names none too: Triton answers such a request with every
    output, as JSON (where NaN is not valid JSON), so it means "all of them" here as well.
    """
    payload = request.json
    if not isinstance(payload, Mapping) or payload.get("outputs") in (None, []):
        return None
    entries = payload["outputs"]
    if not isinstance(entries, list):
        raise BadRequest('"outputs" must be a list of output names or objects')
    wanted: dict[str, int] = {}
    for entry in entries:
        if isinstance(entry, str):
            wanted[entry] = 0
        elif isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            params = entry.get("parameters") or {}
            count = entry.get(
                "class_count", params.get("classification", 0) if isinstance(params, Mapping) else 0
            )
            wanted[entry["name"]] = count
        else:
            raise BadRequest(
                'each entry of "outputs" must be a name or {"name": ..., "class_count": N}'
            )
    return wanted


def encode_outputs(
    outputs: Mapping[str, np.ndarray], model: ModelInfo, request: Request | None = None
) -> Any:
    """The default codec's answer: JSON, or Triton's binary response (a :class:`Response`)
    when ``request`` asks for binary outputs."""
    wanted = binary.binary_outputs(request.json) if request is not None else set()
    if wanted:
        request_id = request.json.get("id") if request is not None else None
        body, length = binary.encode_binary(outputs, model, wanted, request_id)
        return Response(
            body, headers={binary.HEADER_LENGTH: str(length)}, content_type=OCTET_STREAM
        )
    return {
        "model_name": model.name,
        "model_version": model.version,
        "outputs": {name: _jsonable(array) for name, array in outputs.items()},
    }


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype == np.object_:
        return (
            np.vectorize(
                lambda v: v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v,
                otypes=[np.object_],
            )(array).tolist()
            if array.size
            else array.tolist()
        )
    if array.ndim and array.dtype.isnative and array.dtype.kind in "biuf":
        # orjson writes numeric arrays itself (OPT_SERIALIZE_NUMPY), ~10x faster than
        # tolist() and its Python floats; it needs C order, so copy only when it is not.
        return np.ascontiguousarray(array)
    return array.tolist()  # 0-d arrays, non-native byte order: orjson refuses them


# -- the largest valid request -------------------------------------------------------------
def is_raw_tensor(content_type: str, headers: Any) -> bool:
    """Whether a request is the raw ``application/octet-stream`` form, from its headers
    alone (so the web layer can choose the body limit before reading the body).

    :param headers: a mapping of the request's headers (werkzeug's, or a plain dict).
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == OCTET_STREAM and not header(headers, binary.HEADER_LENGTH)


#: Characters one number can take in JSON, written the worst way a client's encoder may:
#: ``-1.2345678901234567e-300`` is 24; any integer datatype and ``false`` are shorter.
JSON_NUMBER_CHARS = 32
#: Per element, on top of the number: its separator and line break (``",\n"``), and the
#: brackets and indentation of pretty-printed nested lists, which grow with the rank.
JSON_ELEMENT_OVERHEAD = 8
JSON_CHARS_PER_DIMENSION = 4
#: For everything that is not tensor data: names, shapes, ``outputs``, ``parameters``, an id.
BODY_SLACK_BYTES = 64 * 1024


def largest_request_bytes(
    model: ModelInfo, *, raw: bool = False, rows: int | None = None
) -> int | None:
    """The largest body a valid default-codec request for ``model`` can have, or ``None``
    when the metadata cannot bound it: a BYTES input (strings of any length), a variable
    dimension other than the batch, or a datatype without a numpy dtype.

    With ``raw`` (an ``application/octet-stream`` body, :func:`is_raw_tensor`) it is exact:
    the one input's bytes at ``max_batch_size``. Otherwise it covers every JSON form and the
    v2 binary form (whose inputs may carry JSON ``data`` too; a binary value is never more
    than 8 bytes, its JSON far more).

    ``rows``: the most rows a request may send (a scoring request's rows limit, split into
    calls of ``max_batch_size`` by :mod:`triton_score.triton.batches`); default ``max_batch_size``.

    Every input counts, optional ones included, at ``rows`` (or 1): elements ×
    (:data:`JSON_NUMBER_CHARS` + separators and indentation), plus :data:`BODY_SLACK_BYTES`.
    Generous on purpose: a valid request must never be refused; what it refuses is the body
    that is a thousand times too big, before a byte of it is parsed.
    """
    if not model.inputs:
        return None
    total = 0
    for spec in model.inputs:
        dims = spec.shape[1:] if model.batching else spec.shape
        if spec.is_bytes or spec.numpy_dtype is None or any(d < 0 for d in dims):
            return None
        most = (rows if rows is not None else model.max_batch_size) if model.batching else 1
        elements = max(most, 1) * math.prod(dims)
        if raw and len(model.inputs) == 1:  # (several inputs: the raw form is a 400 anyway)
            return elements * np.dtype(spec.numpy_dtype).itemsize
        per_element = (
            JSON_NUMBER_CHARS
            + JSON_ELEMENT_OVERHEAD
            + JSON_CHARS_PER_DIMENSION * (len(spec.shape) + 4)
        )
        total += elements * per_element
    return total + BODY_SLACK_BYTES
