"""Check inputs against the model's metadata *before* anything reaches Triton.

Triton answers malformed tensors with a 500 (or, for some requests, crashes): so names,
datatypes, shapes, the batch dimension and ``max_batch_size`` are checked here, and a bad
request gets a 400 that names the input and says what was expected.

The batch dimension is bounded by ``max_batch_size`` for a call as it goes to Triton (the
``/v2`` API). A scoring request is bounded by its *rows limit* instead (``SCORE_MAX_ROWS``,
or its processor's ``max_rows``; a 413 above it): :mod:`triton_score.triton.batches` splits rows
beyond ``max_batch_size`` into several calls.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from triton_score.errors import BadRequest, InvalidInput, TooManyRows
from triton_score.model.info import ModelInfo, TensorSpec

#: The most rows a request may send, and what says so (``SCORE_MAX_ROWS``, a processor).
RowsLimit = tuple[int, str]

_NUMERIC_KINDS = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}


def input_spec(model: ModelInfo, name: str) -> TensorSpec:
    """The spec of input ``name``, or the 400 that names the inputs the model does have."""
    spec = model.input(name)
    if spec is None:
        raise InvalidInput(
            str(name),
            f"model {model.name!r} has no such input; its inputs are "
            f"{[i.name for i in model.inputs]}",
        )
    return spec


def expected_shape(model: ModelInfo, spec: TensorSpec, rows: RowsLimit | None = None) -> str:
    text = spec.describe_shape()
    if model.batching:
        most = rows[0] if rows is not None else model.max_batch_size
        return f"{text} (first dimension is the batch, 1 to {most})"
    return text


def _check_dtype(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    target = spec.numpy_dtype
    if target is None:
        raise InvalidInput(spec.name, f"datatype {spec.datatype} cannot be sent by this server")
    if spec.is_bytes:
        if array.dtype.kind in "OSU":
            return array if array.dtype == np.object_ else array.astype(np.object_)
        raise InvalidInput(spec.name, f"expected strings (BYTES), got {array.dtype.name} values")
    if array.dtype == target:
        return array
    kind = array.dtype.kind
    target_kind = np.dtype(target).kind
    ok = (
        (target_kind == "f" and kind in "iuf")
        or (target_kind in "iu" and kind in "iu")
        or (target_kind == "b" and kind == "b")
    )
    if not ok:
        got = _NUMERIC_KINDS.get(kind, f"{array.dtype.name} values")
        raise InvalidInput(spec.name, f"expected {spec.datatype} data, got {got}")
    if target_kind in "iu" and array.size:
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInput(
                spec.name, f"values out of range for {spec.datatype} ({info.min}..{info.max})"
            )
    converted = array.astype(target)
    if target_kind == "f" and array.size:
        # 1e39 is a fine float64 but inf in FP32: refuse the overflow, keep genuine infs.
        overflowed = np.isinf(converted) & ~np.isinf(array)
        if overflowed.any():
            limit = float(np.finfo(target).max)
            raise InvalidInput(spec.name, f"values out of range for {spec.datatype} (±{limit:.4g})")
    return converted


def _check_shape(
    model: ModelInfo, spec: TensorSpec, array: np.ndarray, rows: RowsLimit | None
) -> None:
    shape = array.shape

    def mismatch(reason: str) -> InvalidInput:
        return InvalidInput(
            spec.name,
            f"expected shape {expected_shape(model, spec, rows)}, got {list(shape)} ({reason})",
            expected=list(spec.shape),
            got=list(shape),
        )

    if len(shape) != len(spec.shape):
        raise mismatch(f"{len(shape)} dimensions instead of {len(spec.shape)}")
    for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        if want >= 0 and want != got:
            raise mismatch(f"dimension {axis} must be {want}")
    if not model.batching:
        return
    if rows is not None:  # a scoring request: split into calls of max_batch_size rows
        if shape[0] > rows[0]:
            raise TooManyRows(spec.name, shape[0], *rows)
        if shape[0] < 1:
            raise mismatch("the batch needs at least 1 row")
        return
    if not 1 <= shape[0] <= model.max_batch_size:
        raise InvalidInput(
            spec.name,
            f"batch size {shape[0]} is outside 1..{model.max_batch_size} "
            "(the model's max_batch_size)",
            expected=list(spec.shape),
            got=list(shape),
        )


def validate_input(
    model: ModelInfo, spec: TensorSpec, value: object, rows: RowsLimit | None = None
) -> np.ndarray:
    """One input as an array of its datatype, or the 400 naming it (see
    :func:`validate_inputs`)."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    array = _check_dtype(spec, array)
    _check_shape(model, spec, array, rows)
    return array


def validate_inputs(
    model: ModelInfo, inputs: Mapping[str, object], *, rows: RowsLimit | None = None
) -> dict[str, np.ndarray]:
    """Return the inputs as arrays of the model's datatypes, or raise a 400 naming the input.

    Safe conversions are applied (``float64`` to ``FP32``, ``int64`` to ``INT32`` within
    range, ``str`` to ``BYTES``); lossy ones (floats to integers) are refused.

    :param rows: the request's rows limit: the batch dimension may go up to it (a 413
        :class:`~triton_score.errors.TooManyRows` above), past ``max_batch_size``, for the
        caller to split (:mod:`triton_score.triton.batches`). ``None``: one Triton call, at most
        ``max_batch_size`` rows (a 400 above).
    """
    if not isinstance(inputs, Mapping):
        raise BadRequest("inputs must be a mapping of input name to array")
    for name in inputs:
        input_spec(model, name)
    checked: dict[str, np.ndarray] = {}
    batch_sizes: dict[str, int] = {}
    for spec in model.inputs:
        if spec.name not in inputs:
            if spec.optional:
                continue
            raise InvalidInput(
                spec.name,
                f"is required (datatype {spec.datatype}, shape "
                f"{expected_shape(model, spec, rows)})",
            )
        array = validate_input(model, spec, inputs[spec.name], rows)
        checked[spec.name] = array
        if model.batching:
            batch_sizes[spec.name] = array.shape[0]
    if len(set(batch_sizes.values())) > 1:
        raise BadRequest(f"inputs disagree on the batch size: {batch_sizes}")
    return checked


def _class_total(model: ModelInfo, spec: TensorSpec) -> int | None:
    """How many classes one instance of ``spec`` holds, when its shape says so."""
    dims = spec.shape[1:] if model.batching else spec.shape
    if any(d < 0 for d in dims):
        return None
    return int(np.prod(dims, dtype=np.int64)) if dims else 1


def validate_outputs(model: ModelInfo, outputs: Mapping[str, int] | None) -> dict[str, int] | None:
    """Check requested output names and ``class_count`` values.

    ``class_count`` on a BYTES output is refused here: Triton 2.51 dies on it (SIGFPE).
    """
    if outputs is None:
        return None
    checked = {}
    for name, count in outputs.items():
        spec = model.output(name)
        if spec is None:
            raise BadRequest(
                f"model {model.name!r} has no output {name!r}; "
                f"its outputs are {[o.name for o in model.outputs]}"
            )
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise BadRequest(f"output {name!r}: class_count must be a non-negative integer")
        if count and spec.is_bytes:
            raise BadRequest(
                f"output {name!r} is BYTES: the classification extension (class_count) "
                "works on numeric outputs only"
            )
        classes = _class_total(model, spec)
        if count and classes is not None and count > classes:
            raise BadRequest(
                f"output {name!r}: class_count {count} is more than its {classes} classes"
            )
        checked[name] = count
    return checked
