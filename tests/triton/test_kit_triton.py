"""The processor author's kit against the real Triton: `score check` catching what would fail,
and the tutorial (docs/first-processor.md) followed from an ONNX export through `score new`
to its generated test, run by pytest in a project of its own."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from triton_score.kit.check import check_processors
from triton_score.local import LocalTriton
from triton_score.local.processes import free_port
from triton_score.processors.loading import load_processors
from triton_score.triton.gateway import TritonGateway

pytestmark = pytest.mark.integration
pytest.importorskip("skl2onnx", reason="the examples extra exports iris models")

SCORE = str(Path(sys.executable).with_name("score"))
TUTORIAL = ROOT / "docs" / "first-processor.md"

WRONG_DTYPE = """
import numpy as np
from triton_score import processor


@processor("iris")
class WrongDtype:
    request_example = {"flower": "setosa"}

    def preprocess(self, request, model):
        return {"X": np.array([["5.1", "3.5", "1.4", "0.2"]])}  # strings for FP32
"""
MISSING_INPUT = """
import numpy as np
from triton_score import processor


@processor("digits_onnx")
class MissingInput:
    request_example = {"image": [[0] * 8] * 8}

    def preprocess(self, request, model):
        return {"pixels": np.zeros((1, 8, 8), dtype=np.float32)}  # the model's input is "image"
"""
ZIPMAP = """
from triton_score import processor


@processor("iris_zipmap")
class Zipmap:
    request_example = {"X": [1, 2, 3, 4]}

    def preprocess(self, request, model):
        return {"X": request.json["X"]}
"""


def run(*command: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRITON_URL": f"127.0.0.1:{free_port()}"}  # nothing there: local Triton
    env.pop("SCORE_MODEL_REPOSITORY", None)
    env.pop("SCORE_CODE_DIR", None)
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_score_check_finds_a_wrong_dtype_a_missing_input_and_a_zipmap_export(tmp_path: Path):
    from test_kit import IRIS_CONFIG, write_iris

    repository = tmp_path / "models" / "triton"
    write_iris(repository / "iris", zipmap=False)
    write_iris(
        repository / "iris_zipmap",
        zipmap=True,
        config=IRIS_CONFIG.replace('name: "iris"', 'name: "iris_zipmap"'),
    )
    shutil.copytree(ROOT / "models" / "triton" / "digits_onnx", repository / "digits_onnx")
    code = tmp_path / "score"
    code.mkdir()
    (code / "wrong_dtype_processor.py").write_text(WRONG_DTYPE)
    (code / "missing_input_processor.py").write_text(MISSING_INPUT)
    (code / "zipmap_processor.py").write_text(ZIPMAP)

    done = run(SCORE, "check", cwd=tmp_path)
    report = done.stdout
    assert done.returncode == 1, report + done.stderr
    problems = report[report.index("problem(s):") :]
    # The ONNX file against its config.pbtxt, as the onnxruntime backend loads it:
    assert (
        "iris_zipmap: 1/model.onnx: output 'output_probability' is a sequence of maps" in problems
    )
    assert "output 'probabilities' of config.pbtxt is not in the ONNX file" in problems
    # The processors' tensors against Triton's metadata:
    assert "iris: input 'X': expected FP32 data, got str96 values" in problems
    assert "digits_onnx: preprocess produced 'pixels', which is not an input of model" in problems
    assert "digits_onnx: preprocess did not produce input 'image' (FP32 [*, 8, 8])" in problems
    # The good models still load (Triton started without the refused one) and are checked:
    assert re.search(r"iris_zipmap +Zipmap .* not checked: the model's repository check", report)
    assert "ready" in done.stderr and "(2 models: digits_onnx, iris)" in done.stderr


def test_check_processors_passes_the_examples(triton: LocalTriton) -> None:
    registry = load_processors(code_directory=ROOT / "score", use_entry_points=False)
    gateway = TritonGateway(triton.url, concurrency=1)
    try:
        rows = check_processors(registry, gateway.load_models(), gateway)
    finally:
        gateway.close()
    assert {row.model: row.status for row in rows} == {
        "digits_onnx": "ok",
        "imagenet_lite0": "ok",
        "qa_lexical": "ok",
        "tiny_lm": "-",  # no processor: the default codec
    }, [(r.model, r.summary, r.details) for r in rows]
    # No row for bidaf-9: the QA processor serves qa_lexical, and the real bidaf-9 if present.


def tutorial_files() -> dict[str, str]:
    """The files docs/first-processor.md has the reader save (``<!-- file: path -->``)."""
    text = TUTORIAL.read_text()
    return dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.DOTALL))


def tutorial_appended_test() -> tuple[str, str]:
    text = TUTORIAL.read_text()
    found = re.search(r"<!-- append: (\S+) -->\n```python\n(.*?)```", text, flags=re.DOTALL)
    assert found is not None
    return found.group(1), found.group(2)


def curl_claims_test() -> str:
    """A test, for the generated file, that the page's curl examples answer what it says."""
    calls = re.findall(r"-d '(\{.*?\})'\n# (\{.*?)\.\.\.", TUTORIAL.read_text())
    assert len(calls) == 2, calls
    return f"""

def test_the_pages_curl_examples(triton_score_client):
    client = triton_score_client(PROCESSOR)
    for body, claimed in {calls!r}:
        answer = client.post("/score/iris", data=body, content_type="application/json")
        assert answer.get_data(as_text=True).startswith(claimed), answer.get_data(as_text=True)
"""


def test_the_tutorial_from_an_onnx_export_to_a_passing_generated_test(tmp_path: Path) -> None:
    """docs/first-processor.md, step by step, in a project of its own: export the model,
    write its config, `score check`, `score new iris`, then its generated test (plus the
    page's own extra test) through pytest against a real Triton."""
    files = tutorial_files()
    assert set(files) == {"models/export_iris.py", "models/triton/iris/config.pbtxt"}
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    exported = run(sys.executable, "models/export_iris.py", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    labels = (tmp_path / "models" / "triton" / "iris" / "labels.txt").read_text().split()
    assert labels == ["setosa", "versicolor", "virginica"]

    new = run(SCORE, "new", "iris", cwd=tmp_path)
    assert new.returncode == 0, new.stderr
    assert "new: wrote score/iris_processor.py" in new.stderr
    test_file, extra = tutorial_appended_test()
    assert test_file == "tests/test_iris_processor.py"
    with (tmp_path / test_file).open("a") as generated:
        generated.write("\n\n" + extra + curl_claims_test())
    tested = run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", test_file, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert re.search(r"\b5 passed\b", tested.stdout), tested.stdout

    checked = run(SCORE, "check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert re.search(r"iris +Iris \(score/iris_processor.py\) +yes +ok: features", checked.stdout)
