"""AzureML's layout: an entry script named ``score.py`` and a code directory, served for real.

AzureML's convention is a code directory holding ``score.py``. Gunicorn, ``python -m`` and
pytest put the working directory first on ``sys.path``, so the runtime must never be
importable as ``score``: these tests run ``score serve`` from folders holding a ``score.py``
and check what is served, against the session's real Triton.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import requests
from conftest import EXAMPLES, ROOT, ScoreServer, run_score
from helpers import held_out_digits

from triton_score.local import LocalTriton

SEED = ROOT / "tests" / "fixtures" / "seed_score.py"

#: The old import name, as code would spell it (built in pieces so this file passes itself).
OLD_IMPORT = re.compile(r"\bfrom " + "score" + r"(\.\w+)* import\b|^\s*import " + "score" + r"\b")

WRAPPING_SCRIPT = ROOT / "tests" / "fixtures" / "wrapping_score.py"


def digit_body(index: int = 0) -> tuple[str, int]:
    images, labels = held_out_digits()
    return json.dumps({"image": images[index].tolist()}), int(labels[index])


def test_no_import_of_the_old_package_name_is_left() -> None:
    """``python -m pytest`` puts the repository root on sys.path: a leftover ``from score
    import`` would import the code directory ``score/`` and fail strangely."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = []
    for name in tracked:
        path = ROOT / name
        texts = {".py", ".md", ".toml", ".yml", ".yaml", ".txt", ".cfg"}
        if path.suffix not in texts and path.name != "Dockerfile":
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            # The migration note maps the old spelling to the new one on the same line.
            if OLD_IMPORT.search(line) and "from triton_score import" not in line:
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
    assert not (ROOT / "score" / "__init__.py").exists(), "score/ is a code directory"


def test_a_seed_style_score_py_in_the_working_directory(
    triton: LocalTriton, tmp_path: Path
) -> None:
    """``cd`` into a folder holding ``score.py`` and serve it: the case that used to die with
    "No module named 'score.gunicorn_conf'; 'score' is not a package"."""
    script = SEED.read_text().replace('url="localhost:8000"', 'url=os.environ["TRITON_URL"]')
    (tmp_path / "score.py").write_text("import os\n" + script)
    server = ScoreServer(
        "--entry-script",
        "score.py",
        "--models",
        str(EXAMPLES),
        "--triton-url",
        triton.url,
        cwd=tmp_path,
    )
    try:
        server.wait_ready()
        body, label = digit_body(3)
        response = requests.post(server.url + "/score", data=body, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["index"] == label
    finally:
        server.stop()


def test_a_score_py_that_imports_triton_score(triton: LocalTriton, tmp_path: Path) -> None:
    (tmp_path / "score.py").write_text(WRAPPING_SCRIPT.read_text())
    server = ScoreServer(
        "--entry-script",
        "score.py",
        "--models",
        str(EXAMPLES),
        "--triton-url",
        triton.url,
        "--processors",
        "none",
        env={"SCORE_MODEL": "digits_onnx"},
        cwd=tmp_path,
    )
    try:
        server.wait_ready()
        body, label = digit_body(5)
        response = requests.post(
            server.url + "/score",
            data=json.dumps({"inputs": {"image": [json.loads(body)["image"]]}}),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["wrapped_by"] == "score.py" and answer["runtime"] == "triton_score"
        (probabilities,) = answer["answer"]["outputs"]["probabilities"]
        assert max(range(10), key=probabilities.__getitem__) == label
    finally:
        server.stop()


def test_the_template_entry_script_is_served_natively(triton: LocalTriton, tmp_path: Path) -> None:
    """As AzureML's ``code_configuration`` sets it: ``AZUREML_ENTRY_SCRIPT`` relative to
    ``AML_APP_ROOT``. Served natively: processors of the code directory, every model at
    ``/score/<model>``, and ``/v2`` (not the entry script's single ``run()``)."""
    server = ScoreServer(
        "--models",
        str(EXAMPLES),
        "--triton-url",
        triton.url,
        env={"AML_APP_ROOT": str(ROOT), "AZUREML_ENTRY_SCRIPT": "score/score.py"},
        cwd=tmp_path,  # not the repository: the code directory comes from the entry script
    )
    try:
        server.wait_ready()
        body, label = digit_body(7)
        digits = requests.post(server.url + "/score/digits_onnx", data=body, timeout=30)
        assert digits.status_code == 200, digits.text
        assert digits.json()["predictions"][0]["digit"] == label  # score/processors.py's format
        qa = requests.post(
            server.url + "/score/qa_lexical",
            json={
                "context": "The tower was completed in 1889.",
                "question": "When was it completed?",
            },
            timeout=30,
        )
        assert qa.status_code == 200, qa.text
        assert "1889" in qa.json()["answer"], qa.json()
        metadata = requests.get(server.url + "/v2/models/digits_onnx", timeout=30)
        assert metadata.status_code == 200 and metadata.json()["name"] == "digits_onnx"
        assert "serving natively" in server.output()
    finally:
        server.stop()


@pytest.mark.parametrize("shadow", ["triton_score.py", "triton_score"])
def test_score_serve_refuses_a_folder_that_shadows_the_runtime(tmp_path: Path, shadow: str) -> None:
    target = tmp_path / shadow
    if shadow.endswith(".py"):
        target.write_text("raise SystemExit('imported by mistake')\n")
    else:
        target.mkdir()
        (target / "__init__.py").write_text("")
    done = run_score("serve", "--models", str(EXAMPLES), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"{shadow} would be imported instead of the installed triton_score" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_processor_file_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    done = run_score("serve", "--processors", "nope.py", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: processor file 'nope.py' does not exist"
