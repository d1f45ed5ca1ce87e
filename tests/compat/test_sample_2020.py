"""The AzureML-Triton sample of 2020, in its own style, served unmodified.

``tests/fixtures/sample_2020/`` is an entry script written as that sample writes it: ``@rawhttp``
and ``AMLResponse``, an image as the raw body, and a ``utils.py`` beside it that imports
``tritonhttpclient`` and ``tritonclientutils`` and parses the class string of
``class_count=1`` the 2020 way (``"".join(chr(x) for x in result)`` when the result is
``np.bytes_``, ``str.split`` otherwise). The model, ``tests/fixtures/dominant_colour``, has
densenet_onnx's interface (non-batching, ``data_0`` FP32 [3, 224, 224], scores with a labels
file) and names an image's dominant colour channel, on a real Triton.

With today's client the sample fails on every request (``TypeError: a bytes-like object is
required, not 'str'``); ``score serve`` gives the script the 2020 client's behaviour under the
old names (``triton_score.azureml.legacy_clients``) and answers. azmlinfsrv, for comparison,
does not
even load it: its own ``server/utils.py`` is found before the script's.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from conftest import ScoreServer, start_triton
from test_azmlinfsrv import Azmlinfsrv, require_azmlinfsrv

from triton_score.azureml.legacy_clients import install_legacy_clients
from triton_score.local import LocalTriton

FIXTURES = Path(__file__).parent.parent / "fixtures"
SAMPLE = FIXTURES / "sample_2020" / "score.py"
MODEL = "dominant_colour"
COLOURS = {"red": (210, 40, 30), "green": (20, 190, 60), "blue": (30, 50, 220)}


@pytest.fixture(scope="module")
def colour_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    repository = tmp_path_factory.mktemp("colour") / "repository"
    shutil.copytree(FIXTURES / MODEL, repository / MODEL)
    server = start_triton(repository)
    try:
        yield server
    finally:
        server.stop()


def image_bytes(rgb: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def classify(client, module):  # type: ignore[no-untyped-def]
    """The sample's request with ``client`` and its ``module``: one red image, the top
    class as binary data; the result's ``fc6_1``."""
    image = np.zeros((3, 224, 224), dtype=np.float32)
    image[0] = 200.0
    inputs = [module.InferInput("data_0", [3, 224, 224], "FP32")]
    binary = {"binary_data": True} if module.__name__ != "tritongrpcclient" else {}  # HTTP's
    inputs[0].set_data_from_numpy(image, **binary)
    outputs = [module.InferRequestedOutput("fc6_1", class_count=1, **binary)]
    result = client.infer(MODEL, inputs, outputs=outputs)
    return result, result.as_numpy("fc6_1")


# -- the legacy modules, in this process -------------------------------------------------
def test_legacy_names_return_bytes_results_as_the_2020_client(colour_triton: LocalTriton) -> None:
    install_legacy_clients()
    import tritonclientutils
    import tritongrpcclient
    import tritonhttpclient

    legacy = tritonhttpclient.InferenceServerClient(colour_triton.url)
    today = httpclient.InferenceServerClient(colour_triton.url)
    grpc = tritongrpcclient.InferenceServerClient(f"127.0.0.1:{colour_triton.grpc_port}")
    try:
        result, old = classify(legacy, tritonhttpclient)
        _, new = classify(today, httpclient)
        _, over_grpc = classify(grpc, tritongrpcclient)
        assert old.dtype.type == np.bytes_ and old.shape == (1,)
        assert over_grpc.dtype.type == np.bytes_ and over_grpc.shape == (1,)
        assert new.dtype == np.object_  # today's module is left as it is
        assert old[0] == new[0] == over_grpc[0]
        assert old[0].decode().split(":")[1:] == ["0", "red"]
        # The same exception class under every name: either except clause catches it.
        with pytest.raises(tritonclientutils.InferenceServerException, match="unknown"):
            legacy.get_model_metadata("unknown_model")
        assert tritonhttpclient.InferenceServerException is httpclient.InferenceServerException
        assert tritonclientutils.triton_to_np_dtype("FP32") is np.float32
        assert isinstance(result, httpclient.InferResult)
    finally:
        legacy.close()
        today.close()
        grpc.close()


def test_the_sample_fails_with_todays_client(colour_triton: LocalTriton) -> None:
    """Why this matters: the sample's parsing on what tritonclient.http returns today."""
    today = httpclient.InferenceServerClient(colour_triton.url)
    try:
        _, array = classify(today, httpclient)
    finally:
        today.close()
    assert array.dtype.type != np.bytes_
    with pytest.raises(TypeError, match="bytes-like object is required"):
        array[0].split(":")


# -- the sample, served ------------------------------------------------------------------
def test_score_serve_runs_the_2020_sample_unmodified(colour_triton: LocalTriton) -> None:
    server = ScoreServer(
        "--entry-script",
        str(SAMPLE),
        "--triton-url",
        colour_triton.url,
        env={"MODEL_NAME": MODEL},
    )
    try:
        server.wait_ready()
        for colour, rgb in COLOURS.items():
            response = requests.post(f"{server.url}/score", data=image_bytes(rgb), timeout=30)
            assert response.status_code == 200, (response.text, server.output())
            ((top,),) = [response.json()]
            assert top["label"] == colour and top["index"] == list(COLOURS).index(colour)
            assert 0.5 < top["score"] <= 1.0
        bad = requests.post(f"{server.url}/score", data=b"not an image", timeout=30)
        assert bad.status_code == 400 and bad.text == "send an image as the request body"
        assert "TypeError" not in server.output()
    finally:
        server.stop()


def test_azmlinfsrv_does_not_load_the_sample(colour_triton: LocalTriton, tmp_path: Path) -> None:
    """azmlinfsrv 1.5.1 puts its own ``server/`` folder on ``sys.path`` before the script's:
    ``from utils import ...`` finds its ``server/utils.py``, and the server exits."""
    require_azmlinfsrv()
    server = Azmlinfsrv(
        tmp_path, tmp_path, {"TRITON_URL": colour_triton.url, "MODEL_NAME": MODEL}, SAMPLE
    )
    try:
        code = server.process.wait(timeout=120)
    finally:
        server.stop()
    assert code != 0
    assert "cannot import name 'get_model_info' from 'utils'" in server.output()
    assert "azureml_inference_server_http/server/utils.py" in server.output()


def test_azmlinfsrv_with_the_scripts_folder_first_fails_every_request(
    colour_triton: LocalTriton, tmp_path: Path
) -> None:
    """Given its ``utils.py`` (the script's folder first on ``PYTHONPATH``), the sample loads
    under azmlinfsrv, with today's client behind the old names: each request is a 500."""
    require_azmlinfsrv()
    env = {
        "TRITON_URL": colour_triton.url,
        "MODEL_NAME": MODEL,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(SAMPLE.parent), os.environ.get("PYTHONPATH")])
        ),
    }
    server = Azmlinfsrv(tmp_path, tmp_path, env, SAMPLE)
    try:
        server.wait_healthy()
        response = requests.post(
            f"{server.url}/score", data=image_bytes(COLOURS["red"]), timeout=30
        )
        assert response.status_code == 500
        assert response.headers["x-ms-run-function-failed"] == "True"
        assert "TypeError: a bytes-like object is required, not 'str'" in server.output()
    finally:
        server.stop()
