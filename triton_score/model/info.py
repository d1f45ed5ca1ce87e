"""What the runtime knows about a model: typed, read from Triton once per worker.

:class:`ModelInfo` joins Triton's *metadata* (``/v2/models/<m>``: tensor names, datatypes,
full shapes) with its *config* (``/v2/models/<m>/config``: ``max_batch_size``, label files,
optional inputs). Validation, the default codec, processors and the OpenAPI document all read
these objects, never raw JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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

    The server builds it from Triton (:meth:`from_triton`); a test builds it from the
    model's ``config.pbtxt`` (:meth:`from_config_file`) or by hand::

        ModelInfo("iris", max_batch_size=16,
                  inputs=(TensorSpec("input", "FP32", (-1, 4)),),
                  outputs=(TensorSpec("probabilities", "FP32", (-1, 3)),))

    :param platform: Triton's ``platform`` (``onnxruntime_onnx``...); informative only.
    :param backend: Triton's ``backend`` (``python``, ``onnxruntime``...); informative only.
    :param max_batch_size: the config's; above 0, the first dimension of every tensor's
        ``shape`` is the batch dimension (``-1``).
    :param dynamic_batching: whether the config turns dynamic batching on.
    :param parameters: the ``parameters`` of the model's config (``config.pbtxt``:
        ``parameters: {key: "k" value: {string_value: "v"}}``) as ``{"k": "v"}``.
    :param directory: the model's folder in the model repository (the original one, never a
        generated copy), to read files that ship with the model; ``None`` when Triton is not
        on this machine or the repository is unknown.
    :param decoupled: the config's ``model_transaction_policy { decoupled: true }``: the model
        answers a request with any number of responses (a language model's tokens), so
        ``/score`` streams them (:meth:`triton_score.scoring.Scorer.stream`).
    :param pinned: every inference names :attr:`version` (``/v2/models/<m>/versions/<v>/infer``),
        as ``score replay --version`` needs; by default Triton's version policy chooses, so a
        worker follows the version Triton serves without being told.
    """

    name: str
    version: str = "1"
    platform: str = ""
    backend: str = ""
    max_batch_size: int = 0
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    dynamic_batching: bool = False
    parameters: Mapping[str, str] = field(default_factory=dict, hash=False)
    directory: Path | None = None
    pinned: bool = False
    decoupled: bool = False

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
        """Build from the JSON of ``/v2/models/<m>`` and ``/v2/models/<m>/config``, as a
        worker does (``tritonclient.http``'s ``get_model_metadata`` and ``get_model_config``
        return exactly these)."""
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
            decoupled=str(
                (config.get("model_transaction_policy") or {}).get("decoupled", "")
            ).lower()
            == "true",
            parameters={
                str(key): str(value.get("string_value", "")) if isinstance(value, Mapping) else ""
                for key, value in (config.get("parameters") or {}).items()
            },
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any], version: str = "1") -> ModelInfo:
        """Build from a model config alone (the JSON form of ``config.pbtxt``), the way
        Triton derives the metadata from it: datatypes without ``TYPE_`` (``TYPE_STRING`` is
        ``BYTES``), and the batch dimension ``-1`` before the ``dims`` of a batching model."""
        batching = int(config.get("max_batch_size", 0) or 0) > 0

        def tensor(entry: Mapping[str, Any]) -> dict[str, Any]:
            dims = [int(d) for d in entry.get("dims", [])]
            return {
                "name": entry["name"],
                "datatype": config_datatype(str(entry.get("data_type", "TYPE_INVALID"))),
                "shape": [-1, *dims] if batching else dims,
            }

        metadata = {
            "name": config["name"],
            "versions": [version],
            "platform": config.get("platform", ""),
            "inputs": [tensor(i) for i in config.get("input", [])],
            "outputs": [tensor(o) for o in config.get("output", [])],
        }
        return cls.from_triton(metadata, config)

    @classmethod
    def from_config_file(cls, path: str | Path) -> ModelInfo:
        """Build from a model folder (or its ``config.pbtxt``), offline: the model Triton
        would serve from it, at its highest numbered version, with ``directory`` set.

        :raises triton_score.model.config.ModelConfigError: no readable ``config.pbtxt``.
        """
        from triton_score.model.config import read_model_config

        path = Path(path)
        folder = path if path.is_dir() else path.parent
        config = read_model_config(path)
        versions = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
        info = cls.from_config(config, version=str(versions[-1]) if versions else "1")
        return replace(info, directory=folder.resolve())


def config_datatype(data_type: str) -> str:
    """A config ``data_type`` (``TYPE_FP32``) as a metadata datatype (``FP32``)."""
    name = data_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name
