"""The examples in the docs are run, so they stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import ROOT, held_out_digits

from triton_score.http.app import create_app
from triton_score.local import LocalTriton
from triton_score.settings import Settings


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown.read_text(), flags=re.DOTALL)


@pytest.fixture()
def docs_example(tmp_path: Path) -> Path:
    blocks = python_blocks(ROOT / "docs" / "processors.md")
    assert blocks, "docs/processors.md has no python example"
    path = tmp_path / "processors.py"
    path.write_text(blocks[0])
    return path


def test_processors_page_example_runs_against_triton(triton: LocalTriton, docs_example) -> None:
    app = create_app(Settings(triton_url=triton.url, processors=(str(docs_example),)))
    client = app.test_client()
    images, labels = held_out_digits()
    for image, label in zip(images[:5], labels[:5], strict=True):
        response = client.post("/score/digits_onnx", json={"pixels": image.ravel().tolist()})
        assert response.status_code == 200, response.text
        body = response.json
        assert body["digit"] == label
        assert 0 < body["confidence"] <= 1 and body["runner_up"] != body["digit"]
    bad = client.post("/score/digits_onnx", json={"pixels": [1, 2, 3]})
    assert bad.status_code == 400 and bad.json["error"] == "expected 64 pixels, got 3"
    app.extensions["triton_score"].gateway.close()


def test_processors_page_curl_example_answers_what_the_page_says(
    triton: LocalTriton, docs_example
) -> None:
    text = (ROOT / "docs" / "processors.md").read_text()
    pixels = re.search(r'"pixels": (\[[0-9,]+\])', text)
    claimed = re.search(r'# \{"digit":(\d+)', text)
    assert pixels is not None and claimed is not None
    app = create_app(Settings(triton_url=triton.url, processors=(str(docs_example),)))
    response = app.test_client().post(
        "/score/digits_onnx", data=pixels.group(0).join("{}"), content_type="application/json"
    )
    assert response.status_code == 200, response.text
    assert response.json["digit"] == int(claimed.group(1))
    app.extensions["triton_score"].gateway.close()
