"""Serve ONNX models on a ``tritonserver`` that has no onnxruntime backend.

The ``tritonserver`` from PyPI (``nvidia-pytriton``) bundles only the python backend, while
real deployments serve ``.onnx`` files with Triton's onnxruntime backend. So that the same
model repository serves locally, :func:`prepare_repository` builds a *scratch* repository in
which every ONNX model is replaced by a python-backend model (:mod:`triton_score.local.onnx_model`)
that runs the very same ``.onnx`` file with the ``onnxruntime`` package on CPU.

What clients see is kept: model name, input/output names, datatypes, dims, ``max_batch_size``,
dynamic batching, instance groups, label files (so the classification extension works) and
versions. What differs: the metadata's ``platform`` is empty and ``backend`` is ``python``.
What does not: a model the onnxruntime backend would refuse to load (an ONNX file whose
inputs or outputs do not match its ``config.pbtxt``, or are not tensors) is refused here too,
before the server starts (:mod:`triton_score.local.onnx_check`).

A model directory counts as ONNX when its ``config.pbtxt`` says ``platform:
"onnxruntime_onnx"`` or ``backend: "onnxruntime"``, or when it has no ``config.pbtxt`` and a
version folder holds ``model.onnx``. In that last case Triton would auto-complete the config
from the file; :func:`autocomplete_config` does the same from the ONNX graph, with Triton's
rules (a variable first dimension on every input and output means batching, with
``max_batch_size`` 4 — Triton's ``--backend-config=default-max-batch-size`` — and dynamic
batching on).

The user's repository is never modified: the scratch copy links to its files.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triton_score.local.onnx_check import ONNX_TO_CONFIG

ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"
DEFAULT_ONNX_FILENAME = "model.onnx"
#: Triton's own default for auto-completed batching models (``default-max-batch-size``).
DEFAULT_MAX_BATCH_SIZE = 4
WRAPPER_SOURCE = Path(__file__).with_name("onnx_model.py")


class ModelRepositoryError(ValueError):
    """A model directory cannot be served; the message names the model and the problem."""


@dataclass(frozen=True)
class RepositoryModel:
    """One model directory of a Triton model repository."""

    name: str
    path: Path
    config: Any | None  # a ``ModelConfig`` protobuf message, or None without config.pbtxt

    @property
    def is_onnx(self) -> bool:
        if self.config is None:
            return any((v / DEFAULT_ONNX_FILENAME).is_file() for v in self.version_dirs())
        return self.config.platform == ONNX_PLATFORM or self.config.backend == ONNX_BACKEND

    def version_dirs(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if p.is_dir() and p.name.isdigit())

    @property
    def onnx_filename(self) -> str:
        if self.config is not None and self.config.default_model_filename:
            return str(self.config.default_model_filename)
        return DEFAULT_ONNX_FILENAME


def _model_config_module() -> Any:
    # The protobuf classes ship in tritonclient's grpc package; protobuf comes with the
    # [local] extra. Imported lazily so the scoring runtime never needs them.
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def parse_config(text: str, origin: str) -> Any:
    """Parse ``config.pbtxt`` text into a ``ModelConfig`` message."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, _model_config_module().ModelConfig())
    except text_format.ParseError as exc:
        raise ModelRepositoryError(f"{origin}: invalid config.pbtxt: {exc}") from exc


def format_config(config: Any) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def scan_repository(repository: Path) -> list[RepositoryModel]:
    """List the model directories of ``repository`` (hidden folders are skipped, like Triton)."""
    if not repository.is_dir():
        raise ModelRepositoryError(f"model repository {str(repository)!r} is not a directory")
    models = []
    for path in sorted(repository.iterdir()):
        if not path.is_dir() or path.name.startswith("."):
            continue
        config_file = path / "config.pbtxt"
        config = (
            parse_config(config_file.read_text(), f"model {path.name!r}")
            if config_file.is_file()
            else None
        )
        models.append(RepositoryModel(path.name, path, config))
    return models


def _dims(value_info: Any) -> list[int]:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1)
    return dims


def autocomplete_config(name: str, onnx_file: Path) -> Any:
    """Build the ``ModelConfig`` Triton's onnxruntime backend would auto-complete for a file."""
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    outputs = list(graph.output)
    shapes = {v.name: _dims(v) for v in inputs + outputs}
    batching = all(shape and shape[0] == -1 for shape in shapes.values())

    pb = _model_config_module()
    config = pb.ModelConfig(name=name, backend=ONNX_BACKEND)
    config.max_batch_size = DEFAULT_MAX_BATCH_SIZE if batching else 0
    for values, target in ((inputs, config.input), (outputs, config.output)):
        for value in values:
            elem = value.type.tensor_type.elem_type
            if elem not in ONNX_TO_CONFIG:
                raise ModelRepositoryError(
                    f"model {name!r}: tensor {value.name!r} has ONNX element type {elem}, "
                    "which Triton cannot serve"
                )
            tensor = target.add(name=value.name)
            tensor.data_type = pb.DataType.Value(ONNX_TO_CONFIG[elem])
            dims = shapes[value.name][1:] if batching else shapes[value.name]
            tensor.dims.extend(dims)
    if batching:
        config.dynamic_batching.SetInParent()
    return config


def wrapped_config(model: RepositoryModel) -> Any:
    """The python-backend config that serves ``model``'s ONNX file with the same interface."""
    if model.config is None:
        versions = model.version_dirs()
        onnx_file = next(
            (
                v / DEFAULT_ONNX_FILENAME
                for v in reversed(versions)
                if (v / DEFAULT_ONNX_FILENAME).is_file()
            ),
            None,
        )
        if onnx_file is None:
            raise ModelRepositoryError(f"model {model.name!r}: no version folder has model.onnx")
        config = autocomplete_config(model.name, onnx_file)
    else:
        config = _model_config_module().ModelConfig()
        config.CopyFrom(model.config)
        if not config.name:
            config.name = model.name
        if not config.input or not config.output:
            # A partial config: take the missing tensors from the graph, as Triton would.
            versions = [v for v in model.version_dirs() if (v / model.onnx_filename).is_file()]
            if not versions:
                raise ModelRepositoryError(
                    f"model {model.name!r}: no version folder has {model.onnx_filename}"
                )
            completed = autocomplete_config(model.name, versions[-1] / model.onnx_filename)
            if not config.input:
                config.input.extend(completed.input)
            if not config.output:
                config.output.extend(completed.output)
    config.platform = ""
    config.backend = "python"
    config.parameters["onnx_model_filename"].string_value = model.onnx_filename
    config.default_model_filename = ""
    return config


def _link(src: Path, dst: Path) -> None:
    dst.symlink_to(src.resolve(), target_is_directory=src.is_dir())


def prepare_repository(
    repository: Path, scratch: Path, only: Collection[str] | None = None
) -> tuple[Path, list[str]]:
    """Build a scratch repository in which ONNX models run on the python backend.

    Each ONNX model is first checked as Triton's onnxruntime backend checks it when it
    loads it (:mod:`triton_score.local.onnx_check`): a model production would refuse is
    refused here, before any server starts, rather than failing on its first request.

    :param only: the models the server will load (explicit model control); the others are
        linked as they are, neither checked nor wrapped. ``None``: every model.
    :return: the scratch repository path and the names of the wrapped models.
    :raises ModelRepositoryError: a model the onnxruntime backend would not load, with
        every problem found, one per line.
    """
    from triton_score.local.onnx_check import check_model

    models = scan_repository(repository)
    loaded = {m.name for m in models if only is None or m.name in only}
    problems = [p for m in models if m.name in loaded and m.is_onnx for p in check_model(m)]
    if problems:
        raise ModelRepositoryError(
            "Triton's onnxruntime backend would refuse to load this repository:\n  "
            + "\n  ".join(problems)
        )
    target = scratch / "model_repository"
    target.mkdir(parents=True)
    wrapped = []
    for model in models:
        if not model.is_onnx or model.name not in loaded:
            _link(model.path, target / model.name)
            continue
        config = wrapped_config(model)
        out = target / model.name
        out.mkdir()
        (out / "config.pbtxt").write_text(format_config(config))
        for entry in model.path.iterdir():
            if entry.name == "config.pbtxt":
                continue
            if entry.is_dir() and entry.name.isdigit():
                version = out / entry.name
                version.mkdir()
                for item in entry.iterdir():
                    if item.name != "model.py":  # never write through a link into the user's tree
                        _link(item, version / item.name)
                shutil.copyfile(WRAPPER_SOURCE, version / "model.py")
            else:
                _link(entry, out / entry.name)
        wrapped.append(model.name)
    return target, wrapped
