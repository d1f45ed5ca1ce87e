"""The examples in the docs are run, so they stay true."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, held_out_digits

from triton_score.http.app import create_app
from triton_score.local import LocalTriton
from triton_score.settings import Settings


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown.read_text(), flags=re.DOTALL)


def test_processors_page_example_is_the_code_directorys_own() -> None:
    """One digits example: the page shows score/processors.py itself, not a variant of it."""
    blocks = python_blocks(ROOT / "docs" / "processors.md")
    assert blocks, "docs/processors.md has no python example"
    assert blocks[0] == (ROOT / "score" / "processors.py").read_text()


def test_processors_page_curl_example_answers_what_the_page_says(triton: LocalTriton) -> None:
    text = (ROOT / "docs" / "processors.md").read_text()
    body = re.search(r"-d '(\{\"image\": \[\[[0-9,\[\]]+\]\]\})'", text)
    claimed = re.search(r'# (\{"predictions":\[\{"digit":(\d+),"label":"(\w+)")', text)
    assert body is not None and claimed is not None
    app = create_app(Settings(triton_url=triton.url, code_directory=str(ROOT / "score")))
    client = app.test_client()
    response = client.post(
        "/score/digits_onnx", data=body.group(1), content_type="application/json"
    )
    assert response.status_code == 200, response.text
    prediction = response.json["predictions"][0]
    assert (prediction["digit"], prediction["label"]) == (int(claimed.group(2)), claimed.group(3))
    images, labels = held_out_digits()
    many = client.post("/score/digits_onnx", json={"images": images[:17].tolist()})
    assert many.status_code == 400 and many.json["error"] == "send at most 16 images at a time"
    app.extensions["triton_score"].close()


@pytest.fixture()
def more_example(tmp_path: Path) -> Path:
    """The runnable example of the page's "When you need more" section."""
    text = (ROOT / "docs" / "processors.md").read_text()
    section = text[text.index("## When you need more") :]
    path = tmp_path / "more_processors.py"
    path.write_text(re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[0])
    return path


def test_when_you_need_more_example_runs_against_triton(triton: LocalTriton, more_example) -> None:
    app = create_app(
        Settings(triton_url=triton.url, processors=(str(more_example),), metadata_refresh_s=0)
    )
    rt = app.extensions["triton_score"]
    calls: list[int] = []
    real_infer = rt.gateway.infer
    rt.gateway.infer = lambda model, inputs, *a, **k: (
        calls.append(len(inputs["image"])) or real_infer(model, inputs, *a, **k)
    )
    client = app.test_client()
    images, labels = held_out_digits()
    body = {"images": images[:40].reshape(40, 64).tolist()}  # more than max_batch_size 16
    response = client.post("/score/digits_onnx", json=body)
    assert response.status_code == 200, response.text
    assert calls == [16, 16, 8]  # predict: three Triton calls in one request
    digits = response.json["digits"]
    assert (np.array(digits) == labels[:40]).mean() >= 0.9
    as_csv = client.post("/score/digits_onnx", json=body, headers={"accept": "text/csv"})
    assert as_csv.headers["content-type"] == "text/csv; charset=utf-8"
    lines = as_csv.get_data(as_text=True).splitlines()
    assert lines[0] == "image,digit" and lines[1:] == [f"{i},{d}" for i, d in enumerate(digits)]

    text = (ROOT / "docs" / "processors.md").read_text()
    section = text[text.index("## When you need more") :]
    pixels = re.search(r"'\{\"images\": (\[\[[0-9,]+\]\])\}'", section)
    assert pixels is not None
    shown = client.post(
        "/score/digits_onnx",
        data=f'{{"images": {pixels.group(1)}}}',
        content_type="application/json",
        headers={"accept": "text/csv"},
    )
    assert "# " + "\n# ".join(shown.get_data(as_text=True).splitlines()) in section
    bad = client.post("/score/digits_onnx", json={"images": [[1, 2, 3]]})
    assert bad.status_code == 400
    claimed = re.search(r'# (\{"error":"field .*?),"request_id"', section)
    assert claimed is not None
    assert (
        json.dumps({k: bad.json[k] for k in ("error", "code", "field")}, separators=(",", ":"))
        == claimed.group(1) + "}"
    )
    doc = client.get("/openapi.json").json["paths"]["/score/digits_onnx"]["post"]
    assert doc["requestBody"]["content"]["application/json"]["example"] == {"images": [[0] * 64]}
    assert set(doc["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    rt.close()


def test_processors_page_testing_example_runs(
    triton_score_client, triton_score_model_info, triton_score_preprocess, monkeypatch
) -> None:
    """The plugin example of "Testing a processor", with the fixtures it names."""
    text = (ROOT / "docs" / "processors.md").read_text()
    section = text[text.index("## Testing a processor") : text.index("## When you need more")]
    namespace: dict[str, object] = {}
    exec(python_blocks_of(section)[0], namespace)  # the page's own example
    assert namespace["pytest_plugins"] == ["triton_score.testing"]
    monkeypatch.chdir(ROOT)  # its paths are the project's
    namespace["test_digits"](triton_score_client)  # type: ignore[operator]
    namespace["test_preprocess_offline"](  # type: ignore[operator]
        triton_score_model_info, triton_score_preprocess
    )


def python_blocks_of(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_architecture_diagram_names_modules_that_exist() -> None:
    """docs/architecture.md draws the request path with module names: each must exist, and
    the modules that own the path must be in it."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    diagram = re.search(r"```text\n(.*?)```", text, flags=re.DOTALL)
    assert diagram is not None
    named = set(re.findall(r"(?:triton_score/)?([a-z_]+(?:/[a-z_0-9]+)*\.py)", diagram.group(1)))
    package = ROOT / "triton_score"
    missing = sorted(name for name in named if not (package / name).is_file())
    assert not missing, f"the diagram names modules that do not exist: {missing}"
    owners = {
        "http/score_wsgi.py",
        "http/envelope.py",
        "http/score_route.py",
        "scoring/pipeline.py",
        "scoring/telemetry.py",
        "codecs/v2.py",
    }
    assert owners <= named, owners - named
