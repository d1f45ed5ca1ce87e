"""`score new --template tabular`, offline: which models it fits, what its processor makes of
JSON records and CSV (the tensor, the 400s naming field and record or line), its answers,
the lint of what it writes, and the diabetes builder the end-to-end test serves."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import ROOT

from triton_score.codecs.request import decode_request
from triton_score.errors import BadRequest
from triton_score.kit.check import load_processor, preprocess_example
from triton_score.kit.scaffold import ScaffoldError, write_scaffold
from triton_score.kit.tabular import layout, render_processor
from triton_score.model.info import ModelInfo, TensorSpec

BUILDER = ROOT / "tests" / "fixtures" / "diabetes" / "build_diabetes.py"

#: The layout of the diabetes model: one input [batch, 10], one output [batch, 1].
MATRIX = ModelInfo(
    "diabetes_gbr",
    max_batch_size=64,
    inputs=(TensorSpec("features", "FP32", (-1, 10)),),
    outputs=(TensorSpec("variable", "FP32", (-1, 1)),),
)
#: One input per feature, two outputs (one a list per record, one text).
COLUMNS = ModelInfo(
    "house-prices",
    max_batch_size=8,
    inputs=(
        TensorSpec("rooms", "FP64", (-1, 1)),
        TensorSpec("area", "FP64", (-1, 1)),
        TensorSpec("note", "FP64", (-1, 1), optional=True),
    ),
    outputs=(TensorSpec("band", "BYTES", (-1,)), TensorSpec("range", "FP32", (-1, 2))),
)
#: No batching, but a first dimension of rows: a model taking a table of any length.
ROWS = ModelInfo(
    "rows",
    inputs=(TensorSpec("x", "FP32", (-1, 3)),),
    outputs=(TensorSpec("y", "FP32", (-1,)),),
)


def load_builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_diabetes", BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tabular(tmp_path: Path, model: ModelInfo, features: list[str] | None = None) -> Any:
    """The tabular processor of ``model``, written and loaded as the server loads it."""
    source = render_processor(model, model.name, f"score new {model.name} --template tabular")
    if features is not None:
        first = next(line for line in source.splitlines() if line.startswith("FEATURES = "))
        source = source.replace(first, f"FEATURES = {features!r}")
    path = tmp_path / f"{model.name.replace('-', '_')}_processor.py"
    path.write_text(source)
    processor = load_processor(path, model.name)
    return processor


def send(processor: Any, model: ModelInfo, body: Any, content_type: str = "") -> dict:
    """What preprocess makes of ``body`` (JSON for a dict, else bytes as they are)."""
    if isinstance(body, dict | list):
        import orjson

        body, content_type = orjson.dumps(body), content_type or "application/json"
    elif isinstance(body, str):
        body = body.encode()
    return processor.preprocess(decode_request(body, content_type), model)


def refusal(processor: Any, model: ModelInfo, body: Any, content_type: str = "") -> dict:
    """The 400 body a client gets for ``body``."""
    with pytest.raises(BadRequest) as info:
        send(processor, model, body, content_type)
    return info.value.to_dict()


# -- which models fit ------------------------------------------------------------------------
def test_the_layouts_it_fits() -> None:
    matrix = layout(MATRIX)
    assert matrix.features == tuple(f"f{i}" for i in range(10)) and matrix.placeholders
    assert (matrix.matrix, matrix.dtype) == ("features", "np.float32")
    columns = layout(COLUMNS)  # the names are the model's own: nothing to edit
    assert columns.features == ("rooms", "area") and not columns.placeholders
    assert (columns.dtype, columns.column) == ("np.float64", True)
    assert layout(ROWS).features == ("f0", "f1", "f2")


@pytest.mark.parametrize(
    "inputs, max_batch_size, problem",
    [
        ((TensorSpec("ids", "INT64", (-1, 4)),), 8, "input 'ids' of model 'm' is INT64"),
        ((TensorSpec("image", "FP32", (-1, 8, 8)),), 8, "needs one input [batch, N]"),
        ((TensorSpec("x", "FP32", (-1, -1)),), 8, "needs one input [batch, N]"),
        ((TensorSpec("a", "FP32", (-1, 1)), TensorSpec("b", "FP16", (-1, 1))), 8, "one float"),
        ((TensorSpec("x", "FP32", (5, 3)),), 0, "has no dimension of rows ([5, 3])"),
        ((TensorSpec("x", "FP32", (-1, 3), optional=True),), 8, "has no required input"),
    ],
)
def test_a_model_it_does_not_fit_is_refused_naming_why(
    tmp_path: Path, inputs: tuple[TensorSpec, ...], max_batch_size: int, problem: str
) -> None:
    model = ModelInfo("m", max_batch_size=max_batch_size, inputs=inputs)
    with pytest.raises(ScaffoldError, match=re.escape(problem)):
        write_scaffold(
            model,
            "m",
            code_directory=tmp_path / "score",
            tests_directory=tmp_path / "tests",
            repository=tmp_path,
            command="score new m --template tabular",
            template="tabular",
        )
    assert not (tmp_path / "score").exists()  # nothing written
    with pytest.raises(ScaffoldError, match=r"no template 'tabluar'; the templates are"):
        write_scaffold(
            MATRIX,
            "m",
            code_directory=tmp_path,
            tests_directory=tmp_path,
            repository=tmp_path,
            command="",
            template="tabluar",
        )


# -- records in ------------------------------------------------------------------------------
FEATURES = ["age", "sex", "bmi"]
THREE = ModelInfo(
    "three",
    max_batch_size=2,
    inputs=(TensorSpec("x", "FP32", (-1, 3)),),
    outputs=(TensorSpec("y", "FP32", (-1, 1)),),
)


def test_json_records_in_any_key_order_become_rows_in_features_order(tmp_path: Path) -> None:
    processor = tabular(tmp_path, THREE, FEATURES)
    records = [{"bmi": 3, "age": 1.5, "sex": -2, "id": "x"}, {"sex": 5, "bmi": "6", "age": 4}]
    tensors = send(processor, THREE, {"records": records})
    assert list(tensors) == ["x"] and tensors["x"].dtype == np.float32
    # More records than max_batch_size (2) are fine: the runtime splits them.
    assert tensors["x"].tolist() == [[1.5, -2, 3], [4, 5, 6]]
    many = send(processor, THREE, {"records": records * 3})["x"]
    assert many.shape == (6, 3)
    assert preprocess_example(processor, THREE)["x"].tolist() == [[0, 0, 0]]


def test_csv_with_a_header_in_any_column_order(tmp_path: Path) -> None:
    processor = tabular(tmp_path, THREE, FEATURES)
    text = "\ufeffid, bmi ,age,sex\r\nr1,3,1.5,-2\r\n\r\nr2, 6 ,4,5e0\r\n"  # a BOM, a blank line
    tensors = send(processor, THREE, text, "text/csv")
    assert tensors["x"].tolist() == [[1.5, -2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    "records, expected",
    [
        ([{"age": 1, "sex": 2, "bmi": 3}, {"age": 1, "sex": 2}], ("bmi", 1, "is missing")),
        ([{"age": 1, "sex": None, "bmi": 3}], ("sex", 0, "has no value")),
        ([{"age": "old", "sex": 2, "bmi": 3}], ("age", 0, "is not a number: 'old'")),
        ([{"age": True, "sex": 2, "bmi": 3}], ("age", 0, "is not a number: 'True'")),
        ([{"age": [1], "sex": 2, "bmi": 3}], ("age", 0, "is not a number: '[1]'")),
        ([{"age": "nan", "sex": 2, "bmi": 3}], ("age", 0, "is not a number: 'nan'")),
    ],
)
def test_a_bad_json_field_is_a_400_naming_it_and_its_record(
    tmp_path: Path, records: list, expected: tuple[str, int, str]
) -> None:
    processor = tabular(tmp_path, THREE, FEATURES)
    body = refusal(processor, THREE, {"records": records})
    field, record, problem = expected
    assert (body["field"], body["record"], body["code"]) == (field, record, "bad_request")
    assert body["error"].startswith(f"record {record}: field {field!r} {problem}"), body


@pytest.mark.parametrize(
    "text, expected",
    [
        ("age,sex\n1,2\n", ("bmi", 1, "is missing from the CSV header ['age', 'sex']")),
        ("age,sex,bmi\n1,2,3\n4,,6\n", ("sex", 3, "has no value")),
        ("age,sex,bmi\n1,2\n", ("bmi", 2, "has no value")),
        ('age,sex,bmi\n1,2,3\n"4\n5",x,6\n', ("age", 4, "is not a number: '4\\n5'")),
        ("age,sex,bmi\n1,2,1e400\n", ("bmi", 2, "is not a number: '1e400'")),
        ("age,sex,bmi\n1,2,nan\n", ("bmi", 2, "is not a number: 'nan'")),
    ],
)
def test_a_bad_csv_cell_is_a_400_naming_it_and_its_line(
    tmp_path: Path, text: str, expected: tuple[str, int, str]
) -> None:
    processor = tabular(tmp_path, THREE, FEATURES)
    body = refusal(processor, THREE, text, "text/csv")
    field, line, problem = expected
    assert (body["field"], body["line"]) == (field, line)
    assert body["error"] == f"line {line}: field {field!r} {problem}", body


def test_a_body_that_is_no_records_is_a_400_saying_what_to_send(tmp_path: Path) -> None:
    processor = tabular(tmp_path, THREE, FEATURES)
    for body in ({"records": []}, {"rows": [1]}, [1, 2], "age,sex\n"):
        message = refusal(processor, THREE, body)["error"]
        assert message.startswith('send {"records": [{field: number, ...}, ...]} as JSON, or ')
        assert "['age', 'sex', 'bmi']" in message
    assert refusal(processor, THREE, {"records": [{"age": 1}, 7]})["error"].startswith(
        "record 0: field 'sex' is missing"
    )
    assert refusal(processor, THREE, {"records": [7]})["error"] == "record 0 is not an object"
    assert refusal(processor, THREE, "age,sex,bmi\n", "text/csv")["error"] == (
        "the CSV has no records after its header row"
    )
    assert refusal(processor, THREE, b"age,sex,bmi\n\xff,1,2\n", "text/csv")["error"] == (
        "the CSV is not UTF-8 text (byte 12)"
    )
    huge = "age,sex,bmi\n1,2," + "3" * 200_000 + "\n"  # beyond the csv module's field limit
    assert refusal(processor, THREE, huge, "text/csv")["error"].startswith(
        "line 2: the CSV cannot be read: field larger than field limit"
    )


def test_one_input_per_feature(tmp_path: Path) -> None:
    processor = tabular(tmp_path, COLUMNS)
    tensors = send(processor, COLUMNS, "area,rooms\n70.5,3\n120,5\n", "text/csv")
    assert sorted(tensors) == ["area", "rooms"]
    assert tensors["rooms"].tolist() == [[3], [5]] and tensors["area"].dtype == np.float64
    assert preprocess_example(processor, COLUMNS)["area"].shape == (1, 1)


# -- predictions out -------------------------------------------------------------------------
def test_a_regressors_column_is_one_number_per_record(tmp_path: Path) -> None:
    processor = tabular(tmp_path, THREE, FEATURES)
    assert processor.outputs == {"y": 0}
    answer = processor.postprocess({"y": np.array([[1.5], [2.0]], np.float32)}, None, THREE)
    assert answer == {"predictions": [1.5, 2.0]}
    rows = tabular(tmp_path, ROWS)
    assert rows.postprocess({"y": np.array([3.0, 4.0])}, None, ROWS) == {"predictions": [3, 4]}


def test_several_outputs_are_a_dict_per_record(tmp_path: Path) -> None:
    processor = tabular(tmp_path, COLUMNS)
    outputs = {
        "band": np.array([b"low", b"high"], dtype=object),
        "range": np.array([[1, 2], [3, 4]], np.float32),
    }
    assert processor.postprocess(outputs, None, COLUMNS) == {
        "predictions": [{"band": "low", "range": [1, 2]}, {"band": "high", "range": [3, 4]}]
    }


# -- what score new writes -------------------------------------------------------------------
def test_the_written_files_pass_the_projects_lint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    todos = []
    for model in (MATRIX, COLUMNS, ROWS):
        written = write_scaffold(
            model,
            model.name,
            code_directory=tmp_path / "score",
            tests_directory=tmp_path / "tests",
            repository=tmp_path / "models" / "triton",
            command=f"score new {model.name} --template tabular",
            template="tabular",
        )
        todos.append(written.todo)
    assert todos[0].startswith("name the columns of the model's input: FEATURES in ")
    assert todos[1] == ""  # the inputs' names are the features
    config = str(ROOT / "pyproject.toml")
    for command in (["check"], ["format", "--check"]):
        done = subprocess.run(
            [ruff, *command, "--config", config, str(tmp_path)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_diabetes_builder_is_deterministic_and_matches_sklearn(tmp_path: Path) -> None:
    pytest.importorskip("skl2onnx", reason="the examples extra exports the model")
    builder = load_builder()
    first = builder.build(tmp_path / "a", verbose=False)
    second = builder.build(tmp_path / "b", verbose=False)
    assert first["onnx_sha256"] == second["onnx_sha256"]
    assert first["max_difference"] < builder.TOLERANCE
    info = ModelInfo.from_config_file(first["folder"])
    assert info.inputs == (TensorSpec("features", "FP32", (-1, 10)),)
    assert info.outputs == (TensorSpec("variable", "FP32", (-1, 1)),)
    assert info.max_batch_size == 64
    records = builder.records()
    assert len(records) == 442 and list(records[0]) == builder.FEATURES
