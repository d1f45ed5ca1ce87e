"""The scoring server end to end: real Gunicorn (gevent workers) in front of the real Triton."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from conftest import ScoreServer
from helpers import held_out_digits, qa_cases

from triton_score.local.processes import descendants, process_environ

JSON = {"content-type": "application/json"}


def post(server: ScoreServer, path: str, body: object, **kwargs: object) -> requests.Response:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    headers = kwargs.pop("headers", JSON)
    return requests.post(f"{server.url}{path}", data=data, headers=headers, timeout=30, **kwargs)


# -- health and headers ------------------------------------------------------------------
def test_liveness_and_readiness(score_server: ScoreServer) -> None:
    root = requests.get(score_server.url + "/", timeout=5)
    assert root.status_code == 200 and root.text == "Healthy"
    assert requests.get(score_server.url + "/v2/health/live", timeout=5).status_code == 200
    ready = requests.get(score_server.url + "/v2/health/ready", timeout=5)
    assert ready.status_code == 200 and ready.json() == {"ready": True}


def test_request_ids_behave_as_in_azureml(score_server: ScoreServer) -> None:
    both = requests.get(
        score_server.url + "/",
        headers={"x-request-id": "abc-123", "x-ms-client-request-id": "client-9"},
        timeout=5,
    )
    assert both.headers["x-request-id"] == "abc-123"
    assert both.headers["x-ms-request-id"] == "client-9"  # the client's own id, as AzureML
    assert both.headers["x-ms-client-request-id"] == "client-9"
    mine = requests.get(score_server.url + "/", headers={"x-request-id": "abc-123"}, timeout=5)
    assert mine.headers["x-ms-request-id"] == "abc-123"
    assert "x-ms-client-request-id" not in mine.headers
    generated = requests.get(score_server.url + "/", timeout=5).headers["x-request-id"]
    assert len(generated) == 36 and generated != "abc-123"
    too_long = requests.get(score_server.url + "/", headers={"x-request-id": "r" * 101}, timeout=5)
    assert too_long.status_code == 431 and "x-request-id" in too_long.json()["error"]


# -- scoring through the example processors ----------------------------------------------
def test_digits_processor_classifies_held_out_images(score_server: ScoreServer) -> None:
    images, labels = held_out_digits()
    response = post(score_server, "/score/digits_onnx", {"images": images[:16].tolist()})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 16
    digits = np.array([p["digit"] for p in predictions])
    assert (digits == labels[:16]).mean() >= 0.9
    first = predictions[0]
    assert len(first["top"]) == 3 and first["label"] == first["top"][0]["label"]


@pytest.mark.parametrize("case", qa_cases()[:6], ids=lambda c: c["question"][:40])
def test_qa_processor_answers(score_server: ScoreServer, case: dict[str, str]) -> None:
    response = post(
        score_server,
        "/score/qa_lexical",
        {"context": case["context"], "question": case["question"]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"] == case["answer"]
    assert case["context"][body["start"] : body["end"]] == case["answer"]


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("When was the nickname coined?", "1976"),
        ("Who was called the Iron Lady?", "Margaret Thatcher"),
    ],
)
def test_qa_offsets_are_characters_of_the_context(
    score_server: ScoreServer, question: str, answer: str
) -> None:
    """nltk's words differ from the text (`` and '' for ", n't, 's): offsets still index it."""
    context = (
        'The "Iron Lady", Margaret Thatcher\'s nickname, was coined by a Soviet newspaper in '
        "1976. She didn't mind."
    )
    response = post(score_server, "/score/qa_lexical", {"context": context, "question": question})
    assert response.status_code == 200, response.text
    start = context.index(answer)
    assert response.json() == {"answer": answer, "start": start, "end": start + len(answer)}


def test_score_without_model_name_needs_a_default(score_server: ScoreServer) -> None:
    response = post(score_server, "/score", {"image": [[0] * 8] * 8})
    assert response.status_code == 400
    assert "SCORE_MODEL" in response.json()["error"]


def test_processor_bad_request_is_a_400(score_server: ScoreServer) -> None:
    # The processor's request_schema refuses a missing field, naming it...
    response = post(score_server, "/score/qa_lexical", {"context": "Only context."})
    assert response.status_code == 400
    assert response.json()["error"] == "field 'question': is required"
    assert response.json()["field"] == "question"
    # ...and the processor's own BadRequest what the schema lets through.
    empty = post(score_server, "/score/qa_lexical", {"context": "Only context.", "question": " "})
    assert empty.status_code == 400
    assert empty.json()["error"] == '"question" must be a non-empty string'


# -- the default codec (no processors) -----------------------------------------------------
def test_default_codec_digits_dict_and_v2_forms(plain_server: ScoreServer) -> None:
    images, labels = held_out_digits()
    as_dict = post(plain_server, "/score/digits_onnx", {"inputs": {"image": images[:3].tolist()}})
    assert as_dict.status_code == 200, as_dict.text
    body = as_dict.json()
    assert body["model_name"] == "digits_onnx" and body["model_version"] == "1"
    probabilities = np.array(body["outputs"]["probabilities"])
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    assert list(probabilities.argmax(axis=1)) == list(labels[:3])

    v2 = {
        "inputs": [
            {
                "name": "image",
                "shape": [1, 8, 8],
                "datatype": "FP32",
                "data": images[0].ravel().tolist(),
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
    }
    as_v2 = post(plain_server, "/score/digits_onnx", v2)
    assert as_v2.status_code == 200, as_v2.text
    top2 = as_v2.json()["outputs"]["probabilities"][0]
    assert len(top2) == 2 and top2[0].split(":")[1] == str(labels[0])


def test_default_codec_qa_bytes_tensors(plain_server: ScoreServer) -> None:
    case = qa_cases()[0]
    import re

    def tensors(text: str) -> tuple[list, list]:
        tokens = re.findall(r"\w+(?:[-']\w+)*|[^\w\s]", text)
        words = [[t.lower()] for t in tokens]
        chars = [[[list(t[:16]) + [""] * (16 - len(t[:16]))]] for t in tokens]
        return words, chars

    context_word, context_char = tensors(case["context"])
    query_word, query_char = tensors(case["question"])
    body = {
        "inputs": {
            "context_word": context_word,
            "context_char": context_char,
            "query_word": query_word,
            "query_char": query_char,
        }
    }
    response = post(plain_server, "/score/qa_lexical", body)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    start, end = outputs["start_pos"][0], outputs["end_pos"][0]
    assert " ".join(w[0] for w in context_word[start : end + 1]) == case["answer"].lower()


BAD_REQUESTS = [
    ("unknown input", {"inputs": {"pixels": [[[0.0] * 8] * 8]}}, "pixels", "no such input"),
    ("missing input", {"inputs": {}}, "image", "is required"),
    ("wrong shape", {"inputs": {"image": [[0.0] * 8] * 8}}, "image", "expected shape"),
    ("wrong inner dim", {"inputs": {"image": [[[0.0] * 7] * 8]}}, "image", "dimension 2 must be 8"),
    ("strings for FP32", {"inputs": {"image": [[["a"] * 8] * 8]}}, "image", "expected numbers"),
    ("ragged", {"inputs": {"image": [[[0.0] * 8] * 7 + [[0.0] * 3]]}}, "image", "rectangular"),
    # More rows than max_batch_size are split, not refused: tests/triton/test_batches_triton.py.
    (
        "v2 wrong datatype",
        {"inputs": [{"name": "image", "shape": [1, 8, 8], "datatype": "INT32", "data": [0] * 64}]},
        "image",
        "datatype must be FP32",
    ),
    (
        "v2 count mismatch",
        {"inputs": [{"name": "image", "shape": [1, 8, 8], "datatype": "FP32", "data": [0.0] * 63}]},
        "image",
        "needs 64 elements",
    ),
]


@pytest.mark.parametrize(
    "body, input_name, fragment", [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_tensors_get_a_400_naming_the_input(
    plain_server: ScoreServer, body: object, input_name: str, fragment: str
) -> None:
    response = post(plain_server, "/score/digits_onnx", body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == "invalid_input"
    assert error["input"] == input_name
    assert fragment in error["error"]
    assert error["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    "data, headers, status, fragment",
    [
        (b'{"inputs": ', JSON, 400, "not valid JSON"),
        (b"", JSON, 400, "empty"),
        (b'{"inputs": "\xff\xfe"}', JSON, 400, "UTF-8"),
        (b"\x89PNG\r\n", {"content-type": "image/png"}, 400, '"inputs"'),
        (
            json.dumps({"inputs": {"image": [[[0] * 8] * 8]}, "outputs": ["nope"]}),
            JSON,
            400,
            "no output 'nope'",
        ),
    ],
    ids=["malformed JSON", "empty body", "non-UTF-8", "not JSON", "unknown output"],
)
def test_malformed_requests_get_a_json_4xx(
    plain_server: ScoreServer, data: bytes, headers: dict, status: int, fragment: str
) -> None:
    response = post(plain_server, "/score/digits_onnx", data, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert fragment in response.json()["error"]


def test_unknown_model_and_route_and_method(plain_server: ScoreServer) -> None:
    unknown = post(plain_server, "/score/nope", {"inputs": {}})
    assert unknown.status_code == 404 and unknown.json()["code"] == "model_not_found"
    route = requests.get(plain_server.url + "/nowhere", timeout=5)
    assert route.status_code == 404 and route.headers["content-type"] == "application/json"
    method = requests.get(plain_server.url + "/score", timeout=5)
    assert method.status_code == 405 and "error" in method.json()


def test_server_keeps_serving_after_bad_requests(plain_server: ScoreServer) -> None:
    for body in (b"{", b"", b"\xff", b"[]", b"null", b'{"inputs": 3}'):
        assert post(plain_server, "/score/digits_onnx", body).status_code == 400
    images, _ = held_out_digits()
    ok = post(plain_server, "/score/digits_onnx", {"inputs": {"image": images[:1].tolist()}})
    assert ok.status_code == 200


# -- Triton passthrough, OpenAPI, metrics ---------------------------------------------------
def test_v2_is_forwarded_to_triton_binary_infer_included(plain_server: ScoreServer) -> None:
    meta = requests.get(plain_server.url + "/v2/models/digits_onnx", timeout=5)
    assert meta.status_code == 200 and meta.json()["name"] == "digits_onnx"
    missing = requests.get(plain_server.url + "/v2/models/nope", timeout=5)
    assert missing.status_code == 404 and "error" in missing.json()
    # A Triton client pointed at the scoring port, binary tensors and all.
    images, labels = held_out_digits()
    client = httpclient.InferenceServerClient(plain_server.url.removeprefix("http://"))
    try:
        inp = httpclient.InferInput("image", [4, 8, 8], "FP32")
        inp.set_data_from_numpy(images[:4], binary_data=True)
        result = client.infer("digits_onnx", [inp], model_version="1")
        assert list(result.as_numpy("probabilities").argmax(axis=1)) == list(labels[:4])
    finally:
        client.close()


def test_openapi_document_describes_the_models(score_server: ScoreServer) -> None:
    doc = requests.get(score_server.url + "/openapi.json", timeout=5).json()
    assert doc["openapi"].startswith("3.")
    assert {"/score/digits_onnx", "/score/qa_lexical", "/v2/health/ready"} <= set(doc["paths"])
    qa = doc["paths"]["/score/qa_lexical"]["post"]
    schema = qa["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["context", "question"]


def test_openapi_default_codec_schema_follows_metadata(plain_server: ScoreServer) -> None:
    doc = requests.get(plain_server.url + "/openapi.json", timeout=5).json()
    op = doc["paths"]["/score/digits_onnx"]["post"]
    image = op["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"][
        "properties"
    ]["image"]
    # batch dimension (1..max_batch_size), then 8 x 8 numbers
    assert image["type"] == "array" and (image["minItems"], image["maxItems"]) == (1, 16)
    assert image["items"]["minItems"] == 8 and image["items"]["items"]["minItems"] == 8
    assert image["items"]["items"]["items"]["type"] == "number"


@pytest.mark.parametrize("server_fixture", ["score_server", "plain_server"])
def test_swagger_json_is_valid_swagger_2_by_default(
    server_fixture: str, request: pytest.FixtureRequest
) -> None:
    """As azmlinfsrv: ``/swagger.json`` is Swagger 2.0, the same operations as OpenAPI 3's."""
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation import OpenAPIV2SpecValidator, OpenAPIV30SpecValidator

    server: ScoreServer = request.getfixturevalue(server_fixture)
    two = requests.get(server.url + "/swagger.json", timeout=5).json()
    three = requests.get(server.url + "/openapi.json", timeout=5).json()
    validate(two, cls=OpenAPIV2SpecValidator)
    validate(three, cls=OpenAPIV30SpecValidator)
    assert two["swagger"] == "2.0" and set(two["paths"]) == set(three["paths"])
    assert set(two["definitions"]) == set(three["components"]["schemas"])
    digits = two["paths"]["/score/digits_onnx"]["post"]
    assert "application/json" in digits["consumes"] and digits["parameters"][0]["in"] == "body"
    assert digits["responses"]["400"]["schema"] == {"$ref": "#/definitions/Error"}


def _worker_pids_with_counters(server: ScoreServer) -> set[int]:
    """Workers that have counted a request: Prometheus' multiprocess mode writes one
    ``counter_<pid>.db`` per worker into the directory ``score serve`` gives Gunicorn."""
    tree = descendants(server.process.pid)
    directories = {process_environ(pid).get("PROMETHEUS_MULTIPROC_DIR") for pid in tree}
    directories.discard(None)
    assert len(directories) == 1, directories
    (directory,) = directories
    return {int(p.stem.split("_")[-1]) for p in Path(str(directory)).glob("counter_*.db")}


def test_metrics_count_requests_across_workers(score_server: ScoreServer) -> None:
    images, _ = held_out_digits()
    ok_name = 'score_requests_total{code="200",model="digits_onnx"}'
    bad_name = 'score_requests_total{code="400",model="digits_onnx"}'
    before = requests.get(score_server.url + "/metrics", timeout=5).text
    body = json.dumps({"image": images[0].tolist()})
    sent = 0
    # Fresh connections, several at once, until both workers have served (the kernel spreads
    # accepts; a bounded number of rounds keeps a single-worker bug from looping forever).
    for _ in range(20):
        with ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(
                    lambda _: post(score_server, "/score/digits_onnx", body).status_code, range(8)
                )
            )
        assert codes == [200] * 8
        sent += 8
        if len(_worker_pids_with_counters(score_server)) >= 2:
            break
    assert len(_worker_pids_with_counters(score_server)) == 2, "one worker served everything"
    post(score_server, "/score/digits_onnx", {"nothing": 1})
    after = requests.get(score_server.url + "/metrics", timeout=5).text
    assert _sample(after, ok_name) - _sample(before, ok_name, default=0) == sent
    assert _sample(after, bad_name) - _sample(before, bad_name, default=0) == 1
    assert 'score_stage_duration_seconds_count{model="digits_onnx",stage="infer"}' in after
    assert "score_requests_in_flight" in after


def _sample(text: str, name: str, default: float | None = None) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    if default is not None:
        return default
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def test_json_sent_as_curl_d_default_content_type_is_understood(plain_server: ScoreServer) -> None:
    images, _ = held_out_digits()
    body = json.dumps({"inputs": {"image": images[:1].tolist()}})
    form = {"content-type": "application/x-www-form-urlencoded"}
    response = post(plain_server, "/score/digits_onnx", body, headers=form)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/v2/repository/models/digits_onnx/unload"),
        ("POST", "/v2/repository/models/digits_onnx/load"),
        ("POST", "/v2/logging"),
        ("POST", "/v2/trace/setting"),
        ("POST", "/v2/systemsharedmemory/region/x/register"),
        ("GET", "/v2/cudasharedmemory/status"),
    ],
)
def test_triton_control_apis_are_not_forwarded(
    plain_server: ScoreServer, method: str, path: str
) -> None:
    response = requests.request(method, plain_server.url + path, data=b"{}", timeout=5)
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "not_forwarded"
    # and the model is still there
    assert requests.get(plain_server.url + "/v2/models/digits_onnx/ready", timeout=5).ok


def test_read_only_triton_routes_are_forwarded(plain_server: ScoreServer) -> None:
    for path in ("/v2", "/v2/models/digits_onnx/config", "/v2/models/digits_onnx/versions/1/stats"):
        assert requests.get(plain_server.url + path, timeout=5).status_code == 200, path
    index = requests.post(plain_server.url + "/v2/repository/index", data=b"{}", timeout=5)
    assert {m["name"] for m in index.json()} >= {"digits_onnx", "qa_lexical"}


def test_access_lines_of_concurrent_requests_are_each_whole(plain_server: ScoreServer) -> None:
    """Under gevent the access lines of requests that finish together go out in one write:
    every request still gets its own whole line, none lost, none mixed with another."""
    images, _ = held_out_digits()
    ids = [f"joined-{n}" for n in range(24)]

    def send(request_id: str) -> int:
        response = requests.post(
            plain_server.url + "/score/digits_onnx",
            json={"inputs": {"image": images[:1].tolist()}},
            headers={"x-request-id": request_id},
            timeout=30,
        )
        return response.status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(send, ids)) == {200}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the last turn of the worker's loop may still write
        lines = [line for line in plain_server.output().splitlines() if "joined-" in line]
        if len(lines) >= len(ids):
            break
        time.sleep(0.05)
    assert len(lines) == len(ids), lines
    for request_id in ids:
        (line,) = [line for line in lines if line.endswith(f"request_id={request_id}")]
        assert "triton_score.access: POST /score/digits_onnx 200 " in line, line
        assert line.count("triton_score.access:") == 1
