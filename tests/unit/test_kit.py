"""The processor author's kit, offline: config.pbtxt reading, the onnxruntime backend's load
checks, the tensor check, what `score new` writes, and what a client sees of Triton errors."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT

from triton_score.kit.check import (
    Report,
    check_processors,
    check_tensors,
    load_processor,
    preprocess_example,
    render,
)
from triton_score.kit.scaffold import render_processor, render_test, write_scaffold
from triton_score.local.onnx_check import check_model
from triton_score.local.onnx_wrapper import (
    ModelRepositoryError,
    prepare_repository,
    scan_repository,
)
from triton_score.model.config import ModelConfigError, _normalise, _Parser, parse_model_config
from triton_score.model.info import ModelInfo, TensorSpec
from triton_score.processors import ProcessorRegistry, processor

EXAMPLES = ROOT / "models" / "triton"

IRIS_CONFIG = """\
name: "iris"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "X", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [
  { name: "probabilities", data_type: TYPE_FP32, dims: [ 3 ], label_filename: "labels.txt" }
]
"""


def small_parser(text: str) -> dict:
    """The fallback parser, used when tritonclient's gRPC package is not installed."""
    return _normalise(_Parser(text, "config.pbtxt").message(top=True))


# -- config.pbtxt ----------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["digits_onnx", "qa_lexical"])
def test_both_parsers_read_the_example_configs_alike(model: str) -> None:
    text = (EXAMPLES / model / "config.pbtxt").read_text()
    assert ModelInfo.from_config(small_parser(text)) == ModelInfo.from_config(
        parse_model_config(text)
    )


def test_the_small_parser_reads_the_text_format() -> None:
    text = """
    # a comment
    name: "m"  max_batch_size: 4
    input { name: "a" data_type: TYPE_STRING dims: [ -1 ] optional: true }
    input < name: 'b', data_type: TYPE_INT64, dims: 2 dims: 3 >
    output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } } ]
    parameters { key: "threshold" value { string_value: "0.5" } }
    parameters: { key: "mode", value: { string_value: "fast" } }
    dynamic_batching { max_queue_delay_microseconds: 100 }
    """
    config = small_parser(text)
    info = ModelInfo.from_config(config)
    assert [(t.name, t.datatype, t.shape, t.optional) for t in info.inputs] == [
        ("a", "BYTES", (-1, -1), True),
        ("b", "INT64", (-1, 2, 3), False),
    ]
    assert info.outputs[0].shape == (-1, 1)
    assert info.parameters == {"threshold": "0.5", "mode": "fast"}
    assert info.dynamic_batching and info.max_batch_size == 4
    with pytest.raises(ModelConfigError, match=r"config.pbtxt:2: missing '\}'"):
        small_parser('name: "m"\ninput { name: "a"')


def test_a_misspelt_field_is_an_error_naming_it() -> None:
    with pytest.raises(ModelConfigError, match="data_typ"):
        parse_model_config('name: "m" input [ { name: "a" data_typ: TYPE_FP32 dims: [1] } ]')


def test_model_info_from_a_model_folder() -> None:
    info = ModelInfo.from_config_file(EXAMPLES / "digits_onnx")
    assert info.name == "digits_onnx" and info.version == "1"
    assert info.inputs == (TensorSpec("image", "FP32", (-1, 8, 8)),)
    assert info.outputs[0].label_filename == "labels.txt" and info.outputs[0].shape == (-1, 10)
    assert info.directory == (EXAMPLES / "digits_onnx").resolve()
    assert ModelInfo.from_config_file(EXAMPLES / "qa_lexical" / "config.pbtxt").batching is False


def test_model_info_by_hand_needs_only_a_name() -> None:
    info = ModelInfo("m", max_batch_size=2, inputs=(TensorSpec("x", "FP32", (-1, 3)),))
    assert (info.version, info.platform, info.backend, info.outputs) == ("1", "", "", ())
    assert info.batching and not info.dynamic_batching


# -- ONNX files against config.pbtxt, as the onnxruntime backend loads them --------------------
skl2onnx = pytest.importorskip("skl2onnx", reason="the examples extra exports iris models")


def write_iris(folder: Path, *, zipmap: bool, config: str = IRIS_CONFIG) -> Path:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    model = LogisticRegression(max_iter=500).fit(iris.data, iris.target)
    options = None if zipmap else {id(model): {"zipmap": False}}
    onnx_model = skl2onnx.to_onnx(model, iris.data[:1].astype(np.float32), options=options)
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.onnx").write_bytes(onnx_model.SerializeToString())
    (folder / "labels.txt").write_text("\n".join(iris.target_names) + "\n")
    (folder / "config.pbtxt").write_text(config)
    return folder


def problems_of(repository: Path, name: str) -> list[str]:
    return next(check_model(m) for m in scan_repository(repository) if m.name == name)


def test_a_zipmap_export_is_refused_as_the_onnxruntime_backend_refuses_it(tmp_path: Path):
    write_iris(tmp_path / "iris", zipmap=True)
    problems = problems_of(tmp_path, "iris")
    assert len(problems) == 2, problems
    assert "output 'output_probability' is a sequence of maps, not a tensor" in problems[0]
    assert "'zipmap': False" in problems[0]
    assert "output 'probabilities' of config.pbtxt is not in the ONNX file" in problems[1]
    with pytest.raises(ModelRepositoryError, match="would refuse to load this repository"):
        prepare_repository(tmp_path, tmp_path / "scratch")


def test_a_matching_export_is_accepted(tmp_path: Path) -> None:
    write_iris(tmp_path / "iris", zipmap=False)
    assert problems_of(tmp_path, "iris") == []
    for model in scan_repository(EXAMPLES):
        if model.is_onnx:
            assert check_model(model) == [], model.name


@pytest.mark.parametrize(
    "change, problem",
    [
        ("TYPE_FP32, dims: [ 4 ]", "input 'X' is TYPE_FP64 in config.pbtxt but float"),
        ("dims: [ 4 ]", "input 'X' has shape [-1, 4] in the ONNX file, but config.pbtxt says"),
        ("dims: [ 3 ], label", "output 'probabilities' has shape [-1, 3]"),
        ("max_batch_size: 8", "config.pbtxt says [4]"),
    ],
)
def test_types_and_shapes_must_match(tmp_path: Path, change: str, problem: str) -> None:
    broken = {
        "TYPE_FP32, dims: [ 4 ]": IRIS_CONFIG.replace(
            "TYPE_FP32, dims: [ 4 ]", "TYPE_FP64, dims: [ 4 ]"
        ),
        "dims: [ 4 ]": IRIS_CONFIG.replace("dims: [ 4 ]", "dims: [ 5 ]"),
        "dims: [ 3 ], label": IRIS_CONFIG.replace("dims: [ 3 ]", "dims: [ -1 ]"),
        "max_batch_size: 8": IRIS_CONFIG.replace("max_batch_size: 8", "max_batch_size: 0"),
    }[change]
    write_iris(tmp_path / "iris", zipmap=False, config=broken)
    problems = problems_of(tmp_path, "iris")
    assert any(problem in p for p in problems), problems


def test_the_local_triton_refuses_it_before_starting(tmp_path: Path) -> None:
    from triton_score.local import LocalTriton, TritonStartError

    write_iris(tmp_path / "iris", zipmap=True)
    triton = LocalTriton(tmp_path, http_port=1, wrap_onnx=True, build=False)
    with pytest.raises(TritonStartError, match="sequence of maps"):
        triton.start(timeout=5)
    assert triton.process is None  # no server was started


# -- the tensor check ------------------------------------------------------------------------
MODEL = ModelInfo(
    "m",
    max_batch_size=4,
    inputs=(TensorSpec("x", "FP32", (-1, 3)), TensorSpec("ids", "INT64", (-1, 2))),
    outputs=(TensorSpec("y", "FP32", (-1, 3)),),
)


def test_check_tensors_names_every_problem() -> None:
    problems, _ = check_tensors(
        MODEL, {"x": np.array([["a", "b", "c"]]), "pixels": np.zeros((1, 3))}
    )
    assert problems == [
        "preprocess produced 'pixels', which is not an input of model 'm'; its inputs are "
        "['x', 'ids']",
        "input 'x': expected FP32 data, got str32 values",
        "preprocess did not produce input 'ids' (INT64 [*, 2])",
    ]
    problems, _ = check_tensors(MODEL, {"x": np.zeros((1, 3)), "ids": np.zeros((1, 2))})
    assert problems == ["input 'ids': expected INT64 data, got numbers"]
    problems, notes = check_tensors(
        MODEL, {"x": np.zeros((1, 3)), "ids": np.zeros((1, 2), dtype=np.int64)}
    )
    assert problems == [] and notes == [
        "input 'x': float64 converted to FP32 on every request (return float32 to save the copy)"
    ]
    assert check_tensors(MODEL, [1, 2])[0] == [
        "preprocess returned list, not a mapping of input name to array"
    ]


def test_preprocess_example_runs_a_processor_as_the_server_would() -> None:
    digits = ModelInfo.from_config_file(EXAMPLES / "digits_onnx")
    processor = load_processor(ROOT / "score" / "processors.py", "digits_onnx")
    assert preprocess_example(processor, digits)["image"].shape == (1, 8, 8)
    with pytest.raises(AssertionError, match="input 'image': expected shape"):
        preprocess_example(
            processor,
            MODEL.__class__(
                "digits_onnx", max_batch_size=16, inputs=(TensorSpec("image", "FP32", (-1, 4)),)
            ),
        )


@processor("digits_onnx", "digits_large")
class TwoModels:
    def preprocess(self, request, model):
        return {"image": np.zeros((1, 8, 8), dtype=np.float32)}


@processor("digts_onnx")
class Misspelt(TwoModels):
    pass


def test_check_is_quiet_about_a_model_its_processor_serves_beside_another() -> None:
    registry = ProcessorRegistry()
    registry.register(TwoModels, "test")
    registry.register(Misspelt, "test")
    digits = ModelInfo.from_config_file(EXAMPLES / "digits_onnx")
    rows = check_processors(registry, {"digits_onnx": digits})
    # digits_large is not served, by design: no row, no problem. A processor that serves
    # nothing is a misspelt model name.
    assert {row.model: row.status for row in rows} == {"digits_onnx": "warn", "digts_onnx": "FAIL"}
    printed: list[str] = []
    render(Report(processors=rows), "score check", printed.append)
    assert not any("digits_large" in line for line in printed), printed


# -- score new -------------------------------------------------------------------------------
IRIS = ModelInfo(
    "iris",
    max_batch_size=16,
    inputs=(TensorSpec("X", "FP32", (-1, 4)),),
    outputs=(
        TensorSpec("label", "INT64", (-1,)),
        TensorSpec("probabilities", "FP32", (-1, 3), label_filename="labels.txt"),
    ),
)
SCAFFOLDED = [
    IRIS,
    ModelInfo(
        "text-model.v2",
        inputs=(TensorSpec("input.1", "BYTES", (-1, 1)), TensorSpec("n", "INT32", (1,), True)),
        outputs=(TensorSpec("scores", "FP32", (-1, 5)),),
    ),
    ModelInfo(
        "big",
        max_batch_size=4,
        inputs=(TensorSpec("image", "FP32", (-1, 3, 224, 224)), TensorSpec("b", "BOOL", (-1, 2))),
        outputs=(TensorSpec("logits", "FP16", (-1, 1000), label_filename="l.txt"),),
    ),
]


@pytest.mark.parametrize("model", SCAFFOLDED, ids=lambda m: m.name)
def test_scaffolded_processors_fit_their_model(tmp_path: Path, model: ModelInfo) -> None:
    path = tmp_path / "proc_processor.py"
    path.write_text(render_processor(model, model.name, f"score new {model.name}"))
    processor = load_processor(path, model.name)
    tensors = preprocess_example(processor, model)
    assert sorted(tensors) == sorted(t.name for t in model.inputs if not t.optional)
    outputs = {
        t.name: (
            np.array([[b"0.9:0:a", b"0.1:1:b", b"0:2:c"]], dtype=object)
            if t.label_filename
            else np.zeros([1 if d < 0 else d for d in t.shape], dtype=np.float32)
        )
        for t in model.outputs
    }
    answer = processor.postprocess(outputs, None, model)
    assert sorted(answer) == sorted(t.name for t in model.outputs)
    if model is IRIS:
        assert processor.outputs == {"label": 0, "probabilities": 3}
        assert answer["probabilities"][0] == {"label": "a", "index": 0, "score": 0.9}


def test_scaffolded_files_pass_the_projects_lint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where `score new` runs: the project's root
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    for model in SCAFFOLDED:
        written = write_scaffold(
            model,
            model.name,
            code_directory=tmp_path / "score",
            tests_directory=tmp_path / "tests",
            repository=tmp_path / "models" / "triton",
            command=f"score new {model.name}",
        )
        assert written.processor.name.endswith("_processor.py")
    config = str(ROOT / "pyproject.toml")
    for command in (["check"], ["format", "--check"]):
        done = subprocess.run(
            [ruff, *command, "--config", config, str(tmp_path)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_score_new_never_overwrites_without_force(tmp_path: Path) -> None:
    from triton_score.kit.scaffold import ScaffoldError

    options = {
        "code_directory": tmp_path / "score",
        "tests_directory": tmp_path / "tests",
        "repository": tmp_path,
        "command": "score new iris",
    }
    write_scaffold(IRIS, "iris", **options)
    with pytest.raises(ScaffoldError, match="exists already"):
        write_scaffold(IRIS, "iris", **options)
    write_scaffold(IRIS, "iris", force=True, **options)
    test = (tmp_path / "tests" / "test_iris_processor.py").read_text()
    assert 'PROCESSOR = HERE / ".." / "score" / "iris_processor.py"' in test
    assert "test_preprocess_fits_the_model_config" not in test  # no config.pbtxt: live only
    assert render_test(IRIS, "iris", Path("a.py"), Path("t.py"), Path("."), "x").count("def ") == 3


# -- what a client sees of Triton's failures -------------------------------------------------
def test_a_model_failing_in_triton_is_a_500_without_tritons_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tritonclient.utils import InferenceServerException

    from triton_score.errors import TritonError
    from triton_score.triton.gateway import translate_errors

    secret = "onnxruntime: Invalid output name:probabilities (/opt/models/iris/1/model.onnx)"
    with (
        caplog.at_level(logging.ERROR, logger="triton_score.triton.gateway"),
        pytest.raises(TritonError) as info,
        translate_errors("inference on model 'iris'", "req-1"),
    ):
        raise InferenceServerException(secret, status="500")
    assert info.value.status_code == 500 and secret not in info.value.message
    assert info.value.message == (
        "Triton failed inference on model 'iris'; the server log has its message under "
        "request id req-1"
    )
    assert secret in caplog.text and "req-1" in caplog.text
    with pytest.raises(TritonError) as info, translate_errors("x"):
        raise InferenceServerException("unexpected shape for input 'X'", status="400")
    assert (info.value.status_code, info.value.message) == (400, "unexpected shape for input 'X'")


# -- where things are found ------------------------------------------------------------------
def test_a_score_folder_with_processor_files_is_a_code_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from triton_score.repository.locations import find_code_directory

    monkeypatch.chdir(tmp_path)
    assert find_code_directory() is None
    (tmp_path / "score").mkdir()
    assert find_code_directory() is None
    (tmp_path / "score" / "iris_processor.py").write_text("")
    assert find_code_directory() == Path("score")


def test_serve_refuses_a_processor_module_that_cannot_be_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from triton_score.serve.supervisor import _no_module

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_procs.py").write_text("")
    assert _no_module("no_such_package.processors")
    assert _no_module("no_such_package:Cls")
    assert not _no_module("my_procs")  # found in the working folder, as a worker finds it
    assert not _no_module("json:JSONDecoder")
    assert not _no_module("score/processors.py")


def test_the_template_conftest_needs_only_the_dev_extra() -> None:
    """`pip install -e '.[dev]'` runs the tests `score new` writes into tests/, beside the
    template's conftest.py: it may import only the standard library, pytest and the runtime."""
    import ast

    tree = ast.parse((ROOT / "tests" / "conftest.py").read_text())
    imported = {
        name.split(".")[0]
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__", "pytest", "triton_score"}


def test_score_new_names_the_missing_model_folder_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from triton_score.cli import main
    from triton_score.local.processes import free_port

    (tmp_path / "models" / "triton" / "iris").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRITON_URL", f"127.0.0.1:{free_port()}")  # nothing answers there
    monkeypatch.delenv("SCORE_MODEL_REPOSITORY", raising=False)
    assert main(["new", "irsi"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: models/triton has no model folder 'irsi' (it has ['iris']); "
        "add the model first: docs/first-processor.md"
    )
