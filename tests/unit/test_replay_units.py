"""``score replay``'s parts without a server: records read back as the server decoded them,
outputs compared (top-1, differences, tolerance), the report's verdict, its arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from triton_score.cli import main
from triton_score.codecs.request import Request, decode_request
from triton_score.codecs.response import render
from triton_score.kit.replay import OutputComparison, ReplayReport, ranked, render_report
from triton_score.telemetry.capture import (
    FORMAT,
    Captured,
    RecordError,
    encode_record,
    read_records,
    record_request,
    record_tensor,
)


def _record(request: Request, outputs: dict | None = None) -> dict:
    entry = Captured(
        "m",
        "1",
        request,
        {"x": np.arange(6, dtype=np.float32).reshape(2, 3)},
        outputs if outputs is not None else {"y": np.array([[0.1, 0.9]], np.float32)},
        {"ok": True},
        timings={"infer": 0.001},
        total_s=0.002,
    )
    return orjson.loads(encode_record(entry))


def test_a_json_request_comes_back_as_it_was_decoded() -> None:
    sent = decode_request(
        b'{"image": [1.5, 2], "top_k": 3}', "application/json", {}, "id-1", query={"a": "b"}
    )
    again = record_request(_record(sent), request_id="replay-id-1")
    assert again.json == sent.json and again.query == {"a": "b"}
    assert again.content_type == "application/json" and again.id == "replay-id-1"


def test_a_binary_body_and_its_v2_header_length_come_back() -> None:
    header = orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]})
    body = header + np.float32(2.5).tobytes()
    headers = {"inference-header-content-length": str(len(header))}
    sent = decode_request(body, "application/octet-stream", headers, "id-2")
    again = record_request(_record(sent))
    assert again.body == body and again.json == sent.json
    assert again.header("Inference-Header-Content-Length") == str(len(header))


def test_a_binary_body_holding_a_redacted_tensor_is_not_written() -> None:
    header = orjson.dumps({"inputs": [{"name": "ssn", "shape": [1], "datatype": "FP32"}]})
    headers = {"inference-header-content-length": str(len(header))}
    sent = decode_request(header + np.float32(7).tobytes(), "", headers, "id-3")
    entry = Captured("m", "1", sent, {}, {}, {"ok": True})
    record = orjson.loads(encode_record(entry, frozenset({"ssn"})))
    assert record["request"]["base64"] == "[redacted]"
    with pytest.raises(RecordError, match="redacted"):
        record_request(record)


def test_tensors_come_back_with_their_shape_and_bytes() -> None:
    record = _record(Request(b"{}", "application/json", json={}))
    assert record_tensor(record["inputs"]["x"]).tolist() == [[0, 1, 2], [3, 4, 5]]
    strings = np.array([[b"0.9:1:one", b"\xff"]], dtype=object)
    record = _record(Request(b"{}", json={}), outputs={"c": strings})
    assert record_tensor(record["outputs"]["c"]).tolist() == [[b"0.9:1:one", b"\xff"]]
    assert record_tensor({"datatype": "FP32", "shape": [1], "data": "[redacted]"}) is None
    with pytest.raises(RecordError, match="not a tensor"):
        record_tensor({"datatype": "FP32", "shape": [3], "data": [1, 2]})


def test_unreadable_lines_are_named_and_the_rest_is_read(tmp_path: Path) -> None:
    good = orjson.dumps({"format": FORMAT, "model": "m"})
    (tmp_path / "capture-1-000001.jsonl").write_bytes(
        good + b"\n{cut short\n\n" + orjson.dumps({"format": "x/2"}) + b"\n" + good + b"\n"
    )
    lines = list(read_records(tmp_path))
    kinds = [type(record).__name__ for _, _, record in lines]
    assert kinds == ["dict", "RecordError", "RecordError", "dict"]
    assert lines[1][0] == "capture-1-000001.jsonl:2" and "not JSON" in str(lines[1][2])
    assert "'x/2'" in str(lines[2][2])


def test_classification_strings_rank_by_their_first_class() -> None:
    seen = ranked(np.array([[b"0.8:3:three", b"0.1:5:five"], [b"0.6:1", b"0.3:2"]], object))
    assert seen.top1 is not None and seen.top1.tolist() == [3, 1]
    assert seen.values.tolist() == [[0.8, 0.1], [0.6, 0.3]]
    probabilities = ranked(np.array([[0.1, 0.7, 0.2]]))
    assert probabilities.top1 is not None and probabilities.top1.tolist() == [1]
    assert ranked(np.array([[2.5], [1.0]])).top1 is None  # a regressor ranks nothing
    assert ranked(np.array([b"hello"], object)).top1 is None


def test_a_comparison_counts_top1_differences_and_tolerance() -> None:
    comparison = OutputComparison("y")
    same = np.array([[0.1, 0.9]])
    assert comparison.add(same, same.copy(), 1e-5, 1e-3) == (False, False)
    assert comparison.add(same, np.array([[0.2, 0.8]]), 1e-5, 1e-3) == (False, True)
    assert comparison.add(same, np.array([[0.6, 0.4]]), 1e-5, 1e-3) == (True, True)
    assert comparison.add(same, np.array([0.1, 0.9]), 1e-5, 1e-3) == (True, True)
    assert comparison.add(same, None, 1e-5, 1e-3) == (True, True)
    summary = comparison.summary()
    assert (summary["compared"], summary["mismatched"], summary["top1_rows"]) == (3, 2, 3)
    assert summary["top1_agreement"] == pytest.approx(2 / 3)
    assert summary["max_abs_diff"] == pytest.approx(0.5)
    assert summary["max_rel_diff"] == pytest.approx(5.0)  # 0.5 off a captured 0.1
    assert summary["beyond_tolerance"] == pytest.approx(2 / 3)


def test_the_verdict_follows_max_disagreement() -> None:
    report = ReplayReport("m", "2", "t:1", max_disagreement=0.1, replayed=20, disagreeing=2)
    assert report.passed and report.disagreement == 0.1
    report.disagreeing = 3
    assert not report.passed
    assert not ReplayReport("m", "2", "t:1", max_disagreement=1.0).passed  # nothing replayed
    lines: list[str] = []
    render_report(report, lines.append)
    assert lines[-1].endswith("FAIL") and "3 of 20" in lines[-1]
    assert orjson.loads(orjson.dumps(report.to_json()))["passed"] is False


@pytest.mark.parametrize(
    ("argument", "says"),
    [
        (["--max-disagreement", "2"], "not a share from 0 to 1"),
        (["--atol", "nan"], "not a tolerance"),
        (["--compare", "exact"], "invalid choice"),
    ],
)
def test_bad_replay_arguments_are_refused(
    argument: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["replay", "somewhere", "--model", "m", *argument])
    assert stopped.value.code == 2 and says in capsys.readouterr().err


def test_a_missing_capture_directory_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(tmp_path / "none"), "--model", "m"]) == 2
    assert "no capture files" in capsys.readouterr().err


def test_render_of_an_answer_is_what_a_capture_compares() -> None:
    # A replayed answer and a captured one compare by their JSON, not their bytes.
    encoded = render({"b": 1.0, "a": [1, 2]})
    assert orjson.loads(encoded.body) == {"b": 1.0, "a": [1, 2]}
