"""The example models, served by the real Triton (issue: foundation)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from helpers import ROOT, held_out_digits, load_file, qa_cases

from triton_score import ModelInfo, Request
from triton_score.local import LocalTriton

LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def client(triton: LocalTriton):
    client = httpclient.InferenceServerClient(triton.url)
    yield client
    client.close()


def test_both_example_models_are_ready(client) -> None:
    ready = {m["name"] for m in client.get_model_repository_index() if m.get("state") == "READY"}
    assert {"digits_onnx", "qa_lexical"} <= ready


def test_digits_interface_survives_the_onnx_wrapper(client) -> None:
    meta = client.get_model_metadata("digits_onnx")
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 8, 8]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    config = client.get_model_config("digits_onnx")
    assert config["max_batch_size"] == 16
    assert "dynamic_batching" in config
    assert config["output"][0]["label_filename"] == "labels.txt"


def test_digits_held_out_accuracy_through_triton(client) -> None:
    images, labels = held_out_digits()
    predictions = []
    for start in range(0, len(images), 16):  # max_batch_size is 16
        batch = images[start : start + 16]
        inp = httpclient.InferInput("image", list(batch.shape), "FP32")
        inp.set_data_from_numpy(batch, binary_data=True)
        result = client.infer("digits_onnx", [inp])
        predictions.append(result.as_numpy("probabilities").argmax(axis=1))
    accuracy = float((np.concatenate(predictions) == labels).mean())
    print(f"held-out accuracy through Triton: {accuracy:.4f} on {len(labels)} images")
    assert len(labels) >= 400
    assert accuracy >= 0.90


def test_digits_class_count_returns_labelled_top3(client) -> None:
    images, labels = held_out_digits()
    inp = httpclient.InferInput("image", [2, 8, 8], "FP32")
    inp.set_data_from_numpy(images[:2], binary_data=True)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=True, class_count=3)
    result = client.infer("digits_onnx", [inp], outputs=[out]).as_numpy("probabilities")
    assert result.shape == (2, 3)
    for row, label in zip(result, labels[:2], strict=True):
        entries = [entry.decode().split(":") for entry in row]
        scores = [float(score) for score, _, _ in entries]
        assert scores == sorted(scores, reverse=True)
        for _score, index, name in entries:
            assert name == LABELS[int(index)]
        assert int(entries[0][1]) == label  # these two are classified correctly


def test_qa_model_has_bidaf9_interface(client) -> None:
    meta = client.get_model_metadata("qa_lexical")
    shapes = {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]}
    assert shapes == {
        "context_word": ("BYTES", [-1, 1]),
        "context_char": ("BYTES", [-1, 1, 1, 16]),
        "query_word": ("BYTES", [-1, 1]),
        "query_char": ("BYTES", [-1, 1, 1, 16]),
    }
    assert {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]} == {
        "start_pos": ("INT32", [1]),
        "end_pos": ("INT32", [1]),
    }


@pytest.fixture(scope="module")
def qa_processor(client):
    """score/qa_processor.py, loaded as ``score serve`` loads it (no download: see
    tests/unit/test_qa_tokenization.py), for the model Triton serves."""
    module = load_file(ROOT / "score" / "qa_processor.py", "example_qa_processor")
    model = ModelInfo.from_triton(
        client.get_model_metadata("qa_lexical"), client.get_model_config("qa_lexical")
    )
    processor = module.QuestionAnswering()
    processor.load(model)
    return processor, model


@pytest.mark.parametrize("case", qa_cases(), ids=lambda c: c["question"][:40])
def test_qa_model_answers_fixed_questions(client, qa_processor, case: dict[str, str]) -> None:
    """bidaf-9's tensors from nltk's word_tokenize -> Triton -> the answer and its offsets."""
    processor, model = qa_processor
    payload = {"context": case["context"], "question": case["question"]}
    request = Request(body=b"", content_type="application/json", json=payload)
    inputs = []
    for name, array in processor.preprocess(request, model).items():
        inp = httpclient.InferInput(name, list(array.shape), "BYTES")
        inp.set_data_from_numpy(array, binary_data=True)
        inputs.append(inp)
    result = client.infer("qa_lexical", inputs)
    outputs = {name: result.as_numpy(name) for name in ("start_pos", "end_pos")}
    answer = processor.postprocess(outputs, request, model)
    assert answer["answer"] == case["answer"]
    assert case["context"][answer["start"] : answer["end"]] == case["answer"]
