"""Processor API v2, unit by unit, with a fake Triton gateway (no server).

Each feature is optional; a version-1 processor (preprocess/postprocess/outputs/load) is
served exactly as before (tests/unit/test_units.py, tests/triton/test_app_inprocess.py).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from triton_score import BadRequest, ModelInfo, Request, Response, TensorSpec, Triton, processor
from triton_score.codecs.request import decode_request
from triton_score.codecs.response import render
from triton_score.errors import (
    InvalidInput,
    InvalidRequest,
    ProcessorError,
    TooManyRows,
    TritonUnavailable,
    UnsupportedMediaType,
)
from triton_score.processors import ProcessorDefinitionError, ProcessorRegistry
from triton_score.repository.locations import is_local_address
from triton_score.scoring import RequestTelemetry, Scorer
from triton_score.scoring.refresh import MetadataRefresher
from triton_score.settings import Settings

DIGITS = ModelInfo(
    name="digits",
    version="1",
    platform="",
    backend="python",
    max_batch_size=4,
    inputs=(TensorSpec("image", "FP32", (-1, 8, 8)),),
    outputs=(TensorSpec("probabilities", "FP32", (-1, 10)),),
)
WORDS = ModelInfo(
    name="words",
    version="1",
    platform="",
    backend="python",
    max_batch_size=0,
    inputs=(TensorSpec("text", "BYTES", (-1,)),),
    outputs=(TensorSpec("count", "INT32", (1,)),),
)


class FakeGateway:
    """Answers like Triton would, records every call, and can be told to fail."""

    def __init__(self, *models: ModelInfo) -> None:
        self.served = {m.name: m for m in models}
        self.calls: list[tuple[str, dict[str, np.ndarray], Any, str]] = []
        self.metadata_reads: list[str] = []
        self.fail: Exception | None = None
        self.closed = False

    def infer(self, model, inputs, outputs=None, *, request_id="", headers=None):
        self.calls.append((model.name, inputs, outputs, request_id))
        if self.fail is not None:
            raise self.fail
        if model.name == "words":
            return {"count": np.array([len(inputs["text"])], dtype=np.int32)}
        batch = next(iter(inputs.values())).shape[0]
        probabilities = np.zeros((batch, 10), dtype=np.float32)
        probabilities[:, 7] = 1.0
        return {"probabilities": probabilities}

    def model_info(self, name: str) -> ModelInfo:
        from triton_score.errors import ModelNotFound

        self.metadata_reads.append(name)
        if self.fail is not None:
            raise self.fail
        if name not in self.served:
            raise ModelNotFound(f"Request for unknown model: '{name}' is not found")
        return self.served[name]

    def load_models(self, names=()):
        return {name: self.model_info(name) for name in (names or sorted(self.served))}

    def ready_model_names(self) -> list[str]:
        return sorted(self.served)

    def is_ready(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


def scorer_for(cls: type | None, gateway: FakeGateway, **settings: Any) -> Scorer:
    registry = ProcessorRegistry()
    if cls is not None:
        registry.register(cls, "test")
    scorer = Scorer(Settings(**settings), gateway, registry)  # type: ignore[arg-type]
    scorer.ensure_loaded()
    return scorer


def json_request(body: bytes, content_type: str = "application/json", **kw: Any) -> Request:
    return decode_request(body, content_type, kw.get("headers"), kw.get("request_id", "r-1"))


# -- request.state -------------------------------------------------------------------------
def test_state_is_per_request_and_reaches_postprocess() -> None:
    @processor("digits")
    class Stateful:
        def preprocess(self, request, model):
            assert request.state == {}  # fresh for every request
            request.state["scale"] = request.json["scale"]
            return {"image": np.ones((1, 8, 8)) * request.json["scale"]}

        def postprocess(self, outputs, request, model):
            return {"scale": request.state["scale"]}

    scorer = scorer_for(Stateful, FakeGateway(DIGITS))
    assert scorer.score(json_request(b'{"scale": 2}')) == {"scale": 2}
    assert scorer.score(json_request(b'{"scale": 3}')) == {"scale": 3}
    one, other = Request(b"x"), Request(b"x")
    one.state["a"] = 1
    assert other.state == {} and one == other  # state never takes part in equality


# -- predict() and the Triton handle -------------------------------------------------------
@processor("digits")
class TwoModels:
    """Counts the words of a caption, then classifies one image per word, in two calls."""

    def preprocess(self, request, model):
        request.state["caption"] = request.json["caption"]
        size = request.json.get("size", 8)
        return {"image": np.zeros((1, size, 8))}

    def predict(self, inputs, request, model, triton):
        assert isinstance(triton, Triton)
        words = triton.infer("words", {"text": np.array(request.state["caption"].split())})
        batch = np.repeat(inputs["image"], int(words["count"][0]), axis=0)
        batch += np.arange(len(batch)).reshape(-1, 1, 1)  # row i holds i: the order shows
        return triton.infer(model, {"image": batch}, {"probabilities": 0})

    def postprocess(self, outputs, request, model):
        return {"images": len(outputs["probabilities"])}


def test_predict_calls_several_models_through_the_one_gateway() -> None:
    gateway = FakeGateway(DIGITS, WORDS)
    scorer = scorer_for(TwoModels, gateway)
    telemetry = RequestTelemetry(request_id="req-7")
    request = json_request(b'{"caption": "a b c"}', request_id="req-7")
    result = scorer.score(request, "digits", telemetry)
    assert result == {"images": 3}
    assert [call[0] for call in gateway.calls] == ["words", "digits"]
    words_inputs = gateway.calls[0][1]
    assert words_inputs["text"].dtype == np.object_  # validated: str -> BYTES
    assert gateway.calls[1][1]["image"].dtype == np.float32  # validated: float64 -> FP32
    assert {call[3] for call in gateway.calls} == {"req-7"}  # the request id reaches Triton
    # predict is timed as "infer"
    assert list(telemetry.timings) == ["preprocess", "infer", "postprocess"]


def test_predict_calls_are_validated_against_the_called_model() -> None:
    gateway = FakeGateway(DIGITS, WORDS)
    scorer = scorer_for(TwoModels, gateway)
    # An image that is not 8x8 is a 400 naming the input, before Triton.
    with pytest.raises(InvalidInput, match="dimension 1 must be 8") as info:
        scorer.score(json_request(b'{"caption": "a b", "size": 3}'), "digits")
    assert info.value.status_code == 400 and info.value.details["input"] == "image"
    assert [call[0] for call in gateway.calls] == ["words"]


def test_predict_calls_beyond_max_batch_size_are_split_and_joined_in_order() -> None:
    gateway = FakeGateway(DIGITS, WORDS)
    scorer = scorer_for(TwoModels, gateway)
    # 9 rows for digits (max_batch_size 4): three calls of 4, 4 and 1 rows, joined back.
    result = scorer.score(json_request(b'{"caption": "a b c d e f g h i"}'), "digits")
    assert result == {"images": 9}
    assert [call[1]["image"].shape[0] for call in gateway.calls[1:]] == [4, 4, 1]
    # each call carries its own rows, in order (row i is filled with i)
    firsts = [call[1]["image"][:, 0, 0].tolist() for call in gateway.calls[1:]]
    assert firsts == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]


def test_rows_above_the_limit_are_a_413_naming_it() -> None:
    gateway = FakeGateway(DIGITS, WORDS)
    scorer = scorer_for(TwoModels, gateway, max_rows=8)
    with pytest.raises(TooManyRows, match="9 rows; a request may send at most 8") as info:
        scorer.score(json_request(b'{"caption": "a b c d e f g h i"}'), "digits")
    assert info.value.status_code == 413 and "SCORE_MAX_ROWS" in info.value.message
    assert info.value.details == {"input": "image", "rows": 9, "limit_rows": 8}
    assert [call[0] for call in gateway.calls] == ["words"]  # digits never called

    @processor("digits")
    class FewRows(TwoModels):
        max_rows = 3

    scorer = scorer_for(FewRows, FakeGateway(DIGITS, WORDS))
    with pytest.raises(TooManyRows, match="max_rows of the digits processor"):
        scorer.score(json_request(b'{"caption": "a b c d"}'), "digits")
    assert scorer.score(json_request(b'{"caption": "a b c"}'), "digits") == {"images": 3}


def test_triton_failures_inside_predict_keep_their_meaning() -> None:
    gateway = FakeGateway(DIGITS, WORDS)
    scorer = scorer_for(TwoModels, gateway)
    gateway.fail = TritonUnavailable("Triton is unreachable")
    with pytest.raises(TritonUnavailable) as info:
        scorer.score(json_request(b'{"caption": "a"}'), "digits")
    assert info.value.status_code == 503


def test_a_model_triton_does_not_serve_is_a_500_naming_it() -> None:
    @processor("digits")
    class CallsNothing:
        def predict(self, inputs, request, model, triton):
            return triton.infer("nowhere", {})

    scorer = scorer_for(CallsNothing, FakeGateway(DIGITS))
    body = b'{"inputs": {"image": [[[0, 0, 0, 0, 0, 0, 0, 0]]]}}'
    with pytest.raises(ProcessorError, match="model 'nowhere', which Triton does not serve"):
        scorer.score(json_request(body))


def test_helper_models_are_read_once_not_per_request() -> None:
    gateway = FakeGateway(DIGITS, WORDS)
    scorer = scorer_for(TwoModels, gateway, models=("digits",))  # words is not at /score
    assert list(scorer.models) == ["digits"]
    reads = len(gateway.metadata_reads)
    for _ in range(3):
        scorer.score(json_request(b'{"caption": "a"}'))
    assert gateway.metadata_reads[reads:] == ["words"]
    assert scorer.helpers["words"] == WORDS


def test_predict_returning_the_wrong_type_is_the_processors_500() -> None:
    @processor("digits")
    class Broken:
        def predict(self, inputs, request, model, triton):
            return [1, 2]

    with pytest.raises(ProcessorError, match=r"predict\(\) returned list"):
        scorer_for(Broken, FakeGateway(DIGITS)).score(
            json_request(b'{"inputs": {"image": [[[0, 0, 0, 0, 0, 0, 0, 0]]]}}')
        )


def test_predict_is_checked_when_the_processor_is_loaded() -> None:
    with pytest.raises(ProcessorDefinitionError, match=r"predict\(\) must accept 4"):

        @processor("m")
        class WrongArity:
            def predict(self, inputs, request, model):
                return {}

    with pytest.raises(ProcessorDefinitionError, match=r"predict\(\) is async"):

        @processor("m")
        class Async:
            async def predict(self, inputs, request, model, triton):
                return {}

    with pytest.raises(ProcessorDefinitionError, match="name the outputs in each triton.infer"):

        @processor("m")
        class Both:
            outputs = {"y": 0}

            def predict(self, inputs, request, model, triton):
                return {}

    @processor("m")  # predict alone is a processor: the default codec does both halves
    class Alone:
        def predict(self, inputs, request, model, triton):
            return triton.infer(model, inputs)


def test_default_codec_around_predict() -> None:
    @processor("digits")
    class Twice:
        def predict(self, inputs, request, model, triton):
            first = triton.infer(model, inputs)
            return {"probabilities": first["probabilities"] * 2}

    gateway = FakeGateway(DIGITS)
    body = b'{"inputs": {"image": [[[0, 0, 0, 0, 0, 0, 0, 0]]]}}'
    with pytest.raises(InvalidInput, match="expected shape"):  # validated in triton.infer
        scorer_for(Twice, gateway).score(json_request(body))
    good = np.zeros((1, 8, 8)).tolist()
    result = scorer_for(Twice, gateway).score(
        json_request(f'{{"inputs": {{"image": {good}}}}}'.encode())
    )
    assert result["model_name"] == "digits" and result["outputs"]["probabilities"][0][7] == 2.0


# -- Response ------------------------------------------------------------------------------
def test_render_response_bodies_and_content_types() -> None:
    assert render({"a": 1}).content_type == "application/json"  # version 1 values as before
    assert render(b"\x89PNG").content_type == "application/octet-stream"
    png = render(Response(b"\x89PNG", content_type="image/png", headers={"x-digit": "7"}))
    assert (png.body, png.content_type, png.status) == (b"\x89PNG", "image/png", 200)
    assert png.headers == {"x-digit": "7"}
    csv = render(Response("a,b\n1,2\n", content_type="text/csv"))
    assert csv.content_type == "text/csv; charset=utf-8" and csv.body == b"a,b\n1,2\n"
    created = render(Response({"id": 3}, status=201, headers={"Location": "/items/3"}))
    assert (created.status, created.body, created.content_type) == (
        201,
        b'{"id":3}',
        "application/json",
    )
    accepted = render(Response(status=202))
    assert accepted.status == 202 and accepted.body == b""
    typed = render(Response("x", headers={"Content-Type": "text/html"}))
    assert typed.content_type == "text/html; charset=utf-8" and typed.headers == {}
    assert render(Response(np.arange(3))).body == b"[0,1,2]"


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"status": 99}, "not an HTTP status"),
        ({"status": "200"}, "must be an int"),
        ({"headers": {"Content-Length": "3"}}, "set by the server"),
        ({"headers": {"x-a": "b\r\nSet-Cookie: c"}}, "line breaks"),
        ({"headers": {"x-a": 1}}, "must be str"),
    ],
)
def test_response_refuses_what_would_break_http(kwargs: dict, error: str) -> None:
    with pytest.raises((TypeError, ValueError), match=error):
        Response("x", **kwargs)


def test_a_bad_response_from_postprocess_is_the_processors_500() -> None:
    @processor("digits")
    class BadStatus:
        def postprocess(self, outputs, request, model):
            return Response("x", status=1000)

    good = np.zeros((1, 8, 8)).tolist()
    with pytest.raises(ProcessorError, match=r"postprocess failed in processor \S*BadStatus"):
        scorer_for(BadStatus, FakeGateway(DIGITS)).score(
            json_request(f'{{"inputs": {{"image": {good}}}}}'.encode())
        )


# -- one schema declaration ----------------------------------------------------------------
@processor("digits")
class Schema:
    request_schema = {
        "type": "object",
        "required": ["image"],
        "properties": {
            "image": {
                "type": "array",
                "minItems": 8,
                "maxItems": 8,
                "items": {
                    "type": "array",
                    "items": {"type": "number", "minimum": 0, "maximum": 16},
                },
            },
            "mode": {"enum": ["fast", "exact"]},
        },
    }
    request_example = {"image": [[0] * 8] * 8}

    def preprocess(self, request, model):
        return {"image": np.asarray([request.json["image"]], dtype=np.float32)}


@pytest.mark.parametrize(
    "body, field, message",
    [
        (b"{}", "image", "field 'image': is required"),
        (b'{"image": "x"}', "image", "field 'image': expected array, got string"),
        (b'{"image": [[1]]}', "image", "expected at least 8 items, got 1"),
        (b'{"image": [[0], [0], [0], [0], [0], [0], [0], ["a"]]}', "image[7][0]", "got string"),
        (b'{"image": [[0], [0], [0], [0], [0], [0], [0], [17]]}', "image[7][0]", "must be <= 16"),
        (b'{"image": [[0], [0], [0], [0], [0], [0], [0], [0]], "mode": "slow"}', "mode", "one of"),
        (b"[1, 2]", "", "the request body: expected object, got array"),
    ],
)
def test_request_schema_validates_and_names_the_field(
    body: bytes, field: str, message: str
) -> None:
    gateway = FakeGateway(DIGITS)
    scorer = scorer_for(Schema, gateway)
    with pytest.raises(InvalidRequest) as info:
        scorer.score(json_request(body))
    error = info.value.to_dict()
    assert error["code"] == "invalid_request" and info.value.status_code == 400
    assert error["field"] == field
    assert message in error["error"]
    assert gateway.calls == []  # refused before preprocess, let alone Triton


def test_request_schema_is_compiled_once_at_load(monkeypatch) -> None:
    from jsonschema import Draft202012Validator

    checked: list[object] = []
    original = Draft202012Validator.check_schema.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(
        Draft202012Validator,
        "check_schema",
        classmethod(
            lambda cls, schema, **kw: checked.append(schema) or original(cls, schema, **kw)
        ),
    )
    registry = ProcessorRegistry()
    registry.register(Schema, "test")
    loaded = registry.for_model("digits")
    assert len(checked) == 2  # at registration, and when the worker's instance is made
    ok = json_request(b'{"image": [[0], [0], [0], [0], [0], [0], [0], [0]]}')
    for _ in range(5):
        loaded.check_request(ok)
    with pytest.raises(InvalidRequest):
        loaded.check_request(json_request(b"{}"))
    assert len(checked) == 2  # never per request


def test_version_1_schema_attributes_still_document_and_now_validate() -> None:
    template = Path(__file__).resolve().parents[2] / "score" / "qa_processor.py"
    from triton_score.processors.loading import load_processors

    registry = load_processors([str(template)], use_entry_points=False)
    qa = registry.for_model("qa_lexical")
    with pytest.raises(InvalidRequest, match="field 'question': is required"):
        qa.check_request(json_request(b'{"context": "Only context."}'))
    qa.check_request(json_request(b'{"context": "a", "question": "b"}'))


@pytest.mark.parametrize(
    "attributes, error",
    [
        ({"request_schema": {"type": "objekt"}}, "request_schema is not a valid JSON schema"),
        ({"request_schema": ["not", "a", "schema"]}, "must be a JSON schema"),
        (
            {"request_schema": {"type": "object", "required": ["a"]}, "request_example": {}},
            "request_example does not match request_schema: field 'a': is required",
        ),
        ({"request_content_types": ("png",)}, "not a media type"),
        ({"request_content_types": ()}, "non-empty"),
        ({"response_content_types": ("text/csv; charset=utf-8",)}, "not a media type"),
    ],
)
def test_bad_declarations_fail_when_the_processor_is_loaded(attributes: dict, error: str) -> None:
    cls = type("Declared", (), {**attributes, "preprocess": lambda self, r, m: {}})
    with pytest.raises(ProcessorDefinitionError, match=error):
        processor("m")(cls)


@processor("digits")
class Photos:
    request_content_types = ("image/png", "image/*")
    response_content_types = ("image/png",)

    def preprocess(self, request, model):
        return {"image": np.zeros((1, 8, 8))}


@pytest.mark.parametrize(
    "content_type, accepted",
    [
        ("image/png", True),
        ("image/jpeg", True),  # image/*
        ("", True),  # no content type stated: let through (curl --data-binary)
        ("application/x-www-form-urlencoded", True),  # curl's default
        ("application/json", False),
        ("text/plain", False),  # JSON's stand-in only where JSON is accepted
        ("audio/wav", False),
    ],
)
def test_request_content_types_refuse_other_media_with_a_415(
    content_type: str, accepted: bool
) -> None:
    registry = ProcessorRegistry()
    registry.register(Photos, "test")
    request = (
        decode_request(b"\x89PNG\r\n", content_type)
        if content_type != "application/json"
        else json_request(b"{}")
    )
    if accepted:
        registry.for_model("digits").check_request(request)
        return
    with pytest.raises(UnsupportedMediaType) as info:
        registry.for_model("digits").check_request(request)
    assert info.value.status_code == 415
    assert info.value.to_dict()["accepted"] == ["image/png", "image/*"]


@processor("digits")
class JsonOrCsv:
    request_content_types = ("application/json", "text/csv")

    def preprocess(self, request, model):
        return {"image": np.zeros((1, 8, 8))}


@pytest.mark.parametrize(
    "content_type, accepted",
    [
        ("application/json", True),
        ("text/csv", True),
        ("text/plain", True),  # AzureML's clients send JSON as text/plain
        ("", True),
        ("application/x-www-form-urlencoded", True),
        ("image/png", False),
    ],
)
def test_a_declaration_with_json_lets_text_plain_through(content_type: str, accepted: bool) -> None:
    registry = ProcessorRegistry()
    registry.register(JsonOrCsv, "test")
    request = json_request(b'{"a": 1}', content_type)
    if accepted:
        registry.for_model("digits").check_request(request)
        return
    with pytest.raises(UnsupportedMediaType, match="send one of"):
        registry.for_model("digits").check_request(request)


def test_openapi_uses_the_declared_content_types() -> None:
    from triton_score.http.openapi import _operation

    photos = _operation(DIGITS, Photos(), "s")
    assert list(photos["requestBody"]["content"]) == ["image/png", "image/*"]
    assert photos["requestBody"]["content"]["image/png"]["schema"]["format"] == "binary"
    assert list(photos["responses"]["200"]["content"]) == ["image/png"]
    assert "415" in photos["responses"]
    schema = _operation(DIGITS, Schema(), "s")
    media = schema["requestBody"]["content"]["application/json"]
    assert media["schema"] is Schema.request_schema and media["example"] == Schema.request_example
    assert "415" not in schema["responses"]


# -- request facts: parameters and directory -----------------------------------------------
def test_model_info_reads_config_parameters() -> None:
    metadata = {"name": "m", "versions": ["1", "2"], "inputs": [], "outputs": []}
    config = {"parameters": {"threshold": {"string_value": "0.5"}, "odd": {}}}
    info = ModelInfo.from_triton(metadata, config)
    assert info.parameters == {"threshold": "0.5", "odd": ""}
    assert info.version == "2" and info.directory is None
    assert ModelInfo.from_triton(metadata, {}).parameters == {}
    hash(info)  # still usable as a key


@pytest.mark.parametrize(
    "host, local",
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.0.1.1", True),
        ("[::1]", True),
        ("triton", False),
        ("10.0.0.7", False),
        ("triton.example.com", False),
    ],
)
def test_local_addresses(host: str, local: bool) -> None:
    assert is_local_address(host) is local


def test_directory_is_the_models_folder_when_triton_is_local(tmp_path: Path) -> None:
    (tmp_path / "digits").mkdir()
    local = scorer_for(
        None,
        FakeGateway(DIGITS, WORDS),
        model_repository=str(tmp_path),
        triton_url="localhost:8000",
    )
    assert local.models["digits"].directory == tmp_path.resolve() / "digits"
    assert local.models["words"].directory is None  # no such folder here
    remote = scorer_for(
        None, FakeGateway(DIGITS), model_repository=str(tmp_path), triton_url="triton:8000"
    )
    assert remote.models["digits"].directory is None
    unknown = scorer_for(None, FakeGateway(DIGITS), triton_url="127.0.0.1:8000")
    assert unknown.models["digits"].directory is None


# -- fresh metadata ------------------------------------------------------------------------
@processor("digits")
class Loads:
    def load(self, model):
        self.seen = [*getattr(self, "seen", []), (model.version, dict(model.parameters))]

    def preprocess(self, request, model):
        return {"image": np.zeros((1, 8, 8))}


def test_refresh_swaps_changed_models_and_loads_the_processor_again(caplog) -> None:
    gateway = FakeGateway(DIGITS)
    scorer = scorer_for(Loads, gateway)
    instance = scorer.processors.for_model("digits").implementation
    before = scorer.models
    assert scorer.refresh(gateway) == [] and scorer.models is before  # nothing changed
    assert instance.seen == [("1", {})]

    from dataclasses import replace

    gateway.served["digits"] = replace(DIGITS, version="2", parameters={"t": "0.9"})
    with caplog.at_level(logging.INFO, logger="triton_score.scoring.catalog"):
        assert scorer.refresh(gateway) == ["digits"]
    assert scorer.models is not before and before["digits"] == DIGITS  # swapped, not mutated
    assert scorer.models["digits"].version == "2"
    assert instance.seen == [("1", {}), ("2", {"t": "0.9"})]
    lines = [r.getMessage() for r in caplog.records if "Triton reloaded" in r.getMessage()]
    assert lines == [
        "model digits: Triton reloaded it (version 1 -> 2, parameters changed); "
        "processor Loads loaded again"
    ]


@processor("digits", "absent")
class ServesTwo:
    def preprocess(self, request, model):
        return {"image": np.zeros((1, 8, 8))}


def test_a_processor_model_triton_does_not_serve_is_logged_at_debug_only(caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="triton_score.scoring.catalog"):
        scorer_for(ServesTwo, FakeGateway(DIGITS))
    unused = [r for r in caplog.records if "does not serve (unused)" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in unused] == [
        (logging.DEBUG, "processors for models Triton does not serve (unused): ['absent']")
    ]


def test_refresh_adds_new_models_and_keeps_unreadable_ones(caplog) -> None:
    gateway = FakeGateway(DIGITS)
    scorer = scorer_for(None, gateway)
    gateway.served["words"] = WORDS
    assert scorer.refresh(gateway) == ["words"]
    assert set(scorer.models) == {"digits", "words"}
    gateway.fail = TritonUnavailable("gone")
    with caplog.at_level(logging.WARNING, logger="triton_score.scoring.catalog"):
        for _ in range(3):
            scorer.refresh(gateway)
    assert set(scorer.models) == {"digits", "words"}
    warnings = [r for r in caplog.records if "metadata not readable" in r.getMessage()]
    assert len(warnings) == 2  # one warning per model, not one per round


def test_refresh_before_loading_does_nothing() -> None:
    gateway = FakeGateway(DIGITS)
    scorer = Scorer(Settings(), gateway, ProcessorRegistry())  # type: ignore[arg-type]
    assert scorer.refresh(gateway) == [] and gateway.metadata_reads == []


def test_refresher_thread_uses_its_own_gateway_and_stops() -> None:
    served = FakeGateway(DIGITS)
    scorer = scorer_for(Loads, served)
    own = FakeGateway(DIGITS)
    from dataclasses import replace

    own.served["digits"] = replace(DIGITS, version="3")
    refresher = MetadataRefresher(scorer, 0.05, lambda: own).start()
    try:
        deadline = time.monotonic() + 5
        while scorer.models["digits"].version != "3" and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        refresher.stop()
    assert scorer.models["digits"].version == "3"
    assert own.metadata_reads and own.closed
    assert served.metadata_reads == ["digits"]  # the worker's gateway: only the first read
    assert not refresher.running


def test_settings_read_the_refresh_interval() -> None:
    assert Settings().metadata_refresh_s == 10.0
    assert Settings.from_env({"SCORE_METADATA_REFRESH_S": "0"}).metadata_refresh_s == 0.0
    assert Settings.from_env({"SCORE_METADATA_REFRESH_S": "2.5"}).metadata_refresh_s == 2.5
    with pytest.raises(ValueError, match="SCORE_METADATA_REFRESH_S"):
        Settings.from_env({"SCORE_METADATA_REFRESH_S": "often"})


# -- AzureML's server ----------------------------------------------------------------------
def test_entry_run_hands_a_response_to_azmlinfsrv_as_an_aml_response(monkeypatch) -> None:
    pytest.importorskip("azureml_inference_server_http")
    from azureml_inference_server_http.api.aml_response import AMLResponse

    from triton_score import entry

    class FakeScorer:
        def run(self, raw, headers):
            return Response("a,b\n", status=201, content_type="text/csv", headers={"x-k": "v"})

    class FakeRuntime:
        scorer = FakeScorer()

    monkeypatch.setattr(entry, "_runtime", FakeRuntime())
    assert "azureml_inference_server_http" in sys.modules
    answer = entry.run("{}")
    assert isinstance(answer, AMLResponse)
    assert answer.status_code == 201 and answer.get_data() == b"a,b\n"
    assert answer.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert answer.headers["x-k"] == "v"


def test_bad_request_from_processors_is_unchanged() -> None:
    """Version 1: BadRequest from preprocess is still the client's 400 with its message."""

    @processor("digits")
    class V1:
        def preprocess(self, request, model):
            raise BadRequest("no")

    with pytest.raises(BadRequest, match="^no$"):
        scorer_for(V1, FakeGateway(DIGITS)).score(json_request(b"{}"))
