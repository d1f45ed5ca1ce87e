"""Processor API v2 against the real Triton: the Flask app in-process, and real Gunicorn.

- several Triton calls in one request (``predict``), validated and mapped as single calls,
  through the worker's one Triton client;
- processors' own responses (an image out, a 202) and content types (an image in, a 415);
- one schema declaration: a 400 naming the field, and ``/swagger.json``;
- ``ModelInfo.parameters`` and ``ModelInfo.directory`` (the original folder, not the wrapper);
- fresh metadata: Triton reloads a model (explicit model control) with a new config, then a new
  version; the workers pick it up without a restart and without a metadata call per request.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import requests
import tritonclient.http as httpclient
from conftest import ScoreServer, start_triton
from helpers import ROOT, held_out_digits
from PIL import Image

from triton_score.http.app import create_app
from triton_score.local import LocalTriton
from triton_score.settings import Settings

FIXTURES = Path(__file__).parent.parent / "fixtures"
V2_PROCESSORS = FIXTURES / "v2_processors.py"


def png(image: np.ndarray, size: int = 32) -> bytes:
    """An 8x8 digit (values 0..16) as a grey PNG photo of ``size`` pixels."""
    grey = Image.fromarray((image * 255 / 16).clip(0, 255).astype(np.uint8), mode="L")
    out = io.BytesIO()
    grey.resize((size, size), Image.NEAREST).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def app(triton: LocalTriton):
    settings = Settings(
        triton_url=triton.url, processors=(str(V2_PROCESSORS),), metadata_refresh_s=0
    )
    app = create_app(settings)
    yield app
    app.extensions["triton_score"].close()


# -- own responses and content types -------------------------------------------------------
def test_an_image_in_and_an_image_out(app) -> None:
    client = app.test_client()
    images, labels = held_out_digits()
    right = 0
    for image, label in zip(images[:10], labels[:10], strict=True):
        response = client.post(
            "/score/digits_onnx",
            data=png(image),
            headers={"content-type": "image/png", "accept": "image/png", "x-request-id": "p-1"},
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        assert response.headers["x-request-id"] == "p-1"  # the request-id headers are added
        photo = Image.open(io.BytesIO(response.data))
        assert photo.size == (32, 32) and photo.getpixel((0, 0)) == (255, 0, 0)
        right += int(response.headers["x-digit"]) == label
    assert right >= 8  # a 32x32 photo shrunk back to 8x8 is close to the original


def test_json_out_a_202_and_a_415(app) -> None:
    client = app.test_client()
    images, labels = held_out_digits()
    photo = png(images[0])
    as_json = client.post("/score/digits_onnx", data=photo, content_type="image/png")
    assert as_json.status_code == 200 and as_json.json == {"digit": int(labels[0])}
    later = client.post(
        "/score/digits_onnx",
        data=photo,
        headers={"content-type": "image/png", "prefer": "respond-async"},
    )
    assert later.status_code == 202 and later.headers["location"] == f"/done/{labels[0]}"
    refused = client.post("/score/digits_onnx", json={"image": images[0].tolist()})
    assert refused.status_code == 415
    assert refused.json["code"] == "unsupported_media_type"
    assert refused.json["accepted"] == ["image/png", "image/jpeg"]
    # curl --data-binary @photo.png states the form type: let through. text/plain is JSON's
    # stand-in only where JSON is accepted, so this image processor refuses it.
    curl = client.post(
        "/score/digits_onnx", data=photo, content_type="application/x-www-form-urlencoded"
    )
    assert curl.status_code == 200 and curl.json == {"digit": int(labels[0])}
    as_text = client.post(
        "/score/digits_onnx", data=photo, content_type="text/plain; charset=utf-8"
    )
    assert as_text.status_code == 415, as_text.text
    assert "'text/plain'" in as_text.json["error"]
    assert as_text.json["accepted"] == ["image/png", "image/jpeg"]
    metrics = client.get("/metrics").text
    assert 'score_requests_total{code="202",model="digits_onnx"}' in metrics


def test_swagger_documents_content_types_schema_and_example(app) -> None:
    doc = app.test_client().get("/openapi.json").json
    photos = doc["paths"]["/score/digits_onnx"]["post"]
    assert set(photos["requestBody"]["content"]) == {"image/png", "image/jpeg"}
    assert photos["requestBody"]["content"]["image/png"]["schema"]["format"] == "binary"
    assert set(photos["responses"]["200"]["content"]) == {"application/json", "image/png"}
    assert "415" in photos["responses"]
    qa = doc["paths"]["/score/qa_lexical"]["post"]["requestBody"]["content"]
    assert list(qa) == ["application/json"]
    assert qa["application/json"]["schema"]["required"] == ["image", "question"]
    assert qa["application/json"]["example"]["question"] == "How many apples are there?"


# -- several Triton calls in one request ---------------------------------------------------
def test_a_pipeline_of_two_models_in_one_request(app) -> None:
    client = app.test_client()
    images, labels = held_out_digits()
    for image, label in zip(images[:4], labels[:4], strict=True):
        response = client.post(
            "/score/qa_lexical",
            json={"image": image.tolist(), "question": "How many apples are there?"},
        )
        assert response.status_code == 200, response.text
        assert response.json["context"] == f"There are {label} apples on the table."
        assert response.json["answer"] == str(label)
    # A JSON processor takes JSON sent as text/plain, as AzureML's clients send it.
    as_text = client.post(
        "/score/qa_lexical",
        data=orjson.dumps({"image": images[0].tolist(), "question": "How many apples are there?"}),
        content_type="text/plain; charset=utf-8",
    )
    assert as_text.status_code == 200, as_text.text
    assert as_text.json["answer"] == str(labels[0])


def test_calls_inside_predict_are_validated_and_mapped(app) -> None:
    client = app.test_client()
    image = held_out_digits()[0][0].tolist()
    question = "How many apples are there?"
    bad = client.post(
        "/score/qa_lexical", json={"image": image, "question": question, "mode": "bad-helper-input"}
    )
    assert bad.status_code == 400 and bad.json["code"] == "invalid_input"
    assert bad.json["input"] == "image" and "expected shape" in bad.json["error"]
    missing = client.post(
        "/score/qa_lexical", json={"image": image, "question": question, "mode": "unknown-model"}
    )
    assert missing.status_code == 500 and missing.json["code"] == "processor_error"
    assert "no_such_model" in missing.json["error"]
    schema = client.post("/score/qa_lexical", json={"image": image, "question": ""})
    assert schema.status_code == 400
    assert schema.json == {
        "error": "field 'question': expected at least 1 characters, got 0",
        "code": "invalid_request",
        "field": "question",
        "request_id": schema.headers["x-request-id"],
    }


def test_predict_uses_the_workers_one_client(app, monkeypatch) -> None:
    created: list[object] = []
    real_init = httpclient.InferenceServerClient.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        created.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(httpclient.InferenceServerClient, "__init__", counting)
    gateway = app.extensions["triton_score"].gateway
    calls: list[str] = []
    real_infer = gateway.infer
    monkeypatch.setattr(
        gateway,
        "infer",
        lambda model, *a, **k: calls.append(model.name) or real_infer(model, *a, **k),
    )
    client = app.test_client()
    image = held_out_digits()[0][0].tolist()
    for _ in range(5):
        body = {"image": image, "question": "How many apples are there?"}
        assert client.post("/score/qa_lexical", json=body).status_code == 200
    assert created == []  # no client per request
    assert calls == ["digits_onnx", "qa_lexical"] * 5  # both calls through the worker's gateway


# -- request facts -------------------------------------------------------------------------
def test_model_directory_is_the_original_folder_not_the_wrapper(app, triton: LocalTriton) -> None:
    models = app.extensions["triton_score"].scorer.models
    assert "digits_onnx" in triton.wrapped_models  # served from a generated scratch copy...
    assert models["digits_onnx"].directory == (ROOT / "models" / "triton" / "digits_onnx").resolve()
    assert models["qa_lexical"].directory == (ROOT / "models" / "triton" / "qa_lexical").resolve()
    assert (models["digits_onnx"].directory / "labels.txt").is_file()  # ...read the real files
    by_name = create_app(  # "localhost" is this machine too (remote Triton: tests with fakes)
        Settings(
            triton_url=triton.url.replace("127.0.0.1", "localhost"),
            processors=("none",),
            metadata_refresh_s=0,
        )
    )
    scorer = by_name.extensions["triton_score"].scorer
    assert scorer.models["digits_onnx"].directory == models["digits_onnx"].directory
    by_name.extensions["triton_score"].close()


# -- fresh metadata: Triton reloads a model ------------------------------------------------
SCALER_PROCESSOR = FIXTURES / "scaler_processor.py"


@pytest.fixture()
def scaler_repository(tmp_path: Path) -> Path:
    repository = tmp_path / "repository"
    shutil.copytree(FIXTURES / "scaler", repository / "scaler")
    return repository


@pytest.fixture()
def explicit_triton(scaler_repository: Path) -> Iterator[LocalTriton]:
    """A Triton that loads and reloads models only when told (``POST .../load``)."""
    server = start_triton(
        scaler_repository, extra_args=["--model-control-mode=explicit", "--load-model=*"]
    )
    try:
        yield server
    finally:
        server.stop()


def set_factor(repository: Path, factor: str) -> None:
    config = repository / "scaler" / "config.pbtxt"
    text = config.read_text()
    start = text.index('string_value: "') + len('string_value: "')
    config.write_text(text[:start] + factor + text[text.index('"', start) :])


def reload(triton: LocalTriton, model: str) -> None:
    """Through Triton's own port: the scoring port refuses control APIs."""
    url = f"http://{triton.url}/v2/repository/models/{model}/load"
    response = requests.post(url, data=b"{}", timeout=60)
    assert response.status_code == 200, response.text


def wait_for(score: Callable[[], dict[str, Any]], done: Callable[[dict], bool]) -> dict:
    deadline = time.monotonic() + 30
    while True:
        body = score()
        if done(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_workers_pick_up_a_reloaded_model_in_process(
    explicit_triton: LocalTriton, scaler_repository: Path, monkeypatch
) -> None:
    settings = Settings(
        triton_url=explicit_triton.url,
        model_repository=str(scaler_repository),
        processors=(str(SCALER_PROCESSOR),),
        metadata_refresh_s=0.2,
    )
    app = create_app(settings)
    rt = app.extensions["triton_score"]
    assert rt.refresher is not None and rt.refresher.running  # a daemon thread here
    reads: list[str] = []
    real_model_info = rt.gateway.model_info
    monkeypatch.setattr(rt.gateway, "model_info", lambda n: reads.append(n) or real_model_info(n))
    client = app.test_client()

    def score() -> dict[str, Any]:
        response = client.post("/score/scaler", json={"x": [1, 2, 3, 4]})
        assert response.status_code == 200, response.text
        return response.json

    try:
        first = score()
        assert first["y"] == [2, 4, 6, 8] and first["factor"] == "2" and first["loads"] == 1
        assert first["version"] == "1"
        assert first["directory"] == str((scaler_repository / "scaler").resolve())

        set_factor(scaler_repository, "3")
        reload(explicit_triton, "scaler")
        after = wait_for(score, lambda body: body["factor"] == "3")
        assert after["factor"] == "3" and after["y"] == [3, 6, 9, 12]
        assert after["loads"] == 2 and after["version"] == "1"

        shutil.copytree(scaler_repository / "scaler" / "1", scaler_repository / "scaler" / "2")
        reload(explicit_triton, "scaler")
        newer = wait_for(score, lambda body: body["version"] == "2")
        assert newer["version"] == "2" and newer["loads"] == 3

        for _ in range(20):
            score()
        assert reads == []  # requests never read metadata; the refresher has its own client
    finally:
        rt.close()
    assert rt.refresher is None


def test_gunicorn_workers_pick_up_a_reloaded_model(
    explicit_triton: LocalTriton, scaler_repository: Path
) -> None:
    server = ScoreServer(
        "--triton-url",
        explicit_triton.url,
        "--models",
        str(scaler_repository),
        "--processors",
        str(SCALER_PROCESSOR),
        "--workers",
        "1",
        env={"SCORE_METADATA_REFRESH_S": "0.3"},
    )
    try:
        server.wait_ready()

        def score() -> dict[str, Any]:
            response = requests.post(
                f"{server.url}/score/scaler", json={"x": [1, 1, 1, 1]}, timeout=10
            )
            assert response.status_code == 200, response.text
            return response.json()

        assert score()["factor"] == "2"
        set_factor(scaler_repository, "5")
        reload(explicit_triton, "scaler")
        after = wait_for(score, lambda body: body["factor"] == "5")
        assert after == {
            "y": [5.0, 5.0, 5.0, 5.0],
            "factor": "5",
            "version": "1",
            "loads": 2,
            "directory": str((scaler_repository / "scaler").resolve()),
        }
        log = server.output()
        line = (
            "model scaler: Triton reloaded it (parameters changed); processor Scaler loaded again"
        )
        assert log.count(line) == 1, log
    finally:
        server.stop()
