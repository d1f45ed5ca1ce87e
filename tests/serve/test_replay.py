"""``score replay`` end to end: traffic captured by ``score serve`` in front of digits_onnx
version 1, replayed by the real command against a Triton serving version 1 and a retrained
version 2 (the example builder on another split), through the same processors.

The report's numbers are checked against an independent computation: onnxruntime runs both
versions' ONNX files on the images that were sent, and the share of images whose top class
differs must be exactly the report's disagreement.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests
from conftest import ROOT, ScoreServer, start_triton
from helpers import held_out_digits, load_file

from triton_score.local import LocalTriton
from triton_score.telemetry.capture import capture_files

SENT = 120
MODEL_FOLDER = ROOT / "models" / "triton" / "digits_onnx"


def _builder():
    return load_file(ROOT / "models" / "build_examples.py", "build_examples")


def _captured_total(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "score_captured_total"
    )


@pytest.fixture(scope="module")
def capture(triton: LocalTriton, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SENT digits and a few questions, captured by two workers (every digits request)."""
    directory = tmp_path_factory.mktemp("replay-capture")
    server = ScoreServer(
        "--triton-url",
        triton.url,
        "--workers",
        "2",
        env={"SCORE_CAPTURE": "digits_onnx=1", "SCORE_CAPTURE_DIR": str(directory)},
    )
    try:
        server.wait_ready()
        images, _ = held_out_digits()
        with requests.Session() as session:
            for image in images[:SENT]:
                answer = session.post(
                    f"{server.url}/score/digits_onnx", json={"image": image.tolist()}, timeout=30
                )
                assert answer.status_code == 200, answer.text
            deadline = time.monotonic() + 30
            while _captured_total(server.url) < SENT:
                assert time.monotonic() < deadline, "the capture writers did not catch up"
                time.sleep(0.1)
    finally:
        server.stop()
    return directory


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalTriton, Path]]:
    """A Triton serving digits_onnx v1 (the committed model) and v2 (retrained, split 1)."""
    repository = tmp_path_factory.mktemp("replay-repo")
    shutil.copytree(MODEL_FOLDER, repository / "digits_onnx")
    _builder().build(repository, verbose=False, version=2, split_seed=1)
    triton = start_triton(repository)
    try:
        yield triton, repository
    finally:
        triton.stop()


def _replay(*args: str, triton: LocalTriton, repository: Path) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "triton_score", "replay", *args]
        + ["--triton-url", triton.url, "--models", str(repository)],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("SCORE_")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stdout, done.stderr


def _top1(model_path: Path, images: np.ndarray) -> np.ndarray:
    return _builder().run_onnx(model_path, images).argmax(axis=1)


def test_replay_against_the_same_version_agrees_exactly(
    capture: Path, two_versions: tuple[LocalTriton, Path], tmp_path: Path
) -> None:
    triton, repository = two_versions
    report_path = tmp_path / "same.json"
    code, out, err = _replay(
        str(capture),
        "--model",
        "digits_onnx",
        "--version",
        "1",
        "--report",
        str(report_path),
        triton=triton,
        repository=repository,
    )
    assert code == 0, out + err
    report = orjson.loads(report_path.read_bytes())
    assert report["replayed"] == SENT and report["version"] == "1"
    assert report["captured_versions"] == {"1": SENT}
    assert report["disagreeing"] == 0 and report["passed"] is True
    assert report["answers_identical"] == 1.0
    probabilities = report["outputs"]["probabilities"]
    assert probabilities["compared"] == SENT and probabilities["top1_agreement"] == 1.0
    assert probabilities["max_abs_diff"] == 0.0
    assert report["latency_ms"]["captured"]["p50"] > 0 and report["latency_ms"]["replayed"]["p50"]
    assert "PASS" in out and "probabilities" in out and "p99" in out
    assert "replaying: 100%" in err  # the progress, a line per step off a terminal


def test_replay_against_a_retrained_version_reports_what_differs(
    capture: Path, two_versions: tuple[LocalTriton, Path], tmp_path: Path
) -> None:
    triton, repository = two_versions
    images = held_out_digits()[0][:SENT]
    differ = _top1(repository / "digits_onnx" / "1" / "model.onnx", images) != _top1(
        repository / "digits_onnx" / "2" / "model.onnx", images
    )
    assert 0 < differ.sum() < SENT * 0.2, "the retrained version should mostly agree"
    expected = float(differ.mean())

    report_path = tmp_path / "v2.json"
    code, out, err = _replay(
        str(capture),
        "--model",
        "digits_onnx",
        "--version",
        "2",
        "--max-disagreement",
        str(expected),
        "--report",
        str(report_path),
        triton=triton,
        repository=repository,
    )
    assert code == 0, out + err
    report = orjson.loads(report_path.read_bytes())
    assert report["version"] == "2" and report["replayed"] == SENT
    assert report["disagreeing"] == int(differ.sum())
    assert report["outputs"]["probabilities"]["top1_agreement"] == pytest.approx(1 - expected)
    assert report["outputs"]["probabilities"]["max_abs_diff"] > 0
    assert len(report["examples"]) == min(int(differ.sum()), 20)
    assert all("top-1 differs" in example["why"] for example in report["examples"])

    # A threshold just below what was measured fails the replay: exit 1, and it says so.
    code, out, _ = _replay(
        str(capture),
        "--model",
        "digits_onnx",
        "--version",
        "2",
        "--max-disagreement",
        str(expected * 0.99),
        triton=triton,
        repository=repository,
    )
    assert code == 1 and "FAIL" in out


def test_replay_counts_lines_it_cannot_read_and_goes_on(
    capture: Path, two_versions: tuple[LocalTriton, Path], tmp_path: Path
) -> None:
    triton, repository = two_versions
    damaged = tmp_path / "damaged"
    shutil.copytree(capture, damaged)
    newest = capture_files(damaged)[-1]
    refused = orjson.loads(newest.read_bytes().splitlines()[0])
    refused["request"]["json"] = {"image": [1, 2, 3]}  # the processor refuses this one: 400
    refused["request_id"] = "refused-one"
    with newest.open("ab") as file:
        file.write(b'{"format": "triton-score-capture/1", "model": "digits_onnx", "requ')
        file.write(b"\n" + orjson.dumps({"format": "another/9"}) + b"\n")
        file.write(orjson.dumps(refused) + b"\n")
    report_path = tmp_path / "damaged.json"
    code, out, err = _replay(
        str(damaged),
        "--model",
        "digits_onnx",
        "--version",
        "1",
        "--report",
        str(report_path),
        triton=triton,
        repository=repository,
    )
    report = orjson.loads(report_path.read_bytes())
    assert code == 1, out + err  # one request disagrees: it failed
    assert report["replayed"] == SENT + 1 and report["unreadable"] == 2
    assert report["failed"] == {"400": 1} and report["disagreeing"] == 1
    assert report["examples"][0]["request_id"] == "refused-one"
    assert "answered 400" in report["examples"][0]["why"]
    assert "2 unreadable" in out and "not JSON" in out and "failed: 1 x 400" in out

    code, out, err = _replay(
        str(damaged),
        "--model",
        "digits_onnx",
        "--limit",
        "10",
        triton=triton,
        repository=repository,
    )
    assert code == 0 and "replayed 10 captured requests" in out, out + err


def test_replay_of_a_version_triton_does_not_serve_says_so(
    capture: Path, two_versions: tuple[LocalTriton, Path]
) -> None:
    triton, repository = two_versions
    code, out, err = _replay(
        str(capture),
        "--model",
        "digits_onnx",
        "--version",
        "7",
        triton=triton,
        repository=repository,
    )
    assert code == 2
    assert "digits_onnx" in err and "7" in err and "Traceback" not in err


def test_replay_of_an_empty_directory_says_so(
    two_versions: tuple[LocalTriton, Path], tmp_path: Path
) -> None:
    triton, repository = two_versions
    code, _, err = _replay(
        str(tmp_path), "--model", "digits_onnx", triton=triton, repository=repository
    )
    assert code == 2 and "no capture files" in err
