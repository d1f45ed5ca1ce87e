"""`/v2/models/<m>/generate[_stream]` through `score serve`: checked, then streamed unbuffered."""

from __future__ import annotations

import json
import time

import requests

from tests.conftest import ScoreServer


def _post(server: ScoreServer, path: str, body: object) -> requests.Response:
    return requests.post(f"{server.url}{path}", json=body, stream=True, timeout=60)


def test_generate_stream_events_arrive_while_the_model_generates(score_server: ScoreServer) -> None:
    body = {
        "text_input": "What is a class",
        "stream": True,
        "sampling_parameters": json.dumps({"max_tokens": 15, "seed": 5}),
    }
    response = _post(score_server, "/v2/models/tiny_lm/generate_stream", body)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    arrivals, texts = [], []
    for line in response.iter_lines(chunk_size=1):
        if line.startswith(b"data: "):
            arrivals.append(time.monotonic())
            texts.append(json.loads(line[6:])["text_output"])
    assert len(texts) == 15
    # 20 ms a word: buffered, every event would arrive at the end, together.
    assert arrivals[-1] - arrivals[0] > 0.2
    whole = _post(score_server, "/v2/models/tiny_lm/versions/1/generate", {**body, "stream": False})
    assert whole.status_code == 200
    assert whole.json()["text_output"] == "What is a class" + "".join(texts)


def test_generate_requests_are_checked_before_triton(score_server: ScoreServer) -> None:
    path = "/v2/models/tiny_lm/generate"
    wrong_key = _post(score_server, path, {"text_input": "x", "prompt": "y"})
    assert wrong_key.status_code == 400
    assert "prompt" in wrong_key.json()["error"]
    wrong_type = _post(score_server, path, {"text_input": "x", "stream": "yes"})
    assert wrong_type.status_code == 400
    assert "stream" in wrong_type.json()["error"]
    priority = _post(score_server, path, {"text_input": "x", "parameters": {"priority": 1}})
    assert priority.status_code == 400
    assert _post(score_server, "/v2/models/nope/generate", {"text_input": "x"}).status_code == 404
