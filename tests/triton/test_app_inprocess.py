"""The Flask app in-process (test client) against the real Triton: processor failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import held_out_digits

from triton_score.http.app import create_app
from triton_score.local import LocalTriton
from triton_score.settings import Settings

FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.fixture(scope="module")
def client(triton: LocalTriton):
    settings = Settings(
        triton_url=triton.url,
        processors=(str(FIXTURES / "faulty_processors.py"),),
        default_model="digits_onnx",
    )
    app = create_app(settings)
    yield app.test_client()
    app.extensions["triton_score"].gateway.close()


def image() -> list:
    return held_out_digits()[0][0].tolist()


def test_default_model_scores_through_the_processor(client) -> None:
    response = client.post("/score", json={"image": [image()]})
    assert response.status_code == 200, response.text
    assert response.json == {"ok": True}


def test_processor_crash_is_a_500_with_request_id_and_no_details(client) -> None:
    response = client.post("/score", json={"mode": "crash"}, headers={"x-request-id": "req-42"})
    assert response.status_code == 500
    body = response.json
    assert body["code"] == "processor_error"
    assert body["request_id"] == "req-42"
    assert "req-42" in body["error"]
    text = response.get_data(as_text=True)
    assert "hunter2" not in text and "Traceback" not in text and "RuntimeError" not in text


def test_postprocess_crash_is_a_500(client) -> None:
    response = client.post("/score", json={"mode": "crash-after", "image": [image()]})
    assert response.status_code == 500
    assert "KeyError" not in response.get_data(as_text=True)


def test_processor_bad_request_keeps_its_message(client) -> None:
    response = client.post("/score", json={"mode": "bad"})
    assert response.status_code == 400
    assert response.json["error"] == "mode 'bad' is not accepted"


def test_processor_output_is_validated_before_triton(client) -> None:
    response = client.post("/score", json={"mode": "wrong-dtype"})
    assert response.status_code == 400
    assert response.json["input"] == "image"
    assert "expected FP32" in response.json["error"]


@pytest.mark.parametrize(
    ("mode", "returned"), [("not-a-mapping", "list"), ("coroutine", "coroutine")]
)
def test_a_processor_returning_the_wrong_type_is_its_500_not_a_400(
    client, mode: str, returned: str
) -> None:
    response = client.post("/score", json={"mode": mode, "image": [image()]})
    assert response.status_code == 500, response.json
    assert response.json["code"] == "processor_error"
    assert "processor Faulty is broken" in response.json["error"]
    assert f"preprocess() returned {returned}" in response.json["error"]
    # ...and the worker goes on serving.
    assert client.post("/score", json={"image": [image()]}).status_code == 200


def test_body_over_the_limit_is_a_413(triton: LocalTriton) -> None:
    app = create_app(Settings(triton_url=triton.url, max_body_bytes=1000, processors=("none",)))
    response = app.test_client().post("/score/digits_onnx", data=b"x" * 5000)
    assert response.status_code == 413
    assert response.json["code"] == "request_entity_too_large"


def test_readiness_is_503_while_the_drain_file_exists(triton: LocalTriton, tmp_path: Path) -> None:
    drain = tmp_path / "draining"
    app = create_app(Settings(triton_url=triton.url, processors=("none",), drain_file=str(drain)))
    client = app.test_client()
    try:
        assert client.get("/v2/health/ready").status_code == 200
        drain.touch()
        response = client.get("/v2/health/ready")
        assert response.status_code == 503
        assert response.json["code"] == "draining"
        assert response.json["ready"] is False and response.json["draining"] is True
        # Still scoring while draining.
        body = {"inputs": {"image": [image()]}}
        assert client.post("/score/digits_onnx", json=body).status_code == 200
        drain.unlink()
        assert client.get("/v2/health/ready").status_code == 200
    finally:
        app.extensions["triton_score"].gateway.close()
