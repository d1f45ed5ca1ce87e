"""Check an ONNX model folder as Triton's onnxruntime backend does when it loads it.

The production backend (``onnxruntime_backend``, ``ModelInstanceState::ValidateInputs`` and
``ValidateOutputs``) refuses to load a model whose ONNX file and ``config.pbtxt`` disagree,
and Triton then fails at start-up. The local python-backend wrapper
(:mod:`triton_score.local.onnx_wrapper`) would load such a model anyway and fail on the
first request instead, so it runs these checks first and refuses the same models, and
``score check`` reports them. The rules, as the backend applies them:

- every input and output of the ONNX graph must be a tensor (skl2onnx's default ``ZipMap``
  output, a sequence of maps, is not);
- the config's required inputs (``optional: true`` ones aside) are as many as the graph's;
- each config input and output names a graph input (or overridable initializer) or output,
  with the same datatype (``TYPE_FP32`` is ONNX ``float``...);
- an optional input is not allowed on a batching model (``max_batch_size`` > 0);
- shapes (``reshape`` when given, else ``dims``): with ``max_batch_size`` > 0 the graph's first
  dimension must be variable (the batch), and the rest must have the config's rank; a fixed
  graph dimension must equal the config's; for outputs a variable one must be ``-1`` in the
  config too. A scalar graph tensor takes config dims of 1 only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: ONNX TensorProto element types -> Triton config data types.
ONNX_TO_CONFIG = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}
#: ONNX element type names, for messages.
ONNX_NAMES = {
    1: "float",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "string",
    9: "bool",
    10: "float16",
    11: "double",
    12: "uint32",
    13: "uint64",
    16: "bfloat16",
}
ZIPMAP_HINT = (
    "skl2onnx's default ZipMap output: export with "
    "to_onnx(model, X, options={id(model): {'zipmap': False}}) to get a 'probabilities' tensor"
)


@dataclass(frozen=True)
class GraphTensor:
    """One input or output of an ONNX graph, as onnxruntime reports it."""

    name: str
    kind: str  # "tensor", "sequence", "map", "optional", "sparse_tensor"
    elem_type: int = 0
    #: ``None``: the graph declares no shape; ``-1``: a variable dimension.
    dims: tuple[int, ...] | None = None
    #: A sequence of maps (what skl2onnx's ZipMap produces).
    zipmap: bool = False

    def describe(self) -> str:
        if self.kind != "tensor":
            return "a sequence of maps" if self.zipmap else f"a {self.kind.replace('_', ' ')}"
        dims = "?" if self.dims is None else _shape(self.dims)
        return f"{ONNX_NAMES.get(self.elem_type, f'type {self.elem_type}')} {dims}"


@dataclass(frozen=True)
class Graph:
    inputs: tuple[GraphTensor, ...]
    outputs: tuple[GraphTensor, ...]
    #: Initializers that are graph inputs too (a request may override them).
    overridable: tuple[GraphTensor, ...] = ()


def _shape(dims: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _tensor(value: Any) -> GraphTensor:
    kind = value.type.WhichOneof("value") or "unknown"
    if kind != "tensor_type":
        zipmap = (
            kind == "sequence_type"
            and value.type.sequence_type.elem_type.WhichOneof("value") == "map_type"
        )
        return GraphTensor(value.name, kind.removesuffix("_type"), zipmap=zipmap)
    tensor = value.type.tensor_type
    dims = None
    if tensor.HasField("shape"):
        dims = tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    return GraphTensor(value.name, "tensor", int(tensor.elem_type), dims)


def read_graph(onnx_file: Path) -> Graph:
    """The inputs and outputs of an ONNX file (its weights are not loaded)."""
    import onnx  # the [local] extra

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return Graph(
        inputs=tuple(_tensor(v) for v in graph.input if v.name not in initializers),
        outputs=tuple(_tensor(v) for v in graph.output),
        overridable=tuple(_tensor(v) for v in graph.input if v.name in initializers),
    )


def _dims_problem(
    what: str, graph_dims: tuple[int, ...] | None, dims: list[int], max_batch_size: int, exact: bool
) -> str:
    if graph_dims is None:
        return ""  # no shape in the graph: nothing to compare
    if not graph_dims:
        if any(d != 1 for d in dims):
            return (
                f"{what} is a scalar in the ONNX file, so its config dims may only be 1s, "
                f"not {_shape(dims)}"
            )
        return ""
    full = [-1, *dims] if max_batch_size > 0 else list(dims)
    if max_batch_size > 0 and graph_dims[0] != -1:
        return (
            f"{what} has shape {_shape(graph_dims)} in the ONNX file: with max_batch_size "
            f"{max_batch_size} its first dimension must be variable (the batch); export it "
            "with a variable first dimension, or set max_batch_size: 0"
        )
    matches = len(graph_dims) == len(full) and all(
        g == c for g, c in zip(graph_dims, full, strict=True) if exact or g != -1
    )
    if matches:
        return ""
    batch = " (the batch dimension, then dims)" if max_batch_size > 0 else ""
    return (
        f"{what} has shape {_shape(graph_dims)} in the ONNX file, but config.pbtxt says "
        f"{_shape(full)}{batch}"
    )


def tensor_problems(graph: Graph, origin: str) -> list[str]:
    """The graph's inputs and outputs that are not tensors: the backend loads none of them."""
    problems = []
    for side, tensors in (("input", graph.inputs), ("output", graph.outputs)):
        for tensor in tensors:
            if tensor.kind != "tensor":
                hint = f" ({ZIPMAP_HINT})" if tensor.zipmap else ""
                problems.append(
                    f"{origin}: {side} {tensor.name!r} is {tensor.describe()}, not a tensor: "
                    f"Triton's onnxruntime backend cannot load the model{hint}"
                )
    return problems


def check_against_config(graph: Graph, config: Any, origin: str) -> list[str]:
    """Why the onnxruntime backend would refuse ``config`` (a ``ModelConfig`` message) for
    ``graph``: one line per problem, each naming the tensor; empty when it loads."""
    problems = tensor_problems(graph, origin)
    max_batch_size = int(config.max_batch_size)
    required = [i for i in config.input if not i.optional]
    if len(required) != len(graph.inputs):
        problems.append(
            f"{origin}: config.pbtxt has {len(required)} required input(s) "
            f"{[i.name for i in required]}, the ONNX file {len(graph.inputs)} "
            f"{[t.name for t in graph.inputs]}"
        )
    sides = (
        ("input", config.input, {t.name: t for t in (*graph.inputs, *graph.overridable)}, False),
        ("output", config.output, {t.name: t for t in graph.outputs}, True),
    )
    for side, entries, tensors, exact in sides:
        for entry in entries:
            what = f"{side} {entry.name!r}"
            found = tensors.get(entry.name)
            if found is None:
                problems.append(
                    f"{origin}: {what} of config.pbtxt is not in the ONNX file, whose "
                    f"{side}s are {sorted(tensors)}"
                )
                continue
            if side == "input" and entry.optional and max_batch_size != 0:
                problems.append(
                    f"{origin}: {what} is optional, which the onnxruntime backend does not "
                    "allow on a batching model (max_batch_size > 0)"
                )
            if found.kind != "tensor":
                continue  # reported above
            data_type = _config_type_name(entry.data_type)
            wanted = ONNX_TO_CONFIG.get(found.elem_type)
            if data_type not in ONNX_TO_CONFIG.values():
                problems.append(
                    f"{origin}: {what} has data_type {data_type}, which the onnxruntime "
                    "backend does not support"
                )
            elif data_type != wanted:
                problems.append(
                    f"{origin}: {what} is {data_type} in config.pbtxt but "
                    f"{ONNX_NAMES.get(found.elem_type, found.elem_type)} in the ONNX file "
                    f"({wanted or 'no Triton type'})"
                )
            dims = list(entry.reshape.shape) if entry.HasField("reshape") else list(entry.dims)
            problem = _dims_problem(what, found.dims, dims, max_batch_size, exact)
            if problem:
                problems.append(f"{origin}: {problem}")
    return problems


def _config_type_name(value: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return str(model_config_pb2.DataType.Name(value))


def check_model(model: Any) -> list[str]:
    """The problems of one ONNX model folder (a :class:`RepositoryModel`), every version.

    A folder without ``config.pbtxt`` is checked against the config Triton would
    auto-complete from the file, which only non-tensor inputs or outputs can break.
    """
    from triton_score.local.onnx_wrapper import (
        ModelRepositoryError,
        autocomplete_config,
    )

    problems: list[str] = []
    versions = [v for v in model.version_dirs() if (v / model.onnx_filename).is_file()]
    if not versions:
        return [f"model {model.name!r}: no version folder has {model.onnx_filename}"]
    for version in versions:
        onnx_file = version / model.onnx_filename
        origin = f"model {model.name!r}, {version.name}/{model.onnx_filename}"
        try:
            graph = read_graph(onnx_file)
        except Exception as exc:  # noqa: BLE001 - a file onnx cannot read: say so, go on
            problems.append(f"{origin}: not a readable ONNX file ({type(exc).__name__}: {exc})")
            continue
        config = model.config
        if config is None or not config.input or not config.output:
            not_tensors = tensor_problems(graph, origin)
            if not_tensors:
                problems.extend(not_tensors)
                continue
            try:
                completed = autocomplete_config(model.name, onnx_file)
            except ModelRepositoryError as exc:
                problems.append(str(exc))
                continue
            if config is not None:
                merged = type(config)()
                merged.CopyFrom(config)
                if not merged.input:
                    merged.input.extend(completed.input)
                if not merged.output:
                    merged.output.extend(completed.output)
                config = merged
            else:
                config = completed
        problems.extend(check_against_config(graph, config, origin))
    return problems
