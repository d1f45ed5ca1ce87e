"""API keys and the access log end to end: real ``score serve`` (Gunicorn, 2 gevent workers)
in front of the real Triton, keys from the environment and from a file rotated while it runs.

The last test greps everything the server wrote for every key it was sent, valid or not.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import ROOT, ScoreServer
from helpers import held_out_digits

from triton_score.http.auth import CHECK_INTERVAL_S
from triton_score.local import LocalTriton

STATIC = "static-3f9c2a7e51d84b06"
KEY_A = "key-a-8d2f61c0b9e74a15"
KEY_B = "key-b-47e0a9d3c6f2b815"
KEY_C = "key-c-b51e8f27d04c93a6"  # as long as KEY_B: an in-place rewrite keeps the size
WRONG = "wrong-5e1d7c9a2b4f6083"
SENT = (STATIC, KEY_A, KEY_B, KEY_C, WRONG)
ORIGIN = "https://app.example.com"
CHATTY = ROOT / "tests" / "fixtures" / "chatty_processors.py"


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "api-keys"
    path.write_text(f"# the file's keys; SCORE_API_KEYS adds another\n{KEY_A}\n")
    return path


@pytest.fixture(scope="module")
def guarded(triton: LocalTriton, key_file: Path) -> Iterator[ScoreServer]:
    server = ScoreServer(
        "--triton-url",
        triton.url,
        "--workers",
        "2",
        "--processors",
        str(CHATTY),
        env={
            "SCORE_API_KEYS": STATIC,
            "SCORE_API_KEYS_FILE": str(key_file),
            "AML_CORS_ORIGINS": ORIGIN,
            # A Triton that score serve did not start: its metrics port is ours to tell.
            "SCORE_TRITON_METRICS_URL": f"127.0.0.1:{triton.metrics_port}",
            "SCORE_ACCESS_LOG": "-",  # Gunicorn's access log too: it must not see keys either
        },
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def score(server: ScoreServer, headers: dict[str, str], **extra: str) -> requests.Response:
    images, _ = held_out_digits()
    return requests.post(
        f"{server.url}/score/digits_onnx",
        json={"images": images[:2].tolist()},
        headers={**headers, **extra},
        timeout=30,
    )


def test_the_probes_need_no_key(guarded: ScoreServer) -> None:
    assert requests.get(guarded.url + "/", timeout=5).text == "Healthy"
    assert requests.get(guarded.url + "/v2/health/live", timeout=5).status_code == 200
    assert requests.get(guarded.url + "/v2/health/ready", timeout=5).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/score/digits_onnx",
        "/v2/models/digits_onnx",
        "/metrics",
        "/metrics/triton",
        "/swagger.json",
        "/nowhere",
    ],
)
@pytest.mark.parametrize(
    "authorization, error",
    [
        (None, None),
        (f"Bearer {WRONG}", "invalid_token"),
        ("Basic " + base64.b64encode(f"{KEY_A}:".encode()).decode(), "invalid_request"),
        (f"Bearer{KEY_A}", "invalid_request"),
    ],
    ids=["missing", "wrong", "basic", "malformed"],
)
def test_everything_else_is_a_401_without_a_valid_key(
    guarded: ScoreServer, path: str, authorization: str | None, error: str | None
) -> None:
    headers = {"x-request-id": "unauthorized-1"}
    if authorization:
        headers["Authorization"] = authorization
    method = "POST" if path.startswith("/score") else "GET"
    response = requests.request(method, guarded.url + path, headers=headers, timeout=10)
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == "unauthorized"
    assert response.json()["request_id"] == "unauthorized-1"
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert (f'error="{error}"' in challenge) if error else "error=" not in challenge


def test_valid_keys_open_every_route(guarded: ScoreServer) -> None:
    for key in (STATIC, KEY_A):
        ok = score(guarded, bearer(key))
        assert ok.status_code == 200, ok.text
        assert len(ok.json()["digits"]) == 2
        for path in ("/v2/models/digits_onnx", "/metrics", "/swagger.json"):
            assert requests.get(guarded.url + path, headers=bearer(key), timeout=10).ok, path
    lower = score(guarded, {"Authorization": f"bearer {KEY_A}"})  # the scheme has no case
    assert lower.status_code == 200
    triton = requests.get(guarded.url + "/metrics/triton", headers=bearer(STATIC), timeout=10)
    assert triton.status_code == 200 and "nv_inference_count" in triton.text


def test_a_cors_preflight_needs_no_key(guarded: ScoreServer) -> None:
    preflight = requests.options(
        guarded.url + "/score/digits_onnx",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
        timeout=5,
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert preflight.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    # ...then the real request, with its key, from the browser app.
    real = score(guarded, bearer(KEY_A), Origin=ORIGIN)
    assert real.status_code == 200 and real.headers["Access-Control-Allow-Origin"] == ORIGIN


def rotate(path: Path, text: str, *, atomically: bool) -> None:
    if atomically:
        temporary = path.with_name(path.name + ".new")
        temporary.write_text(text)
        os.replace(temporary, path)
    else:
        path.write_text(text)
    # Every worker looks at the file on its first request CHECK_INTERVAL_S after its last look.
    time.sleep(CHECK_INTERVAL_S + 0.3)


def statuses(server: ScoreServer, key: str, count: int = 6) -> set[int]:
    """Status codes of ``count`` requests on fresh connections (both workers answer some)."""
    return {score(server, bearer(key)).status_code for _ in range(count)}


def test_keys_rotate_through_the_file_without_a_restart(
    guarded: ScoreServer, key_file: Path
) -> None:
    pid = guarded.process.pid
    assert statuses(guarded, KEY_A) == {200} and statuses(guarded, KEY_B) == {401}
    rotate(key_file, f"{KEY_A}\n{KEY_B}\n", atomically=True)  # the rotation: both valid
    assert statuses(guarded, KEY_A) == {200} and statuses(guarded, KEY_B) == {200}
    rotate(key_file, f"{KEY_B}\n", atomically=True)  # the old key retired
    assert statuses(guarded, KEY_A) == {401} and statuses(guarded, KEY_B) == {200}
    rotate(key_file, f"{KEY_C}\n", atomically=False)  # rewritten in place, same size
    assert statuses(guarded, KEY_B) == {401} and statuses(guarded, KEY_C) == {200}
    assert statuses(guarded, STATIC) == {200}  # SCORE_API_KEYS' key all along
    assert guarded.process.poll() is None and guarded.process.pid == pid  # no restart


def access_lines(output: str, request_id: str) -> list[str]:
    return [
        line
        for line in output.splitlines()
        if "triton_score.access:" in line and f"request_id={request_id}" in line
    ]


def test_one_text_access_line_per_request_with_stages(guarded: ScoreServer) -> None:
    ok = score(guarded, bearer(STATIC), **{"x-request-id": "text-ok-1"})
    assert ok.status_code == 200
    refused = score(guarded, {}, **{"x-request-id": "text-401-1"})
    assert refused.status_code == 401
    (line,) = access_lines(guarded.output(), "text-ok-1")
    assert "POST /score/digits_onnx 200 " in line
    assert "route=/score/<model>" in line and "model=digits_onnx" in line
    for stage in ("preprocess", "infer", "postprocess"):
        assert f" {stage}_ms=" in line, line
    (line,) = access_lines(guarded.output(), "text-401-1")
    assert "POST /score/digits_onnx 401 " in line and "model=digits_onnx" in line
    assert "infer_ms=" not in line  # refused before any stage ran


def test_a_processors_print_lands_in_the_log_with_the_request_id(guarded: ScoreServer) -> None:
    assert score(guarded, bearer(STATIC), **{"x-request-id": "print-1"}).status_code == 200
    printed = [
        line
        for line in guarded.output().splitlines()
        if "chatty: preprocessing 2 image(s)" in line and line.endswith("request_id=print-1")
    ]
    assert len(printed) == 1, guarded.output()[-3000:]
    assert "triton_score.stdout:" in printed[0]


def test_no_key_ever_reaches_the_log(guarded: ScoreServer) -> None:
    """Run last: everything above sent every key, valid and not, in every way."""
    for key in SENT:
        score(guarded, bearer(key))
        score(guarded, {"Authorization": "Basic " + base64.b64encode(f"{key}:x".encode()).decode()})
        requests.get(guarded.url + "/v2/models/digits_onnx", headers=bearer(key), timeout=10)
    output = guarded.output()
    assert "triton_score.access:" in output and '"POST /score/digits_onnx' in output  # both logs
    for key in SENT:
        assert key not in output, f"a key is in the server log: {key[:4]}..."
        assert base64.b64encode(f"{key}:x".encode()).decode() not in output


@pytest.mark.parametrize(
    "variable, value",
    [
        ("SCORE_API_KEYS", ""),
        ("SCORE_API_KEYS", " , "),
        ("SCORE_API_KEYS_FILE", ""),
        ("SCORE_API_KEYS_FILE", "  "),
    ],
)
def test_an_empty_key_setting_stops_the_server_instead_of_opening_it(
    triton: LocalTriton, variable: str, value: str
) -> None:
    """A templated manifest or an empty Secret must not serve without keys: exit code 2 and
    one line naming the variable, before a worker starts; Gunicorn's master says the same."""
    import signal
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORE_API_KEYS")}
    env[variable] = value

    def run(*args: str, extra: dict[str, str]) -> tuple[int, str]:
        # Its own process group, stopped whole if it ever did start: nothing outlives the test.
        process = subprocess.Popen(
            [sys.executable, "-m", *args],
            env={**env, **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return process.returncode, output

    code, output = run("triton_score", "serve", "--triton-url", triton.url, "--port", "9", extra={})
    assert code == 2, output
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1 and variable in errors[0], errors
    code, output = run(
        "gunicorn",
        "--config",
        "python:triton_score.gunicorn_conf",
        extra={"SCORE_PORT": "9", "TRITON_URL": triton.url},
    )
    assert code == 2, output
    assert variable in output and "Booting worker" not in output
