"""``POST /score`` without Flask's request cycle answers exactly as Flask's view does.

One app (the real Triton behind it, API keys and CORS on): each request is sent twice, once
through :class:`~triton_score.http.score_wsgi.ScoreWSGI` (how the app serves it) and once with
that front taken off, so Flask's request cycle and its ``/score`` view serve it. Status, body,
headers and the access line must be the same, for answers, refusals and a processor's own
responses alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from helpers import held_out_digits

from triton_score.http.app import create_app
from triton_score.http.score_wsgi import ScoreWSGI
from triton_score.local import LocalTriton
from triton_score.settings import Settings

KEY = "k" * 24
PROCESSOR = '''
from triton_score import Response, processor


@processor("digits_onnx")
class Answering:
    """Answers as the query asks: a status, headers of its own, or the top class."""

    def preprocess(self, request, model):
        return {"image": request.json["image"]}

    def postprocess(self, outputs, request, model):
        if "csv" in request.query:
            return Response("label,score\\n3,0.9\\n", content_type="text/csv")
        status = int(request.query.get("status", "200"))
        if status == 200 and "header" not in request.query:
            return {"scores": outputs["probabilities"]}
        headers = {"X-Answer": request.query.get("header", "none")}
        if "location" in request.query:
            headers["Location"] = request.query["location"]
        return Response(None if status == 204 else {"status": status}, status, headers)
'''


@pytest.fixture(scope="module")
def app(triton: LocalTriton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    processors = tmp_path_factory.mktemp("processors") / "answering.py"
    processors.write_text(PROCESSOR)
    settings = Settings(
        triton_url=triton.url,
        processors=(str(processors),),
        default_model="digits_onnx",
        api_keys=(KEY,),
        cors_origins=("https://app.example",),
        max_body_bytes=64 * 1024,
    )
    made = create_app(settings)
    yield made
    made.extensions["triton_score"].close()


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def both_ways(
    app: Flask, path: str, **request: Any
) -> list[tuple[int, Any, dict[str, str], dict[str, Any]]]:
    """The answer (status, body, headers, access line's fields) with the WSGI front and
    without it, ids and timings left out."""
    front = app.wsgi_app
    assert isinstance(front, ScoreWSGI)
    answers = []
    for wsgi_app in (front, front.app):
        app.wsgi_app = wsgi_app  # type: ignore[method-assign]
        lines = Lines()
        access = logging.getLogger("triton_score.access")
        access.addHandler(lines)  # the access line then goes through logging, as a record
        try:
            response = app.test_client().post(path, **request)
        finally:
            access.removeHandler(lines)
            app.wsgi_app = front  # type: ignore[method-assign]
        headers = dict(response.headers)
        headers.pop("x-request-id")
        headers.pop("x-ms-request-id")
        try:
            body = json.loads(response.data)
        except ValueError:
            body = response.data
        if isinstance(body, dict):
            body.pop("request_id", None)
        (record,) = lines.records
        fields = dict(record.access)  # type: ignore[attr-defined]
        for varying in ("duration_ms", "stages_ms"):
            fields.pop(varying)
        answers.append((response.status_code, body, headers, fields))
    return answers


def image() -> list[list[float]]:
    return held_out_digits()[0][0].tolist()  # type: ignore[no-any-return]


AUTH = {"Authorization": f"Bearer {KEY}"}
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "scored": ("/score/digits_onnx", {"json": {"image": [image()]}, "headers": AUTH}),
    "default model, CORS": (
        "/score",
        {"json": {"image": [image()]}, "headers": {**AUTH, "Origin": "https://app.example"}},
    ),
    "client id echoed": (
        "/score/digits_onnx",
        {"json": {"image": [image()]}, "headers": {**AUTH, "x-ms-client-request-id": "c-1"}},
    ),
    "no key": ("/score/digits_onnx", {"json": {"image": [image()]}}),
    "bad key": ("/score/digits_onnx", {"json": {}, "headers": {"Authorization": "Bearer x"}}),
    "bad id": ("/score/digits_onnx", {"json": {}, "headers": {**AUTH, "x-request-id": "a\x01"}}),
    "unknown model": ("/score/nope", {"json": {}, "headers": AUTH}),
    "not JSON": (
        "/score/digits_onnx",
        {"data": b"{", "content_type": "application/json", "headers": AUTH},
    ),
    "too large": ("/score/digits_onnx", {"data": b"x" * (65 * 1024), "headers": AUTH}),
    "processor headers": (
        "/score/digits_onnx?status=201&header=yes",
        {"json": {"image": [image()]}, "headers": AUTH},
    ),
    "a processor's text": (
        "/score/digits_onnx?csv=1",
        {"json": {"image": [image()]}, "headers": AUTH},
    ),
    "no content": (
        "/score/digits_onnx?status=204",
        {"json": {"image": [image()]}, "headers": AUTH},
    ),
    "location": (
        "/score/digits_onnx?status=202&location=/jobs/1",
        {"json": {"image": [image()]}, "headers": AUTH},
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_the_wsgi_front_answers_as_flasks_view(app: Flask, case: str) -> None:
    path, request = CASES[case]
    served, by_flask = both_ways(app, path, **request)
    assert served == by_flask


def test_a_scoring_post_never_enters_flasks_request_cycle(app: Flask) -> None:
    """The front is what serves POST /score: with Flask's view and hooks broken, it still
    answers; everything else still reaches Flask."""
    view = app.view_functions["triton_score.score"]

    def broken(**_: Any) -> None:
        raise AssertionError("Flask's /score view ran")

    app.view_functions["triton_score.score"] = broken
    try:
        client = app.test_client()
        scored = client.post("/score/digits_onnx", json={"image": [image()]}, headers=AUTH)
        assert scored.status_code == 200, scored.text
        assert scored.headers["Vary"] == "Origin"  # the envelope's work, without Flask's hooks
        flask_served = client.open("/score/digits_onnx", method="PUT", headers=AUTH)
        assert flask_served.status_code == 405  # a method Flask routes (and refuses)
        assert client.get("/", headers=AUTH).text == "Healthy"
    finally:
        app.view_functions["triton_score.score"] = view


def test_an_entry_script_is_served_by_flask(
    tmp_path: Path, triton: LocalTriton, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its run() gets a Flask request: no front is put before the app."""
    import tritonclient.http as httpclient

    # Building an entry script's runtime adapts the Triton clients process-wide (its
    # script's clients share the worker's connections): undone after the test.
    monkeypatch.setattr(
        httpclient.InferenceServerClient, "__init__", httpclient.InferenceServerClient.__init__
    )
    script = tmp_path / "score.py"
    script.write_text("def init():\n    pass\n\n\ndef run(data):\n    return {'echo': len(data)}\n")
    app = create_app(Settings(triton_url=triton.url, entry_script=str(script)))
    try:
        assert not isinstance(app.wsgi_app, ScoreWSGI)
        answer = app.test_client().post("/score", json={"a": 1})
        assert answer.status_code == 200 and answer.json == {"echo": 8}
    finally:
        app.extensions["triton_score"].close()
