"""The default codec: JSON tensors <-> named numpy arrays, guided by the model's metadata.

It serves any model without a processor. Two request forms are accepted::

    {"inputs": {"image": [[[0, 1, ...]]]}}                         # name -> nested list
    {"inputs": [{"name": "image", "shape": [1, 8, 8],              # KServe v2 style
                 "datatype": "FP32", "data": [0, 1, ...]}]}

Either may add ``"outputs"``: a list of output names, or of objects
``{"name": "probabilities", "class_count": 3}`` (the v2 form
``{"name": ..., "parameters": {"classification": 3}}`` works too).

The response is ``{"model_name", "model_version", "outputs": {name: nested list}}``; BYTES
outputs (including classification results ``"score:index:label"``) are strings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from triton_score.codecs.request import Request
from triton_score.errors import BadRequest, InvalidInput
from triton_score.metadata import ModelInfo, TensorSpec
from triton_score.validation import input_spec

#: numpy's limit on array dimensions (32 before numpy 2, 64 after): stay under both.
MAX_DIMENSIONS = 32


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
    array = _to_array(spec, entry["data"])
    if "shape" in entry:
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InvalidInput(name, '"shape" must be a list of non-negative integers')
        if len(shape) > MAX_DIMENSIONS:
            raise InvalidInput(name, f'"shape" has more than {MAX_DIMENSIONS} dimensions')
        needed = math.prod(shape)  # Python ints: no overflow, unlike np.prod
        if needed != array.size:
            raise InvalidInput(
                name, f"shape {shape} needs {needed} elements, data has {array.size}"
            )
        try:
            array = array.reshape(shape)
        except ValueError as exc:  # e.g. a zero-size shape numpy cannot build
            raise InvalidInput(name, f"cannot use shape {shape}: {exc}") from None
    return name, array


def decode_inputs(request: Request, model: ModelInfo) -> dict[str, np.ndarray]:
    """The request's tensors as arrays (unvalidated: :func:`validate_inputs` follows)."""
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
    """Requested outputs and their ``class_count``; ``None`` when the request names none."""
    payload = request.json
    if not isinstance(payload, Mapping) or payload.get("outputs") is None:
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


def encode_outputs(outputs: Mapping[str, np.ndarray], model: ModelInfo) -> dict[str, Any]:
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
    return array.tolist()
