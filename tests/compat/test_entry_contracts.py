"""The AzureML entry-script contracts, served by ``score serve`` and by azmlinfsrv side by side.

Each fixture script under ``tests/fixtures/`` is written as AzureML's documentation writes
entry scripts and scores the ``digits_onnx`` model through the session's real Triton. Every
test sends the same requests to ``score serve --entry-script`` (Gunicorn, gevent) and to
azmlinfsrv (AzureML's own server, the reference) and asserts they answer alike: status,
body, and the headers the contract is about. Error bodies differ on purpose (ours are
``{"error", "code", "request_id"}``, azmlinfsrv's ``{"message"}``), so for errors only the
status and the flags are compared.

- ``headers_score.py``: ``run(data, request_headers)``, GET, failures, CORS (``AML_CORS_ORIGINS``);
- ``rawhttp_score.py``: ``@rawhttp`` and ``AMLResponse`` from ``azureml.contrib.services``,
  served by ``score serve`` twice: with azmlinfsrv installed (its classes) and with it
  hidden (the runtime's own ``triton_score.azureml`` classes);
- ``schema_score.py``: ``@input_schema``/``@output_schema`` with numpy, pandas and standard
  types, and the schemas in ``/swagger.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import ScoreServer, run_score
from helpers import held_out_digits
from test_azmlinfsrv import Azmlinfsrv, require_azmlinfsrv

from triton_score.local import LocalTriton

FIXTURES = Path(__file__).parent.parent / "fixtures"
ORIGIN = "https://app.example.com"
CORS_ORIGINS = f"{ORIGIN}, https://admin.example.com"
AZMLINFSRV_CLASS = "azureml_inference_server_http.api.aml_response.AMLResponse"
OUR_CLASS = "triton_score.azureml.aml_response.AMLResponse"

#: On PYTHONPATH, makes azmlinfsrv look uninstalled to every process of a server.
HIDE_AZMLINFSRV = """\
import sys


class HideAzmlinfsrv:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "azureml_inference_server_http":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, HideAzmlinfsrv())
"""


def serve(
    script: Path, triton: LocalTriton, folder: Path, *, hide_azmlinfsrv: bool = False, **env: str
) -> ScoreServer:
    """``score serve --entry-script`` (not waited for)."""
    if hide_azmlinfsrv:
        (folder / "sitecustomize.py").write_text(HIDE_AZMLINFSRV)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(folder), os.environ.get("PYTHONPATH")])
        )
    return ScoreServer("--entry-script", str(script), "--triton-url", triton.url, env=env)


def azmlinfsrv(script: Path, triton: LocalTriton, folder: Path, **env: str) -> Azmlinfsrv:
    require_azmlinfsrv()
    return Azmlinfsrv(folder, folder, {"TRITON_URL": triton.url, **env}, script)


def started(*servers: ScoreServer | Azmlinfsrv) -> None:
    """Wait for servers started together; stop them all if one fails."""
    try:
        for server in servers:
            if isinstance(server, ScoreServer):
                server.wait_ready()
            else:
                server.wait_healthy()
    except BaseException:
        for server in servers:
            server.stop()
        raise


@pytest.fixture(scope="class")
def headers_pair(
    triton: LocalTriton, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ScoreServer, Azmlinfsrv]]:
    script = FIXTURES / "headers_score.py"
    folder = tmp_path_factory.mktemp("headers")
    servers = (
        serve(script, triton, folder, AML_CORS_ORIGINS=CORS_ORIGINS),
        azmlinfsrv(script, triton, folder, AML_CORS_ORIGINS=CORS_ORIGINS),
    )
    started(*servers)
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="class")
def rawhttp_servers(
    triton: LocalTriton, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ScoreServer | Azmlinfsrv]]:
    script = FIXTURES / "rawhttp_score.py"
    servers: dict[str, ScoreServer | Azmlinfsrv] = {
        "ours": serve(script, triton, tmp_path_factory.mktemp("rawhttp-ours")),
        "ours without azmlinfsrv": serve(
            script, triton, tmp_path_factory.mktemp("rawhttp-hidden"), hide_azmlinfsrv=True
        ),
        "azmlinfsrv": azmlinfsrv(script, triton, tmp_path_factory.mktemp("rawhttp-azmlinfsrv")),
    }
    started(*servers.values())
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="class")
def schema_pair(
    triton: LocalTriton, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ScoreServer, Azmlinfsrv]]:
    script = FIXTURES / "schema_score.py"
    folder = tmp_path_factory.mktemp("schema")
    servers = (serve(script, triton, folder), azmlinfsrv(script, triton, folder))
    started(*servers)
    yield servers
    for server in servers:
        server.stop()


# -- helpers -----------------------------------------------------------------------------
def digits(count: int = 3) -> tuple[np.ndarray, list[int]]:
    images, labels = held_out_digits()
    return images[:count], [int(label) for label in labels[:count]]


def ask(server: ScoreServer | Azmlinfsrv, method: str = "POST", path: str = "/score", **kwargs):
    return requests.request(method, server.url + path, timeout=60, **kwargs)


def same(ours: requests.Response, theirs: requests.Response, *headers: str) -> None:
    """Same status, same body (JSON compared as values), same values for ``headers``."""
    assert ours.status_code == theirs.status_code, (ours.text, theirs.text)
    if theirs.headers.get("content-type", "").startswith("application/json"):
        assert ours.headers["content-type"].startswith("application/json"), ours.headers
        assert ours.json() == theirs.json()
    else:
        assert ours.content == theirs.content
    for name in headers:
        assert ours.headers.get(name) == theirs.headers.get(name), name


def run_time_ms(response: requests.Response) -> float:
    value = float(response.headers["x-ms-run-fn-exec-ms"])
    assert 0 <= value < 60_000
    assert "." in response.headers["x-ms-run-fn-exec-ms"]  # "%.3f", as azmlinfsrv writes it
    return value


def rawhttp_answers(
    servers: dict[str, ScoreServer | Azmlinfsrv], method: str, **kwargs: Any
) -> list[requests.Response]:
    answers = [ask(server, method, **kwargs) for server in servers.values()]
    *ours, theirs = answers
    for answer in ours:
        same(answer, theirs, "content-type", "x-ms-run-function-failed", "cache-control")
        for name in ("X-Digit", "X-Model"):
            assert answer.headers.get(name) == theirs.headers.get(name), name
    return answers


def pixel_bytes(image: np.ndarray) -> bytes:
    return image.astype(np.uint8).tobytes()


# -- run(data, request_headers) ----------------------------------------------------------
class TestHeaders:
    """``headers_score.py``: ``run(data, request_headers)``, GET, failures and CORS."""

    def test_run_gets_the_request_headers(
        self, headers_pair: tuple[ScoreServer, Azmlinfsrv]
    ) -> None:
        images, labels = digits()
        answers = [
            ask(
                server,
                data=json.dumps({"images": images.tolist()}),
                headers={
                    "content-type": "application/json",
                    "X-Tenant": "contoso",
                    "x-ms-client-request-id": "client-7",
                },
            )
            for server in headers_pair
        ]
        ours, theirs = answers
        same(ours, theirs, "x-ms-client-request-id", "x-ms-run-function-failed")
        assert ours.json() == {
            "digits": labels,
            "tenant": "contoso",
            "content_type": "application/json",
            "client_request_id": "client-7",
        }
        assert ours.headers["x-ms-run-function-failed"] == "False"
        for answer in answers:
            run_time_ms(answer)

    def test_get_passes_the_query_as_a_json_string(
        self,
        headers_pair: tuple[ScoreServer, Azmlinfsrv],
    ) -> None:
        images, labels = digits(1)
        query = {"images": json.dumps(images.tolist())}
        ours, theirs = (
            ask(s, "GET", params=query, headers={"X-Tenant": "t"}) for s in headers_pair
        )
        same(ours, theirs)
        assert ours.json()["digits"] == labels and ours.json()["tenant"] == "t"

    def test_a_failing_run_is_a_500_flagged_as_azmlinfsrv_does(
        self,
        headers_pair: tuple[ScoreServer, Azmlinfsrv],
    ) -> None:
        ours, theirs = (
            ask(s, data="not json", headers={"x-request-id": "r-1"}) for s in headers_pair
        )
        assert ours.status_code == theirs.status_code == 500
        for answer in (ours, theirs):
            assert answer.headers["x-ms-run-function-failed"] == "True"
            assert "x-ms-run-fn-exec-ms" not in answer.headers
            assert "Traceback" not in answer.text and "JSONDecodeError" not in answer.text
        assert ours.json()["request_id"] == "r-1" and ours.json()["code"] == "processor_error"
        head = [ask(s, "HEAD") for s in headers_pair]  # not a method run() reads
        assert [h.status_code for h in head] == [405, 405]

    def test_cors_as_azmlinfsrv(self, headers_pair: tuple[ScoreServer, Azmlinfsrv]) -> None:
        images, _ = digits(1)
        body = json.dumps({"images": images.tolist()})
        # (Vary differs on purpose: ours says Origin on every answer, docs/entry-scripts.md)
        cors = ("access-control-allow-origin", "access-control-allow-methods")
        preflight = {
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type, X-Tenant",
        }
        cases = [
            ("POST", "/score", {"Origin": ORIGIN}, body),
            ("POST", "/score", {"Origin": "HTTPS://ADMIN.EXAMPLE.COM"}, body),  # any case
            ("POST", "/score", {"Origin": "https://evil.example.com"}, body),
            ("GET", "/", {"Origin": ORIGIN}, None),
            ("OPTIONS", "/score", preflight, None),
            ("OPTIONS", "/score", {**preflight, "Access-Control-Request-Method": "PUT"}, None),
            ("OPTIONS", "/score", {**preflight, "Origin": "https://evil.example.com"}, None),
        ]
        for method, path, headers, data in cases:
            ours, theirs = (ask(s, method, path, headers=headers, data=data) for s in headers_pair)
            assert ours.status_code == theirs.status_code, (method, headers)
            for name in cors:
                assert ours.headers.get(name) == theirs.headers.get(name), (name, method, headers)
            assert "Origin" in ours.headers.get("vary", ""), (method, headers)
            # Headers are case-insensitive: compare the names the preflight allows as a set.
            allowed = [
                {
                    h.strip().lower()
                    for h in r.headers.get("access-control-allow-headers", "").split(",")
                }
                for r in (ours, theirs)
            ]
            assert allowed[0] == allowed[1], (method, headers)
        first = ask(headers_pair[0], "OPTIONS", headers=preflight)
        assert first.status_code == 200
        assert first.headers["access-control-allow-origin"] == ORIGIN
        assert first.headers["access-control-allow-methods"] == "GET, POST"
        assert first.headers["vary"] == "Origin"
        evil = ask(headers_pair[0], headers={"Origin": "https://evil.example.com"}, data=body)
        assert evil.status_code == 200 and "access-control-allow-origin" not in evil.headers


# -- @rawhttp and AMLResponse ------------------------------------------------------------
class TestRawHttp:
    """``rawhttp_score.py``: ``@rawhttp`` and ``AMLResponse``, with and without azmlinfsrv."""

    def test_rawhttp_import_paths_resolve_with_or_without_azmlinfsrv(
        self,
        rawhttp_servers: dict[str, ScoreServer | Azmlinfsrv],
    ) -> None:
        classes = {
            name: ask(server, "GET").headers["X-Response-Class"]
            for name, server in rawhttp_servers.items()
        }
        assert classes == {
            "ours": AZMLINFSRV_CLASS,  # azmlinfsrv installed: its classes, as under azmlinfsrv
            "ours without azmlinfsrv": OUR_CLASS,  # the runtime's own, same import paths
            "azmlinfsrv": AZMLINFSRV_CLASS,
        }

    @pytest.mark.parametrize("as_file", [False, True], ids=["body", "multipart"])
    def test_rawhttp_run_gets_the_request_and_its_response_is_sent_as_it_is(
        self, rawhttp_servers: dict[str, ScoreServer | Azmlinfsrv], as_file: bool
    ) -> None:
        images, labels = digits(2)
        for image, label in zip(images, labels, strict=True):
            payload = pixel_bytes(image)
            if as_file:
                kwargs: dict[str, Any] = {"files": {"image": ("digit.raw", payload)}}
            else:
                kwargs = {"data": payload, "headers": {"content-type": "application/octet-stream"}}
            answers = rawhttp_answers(rawhttp_servers, "POST", **kwargs)
            for answer in answers:
                assert answer.status_code == 200
                assert answer.json()["digit"] == label
                assert answer.headers["X-Digit"] == str(label)
                assert answer.headers["X-Model"] == "digits_onnx, 1"  # "a, b": one header per value
                assert answer.headers["content-type"] == "application/json"
                run_time_ms(answer)

    def test_rawhttp_status_and_headers_of_amlresponse(
        self,
        rawhttp_servers: dict[str, ScoreServer | Azmlinfsrv],
    ) -> None:
        for answer in rawhttp_answers(rawhttp_servers, "POST", data=b"\x00" * 10):
            assert answer.status_code == 422
            assert answer.json() == {"error": "expected 64 bytes, one per pixel, got 10"}
            assert answer.headers["cache-control"] == "no-store"
            assert answer.headers["x-ms-run-function-failed"] == "False"
        for answer in rawhttp_answers(rawhttp_servers, "GET", params={"x": "1", "y": "two"}):
            assert answer.status_code == 200 and answer.text == "/score?x=1&y=two"
        # OPTIONS reaches a @rawhttp run() too; the documented example answers 500 to it.
        for answer in rawhttp_answers(rawhttp_servers, "OPTIONS"):
            assert answer.status_code == 500 and answer.text == "bad request"
            assert answer.headers["x-ms-run-function-failed"] == "True"
        assert {ask(s, "PUT").status_code for s in rawhttp_servers.values()} == {405}


# -- @input_schema / @output_schema ------------------------------------------------------
class TestSchema:
    """``schema_score.py``: ``@input_schema``/``@output_schema`` and ``/swagger.json``."""

    def test_schema_fields_are_converted_keyword_arguments(
        self,
        schema_pair: tuple[ScoreServer, Azmlinfsrv],
    ) -> None:
        images, labels = digits(3)
        frame = [{f"p{i}": int(v) for i, v in enumerate(image.ravel())} for image in images]
        bodies = [
            (
                {"images": images.tolist(), "top": 2},
                {"images": "ndarray float32", "pixels": "NoneType"},
            ),
            ({"pixels": frame}, {"images": "NoneType", "pixels": "DataFrame"}),
        ]
        for body, received in bodies:
            ours, theirs = (ask(s, json=body) for s in schema_pair)
            same(ours, theirs, "x-ms-run-function-failed")
            answer = ours.json()
            assert [d[0] for d in answer["digits"]] == labels
            assert len(answer["digits"][0]) == body.get("top", 1)  # the default when left out
            assert answer["received"] == {**received, "top": "int"}
            run_time_ms(ours)
        query = {"images": json.dumps(images[:1].tolist()), "top": "3"}
        ours, theirs = (ask(s, "GET", params=query) for s in schema_pair)
        same(ours, theirs)
        assert ours.json()["digits"][0][0] == labels[0] and len(ours.json()["digits"][0]) == 3

    def test_schema_requests_that_do_not_fit(
        self, schema_pair: tuple[ScoreServer, Azmlinfsrv]
    ) -> None:
        images, _ = digits(1)
        cases = [
            ({"data": json.dumps({"images": images.tolist()}), "headers": {}}, 415),  # no JSON type
            ({"data": "[1, 2]", "headers": {"content-type": "application/json"}}, 400),
            ({"data": "", "headers": {"content-type": "application/json"}}, 400),
            ({"data": '{"images": ', "headers": {"content-type": "application/json"}}, 400),
            ({"json": {"top": 1}}, 500),  # run() raises: neither images nor pixels
            ({"json": {"images": "eight by eight"}}, 500),  # the decorator cannot convert it
        ]
        for kwargs, status in cases:
            ours, theirs = (ask(s, **kwargs) for s in schema_pair)
            assert ours.status_code == theirs.status_code == status, (
                kwargs,
                ours.text,
                theirs.text,
            )
            assert ours.json()["error"] and "Traceback" not in ours.text
            assert theirs.headers["x-ms-run-function-failed"] == str(status == 500)
            if status == 500:
                assert ours.headers["x-ms-run-function-failed"] == "True"

    def test_json_nested_past_the_parsers_is_a_400(
        self, schema_pair: tuple[ScoreServer, Azmlinfsrv]
    ) -> None:
        """Deeper than orjson's 1024 levels, Python's json raises RecursionError: before,
        a 500 with a traceback in the log (security review L5), in the body and the query."""
        ours, _ = schema_pair
        deep = "[" * 5000 + "]" * 5000
        as_json = {"content-type": "application/json"}
        answers = [
            ask(ours, data=deep, headers=as_json),
            ask(ours, data='{"images": ' + deep + "}", headers=as_json),
            # Unclosed: json recurses before it finds that out, and the line stays < 4 KiB.
            ask(ours, "GET", params={"images": "[" * 1100}),
        ]
        for answer in answers:
            assert answer.status_code == 400, answer.text
            assert "nested too deeply" in answer.json()["error"], answer.text
        assert "RecursionError" not in ours.output()

    def test_swagger_documents_the_schemas_as_azmlinfsrv(
        self,
        schema_pair: tuple[ScoreServer, Azmlinfsrv],
    ) -> None:
        ours, theirs = schema_pair
        mine = ask(ours, "GET", "/swagger.json", params={"version": "3"}).json()
        reference = ask(theirs, "GET", "/swagger.json", params={"version": "3"}).json()
        for name in ("ServiceInput", "ServiceOutput"):
            assert mine["components"]["schemas"][name] == reference["components"]["schemas"][name]
        service_input = mine["components"]["schemas"]["ServiceInput"]
        assert set(service_input["properties"]) == {"images", "pixels", "top"}
        assert service_input["properties"]["pixels"]["format"] == "pandas.DataFrame:records"
        operation = mine["paths"]["/score"]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ServiceInput"}


# -- load-time rules, reported by score serve ---------------------------------------------
@pytest.mark.parametrize(
    ("run", "message"),
    [
        ("def run(*data):", "run() cannot take *args, **kwargs or positional-only parameters"),
        ("def run(request_headers):", "run() needs a parameter for the request besides"),
        (
            "@rawhttp\n@input_schema('data', StandardPythonParameterType(1))\ndef run(data):",
            "run() cannot be decorated with both @rawhttp and @input_schema",
        ),
    ],
    ids=["varargs", "headers-only", "rawhttp-and-schema"],
)
def test_score_serve_refuses_a_run_azmlinfsrv_refuses_in_one_line(
    tmp_path: Path, run: str, message: str
) -> None:
    script = tmp_path / "score.py"
    script.write_text(
        "from azureml.contrib.services.aml_request import rawhttp\n"
        "from inference_schema.schema_decorators import input_schema\n"
        "from inference_schema.parameter_types.standard_py_parameter_type import (\n"
        "    StandardPythonParameterType,\n)\n\n\n"
        "def init():\n    pass\n\n\n"
        f"{run}\n    return 1\n"
    )
    done = run_score("serve", "--entry-script", str(script), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith(f"error: entry script score.py: {message}"), line


def test_score_serve_reports_a_script_that_fails_to_import_in_one_line(tmp_path: Path) -> None:
    script = tmp_path / "score.py"
    script.write_text(
        "import not_a_module_anywhere\n\ndef init():\n    pass\n\ndef run(data):\n    pass\n"
    )
    done = run_score("serve", "--entry-script", str(script), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "error: entry script score.py failed to import: "
        "ModuleNotFoundError: No module named 'not_a_module_anywhere'"
    )
