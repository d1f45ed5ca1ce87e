"""The template's ``score/score.py`` served by AzureML's own inference server, ``azmlinfsrv``.

``azureml-inference-server-http`` is the server AzureML runs an entry script in (managed
online endpoints, its inference images, local deployments). These tests run it for real —
Gunicorn, its Flask app, its ``init()``/``run()`` handling — in front of the session's real
Triton, and score through its ``/score`` route:

- ``plain``: no processors (``SCORE_PROCESSORS=none``), so the default codec answers
  ``{"inputs": {...}}`` with the model's tensors; started outside the repository, so
  azmlinfsrv runs with its stock Gunicorn settings (sync workers).
- ``with_processors``: ``score/processors.py`` found in the code directory (the entry
  script's folder); started from the repository root, where Gunicorn also reads the repository's
  ``gunicorn.conf.py`` (gevent workers) — what happens when the code folder is the cwd.

azmlinfsrv has no host option or variable: it always passes ``-b 0.0.0.0:PORT`` to Gunicorn
(on the command line, which beats ``GUNICORN_CMD_ARGS`` and config files). The tests bind
127.0.0.1 only, so they run azmlinfsrv's own console-script entry point with
``azureml_inference_server_http.constants.DEFAULT_HOST`` set to 127.0.0.1 first; nothing
else is changed.

On a bad request our ``run()`` returns an ``AMLResponse`` carrying the real status code
(azmlinfsrv sends anything else with HTTP 200), with the body ``score serve`` sends.

A missing azmlinfsrv is a failure with the install hint, not a skip: CI installs ``.[test]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cache
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import free_port, stop_process_group

from triton_score.local import LocalTriton

ROOT = Path(__file__).resolve().parents[2]
ENTRY_SCRIPT = ROOT / "score" / "score.py"
#: A user's own score.py that imports the runtime (see the fixture's docstring).
WRAPPING_SCRIPT = ROOT / "tests" / "fixtures" / "wrapping_score.py"
MODEL_REPOSITORY = ROOT / "models" / "triton"
MAX_BATCH = 16  # digits_onnx's max_batch_size

#: azmlinfsrv's console script, bound to 127.0.0.1 instead of its hard-coded 0.0.0.0.
LAUNCHER = """\
import sys
from importlib.metadata import entry_points

import azureml_inference_server_http.constants as constants

constants.DEFAULT_HOST = "127.0.0.1"  # before amlserver does `from .constants import *`
(script,) = entry_points(group="console_scripts", name="azmlinfsrv")
sys.argv[0] = "azmlinfsrv"
sys.exit(script.load()())
"""

#: Inherited variables that would change what azmlinfsrv or the entry script serve.
CLEARED_ENV = (
    "AML_APP_ROOT",
    "AZUREML_CONFIG_FILE",
    "AZUREML_ENTRY_SCRIPT",
    "AZUREML_MODEL_DIR",
    "AZUREML_SOURCE_DIRECTORY",
    "GUNICORN_CMD_ARGS",
    "HEALTH_PORT",
    "PROMETHEUS_MULTIPROC_DIR",
    "SCORE_MODELS",
    "SCORE_PROCESSORS",
    "SEPERATE_HEALTH_ENDPOINT",
    "SERVER_PORT",
    "WORKER_COUNT",
)


def require_azmlinfsrv() -> str:
    """azmlinfsrv's version, or fail saying how to install it."""
    try:
        installed = version("azureml-inference-server-http")
    except PackageNotFoundError:
        pytest.fail(
            "azureml-inference-server-http is not installed; "
            "install it with the test extra (pip install -e '.[test]')"
        )
    if not entry_points(group="console_scripts", name="azmlinfsrv"):
        pytest.fail(f"azureml-inference-server-http {installed} has no azmlinfsrv console script")
    return installed


class Azmlinfsrv:
    """``azmlinfsrv --entry_script score/score.py`` as a subprocess on 127.0.0.1."""

    def __init__(
        self,
        cwd: Path,
        runtime_dir: Path,
        env: dict[str, str],
        script: Path = ENTRY_SCRIPT,
        args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = runtime_dir / "azmlinfsrv.log"  # kept with pytest's tmp folders
        self.log = self.log_path.open("wb")
        environ = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
        # Gunicorn >= 25.1 opens a control socket under $XDG_RUNTIME_DIR (else ~/.gunicorn):
        # one per server, in a folder of its own.
        environ["XDG_RUNTIME_DIR"] = str(runtime_dir)
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "--entry_script", str(script)]
            + ["--port", str(self.port), *args],
            cwd=cwd,
            env={**environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 120) -> Azmlinfsrv:
        """Until ``GET /`` answers: a worker has imported the script and run its ``init()``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"azmlinfsrv exited early:\n{self.output()}")
            try:
                response = requests.get(f"{self.url}/", timeout=5)
                if response.status_code == 200 and response.text == "Healthy":
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"azmlinfsrv not healthy after {timeout} s:\n{self.output()}")

    def stop(self) -> int | None:
        code = stop_process_group(self.process, grace=30)
        self.log.close()
        return code


def start(
    cwd: Path, runtime_dir: Path, triton: LocalTriton, script: Path = ENTRY_SCRIPT, **env: str
) -> Iterator[Azmlinfsrv]:
    require_azmlinfsrv()
    server = Azmlinfsrv(
        cwd,
        runtime_dir,
        {
            "TRITON_URL": triton.url,
            "SCORE_MODEL": "digits_onnx",
            "SCORE_MODEL_REPOSITORY": str(MODEL_REPOSITORY),
            **env,
        },
        script,
    )
    try:
        yield server.wait_healthy()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def plain(triton: LocalTriton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azmlinfsrv]:
    """No processors; started in an empty folder (azmlinfsrv's stock Gunicorn settings)."""
    folder = tmp_path_factory.mktemp("azmlinfsrv-plain")
    yield from start(folder, folder, triton, SCORE_PROCESSORS="none")


@pytest.fixture(scope="module")
def with_processors(
    triton: LocalTriton, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Azmlinfsrv]:
    """The example processors; started from the repository root (its gunicorn.conf.py)."""
    yield from start(ROOT, tmp_path_factory.mktemp("azmlinfsrv-processors"), triton)


# -- helpers -----------------------------------------------------------------------------
@cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: images float32 [N, 8, 8] in 0..16, labels [N]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32), data.target


def score(server: Azmlinfsrv, body: Any) -> requests.Response:
    return requests.post(f"{server.url}/score", json=body, timeout=60)


def triton_probabilities(triton: LocalTriton, images: np.ndarray) -> np.ndarray:
    """The model's answer straight from Triton, to compare with what azmlinfsrv returns."""
    response = requests.post(
        f"http://{triton.url}/v2/models/digits_onnx/infer",
        json={
            "inputs": [
                {
                    "name": "image",
                    "shape": list(images.shape),
                    "datatype": "FP32",
                    "data": images.ravel().tolist(),
                }
            ],
            "outputs": [{"name": "probabilities"}],
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    return np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])


def assert_request_error(response: requests.Response) -> dict[str, Any]:
    """A clear error body with a real HTTP 400."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("code"), str) and body["code"], body
    assert body["status_code"] == 400, body
    assert "probabilities" not in body.get("outputs", {})
    return body


# -- the tests ---------------------------------------------------------------------------
def test_served_by_azmlinfsrv_on_loopback_only(plain: Azmlinfsrv) -> None:
    output = plain.output()
    assert f"Azure ML Inferencing HTTP server v{require_azmlinfsrv()}" in output
    assert f"Listening at: http://127.0.0.1:{plain.port} " in output, output
    assert "0.0.0.0" not in output, output
    assert f"Found user script at {ENTRY_SCRIPT}" in output, output
    assert "Users's init has completed successfully" in output, output  # sic
    assert "Using worker: sync" in output, output  # azmlinfsrv's own Gunicorn settings


def test_scores_a_digit(plain: Azmlinfsrv) -> None:
    images, labels = digits()
    response = score(plain, {"inputs": {"image": images[:1].tolist()}})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["model_name"] == "digits_onnx"
    (probabilities,) = body["outputs"]["probabilities"]
    assert len(probabilities) == 10
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
    assert int(np.argmax(probabilities)) == labels[0] == 0


def test_scores_a_full_batch_as_triton_does(plain: Azmlinfsrv, triton: LocalTriton) -> None:
    images, labels = digits()
    batch = images[:MAX_BATCH]
    response = score(plain, {"inputs": {"image": batch.tolist()}})
    assert response.status_code == 200, response.text
    probabilities = np.asarray(response.json()["outputs"]["probabilities"])
    assert probabilities.shape == (MAX_BATCH, 10)
    np.testing.assert_allclose(probabilities, triton_probabilities(triton, batch), rtol=1e-6)
    assert (probabilities.argmax(axis=1) == labels[:MAX_BATCH]).mean() >= 0.9


@pytest.mark.parametrize(
    ("body", "expected_code"),
    [
        pytest.param('{"inputs": {"image": ', "bad_request", id="invalid-json"),
        pytest.param({"inputs": {"image": [[1, 2, 3]]}}, "invalid_input", id="wrong-shape"),
        pytest.param({"inputs": {"pixels": [[[0] * 8] * 8]}}, None, id="unknown-input"),
        pytest.param({"inputs": {"image": [[[0] * 8] * 8 + [[0] * 7]]}}, None, id="ragged"),
    ],
)
def test_a_bad_request_gets_a_clear_error_and_the_server_keeps_serving(
    plain: Azmlinfsrv, body: Any, expected_code: str | None
) -> None:
    if isinstance(body, str):
        response = requests.post(
            f"{plain.url}/score",
            data=body,
            headers={"content-type": "application/json"},
            timeout=60,
        )
    else:
        response = score(plain, body)
    error = assert_request_error(response)
    if expected_code:
        assert error["code"] == expected_code, error

    images, labels = digits()
    after = score(plain, {"inputs": {"image": images[1:2].tolist()}})
    assert after.status_code == 200, after.text
    (probabilities,) = after.json()["outputs"]["probabilities"]
    assert int(np.argmax(probabilities)) == labels[1]
    assert plain.process.poll() is None


def test_processors_under_azmlinfsrv(with_processors: Azmlinfsrv) -> None:
    """The example processor's friendly format, with the repository's gevent workers."""
    output = with_processors.output()
    assert f"Listening at: http://127.0.0.1:{with_processors.port} " in output, output
    assert "Using worker: gevent" in output, output  # from the repository's gunicorn.conf.py

    images, labels = digits()
    response = score(with_processors, {"images": images[:2].tolist()})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["digit"] for p in predictions] == labels[:2].tolist()
    assert all(p["top"][0]["probability"] > 0.5 for p in predictions)

    error = assert_request_error(score(with_processors, {"image": [[1, 2, 3]]}))
    assert "8x8" in error["error"], error
    again = score(with_processors, {"image": images[0].tolist()})
    assert again.status_code == 200, again.text
    assert again.json()["predictions"][0]["digit"] == labels[0]


def test_a_score_py_that_imports_triton_score(
    triton: LocalTriton, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("user-code")
    script = folder / "score.py"
    script.write_text(WRAPPING_SCRIPT.read_text())
    images, labels = digits()
    for server in start(folder, folder, triton, script, SCORE_PROCESSORS="none"):
        response = score(server, {"inputs": {"image": images[:1].tolist()}})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["wrapped_by"] == "score.py" and body["runtime"] == "triton_score", body
        (probabilities,) = body["answer"]["outputs"]["probabilities"]
        assert int(np.argmax(probabilities)) == labels[0]
