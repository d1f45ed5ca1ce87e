"""Offline checks of the example models in models/triton (no Triton server needed).

(a) digits_onnx: rebuilding with models/build_examples.py reproduces the committed model (same
    predicted digits, probabilities within float noise), the committed model is accurate on the
    fixed held-out split, and its ONNX interface matches config.pbtxt.
(b) qa_lexical: answer_span answers every case in tests/qa_cases.json, handles edge cases, and the
    python-backend glue turns bidaf-9 style tensors into start/end positions or error responses.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "models" / "triton"
BUILD_SCRIPT = ROOT / "models" / "build_examples.py"
DIGITS_DIR = REPO / "digits_onnx"
DIGITS_ONNX = DIGITS_DIR / "1" / "model.onnx"
QA_DIR = REPO / "qa_lexical"
QA_MODEL = QA_DIR / "1" / "model.py"
QA_CASES = Path(__file__).resolve().parent.parent / "qa_cases.json"

EXPECTED_LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TRITON_TO_ONNX = {"TYPE_FP32": onnx.TensorProto.FLOAT, "TYPE_STRING": onnx.TensorProto.STRING}


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _config(model_dir: Path) -> mc.ModelConfig:
    text = (model_dir / "config.pbtxt").read_text(encoding="utf-8")
    return text_format.Parse(text, mc.ModelConfig())


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _probs(path: Path, images: np.ndarray) -> np.ndarray:
    return _session(path).run(["probabilities"], {"image": images})[0]


# ----------------------------------------------------------------------------------------------
# (a) digits_onnx
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def build():
    return _load(BUILD_SCRIPT, "build_examples_under_test")


@pytest.fixture(scope="module")
def held_out(build):
    return build.held_out_digits()


def test_held_out_split_is_the_documented_one(build, held_out):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = held_out
    digits = load_digits()
    _, x_te, _, y_te = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    assert (build.TEST_SIZE, build.SPLIT_RANDOM_STATE, build.STRATIFY) == (0.25, 0, True)
    assert images.dtype == np.float32 and images.shape == (450, 8, 8)
    assert images.min() >= 0 and images.max() <= 16
    np.testing.assert_array_equal(images.reshape(-1, 64), x_te.astype(np.float32))
    np.testing.assert_array_equal(labels, y_te)
    np.testing.assert_array_equal(digits.data[build.held_out_indices()], x_te)
    assert sorted(set(labels.tolist())) == list(range(10))


def test_committed_model_accuracy(held_out):
    images, labels = held_out
    probs = _probs(DIGITS_ONNX, images)
    assert probs.shape == (len(labels), 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    accuracy = float((probs.argmax(axis=1) == labels).mean())
    assert accuracy >= 0.90, f"held-out accuracy {accuracy:.4f}"


#: How far a rebuilt model's probabilities may move from the committed model's. Rebuilding with
#: another scikit-learn, numpy or BLAS moves them by float noise (up to 5.5e-6 seen); a model
#: trained differently moves them by orders of magnitude more (see the test below).
PROBABILITY_ATOL = 1e-4


def assert_same_model(fresh: np.ndarray, committed: np.ndarray, labels: np.ndarray, floor: float):
    """``fresh`` (probabilities on the held-out digits) is the committed model's, up to noise."""
    np.testing.assert_array_equal(
        fresh.argmax(axis=1), committed.argmax(axis=1), err_msg="the predicted digits differ"
    )
    accuracy = float((fresh.argmax(axis=1) == labels).mean())
    assert accuracy >= floor, f"held-out accuracy {accuracy:.4f} < {floor}"
    np.testing.assert_allclose(
        fresh, committed, rtol=0, atol=PROBABILITY_ATOL, err_msg="the probabilities differ"
    )


def test_rebuild_reproduces_committed_model(build, held_out, tmp_path):
    images, labels = held_out
    summary = build.build(tmp_path, verbose=False)
    rebuilt = tmp_path / "digits_onnx"
    committed = _probs(DIGITS_ONNX, images)
    fresh = _probs(rebuilt / "1" / "model.onnx", images)
    assert_same_model(fresh, committed, labels, build.MIN_ACCURACY)
    assert summary["accuracy"] >= build.MIN_ACCURACY
    for name in ("config.pbtxt", "labels.txt"):
        assert (rebuilt / name).read_text() == (DIGITS_DIR / name).read_text(), name


def test_rebuild_check_rejects_another_model(build, held_out, tmp_path, monkeypatch):
    """The tolerance above is not so loose that a differently trained model passes."""
    images, labels = held_out
    committed = _probs(DIGITS_ONNX, images)
    # 10 % less regularisation: as accurate, the same digits here, probabilities ~1e-2 away.
    monkeypatch.setattr(build, "LOGREG_C", build.LOGREG_C * 1.1)
    build.build(tmp_path, verbose=False)
    other = _probs(tmp_path / "digits_onnx" / "1" / "model.onnx", images)
    with pytest.raises(AssertionError, match="differ"):
        assert_same_model(other, committed, labels, build.MIN_ACCURACY)
    # ... nor the same digits with probabilities moved by twice the tolerance (still summing to 1).
    top = np.eye(10, dtype=np.float32)[committed.argmax(axis=1)]
    shifted = committed + 2 * PROBABILITY_ATOL * (top - (1 - top) / 9)
    with pytest.raises(AssertionError, match="probabilities differ"):
        assert_same_model(shifted, committed, labels, build.MIN_ACCURACY)
    # ... nor one that answers another digit (a permutation of the classes).
    with pytest.raises(AssertionError, match="predicted digits differ"):
        assert_same_model(np.roll(committed, 1, axis=1), committed, labels, build.MIN_ACCURACY)


@pytest.mark.parametrize("batch", [1, 16])
def test_committed_model_batch_sizes(held_out, batch):
    images, _ = held_out
    probs = _probs(DIGITS_ONNX, images[:batch])
    assert probs.shape == (batch, 10)
    np.testing.assert_allclose(probs, _probs(DIGITS_ONNX, images)[:batch], atol=1e-6)


def test_digits_interface_matches_config():
    config = _config(DIGITS_DIR)
    model = onnx.load(str(DIGITS_ONNX))
    onnx.checker.check_model(model)
    assert config.name == DIGITS_DIR.name == "digits_onnx"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (mc.ModelInstanceGroup.KIND_CPU, 1)
    ]

    def onnx_io(values):
        out = []
        for v in values:
            dims = [
                d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim
            ]
            out.append((v.name, v.type.tensor_type.elem_type, dims))
        return out

    def config_io(values):
        # max_batch_size > 0: Triton prepends a dynamic batch dimension to the config dims.
        return [
            (v.name, TRITON_TO_ONNX[mc.DataType.Name(v.data_type)], [-1, *v.dims]) for v in values
        ]

    assert (
        onnx_io(model.graph.input)
        == config_io(config.input)
        == [("image", onnx.TensorProto.FLOAT, [-1, 8, 8])]
    )
    assert (
        onnx_io(model.graph.output)
        == config_io(config.output)
        == [("probabilities", onnx.TensorProto.FLOAT, [-1, 10])]
    )
    sess = _session(DIGITS_ONNX)
    assert [(i.name, i.type, i.shape[1:]) for i in sess.get_inputs()] == [
        ("image", "tensor(float)", [8, 8])
    ]
    assert [(o.name, o.type, o.shape[1:]) for o in sess.get_outputs()] == [
        ("probabilities", "tensor(float)", [10])
    ]
    assert config.output[0].label_filename == "labels.txt"
    labels = (DIGITS_DIR / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert labels == EXPECTED_LABELS


def test_digits_model_is_small():
    assert DIGITS_ONNX.stat().st_size < 64 * 1024


# ----------------------------------------------------------------------------------------------
# (b) qa_lexical
# ----------------------------------------------------------------------------------------------

QA_CASE_LIST = json.loads(QA_CASES.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def qa():
    module = _load(QA_MODEL, "qa_lexical_model_under_test")
    assert module.pb_utils is None  # plain Python: the Triton stub module is absent
    return module


def bidaf_preprocess(tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """What a bidaf-9 client sends: lower-cased words [n,1]; first 16 chars [n,1,1,16]."""
    words = np.array([t.lower().encode() for t in tokens], dtype=object).reshape(-1, 1)
    chars = [[c.encode() for c in t[:16]] + [b""] * (16 - len(t[:16])) for t in tokens]
    return words, np.array(chars, dtype=object).reshape(-1, 1, 1, 16)


def test_qa_cases_are_varied_paragraphs(qa):
    assert len(QA_CASE_LIST) >= 6
    openers = {" ".join(c["question"].lower().split()[:2]) for c in QA_CASE_LIST}
    for kind in ("who", "what", "where", "when", "how many"):
        assert any(o.startswith(kind) for o in openers), kind
    for case in QA_CASE_LIST:
        n_sentences = sum(t in {".", "?", "!"} for t in qa.tokenize(case["context"]))
        assert 2 <= n_sentences <= 4, case["context"]


@pytest.mark.parametrize("case", QA_CASE_LIST, ids=[c["question"] for c in QA_CASE_LIST])
def test_answer_span_cases(qa, case):
    context = qa.tokenize(case["context"])
    start, end = qa.answer_span(context, qa.tokenize(case["question"]))
    assert 0 <= start <= end < len(context)
    assert context[start : end + 1] == qa.tokenize(case["answer"])


def test_tokenize_rule(qa):
    assert qa.tokenize("It's the state-of-the-art co-op, isn't it? 13,000!") == [
        "It's", "the", "state-of-the-art", "co-op", ",", "isn't", "it", "?",
        "13", ",", "000", "!",
    ]  # fmt: skip


def test_answer_span_query_words_absent(qa):
    context = qa.tokenize("The river froze early that winter. Skaters crowded onto the ice.")
    start, end = qa.answer_span(context, qa.tokenize("Who painted the Mona Lisa?"))
    assert 0 <= start <= end < len(context)
    start, end = qa.answer_span(context, [])
    assert 0 <= start <= end < len(context)


def test_answer_span_tiny_contexts(qa):
    assert qa.answer_span(["Paris"], qa.tokenize("What is the capital of France?")) == (0, 0)
    assert qa.answer_span(["the"], ["who"]) == (0, 0)
    start, end = qa.answer_span(["?", "!"], ["what"])
    assert 0 <= start <= end < 2
    with pytest.raises(ValueError, match="empty"):
        qa.answer_span([], ["what"])


def test_run_request_bidaf_tensors_recover_case_from_chars(qa):
    case = next(c for c in QA_CASE_LIST if c["question"] == "Who discovered polonium?")
    context = qa.tokenize(case["context"])
    cw, cc = bidaf_preprocess(context)
    qw, qc = bidaf_preprocess(qa.tokenize(case["question"]))
    start, end = qa.run_request(
        {"context_word": cw, "context_char": cc, "query_word": qw, "query_char": qc}
    )
    assert start.dtype == end.dtype == np.int32 and start.shape == end.shape == (1,)
    assert context[start[0] : end[0] + 1] == ["Marie", "Curie"]


def test_run_request_rejects_bad_inputs(qa):
    cw, cc = bidaf_preprocess(["Paris", "is", "big", "."])
    qw, qc = bidaf_preprocess(["what", "?"])
    good = {"context_word": cw, "context_char": cc, "query_word": qw, "query_char": qc}
    with pytest.raises(ValueError, match="context_char"):
        qa.run_request({**good, "context_char": cc[:2]})
    with pytest.raises(ValueError, match="missing"):
        qa.run_request({**good, "query_char": None})
    empty_w, empty_c = np.empty((0, 1), dtype=object), np.empty((0, 1, 1, 16), dtype=object)
    with pytest.raises(ValueError, match="empty"):
        qa.run_request({**good, "context_word": empty_w, "context_char": empty_c})


class _FakePbUtils:
    """Just enough of triton_python_backend_utils to drive TritonPythonModel.execute."""

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class TritonError:
        INTERNAL, INVALID_ARG = 13, 3  # the python backend's codes

        def __init__(self, message, code=INTERNAL):
            self.message, self.code = message, code

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self.output_tensors, self.error = output_tensors or [], error

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return request.get(name)


def test_execute_returns_outputs_and_per_request_errors(qa, monkeypatch):
    monkeypatch.setattr(qa, "pb_utils", _FakePbUtils)
    T = _FakePbUtils.Tensor
    context = qa.tokenize("The Nile empties into the Mediterranean Sea. It is very long.")
    cw, cc = bidaf_preprocess(context)
    qw, qc = bidaf_preprocess(qa.tokenize("Which sea does the Nile empty into?"))
    ok = {
        "context_word": T("context_word", cw),
        "context_char": T("context_char", cc),
        "query_word": T("query_word", qw),
        "query_char": T("query_char", qc),
    }
    empty = {
        **ok,
        "context_word": T("context_word", np.empty((0, 1), dtype=object)),
        "context_char": T("context_char", np.empty((0, 1, 1, 16), dtype=object)),
    }
    model = qa.TritonPythonModel()
    model.initialize({"model_config": json.dumps({"name": "qa_lexical", "max_batch_size": 0})})
    first, second = model.execute([ok, empty])
    model.finalize()
    assert first.error is None
    outputs = {t.name: t.as_numpy() for t in first.output_tensors}
    assert set(outputs) == {"start_pos", "end_pos"}
    s, e = int(outputs["start_pos"][0]), int(outputs["end_pos"][0])
    assert context[s : e + 1] == ["Mediterranean", "Sea"]
    assert second.output_tensors == [] and "empty" in second.error.message
    assert second.error.code == _FakePbUtils.TritonError.INVALID_ARG  # a 400, not a 500


def test_answer_span_is_fast_on_long_sentences(qa):
    """One long sentence used to cost cubic time: 4 KB of text took ~50 s."""
    words = qa.tokenize("xray yolk " * 1000)  # 2,000 words, no sentence break
    started = time.perf_counter()
    start, end = qa.answer_span(words, qa.tokenize("xray?"))
    elapsed = time.perf_counter() - started
    assert 0 <= start <= end < len(words)
    assert elapsed < 5, f"answer_span took {elapsed:.1f} s on 2,000 words"


def test_qa_config_matches_bidaf9_interface():
    config = _config(QA_DIR)
    assert config.name == "qa_lexical" and config.backend == "python"
    assert config.max_batch_size == 0
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (mc.ModelInstanceGroup.KIND_CPU, 1)
    ]

    def io(values):
        return [(v.name, mc.DataType.Name(v.data_type), list(v.dims)) for v in values]

    assert io(config.input) == [
        ("context_word", "TYPE_STRING", [-1, 1]),
        ("context_char", "TYPE_STRING", [-1, 1, 1, 16]),
        ("query_word", "TYPE_STRING", [-1, 1]),
        ("query_char", "TYPE_STRING", [-1, 1, 1, 16]),
    ]
    assert io(config.output) == [
        ("start_pos", "TYPE_INT32", [1]),
        ("end_pos", "TYPE_INT32", [1]),
    ]
