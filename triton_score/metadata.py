"""What the runtime knows about a model: typed, read from Triton once per worker.

:class:`ModelInfo` joins Triton's *metadata* (``/v2/models/<m>``: tensor names, datatypes,
full shapes) with its *config* (``/v2/models/<m>/config``: ``max_batch_size``, label files,
optional inputs). Validation, the default codec, processors and the OpenAPI document all read
these objects, never raw JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Triton datatype -> numpy dtype. BF16 has no numpy dtype; it is rejected by the codec.
NUMPY_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor.

    :param shape: the full shape Triton reports, batch dimension included (``-1`` means any
        size; for a batching model the first entry is the batch dimension).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False
    label_filename: str = ""

    @property
    def numpy_dtype(self) -> Any:
        return NUMPY_DTYPES.get(self.datatype)

    @property
    def is_bytes(self) -> bool:
        return self.datatype == "BYTES"

    def describe_shape(self) -> str:
        return "[" + ", ".join("*" if d < 0 else str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class ModelInfo:
    """A served model: name, version, tensors and batching, as one immutable object.

    :param parameters: the ``parameters`` of the model's config (``config.pbtxt``:
        ``parameters: {key: "k" value: {string_value: "v"}}``) as ``{"k": "v"}``.
    :param directory: the model's folder in the model repository (the original one, never a
        generated copy), to read files that ship with the model; ``None`` when Triton is not
        on this machine or the repository is unknown.
    """

    name: str
    version: str
    platform: str
    backend: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic_batching: bool = False
    parameters: Mapping[str, str] = field(default_factory=dict, hash=False)
    directory: Path | None = None

    @property
    def batching(self) -> bool:
        """True when the first dimension of every tensor is the batch dimension."""
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)

    @classmethod
    def from_triton(cls, metadata: Mapping[str, Any], config: Mapping[str, Any]) -> ModelInfo:
        """Build from the JSON of ``/v2/models/<m>`` and ``/v2/models/<m>/config``."""
        config_inputs = {i["name"]: i for i in config.get("input", [])}
        config_outputs = {o["name"]: o for o in config.get("output", [])}

        def spec(entry: Mapping[str, Any], extra: Mapping[str, Any]) -> TensorSpec:
            return TensorSpec(
                name=entry["name"],
                datatype=entry["datatype"],
                shape=tuple(int(d) for d in entry.get("shape", [])),
                optional=bool(extra.get("optional", False)),
                label_filename=str(extra.get("label_filename", "")),
            )

        versions = metadata.get("versions") or ["1"]
        return cls(
            name=metadata["name"],
            version=str(max(versions, key=lambda v: int(v) if str(v).isdigit() else 0)),
            platform=metadata.get("platform", ""),
            backend=config.get("backend", ""),
            max_batch_size=int(config.get("max_batch_size", 0)),
            inputs=tuple(spec(i, config_inputs.get(i["name"], {})) for i in metadata["inputs"]),
            outputs=tuple(spec(o, config_outputs.get(o["name"], {})) for o in metadata["outputs"]),
            dynamic_batching="dynamic_batching" in config,
            parameters={
                str(key): str(value.get("string_value", "")) if isinstance(value, Mapping) else ""
                for key, value in (config.get("parameters") or {}).items()
            },
        )
