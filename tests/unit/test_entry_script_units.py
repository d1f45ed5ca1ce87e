"""Entry-script contracts without servers: load-time rules, input parsers, AMLResponse, import
paths and CORS, each checked against azmlinfsrv's own code where it has some.

azmlinfsrv's classes are imported here only as a reference (``UserScript``, its input parsers,
its ``AMLResponse``); its loader runs in a child process, since it keeps per-process state
(a module-level ``@rawhttp`` flag, inference-schema's registry under one module name).
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response
from werkzeug.datastructures import Headers
from werkzeug.test import EnvironBuilder

from triton_score.azureml import AMLResponse, install_import_aliases
from triton_score.azureml.host import EntryScript, check
from triton_score.azureml.inputs import JsonStringInput, ObjectInput, RawRequestInput
from triton_score.errors import BadRequest, HTTPFailure, RunFunctionFailed, ScoringError
from triton_score.http.cors import Cors
from triton_score.http.openapi import build_openapi
from triton_score.processors.loading import ProcessorLoadError

HEADER = """\
from azureml.contrib.services.aml_request import rawhttp
from inference_schema.parameter_types.standard_py_parameter_type import (
    StandardPythonParameterType,
)
from inference_schema.schema_decorators import input_schema, output_schema


def init():
    pass


"""

#: run() definitions -> the parser azmlinfsrv picks, or the start of our refusal.
RUNS: dict[str, tuple[str, str]] = {
    "plain": ("def run(raw_data):\n    return raw_data", "JsonStringInput"),
    "headers": (
        "def run(data, request_headers):\n    return [data, request_headers]",
        "JsonStringInput",
    ),
    "keyword-only": ("def run(*, data):\n    return data", "JsonStringInput"),
    "rawhttp": ("@rawhttp\ndef run(request):\n    return request.method", "RawRequestInput"),
    "schema": (
        "@input_schema('a', StandardPythonParameterType(1))\n"
        "@output_schema(StandardPythonParameterType(2))\n"
        "def run(a, b=5, request_headers=None):\n    return a + b",
        "ObjectInput",
    ),
    "varargs": ("def run(*data):\n    pass", "run() cannot take *args, **kwargs or positional"),
    "kwargs": ("def run(data, **more):\n    pass", "run() cannot take *args, **kwargs"),
    "positional-only": ("def run(data, /):\n    pass", "run() cannot take *args, **kwargs"),
    "no-parameter": ("def run():\n    pass", "run() needs a parameter for the request, e.g."),
    "headers-only": (
        "def run(request_headers):\n    pass",
        "run() needs a parameter for the request besides request_headers",
    ),
    "rawhttp-and-schema": (
        "@rawhttp\n@input_schema('a', StandardPythonParameterType(1))\ndef run(a):\n    pass",
        "run() cannot be decorated with both @rawhttp and @input_schema",
    ),
}

#: Loads each script with azmlinfsrv's UserScript; prints {name: parser class or "error"}.
AZMLINFSRV_LOADER = """\
import json, sys
from azureml_inference_server_http.api import aml_request
from azureml_inference_server_http.server.user_script import UserScript, UserScriptError
from inference_schema import schema_util

found = {}
for name, path in json.loads(sys.argv[1]).items():
    aml_request._rawHttpRequested = False
    schema_util.__functions_schema__.clear()
    script = UserScript(path)
    try:
        script.load_script("/")
        found[name] = type(script.input_parser).__name__
    except UserScriptError as exc:
        found[name] = "error"
print(json.dumps(found))
"""


def write_script(folder: Path, name: str, run: str) -> Path:
    path = folder / f"{name.replace('-', '_')}_score.py"
    path.write_text(HEADER + run + "\n")
    return path


# -- load-time rules -----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(RUNS))
def test_load_time_rules(tmp_path: Path, name: str) -> None:
    run, expected = RUNS[name]
    path = write_script(tmp_path, name, run)
    if expected.endswith("Input"):
        script = EntryScript(path)
        assert type(script.input_parser).__name__ == expected
        assert script.wants_headers == ("request_headers" in run)
        assert check(str(path)) == 0
    else:
        with pytest.raises(ProcessorLoadError) as caught:
            EntryScript(path)
        assert str(caught.value).startswith(f"entry script {path.name}: {expected}"), caught.value


def test_load_time_rules_match_azmlinfsrv(tmp_path: Path) -> None:
    """azmlinfsrv accepts and refuses the same run() signatures, and picks the same parser."""
    paths = {name: str(write_script(tmp_path, name, run)) for name, (run, _) in RUNS.items()}
    done = subprocess.run(
        [sys.executable, "-c", AZMLINFSRV_LOADER, json.dumps(paths)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    ours = {name: kind if kind.endswith("Input") else "error" for name, (_, kind) in RUNS.items()}
    assert theirs == ours


def test_missing_functions_and_import_failures_are_load_errors(tmp_path: Path) -> None:
    no_init = tmp_path / "no_init.py"
    no_init.write_text("def run(data):\n    return data\n")
    with pytest.raises(ProcessorLoadError, match=r"no_init.py has no init\(\) function"):
        EntryScript(no_init)
    broken = tmp_path / "broken.py"
    broken.write_text("raise SystemExit('no GPU here')\n")
    with pytest.raises(ProcessorLoadError, match="failed to import: SystemExit: no GPU here"):
        EntryScript(broken)
    with pytest.raises(ProcessorLoadError, match="does not exist"):
        EntryScript(tmp_path / "missing.py")


def test_a_script_loaded_twice_is_read_afresh(tmp_path: Path) -> None:
    """Each load runs the script again: its @rawhttp and inference-schema registrations
    (an @output_schema may be registered only once per module) are its own."""
    path = write_script(tmp_path, "schema", RUNS["schema"][0])
    first, second = EntryScript(path), EntryScript(path)
    assert first.module is not second.module
    assert type(second.input_parser).__name__ == "ObjectInput"
    raw = write_script(tmp_path, "rawhttp", RUNS["rawhttp"][0])
    assert EntryScript(raw).raw_http and EntryScript(raw).raw_http
    assert not EntryScript(write_script(tmp_path, "plain", RUNS["plain"][0])).raw_http


# -- run(): what each kind of script receives ----------------------------------------------
@pytest.fixture
def app() -> Flask:
    return Flask(__name__)


def run_script(app: Flask, path: Path, **request: Any) -> Any:
    script = EntryScript(path)
    request.setdefault("method", "POST")
    with app.test_request_context("/score", **request) as context:
        return script.run(context.request, "req-1")


def test_run_receives_what_each_contract_promises(app: Flask, tmp_path: Path) -> None:
    plain = run_script(app, write_script(tmp_path, "plain", RUNS["plain"][0]), data="raw text")
    assert plain.output == "raw text" and plain.elapsed_ms >= 0
    headers = run_script(
        app,
        write_script(tmp_path, "headers", RUNS["headers"][0]),
        data="{}",
        headers={"X-Tenant": "contoso"},
    )
    assert headers.output[0] == "{}" and headers.output[1]["X-Tenant"] == "contoso"
    raw = write_script(tmp_path, "rawhttp", RUNS["rawhttp"][0])
    assert run_script(app, raw, method="OPTIONS").output == "OPTIONS"
    schema = write_script(tmp_path, "schema", RUNS["schema"][0])
    assert run_script(app, schema, method="POST", json={"a": 1, "ignored": 0}).output == 6
    assert run_script(app, schema, method="GET", query_string="a=2&b=3").output == 5


def test_a_failing_run_is_reported_without_details(app: Flask, tmp_path: Path) -> None:
    path = tmp_path / "fails.py"
    path.write_text("def init():\n    pass\n\ndef run(data):\n    raise KeyError('secret')\n")
    with pytest.raises(RunFunctionFailed) as caught:
        run_script(app, path, data="x")
    assert caught.value.status_code == 500 and "secret" not in caught.value.message
    assert caught.value.to_dict("req-1")["request_id"] == "req-1"
    assert caught.value.headers == {"x-ms-run-function-failed": "True"}


def test_a_rawhttp_from_azmlinfsrv_itself_is_seen(app: Flask, tmp_path: Path) -> None:
    """A script importing azmlinfsrv's own module: its module flag is what marks run()."""
    path = tmp_path / "theirs.py"
    path.write_text(
        "from azureml_inference_server_http.api.aml_request import rawhttp\n"
        "from azureml_inference_server_http.api.aml_response import AMLResponse\n\n"
        "def init():\n    pass\n\n"
        "def tag(function):\n    return lambda request: function(request)\n\n"
        "@tag\n@rawhttp\ndef run(request):\n"
        "    return AMLResponse(request.method, 201, {'X-From': 'azmlinfsrv'})\n"
    )
    result = run_script(app, path, method="POST")
    assert isinstance(result.output, Response)  # azmlinfsrv's AMLResponse is a flask Response
    assert result.output.status_code == 201 and result.output.headers["X-From"] == "azmlinfsrv"


# -- input parsers, against azmlinfsrv's ----------------------------------------------------
def parsed(parser: Any, app: Flask, **request: Any) -> Any:
    with app.test_request_context("/score", **request) as context:
        try:
            return parser(context.request)
        except ScoringError as exc:
            return exc.status_code
        except Exception as exc:  # noqa: BLE001 - azmlinfsrv's InputError subclasses
            return type(exc).__name__


REQUESTS: list[dict[str, Any]] = [
    {"method": "POST", "data": '{"a": 1}', "content_type": "application/json"},
    {"method": "POST", "data": "not json"},
    {"method": "POST", "data": ""},
    {"method": "POST", "data": b"\xff\xfe"},
    {"method": "GET", "query_string": "a=1&b=[1,2]&c=x&c=null&d=%7B%22k%22%3A+1%7D"},
    {"method": "POST", "json": {"a": [1.5, None], "b": "s"}},
    {"method": "POST", "data": '{"a": NaN}', "content_type": "application/json"},
    {"method": "POST", "json": {"b": 2}},
    {"method": "POST", "json": [1, 2]},
    {"method": "POST", "data": "", "content_type": "application/json"},
    {"method": "POST", "data": '{"a": ', "content_type": "application/json"},
    {"method": "POST", "data": '{"a": 1}', "content_type": "text/plain"},
    {"method": "POST", "data": '{"a": 1}', "content_type": "application/vnd.api+json"},
]
#: azmlinfsrv's error classes -> our status codes.
STATUS = {"BadInput": 400, "UnsupportedInput": 415}


@pytest.mark.parametrize("request_kwargs", REQUESTS, ids=lambda r: json.dumps(r, default=str))
def test_input_parsers_read_requests_as_azmlinfsrv(app: Flask, request_kwargs: dict) -> None:
    from azureml_inference_server_http.server import input_parsers as reference

    def run(a, b="default"):
        return a, b

    parameters = list(inspect.signature(run).parameters.values())
    pairs = [
        (JsonStringInput("data"), reference.JsonStringInput("data")),
        (ObjectInput(parameters), reference.ObjectInput(parameters)),
    ]
    for ours, theirs in pairs:
        mine, expected = parsed(ours, app, **request_kwargs), parsed(theirs, app, **request_kwargs)
        if isinstance(expected, str) and expected in STATUS:
            expected = STATUS[expected]
        if isinstance(expected, dict) and isinstance(mine, dict):
            assert json.dumps(mine, default=str) == json.dumps(expected, default=str)
        else:
            assert mine == expected, (type(ours).__name__, mine, expected)
    with app.test_request_context("/score", **request_kwargs) as context:
        assert RawRequestInput("request")(context.request) == {"request": context.request}


def test_object_input_names_the_missing_parameter(app: Flask) -> None:
    def run(images, top=3):
        pass

    parser = ObjectInput(list(inspect.signature(run).parameters.values()))
    missing = pytest.raises(BadRequest, match="no value for run\\(\\)'s parameter 'images'")
    with app.test_request_context("/score", method="POST", json={"top": 1}) as context, missing:
        parser(context.request)
    csv = {"method": "POST", "data": "x", "content_type": "text/csv"}
    refused = pytest.raises(HTTPFailure)
    with app.test_request_context("/score", **csv) as context, refused as caught:
        parser(context.request)
    assert caught.value.status_code == 415


# -- AMLResponse, against azmlinfsrv's ------------------------------------------------------
AML_RESPONSES: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    (({"a": [1, 2]}, 200), {"json_str": True}),
    (("plain text", 404), {}),
    ((b"\x89PNG", 200, {"Content-Type": "image/png"}), {}),
    (("x", 201, {"X-Many": "a, b,c", "Cache-Control": "no-store"}), {}),
    ((None, 204), {}),
    (("fail", 503), {"run_function_failed": True}),
    (({"nested": {"k": None}}, 400, {"Retry-After": "5"}), {"json_str": True}),
]


@pytest.mark.parametrize(("args", "kwargs"), AML_RESPONSES)
def test_amlresponse_is_azmlinfsrvs(args: tuple, kwargs: dict) -> None:
    from azureml_inference_server_http.api.aml_response import AMLResponse as Reference

    ours, theirs = AMLResponse(*args, **kwargs), Reference(*args, **kwargs)
    assert isinstance(ours, Response)
    assert ours.status_code == theirs.status_code
    assert ours.get_data() == theirs.get_data()
    assert sorted(ours.headers.items()) == sorted(theirs.headers.items())


def test_amlresponse_is_lenient_where_azmlinfsrv_would_fail() -> None:
    import numpy as np

    response = AMLResponse({"scores": np.arange(3, dtype=np.float32)}, 200, json_str=True)
    assert json.loads(response.get_data()) == {"scores": [0.0, 1.0, 2.0]}
    typed = AMLResponse("x", 200, {"content-type": "text/csv", "X-Count": 3})
    assert typed.headers.getlist("Content-Type") == ["text/csv"]
    assert typed.headers["X-Count"] == "3"


# -- import paths ---------------------------------------------------------------------------
ALIASES_WITHOUT_AZMLINFSRV = """\
import sys


class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "azureml_inference_server_http":
            raise ModuleNotFoundError(name, name=name)


sys.meta_path.insert(0, Hide())
from triton_score.azureml import install_import_aliases

install_import_aliases()
from azureml.contrib.services.aml_request import AMLRequest, rawhttp
from azureml.contrib.services.aml_response import AMLResponse
from azureml_inference_server_http.api.aml_response import AMLResponse as Same

import triton_score.azureml as ours

assert AMLResponse is Same is ours.AMLResponse and rawhttp is ours.rawhttp, AMLResponse
assert AMLRequest is ours.AMLRequest
assert "azureml_inference_server_http" not in sys.modules  # only the leaf modules
# No stand-in for the azureml package itself: absent, or the real namespace (the
# data collector, azureml-ai-monitoring, installs azureml/ai/monitoring).
assert getattr(sys.modules.get("azureml"), "__path__", None) is not None or (
    "azureml" not in sys.modules
)
print("ok")
"""


def test_import_paths_resolve_to_the_runtime_without_azmlinfsrv() -> None:
    done = subprocess.run(
        [sys.executable, "-c", ALIASES_WITHOUT_AZMLINFSRV],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_import_paths_resolve_to_azmlinfsrv_when_installed() -> None:
    import azureml_inference_server_http.api.aml_response as theirs

    resolved = install_import_aliases()
    assert resolved["azureml.contrib.services.aml_response"] is theirs
    assert resolved["azureml_inference_server_http.api.aml_response"] is theirs
    from azureml.contrib.services.aml_response import AMLResponse as Documented

    assert Documented is theirs.AMLResponse


# -- CORS -----------------------------------------------------------------------------------
def cors_headers(cors: Cors, method: str = "POST", **headers: str) -> dict[str, str]:
    environ = EnvironBuilder("/score", method=method, headers=headers).get_environ()
    answer = Headers()
    cors.apply(environ, answer)
    return dict(answer)


def test_cors_origins_exact_wildcard_and_patterns() -> None:
    exact = Cors(["https://a.example"])
    assert cors_headers(exact, Origin="https://A.example")["Access-Control-Allow-Origin"] == (
        "https://A.example"
    )
    # The answer depends on Origin even with one exact origin (with it or without it): Vary.
    assert cors_headers(exact, Origin="https://a.example")["Vary"] == "Origin"
    assert "Access-Control-Allow-Origin" not in cors_headers(exact, Origin="https://b.example")
    assert "Access-Control-Allow-Origin" not in cors_headers(exact)  # no Origin: not CORS
    assert cors_headers(exact)["Vary"] == "Origin"
    anything = Cors(["*"])
    allowed = cors_headers(anything, Origin="https://b.example")
    assert allowed["Access-Control-Allow-Origin"] == "https://b.example"
    assert allowed["Vary"] == "Origin"
    pattern = Cors([r"https://.*\.example\.com"])
    assert "Access-Control-Allow-Origin" in cors_headers(pattern, Origin="https://x.example.com")
    assert "Access-Control-Allow-Origin" not in cors_headers(pattern, Origin="https://example.org")
    # A pattern matches the whole origin, never a prefix of it.
    careful = Cors([r"https://app\.example\.com"])
    assert "Access-Control-Allow-Origin" in cors_headers(careful, Origin="https://app.example.com")
    for evil in ("https://app.example.com.evil.net", "https://app.example.com:8443"):
        assert "Access-Control-Allow-Origin" not in cors_headers(careful, Origin=evil), evil
    assert "Access-Control-Allow-Origin" not in cors_headers(
        pattern, Origin="https://x.example.com.evil.net"
    )
    preflight = cors_headers(
        exact,
        "OPTIONS",
        Origin="https://a.example",
        **{"Access-Control-Request-Method": "post", "Access-Control-Request-Headers": "b, a"},
    )
    assert preflight["Access-Control-Allow-Methods"] == "GET, POST"
    assert preflight["Access-Control-Allow-Headers"] == "a, b"
    with pytest.raises(ValueError, match="not a valid pattern"):
        Cors(["https://(unclosed"])


# -- /swagger.json ---------------------------------------------------------------------------
def test_swagger_of_an_undecorated_script_is_azmlinfsrvs_open_object(tmp_path: Path) -> None:
    from triton_score.settings import Settings

    class Runtime:
        settings = Settings()
        scorer = None
        entry_script = EntryScript(write_script(tmp_path, "plain", RUNS["plain"][0]))

    document = build_openapi(Runtime())
    schemas = document["components"]["schemas"]
    assert schemas["ServiceInput"] == schemas["ServiceOutput"] == {"type": "object", "example": {}}
    assert "post" in document["paths"]["/score"]


def test_native_score_keeps_post_only_and_gets_cors_too() -> None:
    """Without an entry script ``/score`` is POST only (GET 405, OPTIONS 200 with Allow), and
    AML_CORS_ORIGINS applies to every route, as azmlinfsrv's does."""
    from triton_score.http.app import create_app
    from triton_score.settings import Settings

    settings = Settings(
        triton_url="127.0.0.1:9", processors=("none",), cors_origins=("https://a.example",)
    )
    app = create_app(settings, init=False)
    client = app.test_client()
    assert app.extensions["triton_score"].entry_script is None
    refused = client.get("/score")
    assert refused.status_code == 405 and refused.json["code"] == "method_not_allowed"
    preflight = client.options(
        "/score",
        headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200 and preflight.headers["Allow"] == "OPTIONS, POST"
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://a.example"
    assert preflight.headers["Access-Control-Allow-Methods"] == "GET, POST"
    health = client.get("/", headers={"Origin": "https://a.example"})
    assert health.headers["Access-Control-Allow-Origin"] == "https://a.example"
    app.extensions["triton_score"].close()
