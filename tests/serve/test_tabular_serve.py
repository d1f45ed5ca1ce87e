"""The tabular case of docs/processors.md ("Records and CSV"), end to end, as a user follows
it: the diabetes regressor in a model repository of its own, a real Triton on it, the page's
`score new --template tabular` in a project of its own, the page's one edit (FEATURES), the
generated test through pytest, then a real `score serve`: all 442 records in one request as
JSON and as CSV (the page's own command writes the CSV) equal to scikit-learn's predictions,
the page's curl answers, and 400s naming a missing or non-numeric field."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import ROOT, ScoreServer, start_triton

from triton_score.local import LocalTriton

pytest.importorskip("skl2onnx", reason="the examples extra exports the diabetes model")

SCORE = str(Path(sys.executable).with_name("score"))
BUILDER = ROOT / "tests" / "fixtures" / "diabetes" / "build_diabetes.py"
MODEL = "diabetes_gbr"
#: The rows limit of the server here: the 442 records fit, twice as many do not.
MAX_ROWS = 500


def page_section() -> str:
    text = (ROOT / "docs" / "processors.md").read_text()
    return text[text.index("## Records and CSV") : text.index("## When you need more")]


def page_commands() -> list[str]:
    """The lines of the section's shell blocks, without their comments."""
    blocks = re.findall(r"```bash\n(.*?)```", page_section(), flags=re.DOTALL)
    lines = "\n".join(blocks).replace("\\\n", "").splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def page_command(start: str) -> str:
    found = [line for line in page_commands() if line.startswith(start)]
    assert len(found) == 1, (start, page_commands())
    return found[0].split("   #")[0].strip()


def page_curl_claims() -> list[tuple[str, str, str]]:
    """(content type, ``-d`` body, claimed answer) of each curl with a body on the page."""
    text = page_section().replace("\\\n", "")
    claims = re.findall(
        r"curl -s \S+ -H 'content-type: ([\w/]+)'\s+-d '(.*?)'\n# (.*)", text, flags=re.MULTILINE
    )
    assert len(claims) == 2, claims
    return claims


def load_builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_diabetes", BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Project:
    folder: Path
    triton: LocalTriton
    env: dict[str, str]

    def run(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """A command of the page, run in the project as the user runs it."""
        words = shlex.split(command)
        words[0] = {"score": SCORE, "python": sys.executable}[words[0]]
        return subprocess.run(
            words, cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """A project holding the diabetes model, a real Triton on it, and what `score new
    --template tabular` wrote, with the page's edit applied."""
    folder = tmp_path_factory.mktemp("tabular")
    repository = folder / "models" / "triton"
    built = subprocess.run(
        [sys.executable, str(BUILDER), "--out", str(repository)], capture_output=True, text=True
    )
    assert built.returncode == 0, built.stdout + built.stderr
    triton = start_triton(repository)
    env = {**os.environ, "TRITON_URL": triton.url}
    for name in ("SCORE_MODEL_REPOSITORY", "SCORE_CODE_DIR", "SCORE_PROCESSORS"):
        env.pop(name, None)
    try:
        project = Project(folder, triton, env)
        new = project.run(page_command("score new"))
        assert new.returncode == 0, new.stderr
        assert "next: name the columns of the model's input: FEATURES in" in new.stderr
        processor = folder / "score" / "diabetes_processor.py"
        edit = re.search(
            r"<!-- edit: score/diabetes_processor.py -->\n```python\n(FEATURES = .*)\n```",
            page_section(),
        )
        assert edit is not None
        source = processor.read_text()
        placeholders = re.search(r"^FEATURES = .*$", source, flags=re.MULTILINE)
        assert placeholders is not None and '"f0"' in placeholders.group(0)
        processor.write_text(source.replace(placeholders.group(0), edit.group(1)))
        yield project
    finally:
        triton.stop()


@pytest.fixture(scope="module")
def server(project: Project) -> Iterator[ScoreServer]:
    """`score serve` of the project: its code directory, in front of its Triton."""
    serve = ScoreServer(
        "--triton-url",
        project.triton.url,
        "--models",
        str(project.folder / "models" / "triton"),
        "--code-dir",
        str(project.folder / "score"),
        "--workers",
        "1",
        cwd=project.folder,
        env={"SCORE_MAX_ROWS": str(MAX_ROWS)},
    )
    try:
        yield serve.wait_ready()
    finally:
        serve.stop()


@pytest.fixture(scope="module")
def expected() -> np.ndarray:
    """scikit-learn's predictions for the 442 records (the builder's model)."""
    return load_builder().sklearn_predictions()


def triton_counts(triton: LocalTriton) -> tuple[int, int]:
    """The rows Triton has run through the model, and in how many executions."""
    stats = requests.get(f"http://{triton.url}/v2/models/{MODEL}/stats", timeout=10).json()
    model = stats["model_stats"][0]
    return int(model["inference_count"]), int(model["execution_count"])


def test_the_generated_test_passes(project: Project) -> None:
    command = page_command("python -m pytest")
    tested = project.run(command.replace("-m pytest", "-m pytest -p no:cacheprovider"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    claimed = re.search(r"python -m pytest \S+ +# (\d+ passed)", page_section())
    assert claimed is not None and re.search(rf"\b{claimed.group(1)}\b", tested.stdout)


def test_442_records_in_one_request_as_json_and_csv(
    project: Project, server: ScoreServer, expected: np.ndarray
) -> None:
    records = load_builder().records()
    before = triton_counts(project.triton)
    answer = requests.post(f"{server.url}/score/{MODEL}", json={"records": records}, timeout=60)
    assert answer.status_code == 200, answer.text
    predictions = np.array(answer.json()["predictions"])
    assert predictions.shape == (442,)
    assert np.abs(predictions - expected).max() < 0.05  # equal to 1 decimal
    rows, calls = np.subtract(triton_counts(project.triton), before)
    assert rows == 442 and calls >= 7  # at most 64 rows a call: the runtime split them

    # The CSV, written by the page's own command.
    written = project.run(page_command("python -c"))
    assert written.returncode == 0, written.stderr
    csv = (project.folder / "diabetes.csv").read_text()
    assert csv.startswith("age,sex,bmi,bp,s1,s2,s3,s4,s5,s6\n") and csv.count("\n") == 443
    # The same in other orders: the CSV's columns, the records' keys, reversed.
    reversed_csv = "".join(",".join(line.split(",")[::-1]) + "\n" for line in csv.splitlines())
    shuffled = [dict(reversed(record.items())) for record in records]
    bodies = ((csv, "text/csv"), (reversed_csv, "text/csv"), (None, "application/json"))
    for body, content_type in bodies:
        response = requests.post(
            f"{server.url}/score/{MODEL}",
            data=body.encode() if body else None,
            json=None if body else {"records": shuffled},
            headers={"content-type": content_type},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json()["predictions"], predictions, rtol=1e-6)

    too_many = requests.post(
        f"{server.url}/score/{MODEL}", json={"records": records * 2}, timeout=60
    )
    assert too_many.status_code == 413, too_many.text
    assert too_many.json()["code"] == "too_many_rows" and str(MAX_ROWS) in too_many.json()["error"]


def test_the_pages_curl_answers(server: ScoreServer) -> None:
    for content_type, body, claimed in page_curl_claims():
        response = requests.post(
            f"{server.url}/score/{MODEL}",
            data=body,
            headers={"content-type": content_type},
            timeout=30,
        )
        text, position = response.text, 0
        for part in claimed.split("   (")[0].split("..."):
            found = text.find(part, position)
            assert found >= 0, (claimed, text)
            position = found + len(part)


def test_a_missing_or_non_numeric_field_is_a_400_naming_it(server: ScoreServer) -> None:
    records = load_builder().records()[:3]
    del records[2]["bmi"]
    missing = requests.post(f"{server.url}/score/{MODEL}", json={"records": records}, timeout=30)
    assert missing.status_code == 400
    assert {k: missing.json()[k] for k in ("error", "field", "record")} == {
        "error": "record 2: field 'bmi' is missing",
        "field": "bmi",
        "record": 2,
    }
    records[2]["bmi"] = "high"
    as_json = requests.post(f"{server.url}/score/{MODEL}", json={"records": records}, timeout=30)
    assert as_json.status_code == 400
    assert as_json.json()["error"] == "record 2: field 'bmi' is not a number: 'high'"
    csv = "s1,bmi,age,sex,bp,s2,s3,s4,s5,s6\n" + "0,0,0,0,0,0,0,0,0,0\n" + "0,x,0,0,0,0,0,0,0,0\n"
    as_csv = requests.post(
        f"{server.url}/score/{MODEL}",
        data=csv,
        headers={"content-type": "text/csv; charset=utf-8"},
        timeout=30,
    )
    assert as_csv.status_code == 400
    assert {k: as_csv.json()[k] for k in ("error", "field", "line")} == {
        "error": "line 3: field 'bmi' is not a number: 'x'",
        "field": "bmi",
        "line": 3,
    }
    xml = requests.post(
        f"{server.url}/score/{MODEL}",
        data="<records/>",
        headers={"content-type": "application/xml"},
        timeout=30,
    )
    assert xml.status_code == 415 and xml.json()["accepted"] == ["application/json", "text/csv"]
