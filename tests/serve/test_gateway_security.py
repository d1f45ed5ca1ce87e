"""The front door as a gateway must keep it: ``/v2`` is a public surface, memory follows the
bytes a client really sent, and a deadline never costs the worker a connection to Triton.

Each test is one finding of the December 2026 security review, against the real Triton and
the real ``score serve`` (Gunicorn, gevent workers) where the finding is about them; the
unit tests at the end check the pieces on their own, in-process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import ScoreServer
from helpers import held_out_digits
from prometheus_client.parser import text_string_to_metric_families

from triton_score.codecs.binary import HEADER_LENGTH
from triton_score.http import routes
from triton_score.http.app import create_app
from triton_score.http.forward import end_to_end
from triton_score.http.shedding import InFlightLimit
from triton_score.http.v2_infer import ModelCatalog, check_infer_request
from triton_score.local import LocalTriton
from triton_score.local.processes import descendants, process_table
from triton_score.model.info import ModelInfo, TensorSpec
from triton_score.settings import Settings

IMAGE = {"name": "image", "shape": [1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}


def digits_request(**extra: object) -> dict:
    images, _ = held_out_digits()
    body = {
        "inputs": [{**IMAGE, "data": images[0].ravel().tolist()}],
        "outputs": [{"name": "probabilities"}],
    }
    body.update(extra)
    return body


def workers_of(server: ScoreServer) -> list[int]:
    table = process_table()
    below = descendants(server.process.pid, table)
    masters = [pid for pid in below if table[pid].ppid == server.process.pid]
    return sorted(pid for pid in below if table[pid].ppid in masters)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


def free_connections(url: str) -> dict[str, float]:
    text = requests.get(url + "/metrics", timeout=5).text
    return {
        pool: metric(text, "score_triton_connections_free", pool=pool) for pool in ("score", "v2")
    }


# -- 1: shared memory is not the client's --------------------------------------------------
def test_v2_never_lets_a_client_point_a_tensor_at_shared_memory(score_server: ScoreServer) -> None:
    """A client that knows (or guesses) a worker's region name still cannot make Triton read
    another client's tensor out of it, nor write an output into it: 403, nothing sent."""
    pytest.importorskip("PIL.Image", reason="needs the [imagenet] extra (Pillow)")
    import sklearn

    from triton_score.triton.shm import PREFIX, SHM_DIR

    photo = Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg"  # a daisy
    victim = requests.post(
        score_server.url + "/score/imagenet_lite0",
        data=photo.read_bytes(),
        headers={"content-type": "image/jpeg"},
        timeout=30,
    )
    assert victim.status_code == 200, victim.text
    regions = sorted(p.name for p in SHM_DIR.glob(PREFIX + "*"))
    assert regions, "the session's score serve sends photos by shared memory"
    shared = {
        "shared_memory_region": regions[0],
        "shared_memory_offset": 0,
        "shared_memory_byte_size": 3 * 224 * 224 * 4,
    }
    read = {
        "inputs": [
            {"name": "image", "shape": [1, 3, 224, 224], "datatype": "FP32", "parameters": shared}
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
    }
    response = requests.post(
        score_server.url + "/v2/models/imagenet_lite0/infer", json=read, timeout=30
    )
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "parameter_not_accepted"
    assert response.json()["parameter"].startswith("shared_memory_")

    write = digits_request()
    write["outputs"] = [
        {"name": "probabilities", "parameters": {**shared, "shared_memory_byte_size": 40}}
    ]
    response = requests.post(score_server.url + "/v2/models/digits_onnx/infer", json=write)
    assert response.status_code == 403, response.text


@pytest.mark.parametrize(
    "parameters, refused",
    [
        ({"priority": 1}, "priority"),
        ({"timeout": 999_999_999}, "timeout"),
        ({"shared_memory_region": "x"}, "shared_memory_region"),
        ({"sequence_id": 1, "shared_memory_offset": 0}, "shared_memory_offset"),
        ({"my_backend_knob": "1"}, "my_backend_knob"),
    ],
)
def test_v2_request_parameters_are_an_allow_list(
    plain_server: ScoreServer, parameters: dict, refused: str
) -> None:
    """Priority and timeout would let one client jump every other tenant's queue or hold an
    instance past SCORING_TIMEOUT_MS; unknown ones go to the backend: all refused, named."""
    response = requests.post(
        plain_server.url + "/v2/models/digits_onnx/infer",
        json=digits_request(parameters=parameters),
        timeout=10,
    )
    assert response.status_code in (400, 403), response.text
    assert response.json()["parameter"] == refused
    assert "sequence_id" in response.json()["error"]  # says what is accepted
    ok = requests.post(
        plain_server.url + "/v2/models/digits_onnx/infer",
        json=digits_request(parameters={"binary_data_output": False}),
        timeout=10,
    )
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    "inputs, says",
    [
        ([{**IMAGE, "data": ["a"] * 64}], "expected numbers"),
        ([{**IMAGE, "data": [0.0] * 63}], "needs 64 elements"),
        ([{**IMAGE, "datatype": "INT32"}], "datatype must be FP32"),
        ([{**IMAGE, "shape": [99, 8, 8], "data": [0.0] * 99 * 64}], "batch size 99"),
        ([{**IMAGE, "name": "nope"}], "no such input"),
        ([{**IMAGE, "data": [1e39] * 64}], "out of range"),
    ],
)
def test_v2_bad_tensors_are_a_400_naming_them_not_tritons_500(
    plain_server: ScoreServer, inputs: list, says: str
) -> None:
    response = requests.post(
        plain_server.url + "/v2/models/digits_onnx/infer", json={"inputs": inputs}, timeout=10
    )
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]


# -- 5: one request must not take Triton down ---------------------------------------------
@pytest.fixture(scope="module")
def echo_server(echo_triton: LocalTriton) -> Iterator[ScoreServer]:
    server = ScoreServer("--triton-url", echo_triton.url, "--processors", "none")
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def test_v2_refuses_classification_of_a_bytes_output(
    echo_server: ScoreServer, echo_triton: LocalTriton
) -> None:
    """Triton 2.51 dies (SIGFPE) on the classification extension of a BYTES output: the
    gateway refuses it, and Triton is still there for everyone else."""
    body = {
        "inputs": [
            {"name": "f32", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
            {"name": "f16", "shape": [1, 2], "datatype": "FP16", "data": [1, 2]},
            {"name": "flag", "shape": [1, 2], "datatype": "BOOL", "data": [True, False]},
            {"name": "i64", "shape": [1, 1], "datatype": "INT64", "data": [1]},
            {"name": "u8", "shape": [1, 2], "datatype": "UINT8", "data": [1, 2]},
            {"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]},
        ],
        "outputs": [{"name": "text_out", "parameters": {"classification": 1}}],
    }
    response = requests.post(echo_server.url + "/v2/models/echo/infer", json=body, timeout=10)
    assert response.status_code == 400, response.text
    assert "BYTES" in response.json()["error"]
    assert echo_triton.process is not None and echo_triton.process.poll() is None
    ready = requests.get(f"http://{echo_triton.url}/v2/health/ready", timeout=5)
    assert ready.status_code == 200


# -- 3: memory follows bytes received ---------------------------------------------------------
def _claim(url: str, path: str, length: int) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
    )
    return sock


def test_headers_alone_cost_the_worker_no_memory(plain_server: ScoreServer) -> None:
    """Twelve clients each claim 50 MiB and send nothing: the worker must not reserve it
    (before: +600 MiB at once, held until the deadline)."""
    workers = workers_of(plain_server)
    before = sum(rss_kb(pid) for pid in workers)
    paths = ["/v2/repository/index", "/v2/models/qa_lexical/infer", "/score/qa_lexical"]
    sockets = [_claim(plain_server.url, paths[i % 3], 50 * 2**20) for i in range(12)]
    try:
        time.sleep(1.5)
        grown_mib = (sum(rss_kb(pid) for pid in workers) - before) / 1024
        print(f"\n12 header-only 50 MiB claims: workers +{grown_mib:.1f} MiB")
        assert grown_mib < 40, grown_mib
        assert requests.get(plain_server.url + "/v2/health/ready", timeout=5).status_code == 200
    finally:
        for sock in sockets:
            sock.close()


# -- 4 and L2: shapes are bounded by the bytes sent, before anything is allocated ----------
def _binary(model: str, entry: dict, tail: bytes = b"") -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [entry]}).encode()
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return header + tail, headers


@pytest.mark.parametrize("path", ["/score/qa_lexical", "/v2/models/qa_lexical/infer"])
def test_a_bytes_shape_bomb_is_refused_before_any_allocation(
    plain_server: ScoreServer, path: str
) -> None:
    """~130 bytes claiming 2e8 (then 2e9) BYTES elements. Before: np.empty(2e8, object)
    committed 1.6 GB and stalled the worker 5.6 s before its 400; 2e9 is an OOM."""
    workers = workers_of(plain_server)
    before = sum(rss_kb(pid) for pid in workers)
    for count in (200_000_000, 2_000_000_000):
        entry = {
            "name": "context_word",
            "shape": [count, 1],
            "datatype": "BYTES",
            "parameters": {"binary_data_size": 0},
        }
        body, headers = _binary("qa_lexical", entry)
        started = time.monotonic()
        response = requests.post(plain_server.url + path, data=body, headers=headers, timeout=30)
        took = time.monotonic() - started
        assert response.status_code == 400, response.text
        assert "at most 0 BYTES elements" in response.json()["error"], response.text
        assert took < 0.5, f"{count} elements took {took:.2f} s to refuse"
    grown_mib = (sum(rss_kb(pid) for pid in workers) - before) / 1024
    assert grown_mib < 40, grown_mib


@pytest.mark.parametrize(
    "shape",
    [[0, 2**70], [0, 2**62, 2**62], [1] * 40],
    ids=["zero-size-too-big", "zero-size-overflow", "more-than-32-dims"],
)
def test_a_binary_shape_numpy_cannot_build_is_a_400_not_a_500(
    plain_server: ScoreServer, shape: list[int]
) -> None:
    """Before: the binary path's reshape raised ValueError, a 500 processor_error."""
    count = 1 if all(d == 1 for d in shape) else 0
    entry = {
        "name": "image",
        "shape": shape,
        "datatype": "FP32",
        "parameters": {"binary_data_size": 4 * count},
    }
    body, headers = _binary("digits_onnx", entry, b"\0\0\0\0" * count)
    response = requests.post(plain_server.url + "/score/digits_onnx", data=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["input"] == "image", response.text


def test_a_refused_path_is_answered_before_its_body(plain_server: ScoreServer) -> None:
    sock = _claim(plain_server.url, "/v2/repository/models/digits_onnx/load", 50 * 2**20)
    try:
        started = time.monotonic()
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
        assert time.monotonic() - started < 2
    finally:
        sock.close()


def test_a_large_json_body_for_a_processor_is_refused_at_once(score_server: ScoreServer) -> None:
    """The digits processor takes 1 MiB (a full batch is ~60 KB): 2 MiB of nested lists is a
    413 from the headers, not seconds of parsing on the worker's loop."""
    images = [[[1.5] * 8] * 8] * 4000
    body = json.dumps({"images": images}).encode()
    assert len(body) > 2**20
    started = time.monotonic()
    response = requests.post(
        score_server.url + "/score/digits_onnx",
        data=body,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 413, response.text
    assert "max_body_bytes of the digits_onnx processor" in response.json()["error"]
    assert time.monotonic() - started < 1


# -- 6: Expect is answered here, never forwarded -----------------------------------------------
def test_expect_100_continue_on_v2_mixes_no_answers(plain_server: ScoreServer) -> None:
    body = json.dumps(digits_request()).encode()
    host, port = plain_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/digits_onnx/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100")
        sock.sendall(body)
        answer = b""
        while b'"outputs"' not in answer and len(answer) < 65536:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    for _ in range(20):
        meta = requests.get(plain_server.url + "/v2/models/digits_onnx", timeout=5).json()
        assert meta["name"] == "digits_onnx" and "versions" in meta and "model_name" not in meta


# -- L1: paths Triton or the HTTP client cannot take ------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/digits%20onnx/infer",
        "/v2/models/digits%00onnx/infer",
        "/v2/models/digits%0donnx/infer",
        "/v2/models/digits%20onnx",
    ],
)
def test_odd_model_names_are_a_4xx_not_a_500(plain_server: ScoreServer, path: str) -> None:
    method = "POST" if path.endswith("/infer") else "GET"
    response = requests.request(method, plain_server.url + path, json=digits_request(), timeout=10)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert requests.get(plain_server.url + "/v2/models/digits_onnx/ready", timeout=5).ok


# -- 2: a deadline never costs a connection ------------------------------------------------
@pytest.fixture
def deadline_server(triton: LocalTriton) -> Iterator[ScoreServer]:
    """One worker, a 2 s deadline, two connections to Triton, no shared memory and no
    coalescing: every tensor goes in the HTTP body, one call per request."""
    server = ScoreServer(
        "--triton-url",
        triton.url,
        "--processors",
        "none",
        env={
            "WORKER_COUNT": "1",
            "SCORING_TIMEOUT_MS": "2000",
            "SCORE_TRITON_CONCURRENCY": "2",
            "SCORE_SHM": "off",
            "SCORE_COALESCE": "off",
            "SCORE_METADATA_REFRESH_S": "0",
        },
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def test_a_deadline_during_a_send_to_triton_loses_no_connection(
    deadline_server: ScoreServer, triton: LocalTriton
) -> None:
    """Triton stops reading while large bodies are on their way: every request gets its 504,
    and once Triton is back the worker serves again at once (before: a lost pool slot per
    such timeout, then 504 forever while readiness said 200)."""
    url = deadline_server.url
    batch = np.random.default_rng(0).random((8, 3, 224, 224), dtype=np.float32)  # 4.8 MB
    raw = batch.tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()

    def score(_: int) -> int | str:
        try:
            return requests.post(
                url + "/score/imagenet_lite0?shape=8,3,224,224",
                data=raw,
                headers={"content-type": "application/octet-stream"},
                timeout=30,
            ).status_code
        except requests.RequestException as exc:
            return type(exc).__name__

    def forward(_: int) -> int | str:
        try:
            return requests.post(
                url + "/v2/models/imagenet_lite0/infer",
                data=header + raw,
                headers={HEADER_LENGTH: str(len(header))},
                timeout=30,
            ).status_code
        except requests.RequestException as exc:
            return type(exc).__name__

    assert triton.pid is not None
    os.kill(triton.pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(24) as pool:
            scored = list(pool.map(score, range(6)))
            forwarded = list(pool.map(forward, range(18)))
        print(f"\nwhile Triton was stopped: /score {scored}, /v2 {forwarded}")
        assert set(scored) == {504} and set(forwarded) == {504}
        abandoned = metric(
            requests.get(url + "/metrics", timeout=5).text, "score_triton_abandoned_calls"
        )
        time.sleep(1.2)  # the pools are sampled every second
        held = free_connections(url)  # every connection is held by an abandoned call
    finally:
        os.kill(triton.pid, signal.SIGCONT)
    # Triton first works off the calls the deadlines abandoned (24 batches of 8 photos); they
    # all end, and give their connections back.
    deadline = time.monotonic() + 60
    while metric(requests.get(url + "/metrics", timeout=5).text, "score_triton_abandoned_calls"):
        assert time.monotonic() < deadline, "abandoned calls never ended"
        time.sleep(0.2)
    images, _ = held_out_digits()
    for _ in range(3):
        started = time.monotonic()
        answer = requests.post(
            url + "/score/digits_onnx", json={"inputs": {"image": images[:1].tolist()}}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        v2 = requests.post(url + "/v2/models/digits_onnx/infer", json=digits_request(), timeout=30)
        assert v2.status_code == 200, v2.text
        assert time.monotonic() - started < 1.5
    assert requests.get(url + "/v2/models/digits_onnx", timeout=30).status_code == 200
    assert abandoned >= 1, "the calls the deadlines left running were on /metrics"
    time.sleep(1.2)
    print(f"free connections while Triton was stopped {held}, after {free_connections(url)}")
    # /score's calls outlive the deadline until Triton answers; /v2's end at its network
    # timeout (the deadline's 2 s here), so how many of those are still held varies.
    assert held["score"] == 0, held
    assert free_connections(url) == {"score": 2, "v2": 16}  # SCORE_TRITON_CONCURRENCY; /v2's 16


ENTRY_SCRIPT = """
import numpy as np
import tritonclient.http as httpclient

client = None


def init():
    global client
    import os
    client = httpclient.InferenceServerClient(os.environ["TRITON_URL"])


def run(data):
    import json
    batch = int(json.loads(data)["batch"])
    image = httpclient.InferInput("image", [batch, 3, 224, 224], "FP32")
    image.set_data_from_numpy(np.ones((batch, 3, 224, 224), np.float32), binary_data=True)
    result = client.infer("imagenet_lite0", [image])
    return {"rows": int(result.as_numpy("probabilities").shape[0])}
"""


def test_an_entry_scripts_triton_client_survives_the_deadline_too(
    triton: LocalTriton, tmp_path: Path
) -> None:
    """The same for the tritonclient an entry script builds itself: its infer() runs whole,
    so a deadline during its send costs the script's client no connection."""
    script = tmp_path / "score.py"
    script.write_text(ENTRY_SCRIPT)
    server = ScoreServer(
        "--triton-url",
        triton.url,
        "--entry-script",
        str(script),
        env={
            "WORKER_COUNT": "1",
            "SCORING_TIMEOUT_MS": "2000",
            "SCORE_TRITON_CONCURRENCY": "2",
            "TRITON_URL": triton.url,
        },
    )
    try:
        url = server.wait_ready().url

        def run(batch: int) -> int:
            return requests.post(url + "/score", json={"batch": batch}, timeout=30).status_code

        assert run(1) == 200
        assert triton.pid is not None
        os.kill(triton.pid, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(6) as pool:
                stalled = list(pool.map(run, [8] * 6))
        finally:
            os.kill(triton.pid, signal.SIGCONT)
        assert set(stalled) == {504}, stalled
        time.sleep(1)
        for _ in range(3):
            started = time.monotonic()
            answer = requests.post(url + "/score", json={"batch": 1}, timeout=30)
            assert answer.status_code == 200 and answer.json() == {"rows": 1}, answer.text
            assert time.monotonic() - started < 1.5
    finally:
        server.stop()


# -- units -------------------------------------------------------------------------------------
DIGITS = ModelInfo(
    "digits_onnx",
    max_batch_size=16,
    inputs=(TensorSpec("image", "FP32", (-1, 8, 8)),),
    outputs=(TensorSpec("probabilities", "FP32", (-1, 10)),),
)
TEXT = ModelInfo(
    "text",
    inputs=(TensorSpec("text", "BYTES", (1,)),),
    outputs=(TensorSpec("label", "BYTES", (1,)), TensorSpec("score", "FP32", (3,))),
)


def test_hop_by_hop_and_expect_headers_are_not_forwarded() -> None:
    sent = end_to_end(
        {
            "Expect": "100-continue",
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "1",
            "Authorization": "Bearer k",
            "traceparent": "00-1-2-01",
            HEADER_LENGTH: "10",
        }
    )
    assert sent == {"traceparent": "00-1-2-01", HEADER_LENGTH: "10"}


def test_infer_checks_outputs_and_parameters_before_tensors() -> None:
    body = json.dumps(
        {
            "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}],
            "outputs": [{"name": "label", "parameters": {"classification": 1}}],
        }
    ).encode()
    with pytest.raises(Exception, match="BYTES"):
        check_infer_request(TEXT, body, {})
    numeric = body.replace(b'"label"', b'"score"')
    check_infer_request(TEXT, numeric, {})  # classification of a numeric output is fine
    # A shared-memory output is refused even when the inputs are wrong too.
    shm = json.dumps(
        {
            "inputs": [{"name": "nope"}],
            "outputs": [{"name": "score", "parameters": {"shared_memory_region": "r"}}],
        }
    ).encode()
    with pytest.raises(Exception, match="shared_memory_region") as refused:
        check_infer_request(TEXT, shm, {})
    assert refused.value.status_code == 403  # type: ignore[attr-defined]


def test_infer_checks_binary_bodies_against_the_metadata() -> None:
    data = np.zeros((1, 8, 8), np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 8, 8],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    ).encode()
    check_infer_request(DIGITS, header + data, {HEADER_LENGTH: str(len(header))})
    with pytest.raises(Exception, match="binary_data_size"):
        check_infer_request(DIGITS, header + data[:-4], {HEADER_LENGTH: str(len(header))})
    with pytest.raises(Exception, match="not valid JSON"):
        check_infer_request(DIGITS, header + data, {})  # binary data without the header
    with pytest.raises(Exception, match=f"binary_data_size needs the {HEADER_LENGTH} header"):
        check_infer_request(DIGITS, header, {})


def test_the_model_catalog_prefers_served_models_and_caches_the_others() -> None:
    calls: list[tuple[str, str]] = []
    now = [0.0]

    def fetch(name: str, version: str) -> ModelInfo:
        calls.append((name, version))
        return ModelInfo(name, version=version or "1")

    catalog = ModelCatalog(lambda: {"digits_onnx": DIGITS}, fetch, ttl_s=10, clock=lambda: now[0])
    assert catalog.get("digits_onnx") is DIGITS
    assert catalog.get("digits_onnx", "1") is DIGITS
    assert catalog.get("digits_onnx", "2").version == "2"
    catalog.get("other")
    catalog.get("other")
    assert calls == [("digits_onnx", "2"), ("other", "")]
    now[0] = 11
    catalog.get("other")
    assert calls[-1] == ("other", "") and len(calls) == 3


def test_v2_inference_is_shed_like_score_and_refused_paths_first() -> None:
    settings = Settings(triton_url="127.0.0.1:9", processors=("none",), max_in_flight=1)
    app = create_app(settings, init=False)
    client = app.test_client()
    limit: InFlightLimit = app.extensions[routes.IN_FLIGHT]
    try:
        assert limit.enter()
        shed = client.post("/v2/models/m/infer", data=b"{}")
        assert shed.status_code == 503 and shed.json["code"] == "overloaded"
        refused = client.post("/v2/repository/models/m/unload", data=b"{}")
        assert refused.status_code == 403
        limit.leave()
        admitted = client.post("/v2/models/m/infer", data=b"{}")
        assert admitted.json["code"] == "triton_unavailable"
        assert limit.in_flight == 0
    finally:
        app.extensions["triton_score"].close()


def test_a_failure_before_scoring_starts_gives_the_slot_back() -> None:
    """L4: anything raising between admission and the request's own try must not keep its
    slot (after SCORE_MAX_IN_FLIGHT such leaks the worker would shed everything)."""
    settings = Settings(triton_url="127.0.0.1:9", processors=("none",), max_in_flight=2)
    app = create_app(settings, init=False)
    rt = app.extensions["triton_score"]
    limit: InFlightLimit = app.extensions[routes.IN_FLIGHT]

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("tracing broke")

    tracing = rt.tracing
    rt.tracing = type("BrokenTracing", (), {"request": staticmethod(broken)})()
    try:
        for _ in range(3):
            assert app.test_client().post("/score/m", data=b"{}").status_code == 500
        assert limit.in_flight == 0
    finally:
        rt.tracing = tracing
        app.extensions["triton_score"].close()


def test_an_entry_scripts_413_is_counted_as_413(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """L6: the metrics and the trace say what the client got."""
    import tritonclient.http as httpclient

    cls = httpclient.InferenceServerClient
    monkeypatch.setattr(cls, "__init__", cls.__init__)  # undo the script clients' adaptation
    script = tmp_path / "entry.py"
    script.write_text("def init():\n    pass\n\n\ndef run(data):\n    return {'size': len(data)}\n")
    settings = Settings(triton_url="127.0.0.1:9", entry_script=str(script), max_body_bytes=100)
    app = create_app(settings)
    client = app.test_client()
    try:
        assert client.post("/score", data=b"x" * 10).json == {"size": 10}  # the text, as read
        assert client.post("/score", data=b"x" * 1000).status_code == 413
        text = client.get("/metrics").get_data(as_text=True)
        codes = {
            sample.labels["code"]
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "score_requests_total"
        }
        assert codes == {"200", "413"}, codes
    finally:
        app.extensions["triton_score"].close()


def test_processor_models_get_a_default_body_limit() -> None:
    from triton_score import processor
    from triton_score.processors import ProcessorRegistry
    from triton_score.scoring import Scorer
    from triton_score.scoring.plan import PROCESSOR_BODY_BYTES

    @processor("digits_onnx")
    class Decodes:
        def preprocess(self, request, model):
            return {}

    registry = ProcessorRegistry()
    registry.register(Decodes)
    scorer = Scorer(Settings(), None, registry)  # type: ignore[arg-type]
    scorer.models = {"digits_onnx": DIGITS}
    limit, source = scorer.body_limit("digits_onnx")
    assert limit == PROCESSOR_BODY_BYTES and "max_body_bytes" in source


def test_a_shielded_call_outlives_its_deadline_and_is_counted() -> None:
    """What a worker does with a Triton call whose request timed out: it is left to end,
    counted while it runs; the waiter gets the timeout at once."""
    gevent = pytest.importorskip("gevent")
    from triton_score.triton import deadline

    finished = threading.Event()
    changes: list[int] = []
    abandoned = deadline.Abandoned(changes.append)

    def slow_call() -> str:
        gevent.sleep(0.3)
        finished.set()
        return "done"

    patched = deadline.gevent_patched
    try:
        deadline.gevent_patched = lambda: True  # type: ignore[assignment]
        with pytest.raises(gevent.Timeout), gevent.Timeout(0.05):
            deadline.shielded(slow_call, abandoned)
        assert not finished.is_set() and abandoned.running == 1 and changes == [1]
        gevent.sleep(0.4)
        assert finished.is_set() and abandoned.running == 0 and changes == [1, -1]
        assert deadline.shielded(lambda: 42, abandoned) == 42
        with pytest.raises(ZeroDivisionError):
            deadline.shielded(lambda: 1 / 0, abandoned)
        assert abandoned.total == 1
    finally:
        deadline.gevent_patched = patched  # type: ignore[assignment]
