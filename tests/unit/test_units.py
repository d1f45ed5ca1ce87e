"""Unit tests of the pieces that need no server: settings, validation, codecs, processors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from triton_score import Request
from triton_score.codecs.request import decode_request
from triton_score.codecs.tensors import decode_inputs, decode_outputs
from triton_score.errors import BadRequest, InvalidInput
from triton_score.model.info import ModelInfo, TensorSpec
from triton_score.model.validation import validate_inputs, validate_outputs
from triton_score.processors import ProcessorDefinitionError, ProcessorRegistry, processor
from triton_score.processors.loading import ProcessorLoadError, load_processors
from triton_score.repository.locations import find_model_repository
from triton_score.settings import Settings

MODEL = ModelInfo(
    name="m",
    version="1",
    platform="",
    backend="python",
    max_batch_size=4,
    inputs=(
        TensorSpec("x", "FP32", (-1, 3)),
        TensorSpec("n", "INT32", (-1, 1), optional=True),
    ),
    outputs=(TensorSpec("y", "FP32", (-1, 3)), TensorSpec("s", "BYTES", (-1, 1))),
)


# -- settings ----------------------------------------------------------------------------
def test_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "TRITON_URL": "http://triton:9000",
            "SCORE_PROCESSORS": "a.py, b.mod;c:Cls",
            "SCORING_TIMEOUT_MS": "1500",
            "SCORE_MODEL": "m",
            "SCORE_DRAIN_FILE": "/run/score/draining",
        }
    )
    assert settings.drain_file == "/run/score/draining"
    assert settings.triton_url == "triton:9000"
    assert settings.processors == ("a.py", "b.mod", "c:Cls")
    assert settings.scoring_timeout_ms == 1500
    assert settings.default_model == "m"
    assert Settings.from_env({}).triton_url == "localhost:8000"


def test_settings_reject_bad_numbers_and_unknown_overrides() -> None:
    with pytest.raises(ValueError, match="SCORING_TIMEOUT_MS"):
        Settings.from_env({"SCORING_TIMEOUT_MS": "soon"})
    with pytest.raises(TypeError, match="unknown setting"):
        Settings.from_env({}, nonsense=1)


# -- validation --------------------------------------------------------------------------
def test_validation_casts_safe_types() -> None:
    checked = validate_inputs(MODEL, {"x": np.ones((2, 3), dtype=np.float64), "n": [[1], [2]]})
    assert checked["x"].dtype == np.float32
    assert checked["n"].dtype == np.int32


@pytest.mark.parametrize(
    "inputs, fragment",
    [
        ({"x": np.ones((2, 3)), "n": np.full((2, 1), 0.5)}, "expected INT32 data, got numbers"),
        ({"x": np.ones((2, 3)), "n": np.full((2, 1), 2**40)}, "out of range"),
        ({"x": np.ones((5, 3))}, "batch size 5 is outside 1..4"),
        ({"x": np.ones((0, 3))}, "batch size 0"),
        ({"x": np.ones((2, 3)), "n": np.ones((3, 1), dtype=np.int32)}, "disagree on the batch"),
        ({"x": np.array([["a", "b", "c"]])}, "expected FP32 data"),
        ({"z": 1}, "no such input"),
    ],
)
def test_validation_errors(inputs: dict, fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment):
        validate_inputs(MODEL, inputs)


def test_class_count_on_bytes_output_is_refused_before_triton() -> None:
    # Triton 2.51 dies (SIGFPE) when asked for classification on a BYTES output.
    with pytest.raises(BadRequest, match="BYTES"):
        validate_outputs(MODEL, {"s": 2})
    assert validate_outputs(MODEL, {"y": 2, "s": 0}) == {"y": 2, "s": 0}
    with pytest.raises(BadRequest, match="non-negative"):
        validate_outputs(MODEL, {"y": -1})


# -- codecs ------------------------------------------------------------------------------
def test_decode_request_json_and_bytes() -> None:
    stated = decode_request(b'{"a": 1}', "Application/JSON; charset=utf-8")
    assert stated.json == {"a": 1}
    assert stated.content_type == "application/json"  # lower-case, parameters dropped
    assert decode_request(b'{"a": 1}', "").json == {"a": 1}  # AzureML clients omit it
    assert decode_request(b'{"a": 1}', "text/plain").json == {"a": 1}  # or send text/plain
    # curl -d and urllib send application/x-www-form-urlencoded unless told otherwise
    assert decode_request(b'{"a": 1}', "application/x-www-form-urlencoded").json == {"a": 1}
    raw = decode_request(b"\x89PNG", "image/png")
    assert raw.json is None and raw.body == b"\x89PNG" and raw.content_type == "image/png"
    with pytest.raises(BadRequest, match="empty"):
        decode_request(b"", "application/json")


def test_request_query_is_read_only_and_defaults_to_empty() -> None:
    # Code written before Request had a query still constructs it, positionally too.
    old_style = Request(b"x", "image/png", {}, "id-1", None)
    assert dict(old_style.query) == {} and old_style.body == b"x"
    params = {"top_k": "3"}
    request = decode_request(b'{"a": 1}', "application/json", query=params)
    params["top_k"] = "9"  # the request keeps its own copy
    assert request.query["top_k"] == "3" and request.json == {"a": 1}
    with pytest.raises(TypeError):
        request.query["top_k"] = "4"  # type: ignore[index]
    assert decode_request(b"x", "image/png").query == {}


def test_default_codec_bytes_inputs_and_outputs_spec() -> None:
    model = ModelInfo("t", "1", "", "", 0, (TensorSpec("w", "BYTES", (-1, 1)),), ())
    request = decode_request(b'{"inputs": {"w": [["hi"], ["there"]]}}', "application/json")
    arrays = decode_inputs(request, model)
    assert arrays["w"].dtype == np.object_ and arrays["w"][1, 0] == b"there"
    with pytest.raises(InvalidInput, match="expected strings"):
        decode_inputs(decode_request(b'{"inputs": {"w": [[1]]}}', "application/json"), model)
    wanted = decode_request(
        b'{"inputs": {}, "outputs": ["a", {"name": "b", "class_count": 2}]}', "application/json"
    )
    assert decode_outputs(wanted) == {"a": 0, "b": 2}


# -- processors --------------------------------------------------------------------------
def test_processor_decorator_checks_signatures() -> None:
    with pytest.raises(ProcessorDefinitionError, match="neither"):
        processor("m")(type("Empty", (), {}))
    with pytest.raises(ProcessorDefinitionError, match="must accept 2"):

        @processor("m")
        class WrongArity:
            def preprocess(self, request):  # missing the model argument
                return {}

    with pytest.raises(ProcessorDefinitionError, match="at least one model"):
        processor()


def test_registry_rejects_two_processors_for_one_model() -> None:
    @processor("m")
    class A:
        def preprocess(self, request, model):
            return {}

    @processor("m")
    class B:
        def postprocess(self, outputs, request, model):
            return {}

    registry = ProcessorRegistry()
    registry.register(A, "a.py")
    with pytest.raises(ProcessorDefinitionError, match="two processors for model 'm'"):
        registry.register(B, "b.py")
    assert registry.for_model("m").name.endswith("A")
    assert registry.for_model("other").name == "default codec"
    registry.freeze()
    with pytest.raises(RuntimeError, match="after the server started"):
        registry.register(B, "b.py")


def test_loading_errors_name_the_spec(tmp_path: Path) -> None:
    with pytest.raises(ProcessorLoadError, match="does not exist"):
        load_processors([str(tmp_path / "missing.py")], use_entry_points=False)
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ProcessorLoadError, match="failed to import: ModuleNotFoundError"):
        load_processors([str(broken)], use_entry_points=False)
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(ProcessorLoadError, match="defines no @processor class"):
        load_processors([str(empty)], use_entry_points=False)


def test_a_missing_import_names_the_code_directorys_requirements(tmp_path: Path) -> None:
    """A package that is not installed: the message names it and requirements.txt beside the
    processor; a missing submodule of an installed package or sibling helper gets no such
    advice (no requirement would fix it)."""
    processor = tmp_path / "x_processor.py"
    processor.write_text("import frame_tools_not_installed\n")
    with pytest.raises(ProcessorLoadError) as raised:
        load_processors([str(processor)], use_entry_points=False)
    message = str(raised.value)
    assert "No module named 'frame_tools_not_installed'" in message
    assert "add the package that provides 'frame_tools_not_installed' to " in message
    assert "requirements.txt, then pip install -c constraints.txt -r " in message
    (tmp_path / "requirements.txt").write_text("# ours\nframe-tools-not-installed==1.0\n")
    with pytest.raises(ProcessorLoadError, match="lists 'frame_tools_not_installed', but it"):
        load_processors([str(processor)], use_entry_points=False)
    processor.write_text("import triton_score.no_such_module\n")
    with pytest.raises(ProcessorLoadError) as raised:
        load_processors([str(processor)], use_entry_points=False)
    assert "requirements.txt" not in str(raised.value)
    (tmp_path / "helpers").mkdir()
    processor.write_text("import helpers.missing\n")
    with pytest.raises(ProcessorLoadError) as raised:
        load_processors([str(processor)], use_entry_points=False)
    assert "requirements.txt" not in str(raised.value)


def test_conventional_processors_file_beside_the_repository(tmp_path: Path) -> None:
    (tmp_path / "triton").mkdir()
    (tmp_path / "processors.py").write_text(
        "from triton_score import processor\n\n@processor('m')\nclass P:\n"
        "    def preprocess(self, request, model):\n        return {}\n"
    )
    registry = load_processors([], model_repository=tmp_path / "triton", use_entry_points=False)
    assert registry.models() == ["m"]
    none = load_processors(["none"], model_repository=tmp_path / "triton")
    assert none.models() == []


# -- repository discovery ----------------------------------------------------------------
def test_repository_found_under_azureml_model_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SCORE_MODEL_REPOSITORY", raising=False)
    deep = tmp_path / "azureml-models" / "my-model" / "1" / "models" / "triton"
    deep.mkdir(parents=True)
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path / "azureml-models"))
    monkeypatch.chdir(tmp_path)
    assert find_model_repository() == deep
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="AZUREML_MODEL_DIR"):
        find_model_repository()


# -- finding tritonserver ----------------------------------------------------------------
def test_a_missing_tritonserver_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    from triton_score.local import TritonNotFound, find_tritonserver

    with pytest.raises(TritonNotFound, match="--tritonserver is .* not an executable file"):
        find_tritonserver(tmp_path / "nope")
    monkeypatch.setenv("TRITONSERVER", str(tmp_path))
    with pytest.raises(TritonNotFound, match=r"\$TRITONSERVER"):
        find_tritonserver()


def test_cli_reports_a_missing_binary_without_a_traceback(tmp_path: Path, capsys) -> None:
    from triton_score.cli import main

    code = main(["triton", "--models", str(tmp_path), "--tritonserver", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --tritonserver is") and "Traceback" not in err


def test_processors_from_an_installed_package_entry_point(tmp_path: Path, monkeypatch) -> None:
    """A package ships processors via [project.entry-points."triton_score.processors"]."""
    package = tmp_path / "acme_processors"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from triton_score import processor\n\n@processor('acme_model')\nclass Acme:\n"
        "    def postprocess(self, outputs, request, model):\n        return {}\n"
    )
    dist = tmp_path / "acme_processors-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-processors\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[triton_score.processors]\nacme = acme_processors\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_processors([])
    assert registry.models() == ["acme_model"]
    assert registry.for_model("acme_model").source == "entry point acme"
    assert load_processors([], use_entry_points=False).models() == []


def test_a_processors_request_format_is_its_own() -> None:
    """Only the default codec reads "outputs" from the request body."""

    @processor("m")
    class Pre:
        def preprocess(self, request, model):
            return {}

    @processor("m")
    class Post:
        def postprocess(self, outputs, request, model):
            return {}

    request = decode_request(b'{"outputs": "mine, not Triton\'s"}', "application/json")
    registry = ProcessorRegistry()
    registry.register(Pre, "pre.py")
    assert registry.for_model("m").outputs(request, MODEL) is None
    other = ProcessorRegistry()
    other.register(Post, "post.py")  # default codec decodes: the body's "outputs" is read
    with pytest.raises(BadRequest, match='"outputs" must be a list'):
        other.for_model("m").outputs(request, MODEL)


def test_a_processor_may_lower_the_body_limit() -> None:
    from triton_score.errors import BodyTooLarge
    from triton_score.scoring import Scorer

    for bad in (0, -1, 1.5, "10", True):
        with pytest.raises(ProcessorDefinitionError, match="max_body_bytes"):
            processor("m")(
                type("Bad", (), {"max_body_bytes": bad, "preprocess": lambda s, r, m: {}})
            )

    @processor("m")
    class Small:
        max_body_bytes = 10

        def preprocess(self, request, model):
            return {}

    registry = ProcessorRegistry()
    registry.register(Small, "small.py")
    scorer = Scorer(Settings(max_body_bytes=100), None, registry, models={"m": MODEL})  # type: ignore[arg-type]
    assert scorer.body_limit("m") == (10, "max_body_bytes of the m processor")
    # An unknown model keeps the global limit: the 404 is the scoring's to report.
    assert scorer.body_limit("nope") == (100, "SCORE_MAX_BODY_BYTES")
    # The entry script's run() and other callers that hand over a body already read.
    with pytest.raises(BodyTooLarge) as info:
        scorer.score(decode_request(b"x" * 11, "image/png"), "m")
    assert info.value.status_code == 413 and info.value.details == {"limit_bytes": 10}
    assert "at most 10 bytes (max_body_bytes of the m processor); it is 11 bytes" in str(info.value)
    # A processor limit above SCORE_MAX_BODY_BYTES does not raise it.
    lax = Scorer(Settings(max_body_bytes=5), None, registry, models={"m": MODEL})  # type: ignore[arg-type]
    assert lax.body_limit("m") == (5, "SCORE_MAX_BODY_BYTES")


@pytest.mark.parametrize("size, status", [(1000, 503), (1001, 413), (5000, 413)])
def test_a_chunked_body_is_read_up_to_the_limit_only(size: int, status: int) -> None:
    """No Content-Length to refuse up front: the body is read to the limit, then refused."""
    import io

    from triton_score.http.app import create_app

    settings = Settings(triton_url="127.0.0.1:9", max_body_bytes=1000, processors=("none",))
    app = create_app(settings, init=False)
    response = app.test_client().post(
        "/score/m",
        input_stream=io.BytesIO(b"y" * size),
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},  # what Gunicorn sets
    )
    assert response.status_code == status, response.json  # 503: read, then no Triton
    if status == 413:
        assert response.json["limit_bytes"] == 1000
        assert "at most 1000 bytes (SCORE_MAX_BODY_BYTES); it is larger" in response.json["error"]
    app.extensions["triton_score"].close()


@pytest.mark.parametrize("size, status", [(1000, 503), (1001, 413)])
def test_the_v2_forwarder_refuses_a_chunked_body_above_the_limit(size: int, status: int) -> None:
    """Werkzeug would hand over the first SCORE_MAX_BODY_BYTES of a chunked body as if it
    were all of it: the forwarder must refuse it, not send Triton a truncated tensor."""
    import io

    from triton_score.http.app import create_app

    settings = Settings(triton_url="127.0.0.1:9", max_body_bytes=1000, processors=("none",))
    app = create_app(settings, init=False)
    response = app.test_client().post(
        "/v2/repository/index",  # (an infer request's limit is its model's: tested elsewhere)
        input_stream=io.BytesIO(b"y" * size),
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},  # what Gunicorn sets
    )
    assert response.status_code == status, response.json  # 503: read whole, no Triton
    if status == 413:
        assert response.json["limit_bytes"] == 1000
    app.extensions["triton_score"].close()


# -- Triton errors keep their meaning ----------------------------------------------------
@pytest.mark.parametrize(
    "raised, expected_status, expected_code",
    [
        ("400", 400, "triton_error"),
        ("404", 404, "model_not_found"),
        ("429", 429, "triton_error"),
        ("500", 500, "triton_error"),
        ("503", 503, "triton_unavailable"),
        (None, 503, "triton_unavailable"),
        (ConnectionRefusedError(), 503, "triton_unavailable"),
        (TimeoutError(), 504, "timeout"),
    ],
)
def test_triton_failures_are_translated(raised, expected_status: int, expected_code: str) -> None:
    from tritonclient.utils import InferenceServerException

    from triton_score.errors import ScoringError
    from triton_score.triton.gateway import translate_errors

    error = (
        raised
        if isinstance(raised, BaseException)
        else InferenceServerException("triton said no", status=raised)
    )
    with pytest.raises(ScoringError) as info, translate_errors("a test"):
        raise error
    assert info.value.status_code == expected_status
    assert info.value.code == expected_code


def test_async_hooks_are_refused_when_the_processor_is_defined() -> None:
    with pytest.raises(ProcessorDefinitionError, match=r"Slow.preprocess\(\) is async"):

        @processor("m")
        class Slow:
            async def preprocess(self, request, model):
                return {}


def test_earlier_sources_win_and_one_source_may_not_define_a_model_twice(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "processors.py").write_text(
        "from triton_score import processor\n"
        "@processor('a')\nclass First:\n    def preprocess(self, r, m): return {}\n"
    )
    (code / "extra_processor.py").write_text(
        "from triton_score import processor\n"
        "@processor('b')\nclass Second:\n    def preprocess(self, r, m): return {}\n"
    )
    (code / "helpers.py").write_text("raise RuntimeError('not a processor file: never imported')\n")
    (tmp_path / "processors.py").write_text(  # beside the model repository: yields
        "from triton_score import processor\n"
        "@processor('a', 'c')\nclass Old:\n    def preprocess(self, r, m): return {}\n"
    )
    registry = load_processors(
        [], code_directory=code, model_repository=tmp_path / "triton", use_entry_points=False
    )
    assert registry.models() == ["a", "b", "c"]
    assert registry.for_model("a").name == "First"
    assert registry.for_model("b").name == "Second"
    assert registry.for_model("c").name == "Old"

    (code / "more_processors.py").write_text(
        "from triton_score import processor\n"
        "@processor('a')\nclass Clash:\n    def preprocess(self, r, m): return {}\n"
    )
    with pytest.raises(ProcessorDefinitionError, match="two processors for model 'a'"):
        load_processors([], code_directory=code, use_entry_points=False)


def test_an_address_is_taken_apart_in_one_place() -> None:
    from triton_score.repository.locations import split_address

    assert split_address("triton:8001") == ("triton", 8001)
    assert split_address("http://127.0.0.1:8000/") == ("127.0.0.1", 8000)
    assert split_address(":8000") == ("localhost", 8000)
    assert Settings(triton_url="http://gpu-7:9000").triton_host == "gpu-7"
    assert Settings(triton_url="gpu-7:9000").triton_port == 9000
    for bad in ("triton", "triton:http", ""):
        with pytest.raises(ValueError, match="host:port"):
            split_address(bad)


def test_every_setting_names_its_variable_and_its_comment_says_it() -> None:
    """from_env is a loop over the fields: each declares its variable, which its doc comment
    (the reference users read) names too."""
    import dataclasses
    import inspect

    from triton_score import settings as settings_module

    lines = inspect.getsource(settings_module.Settings).splitlines()
    for each in dataclasses.fields(Settings):
        variable = each.metadata["env"].variable
        at = next(i for i, line in enumerate(lines) if line.startswith(f"    {each.name}:"))
        comment = []
        while lines[at - 1 - len(comment)].lstrip().startswith("#:"):
            comment.append(lines[at - 1 - len(comment)])
        assert variable in " ".join(comment), (each.name, variable, comment)
    env = {"SCORE_MAX_IN_FLIGHT": " ", "SCORE_LOG_LEVEL": "warning", "TRITON_URL": "http://t:1"}
    read = Settings.from_env(env)
    assert (read.max_in_flight, read.log_level, read.triton_url) == (128, "WARNING", "t:1")
    with pytest.raises(ValueError, match="SCORE_SHM_BYTES='x' is not a valid int"):
        Settings.from_env({"SCORE_SHM_BYTES": "x"})
