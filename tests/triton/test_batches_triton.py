"""Requests with more rows than the model's max_batch_size, against the real Triton.

``digits_onnx`` takes at most 16 rows per call. A request of 65 or 442 rows goes through
``score serve`` (Gunicorn, gevent worker, coalescer) as several Triton calls and comes back
as one answer whose rows equal the one-by-one answers, in order: for the default codec and
for a processor's ``triton.infer``. Above ``SCORE_MAX_ROWS`` it is a 413 naming the limit.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import requests
from conftest import ScoreServer
from helpers import held_out_digits

from triton_score.local import LocalTriton

PREDICTING = '''
import numpy as np
from triton_score import processor


@processor("digits_onnx")
class ManyImages:
    """{"images": [...]} -> every image's probabilities, through predict()'s own call."""

    def preprocess(self, request, model):
        return {"image": np.asarray(request.json["images"], dtype=np.float32)}

    def predict(self, inputs, request, model, triton):
        return triton.infer(model, inputs, {"probabilities": 0})

    def postprocess(self, outputs, request, model):
        return {"probabilities": outputs["probabilities"].tolist()}
'''


def images(count: int) -> np.ndarray:
    """``count`` held-out digits (repeated when there are fewer), each one different from
    its neighbours, so that rows out of order would show."""
    held_out, _ = held_out_digits()
    return np.resize(held_out, (count, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def limited_server(
    triton: LocalTriton, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScoreServer]:
    """``score serve`` with a predict() processor for digits and SCORE_MAX_ROWS=500."""
    folder = tmp_path_factory.mktemp("predicting")
    (folder / "many_processor.py").write_text(PREDICTING)
    server = ScoreServer(
        "--triton-url",
        triton.url,
        "--processors",
        str(folder / "many_processor.py"),
        env={"SCORE_MAX_ROWS": "500"},
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def one_by_one(url: str, batch: np.ndarray) -> np.ndarray:
    """Each image's probabilities from its own request (distinct images only once)."""
    session = requests.Session()
    unique, where = np.unique(batch.reshape(len(batch), -1), axis=0, return_inverse=True)
    answers = []
    for image in unique:
        response = session.post(
            url + "/score/digits_onnx",
            json={"inputs": {"image": image.reshape(1, 8, 8).tolist()}},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        answers.append(response.json()["outputs"]["probabilities"][0])
    return np.asarray(answers)[where.reshape(-1)]


@pytest.mark.parametrize("rows", [65, 442])
def test_the_default_codec_splits_rows_beyond_max_batch_size(
    plain_server: ScoreServer, rows: int
) -> None:
    batch = images(rows)
    response = requests.post(
        plain_server.url + "/score/digits_onnx",
        json={"inputs": {"image": batch.tolist()}},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    got = np.asarray(response.json()["outputs"]["probabilities"])
    assert got.shape == (rows, 10)
    np.testing.assert_allclose(got, one_by_one(plain_server.url, batch), atol=1e-6)


@pytest.mark.parametrize("rows", [65, 442])
def test_a_processors_inference_is_split_too(limited_server: ScoreServer, rows: int) -> None:
    batch = images(rows)
    response = requests.post(
        limited_server.url + "/score/digits_onnx", json={"images": batch.tolist()}, timeout=60
    )
    assert response.status_code == 200, response.text
    got = np.asarray(response.json()["probabilities"])
    assert got.shape == (rows, 10)
    np.testing.assert_allclose(got, one_by_one_with(limited_server, batch), atol=1e-6)


def one_by_one_with(server: ScoreServer, batch: np.ndarray) -> np.ndarray:
    """One-by-one answers through the same processor."""
    session = requests.Session()
    answers = {}
    for image in batch:
        key = image.tobytes()
        if key not in answers:
            response = session.post(
                server.url + "/score/digits_onnx", json={"images": [image.tolist()]}, timeout=30
            )
            assert response.status_code == 200, response.text
            answers[key] = response.json()["probabilities"][0]
    return np.asarray([answers[image.tobytes()] for image in batch])


def test_rows_above_score_max_rows_are_a_413(limited_server: ScoreServer) -> None:
    response = requests.post(
        limited_server.url + "/score/digits_onnx", json={"images": images(501).tolist()}, timeout=60
    )
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["code"] == "too_many_rows" and body["limit_rows"] == 500 and body["rows"] == 501
    assert "SCORE_MAX_ROWS" in body["error"]


def test_zero_rows_are_still_a_400(plain_server: ScoreServer) -> None:
    response = requests.post(
        plain_server.url + "/score/digits_onnx", json={"inputs": {"image": []}}, timeout=30
    )
    assert response.status_code == 400, response.text
