"""A drop-in for azmlinfsrv: what AzureML's server does that scripts and tools see, done by
``score azmlinfsrv`` (its command line, mapped onto ``score serve``) and compared with
azmlinfsrv itself, both real servers started the same way side by side:

- the environment a script gets: ``AML_APP_ROOT``, ``AZUREML_ENTRY_SCRIPT``, and
  ``AZUREML_MODEL_DIR`` from ``--model_dir`` over the environment's;
- ``x-ms-server-version`` on every answer, off with ``SERVER_VERSION_LOG_RESPONSE_ENABLED``
  set to anything but ``true``;
- ``/swagger.json``: Swagger 2.0 by default, OpenAPI 3 with ``?version=3``;
- the separate health port (``SEPERATE_HEALTH_ENDPOINT=true``, ``--health_port``);
- ``--worker_count``, ``--access_control_allow_origins``;
- started in a folder with no model repository, in front of a running Triton;
- a script with a syntax error: file, line and error on stdout, and a non-zero exit.

Deliberate differences (docs/entry-scripts.md): the version header's value is ours; our
health port serves the probes only (azmlinfsrv's serves every route); error bodies.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from conftest import ScoreServer, free_port
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV2SpecValidator, OpenAPIV30SpecValidator
from test_azmlinfsrv import Azmlinfsrv, require_azmlinfsrv
from test_entry_contracts import started

from triton_score import __version__
from triton_score.local import LocalTriton

FIXTURES = Path(__file__).parent.parent / "fixtures"
SCRIPT = FIXTURES / "environment_score.py"
ORIGIN = "https://app.example.com"
OURS = f"triton-score/{__version__}"


@dataclass
class Pair:
    ours: ScoreServer
    theirs: Azmlinfsrv
    folder: Path
    health: dict[str, int]  # server -> its health port

    def both(self) -> tuple[tuple[str, ScoreServer | Azmlinfsrv], ...]:
        return (("ours", self.ours), ("azmlinfsrv", self.theirs))


def azmlinfsrv_args(health_port: int) -> tuple[str, ...]:
    """The same command line for both, as an image would write it."""
    return (
        "--model_dir",
        "model",
        "--health_port",
        str(health_port),
        "--worker_count",
        "2",
        "--access_control_allow_origins",
        ORIGIN,
    )


@pytest.fixture(scope="module")
def pair(triton: LocalTriton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    require_azmlinfsrv()
    folder = tmp_path_factory.mktemp("drop-in")  # no models/triton here
    (folder / "model").mkdir()
    env = {
        "TRITON_URL": triton.url,
        "SEPERATE_HEALTH_ENDPOINT": "true",
        "AZUREML_MODEL_DIR": str(folder / "elsewhere"),  # --model_dir wins
    }
    health = {"ours": free_port(), "azmlinfsrv": free_port()}
    ours = ScoreServer(
        "--entry_script",
        str(SCRIPT),
        "--host",
        "127.0.0.1",
        *azmlinfsrv_args(health["ours"]),
        command="azmlinfsrv",
        env=env,
        cwd=folder,
    )
    theirs = Azmlinfsrv(folder, folder, env, SCRIPT, azmlinfsrv_args(health["azmlinfsrv"]))
    started(ours, theirs)
    yield Pair(ours, theirs, folder, health)
    ours.stop()
    theirs.stop()


def get(server: ScoreServer | Azmlinfsrv, path: str, **kwargs) -> requests.Response:  # type: ignore[no-untyped-def]
    return requests.get(server.url + path, timeout=30, **kwargs)


def test_the_script_gets_the_environment_azmlinfsrv_gives_it(pair: Pair) -> None:
    answers = {name: get(server, "/score").json() for name, server in pair.both()}
    assert (
        answers["ours"]
        == answers["azmlinfsrv"]
        == {
            "AML_APP_ROOT": str(pair.folder),
            "AZUREML_ENTRY_SCRIPT": str(SCRIPT.resolve()),
            "AZUREML_MODEL_DIR": "model",  # as given on the command line, over the environment
            "at_init": str(pair.folder),
        }
    )


def test_started_without_a_local_repository_in_front_of_a_running_triton(pair: Pair) -> None:
    assert not (pair.folder / "models").exists()
    assert "using the Triton already running at" in pair.ours.output()
    assert "starting 2 worker(s)" in pair.ours.output()  # --worker_count


def test_every_answer_says_which_server_answered(pair: Pair) -> None:
    for path in ("/", "/score", "/swagger.json"):
        ours, theirs = (get(server, path) for _, server in pair.both())
        assert ours.headers.get("x-ms-server-version") == OURS, path
        assert theirs.headers.get("x-ms-server-version", "").startswith("azmlinfsrv/"), path
    # A path no route has: azmlinfsrv's blueprint hook never runs, ours is app-wide.
    unknown = get(pair.ours, "/no/such/route")
    assert unknown.status_code == 404 and unknown.headers["x-ms-server-version"] == OURS
    assert "x-ms-server-version" not in get(pair.theirs, "/no/such/route").headers
    refused = requests.put(pair.ours.url + "/score", timeout=30)
    assert refused.status_code == 405 and refused.headers["x-ms-server-version"] == OURS


def test_swagger_is_2_0_by_default_and_openapi_3_on_request(pair: Pair) -> None:
    documents = {name: get(server, "/swagger.json").json() for name, server in pair.both()}
    for name, document in documents.items():
        assert document["swagger"] == "2.0", name
        assert document["info"]["title"] and document["info"]["version"], name
        validate(document, cls=OpenAPIV2SpecValidator)  # ours and theirs: valid Swagger 2.0
    ours, theirs = documents["ours"], documents["azmlinfsrv"]
    for name in ("ServiceInput", "ServiceOutput"):
        assert ours["definitions"][name] == theirs["definitions"][name]
    assert "/score" in ours["paths"] and "post" in ours["paths"]["/score"]
    (body,) = ours["paths"]["/score"]["post"]["parameters"]
    assert body["in"] == "body" and body["schema"] == {"$ref": "#/definitions/ServiceInput"}

    for version in ("3", "3.0"):
        three = {
            name: get(s, "/swagger.json", params={"version": version}).json()
            for name, s in pair.both()
        }
        assert three["ours"]["openapi"].startswith("3.0") and three["azmlinfsrv"][
            "openapi"
        ].startswith("3.0")
        validate(three["ours"], cls=OpenAPIV30SpecValidator)
    assert get(pair.ours, "/swagger.json", params={"version": "2.0"}).json()["swagger"] == "2.0"
    native = get(pair.ours, "/openapi.json").json()
    assert native == get(pair.ours, "/swagger.json", params={"version": "3"}).json()
    unknown = [get(s, "/swagger.json", params={"version": "4"}) for _, s in pair.both()]
    assert [r.status_code for r in unknown] == [404, 404]
    assert unknown[0].json()["code"] == "unknown_document_version"


def test_the_separate_health_port_serves_the_probe(pair: Pair) -> None:
    for name in ("ours", "azmlinfsrv"):
        probe = requests.get(f"http://127.0.0.1:{pair.health[name]}/", timeout=10)
        assert probe.status_code == 200 and probe.text == "Healthy", name
    # Ours keeps that port to the probes (azmlinfsrv serves every route there too).
    scoring = requests.get(f"http://127.0.0.1:{pair.health['ours']}/score", timeout=10)
    assert scoring.status_code == 404 and scoring.json()["code"] == "health_port_only"
    theirs = requests.get(f"http://127.0.0.1:{pair.health['azmlinfsrv']}/score", timeout=10)
    assert theirs.status_code == 200
    ready = requests.get(f"http://127.0.0.1:{pair.health['ours']}/v2/health/ready", timeout=10)
    assert ready.status_code == 200
    assert get(pair.ours, "/score").status_code == 200  # the main port serves everything


def test_cors_origins_from_the_command_line(pair: Pair) -> None:
    answers = [get(server, "/score", headers={"Origin": ORIGIN}) for _, server in pair.both()]
    assert [a.headers.get("access-control-allow-origin") for a in answers] == [ORIGIN, ORIGIN]


@pytest.mark.parametrize("value", ["false", "False", "0", ""])
def test_the_version_header_is_off_unless_true(
    value: str, triton: LocalTriton, tmp_path: Path
) -> None:
    from triton_score.settings import Settings

    assert (
        Settings.from_env({"SERVER_VERSION_LOG_RESPONSE_ENABLED": value}).server_version_header
        is False
    )
    assert Settings.from_env({"SERVER_VERSION_LOG_RESPONSE_ENABLED": "TRUE"}).server_version_header
    if value != "false":
        return  # one real pair is enough for the header itself
    env = {"TRITON_URL": triton.url, "SERVER_VERSION_LOG_RESPONSE_ENABLED": value}
    ours = ScoreServer(
        "--entry_script",
        str(SCRIPT),
        "--host",
        "127.0.0.1",
        command="azmlinfsrv",
        env=env,
        cwd=tmp_path,
    )
    theirs = Azmlinfsrv(tmp_path, tmp_path, env, SCRIPT)
    started(ours, theirs)
    try:
        for server in (ours, theirs):
            for path in ("/", "/score", "/swagger.json"):
                assert "x-ms-server-version" not in get(server, path).headers, path
    finally:
        ours.stop()
        theirs.stop()


@pytest.mark.integration  # starts azmlinfsrv
def test_a_syntax_error_is_located_on_stdout_and_the_server_exits(tmp_path: Path) -> None:
    require_azmlinfsrv()
    script = tmp_path / "score.py"
    script.write_text("def init():\n    pass\n\n\ndef run(data)\n    return data\n")
    ours = subprocess.run(
        [sys.executable, "-m", "triton_score", "azmlinfsrv", "--entry_script", str(script)]
        + ["--host", "127.0.0.1", "--port", str(free_port()), "--triton-url", "127.0.0.1:9"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    theirs = Azmlinfsrv(tmp_path, tmp_path, {"TRITON_URL": "127.0.0.1:9"}, script)
    try:
        theirs_code = theirs.process.wait(timeout=120)
    finally:
        theirs.stop()
    assert ours.returncode != 0 and theirs_code != 0
    for stdout in (ours.stdout, theirs.output()):
        assert f'File "{script}", line 5' in stdout, stdout
        assert "def run(data)" in stdout and "SyntaxError: expected ':'" in stdout, stdout
    assert "Traceback" not in ours.stdout  # a syntax error has no frames of ours to show
    assert ours.stderr.strip().endswith("SyntaxError: expected ':' (score.py, line 5)")


def test_azmlinfsrv_flags_we_do_not_support_are_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "triton_score", "azmlinfsrv", "--entry_script", str(SCRIPT)]
        + ["--appinsights_instrumentation_key", "00000000-0000-0000-0000-000000000000"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--appinsights_instrumentation_key is azmlinfsrv's and not supported" in done.stderr
