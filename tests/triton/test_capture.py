"""Production data capture (``SCORE_CAPTURE``, :mod:`triton_score.telemetry.capture`).

Units: the setting's syntax and its refusals, sampling, rotation, redaction, a full queue
dropping instead of waiting. Then the real stack: ``score serve`` (two gevent workers) in
front of the session's Triton writes the records, rotated and redacted, at the sampled rate,
and a worker whose writer cannot keep up drops and counts, never blocking a request.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests
from conftest import ScoreServer
from helpers import held_out_digits, qa_cases
from prometheus_client.parser import text_string_to_metric_families

from triton_score.codecs.request import Request
from triton_score.codecs.response import render
from triton_score.local import LocalTriton
from triton_score.runtime import build_runtime
from triton_score.settings import Settings, settings_error
from triton_score.telemetry.capture import (
    FORMAT,
    REDACTED,
    Capture,
    Captured,
    CaptureFiles,
    Sampler,
    capture_files,
    encode_record,
)


# -- the setting ------------------------------------------------------------------------------
def test_capture_rates_per_model_with_a_default() -> None:
    settings = Settings.from_env(
        {"SCORE_CAPTURE": "digits_onnx=0.1, *=0.01", "SCORE_CAPTURE_DIR": "c"}
    )
    assert settings.capture == (("digits_onnx", 0.1), ("*", 0.01))
    sampler = Sampler(settings.capture)
    assert (sampler.rate("digits_onnx"), sampler.rate("qa_lexical")) == (0.1, 0.01)
    bare = Settings.from_env({"SCORE_CAPTURE": "0.5", "SCORE_CAPTURE_DIR": "c"})
    assert bare.capture == (("*", 0.5),)
    assert Settings.from_env({"SCORE_CAPTURE": "off"}).capture == ()


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"SCORE_CAPTURE": "digits_onnx=lots", "SCORE_CAPTURE_DIR": "c"}, "a number from 0 to 1"),
        ({"SCORE_CAPTURE": "digits_onnx=1.5", "SCORE_CAPTURE_DIR": "c"}, "fraction from 0 to 1"),
        ({"SCORE_CAPTURE": "digits_onnx=nan", "SCORE_CAPTURE_DIR": "c"}, "fraction from 0 to 1"),
        ({"SCORE_CAPTURE": "a=0.1,a=0.2", "SCORE_CAPTURE_DIR": "c"}, "names model 'a' twice"),
        ({"SCORE_CAPTURE": "=0.1", "SCORE_CAPTURE_DIR": "c"}, "name a model"),
        ({"SCORE_CAPTURE": "digits_onnx=0.1"}, "SCORE_CAPTURE_DIR names no directory"),
        ({"SCORE_CAPTURE_REDACT": " , "}, "SCORE_CAPTURE_REDACT is set but names no field"),
        ({"SCORE_CAPTURE_MAX_BYTES": "10"}, "SCORE_CAPTURE_MAX_BYTES=10"),
        ({"SCORE_CAPTURE_QUEUE": "0"}, "SCORE_CAPTURE_QUEUE"),
    ],
)
def test_a_bad_capture_setting_stops_the_server_saying_why(environ: dict, says: str) -> None:
    assert says in settings_error(environ)


def test_capture_off_costs_no_object() -> None:
    assert Capture.from_settings(Settings()) is None
    assert Capture.from_settings(Settings(capture=(("*", 0.0),))) is None
    runtime = build_runtime(Settings(triton_url="127.0.0.1:9", processors=("none",)))
    try:
        assert runtime.scorer is not None and runtime.scorer.capture is None
    finally:
        runtime.close()


def test_sampling_follows_the_rate() -> None:
    random.seed(18)
    sampler = Sampler((("digits_onnx", 0.1), ("qa_lexical", 1.0), ("*", 0.0)))
    taken = sum(sampler("digits_onnx") for _ in range(20_000))
    assert 1700 < taken < 2300  # 10 % (binomial sd ~42)
    assert all(sampler("qa_lexical") for _ in range(100))
    assert not any(sampler("imagenet_lite0") for _ in range(1000))


# -- records and files ------------------------------------------------------------------------
def _captured(model: str = "m", secret: str = "hunter2", size: int = 4) -> Captured:
    body = orjson.dumps({"image": [1, 2], "user": {"secret": secret, "keep": 1}})
    request = Request(
        body,
        "application/json",
        id="rid-1",
        json=orjson.loads(body),
        query={"secret": secret, "top_k": "3"},
    )
    outputs = {"probabilities": np.array([[b"0.9:3:three"]], dtype=object)}
    return Captured(
        model,
        "2",
        request,
        {"image": np.arange(size, dtype=np.float32).reshape(1, size), "secret": np.ones(2)},
        outputs,
        render({"digit": 3, "secret": secret}),
        trace_id="ab" * 16,
        timings={"preprocess": 0.001, "infer": 0.002},
        total_s=0.004,
        time=1_700_000_000.0,
    )


def test_a_record_holds_the_request_the_tensors_and_the_answer() -> None:
    record = orjson.loads(encode_record(_captured()))
    assert record["format"] == FORMAT
    assert (record["model"], record["version"], record["request_id"]) == ("m", "2", "rid-1")
    assert record["trace_id"] == "ab" * 16
    assert record["request"]["json"]["user"] == {"secret": "hunter2", "keep": 1}
    assert record["inputs"]["image"] == {
        "datatype": "FP32",
        "shape": [1, 4],
        "data": [[0, 1, 2, 3]],
    }
    assert record["outputs"]["probabilities"]["data"] == ["0.9:3:three"]
    assert record["answer"] == {
        "status": 200,
        "content_type": "application/json",
        "json": {"digit": 3, "secret": "hunter2"},
    }
    assert record["timings_ms"] == {"preprocess": 1.0, "infer": 2.0, "total": 4.0}


def test_redaction_reaches_every_field_of_that_name() -> None:
    line = encode_record(_captured(), frozenset({"secret"}))
    assert b"hunter2" not in line
    record = orjson.loads(line)
    assert record["request"]["json"]["user"] == {"secret": REDACTED, "keep": 1}
    assert record["request"]["query"] == {"secret": REDACTED, "top_k": "3"}
    assert record["answer"]["json"]["secret"] == REDACTED
    assert record["inputs"]["secret"]["data"] == REDACTED
    assert record["inputs"]["image"]["data"] == [[0, 1, 2, 3]]


def test_files_rotate_within_their_bounds(tmp_path: Path) -> None:
    files = CaptureFiles(tmp_path, max_bytes=2000, max_files=3, pid=4242)
    line = encode_record(_captured())
    for _ in range(40):
        files.write(line)
    files.close()
    kept = capture_files(tmp_path)
    assert [p.name for p in kept][-1] == f"capture-4242-{files._number:06d}.jsonl"
    assert len(kept) == 3 and files._number > 3  # rotated, the oldest removed
    for path in kept:
        assert path.stat().st_size <= 2000
        assert all(orjson.loads(x)["format"] == FORMAT for x in path.read_bytes().splitlines())
    # The same pid again (a restarted container): it carries on after its last file.
    again = CaptureFiles(tmp_path, max_bytes=2000, max_files=3, pid=4242)
    again.write(line)
    again.close()
    assert again._number == files._number + 1


def test_a_full_queue_drops_and_counts_without_waiting(tmp_path: Path) -> None:
    dropped: list[str] = []
    settings = Settings(capture=(("*", 1.0),), capture_dir=str(tmp_path), capture_queue=2)
    capture = Capture(settings, on_dropped=dropped.append, background="thread")
    with capture._lock:  # the writer stalls (a slow disk) on its first record
        assert capture.submit(_captured())
        deadline = time.monotonic() + 10
        while capture._queue.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)  # the writer took it, and waits for the lock
        started = time.perf_counter()
        outcomes = [capture.submit(_captured(f"m{i}")) for i in range(5)]
        assert time.perf_counter() - started < 0.1  # nothing waited
    assert outcomes == [True, True, False, False, False]
    assert dropped == ["m2", "m3", "m4"] and capture.dropped == 3
    deadline = time.monotonic() + 10
    while capture.written < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    capture.close()
    lines = b"".join(p.read_bytes() for p in capture_files(tmp_path)).splitlines()
    assert [orjson.loads(x)["model"] for x in lines] == ["m", "m0", "m1"]


# -- the real stack -------------------------------------------------------------------------
def _metric(base_url: str, name: str, **labels: str) -> float:
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _records(directory: Path) -> list[dict]:
    return [
        orjson.loads(line)
        for path in capture_files(directory)
        for line in path.read_bytes().splitlines()
    ]


def _wait_for(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the capture writer did not catch up in time")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def capturing(triton: LocalTriton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    directory = tmp_path_factory.mktemp("capture")
    server = ScoreServer(
        "--triton-url",
        triton.url,
        "--workers",
        "2",
        env={
            "SCORE_CAPTURE": "digits_onnx=1,qa_lexical=0.3",
            "SCORE_CAPTURE_DIR": str(directory),
            "SCORE_CAPTURE_REDACT": "secret",
            "SCORE_CAPTURE_MAX_BYTES": "16384",
            "SCORE_CAPTURE_MAX_FILES": "3",
        },
    )
    try:
        yield server.wait_ready(), directory
    finally:
        server.stop()


def test_captured_requests_are_written_whole_rotated_and_redacted(capturing: tuple) -> None:
    server, directory = capturing
    images, _ = held_out_digits()
    answers = {}
    with requests.Session() as session:
        for image in images[:60]:
            payload = {"image": image.tolist(), "secret": "hunter2"}
            response = session.post(f"{server.url}/score/digits_onnx", json=payload, timeout=30)
            assert response.status_code == 200
            answers[response.headers["x-request-id"]] = (image, response.json())
        refused = session.post(f"{server.url}/score/digits_onnx", json={"image": [1]}, timeout=30)
        assert refused.status_code == 400
    _wait_for(lambda: _metric(server.url, "score_captured_total", model="digits_onnx") >= 60)

    files = capture_files(directory)
    by_pid: dict[str, list[Path]] = {}
    for path in files:
        by_pid.setdefault(path.name.split("-")[1], []).append(path)
        assert b"hunter2" not in path.read_bytes()
    assert all(len(paths) <= 3 for paths in by_pid.values())
    numbers = [int(p.name.split("-")[2].split(".")[0]) for p in files]
    assert max(numbers) > 3, "60 records of ~1 KB in 16 KB files: some were rotated away"
    records = _records(directory)
    assert refused.headers["x-request-id"] not in {r["request_id"] for r in records}
    assert records, "nothing captured"
    for record in records:
        image, answer = answers[record["request_id"]]  # every record is one we sent
        assert record["model"] == "digits_onnx" and record["version"] == "1"
        assert record["request"]["json"] == {"image": image.tolist(), "secret": REDACTED}
        sent = record["inputs"]["image"]
        assert sent["datatype"] == "FP32" and sent["shape"] == [1, 8, 8]
        assert np.array_equal(np.array(sent["data"], np.float32)[0], image)
        top = record["outputs"]["probabilities"]
        assert top["datatype"] == "BYTES" and top["shape"] == [1, 3]
        assert int(top["data"][0].split(":")[1]) == answer["predictions"][0]["digit"]
        assert record["answer"]["json"] == answer
        timings = record["timings_ms"]
        assert 0 < timings["infer"] <= timings["total"] and timings["preprocess"] > 0


def test_capture_samples_at_the_configured_rate(capturing: tuple) -> None:
    server, _ = capturing
    cases = qa_cases()
    sent = 300
    with requests.Session() as session:
        for i in range(sent):
            case = cases[i % len(cases)]
            payload = {"context": case["context"], "question": case["question"]}
            response = session.post(f"{server.url}/score/qa_lexical", json=payload, timeout=30)
            assert response.status_code == 200
    time.sleep(1.0)  # the writers have nothing left after a second
    captured = _metric(server.url, "score_captured_total", model="qa_lexical")
    assert 55 <= captured <= 125, f"{captured} of {sent} at 0.3 (binomial sd ~8)"
    assert _metric(server.url, "score_capture_dropped_total") == 0


def test_a_writer_behind_drops_and_counts_and_never_blocks(
    triton: LocalTriton, tmp_path: Path
) -> None:
    server = ScoreServer(
        "--triton-url",
        triton.url,
        env={
            "SCORE_CAPTURE": "digits_onnx=1",
            "SCORE_CAPTURE_DIR": str(tmp_path),
            "SCORE_CAPTURE_QUEUE": "1",
        },
    ).wait_ready()
    try:
        images, _ = held_out_digits()
        sent = 128
        barrier = threading.Barrier(32)

        def one(i: int) -> int:
            if i < 32:
                barrier.wait()
            payload = {"image": images[i % len(images)].tolist()}
            return requests.post(
                f"{server.url}/score/digits_onnx", json=payload, timeout=30
            ).status_code

        with ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(one, range(sent)))
        assert codes == [200] * sent
        url = server.url
        _wait_for(
            lambda: (
                _metric(url, "score_captured_total") + _metric(url, "score_capture_dropped_total")
                >= sent
            )
        )
        dropped = _metric(url, "score_capture_dropped_total", model="digits_onnx")
        written = _metric(url, "score_captured_total", model="digits_onnx")
        assert dropped > 0, "a queue of one behind 32 concurrent requests must overflow"
        assert written + dropped == sent
        assert len(_records(tmp_path)) == written
    finally:
        server.stop()
