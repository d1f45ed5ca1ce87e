"""AzureML entry scripts: a seed-style script served unmodified, and our own triton_score.entry."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import requests
from conftest import ScoreServer
from helpers import held_out_digits

from triton_score.local import LocalTriton

SEED = Path(__file__).parent.parent / "fixtures" / "seed_score.py"


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.integration  # starts azmlinfsrv
def test_seed_style_entry_script_runs_unmodified() -> None:
    """The article's script hard-codes localhost:8000, so its Triton must be there."""
    if not all(port_is_free(p) for p in (8000, 8001, 8002)):
        pytest.skip("ports 8000-8002 are taken: the unmodified seed script needs localhost:8000")
    assert 'url="localhost:8000"' in SEED.read_text()
    assert "import tritonhttpclient" in SEED.read_text()
    server = ScoreServer("--entry-script", str(SEED), "--triton-url", "localhost:8000")
    try:
        server.wait_ready()
        images, labels = held_out_digits()
        for image, label in zip(images[:5], labels[:5], strict=True):
            response = requests.post(
                server.url + "/score", data=json.dumps({"image": image.tolist()}), timeout=30
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["index"] == int(label) and body["label"]
        # A request the script cannot handle: 500 with a request id, no traceback.
        broken = requests.post(server.url + "/score", data="not json", timeout=30)
        assert broken.status_code == 500
        assert "Traceback" not in broken.text and broken.json()["request_id"]
        assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
    finally:
        server.stop()


def test_score_entry_module_init_and_run(triton: LocalTriton, monkeypatch) -> None:
    import triton_score.entry as entry

    monkeypatch.setenv("TRITON_URL", triton.url)
    monkeypatch.setenv("SCORE_MODEL", "digits_onnx")
    monkeypatch.setenv("SCORE_MODEL_REPOSITORY", str(triton.model_repository))
    monkeypatch.setattr(entry, "_runtime", None)
    entry.init()
    images, labels = held_out_digits()
    result = entry.run(json.dumps({"image": images[0].tolist()}))
    assert result["predictions"][0]["digit"] == labels[0]  # the example processor ran
    error = entry.run("{}")
    assert error["status_code"] == 400 and "image" in error["error"]
    entry._runtime.close()
