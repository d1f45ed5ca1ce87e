"""Shared fixtures: one real Triton per test session, free ports, tiny model builders."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from triton_score.local import LocalTriton
from triton_score.local.processes import free_port, stop_process_group

if TYPE_CHECKING:  # imported by pytest itself, as a plugin (its asserts rewritten)
    from triton_score.testing import TritonServers

#: The plugin processor tests use (``score new`` writes tests that load it too).
pytest_plugins = ["triton_score.testing"]

ROOT = Path(__file__).resolve().parent.parent
#: The console script, as a user runs it (``python -m`` would import a shadowing
#: ``triton_score.py`` in the working directory by itself).
SCORE_COMMAND = str(Path(sys.executable).with_name("score"))
EXAMPLES = ROOT / "models" / "triton"

#: Fixtures that start a real ``tritonserver`` or ``score serve``. A test that uses one, itself
#: or through another fixture, is an integration test: ``pytest -m "not integration"`` is then
#: the fast run (no process started), whatever each file says.
REAL_PROCESSES = frozenset(
    {
        "triton",
        "echo_triton",
        "score_server",
        "plain_server",
        "summer",
        "monitored",
        "explicit_triton",
        "external_triton",
        "served_like_the_image",
        "triton_score_servers",
        "colour_triton",
        "llm_triton",
        "llm_server",
    }
)


#: The folders of the tests, by level; each test gets its folder's marker (``-m serve``).
LEVELS = ("unit", "triton", "serve", "compat", "deployment", "load")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_PROCESSES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        level = item.path.parent.name
        if level in LEVELS:
            item.add_marker(getattr(pytest.mark, level))


def start_triton(repository: Path, **kwargs: object) -> LocalTriton:
    triton = LocalTriton(
        repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        progress=print,
        **kwargs,  # type: ignore[arg-type]
    )
    return triton.start(timeout=120)


@pytest.fixture(scope="session", autouse=True)
def no_shared_memory_left() -> Iterator[None]:
    """After the session, no worker's shared memory region (triton_score.triton.shm) is left in
    /dev/shm: this process's are closed, and those of processes that died without cleaning
    up (a test killed them) are removed and named, so a leak shows in the output.

    Regions of processes still alive are another session's, running beside this one."""
    yield
    from triton_score.triton import shm

    shm.close_all()
    for path in sorted(shm.SHM_DIR.glob(shm.PREFIX + "*")):
        digits = path.name.removeprefix(shm.PREFIX).partition("_")[0]
        if not digits.isdigit():
            continue
        pid = int(digits)
        try:
            os.kill(pid, 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        print(f"removing {path}: left by process {pid}, which is gone")
        path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def triton(triton_score_servers: TritonServers) -> LocalTriton:
    """The example model repository served by a real tritonserver for the whole session.

    The very server of the ``triton_score.testing`` plugin (``triton_score_triton``), so the
    tests ``score new`` writes into tests/ share it. LocalTriton runs the model builders
    beside the repository first (triton_score.repository.builds), so the generated imagenet_lite0 is
    built (models/build_imagenet.py; at once when its stamp is current) and served with the
    committed models.
    """
    return triton_score_servers.get(EXAMPLES)


class ScoreServer:
    """A real ``score serve`` (Gunicorn + gevent workers) subprocess on 127.0.0.1."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
        command: str = "serve",
    ) -> None:
        """``score COMMAND --port <free> ARGS`` (``serve``, or ``azmlinfsrv``'s command line)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        fd, self.log_path = tempfile.mkstemp(prefix="score-serve-", suffix=".log")
        with os.fdopen(fd, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "triton_score", command, "--port", str(self.port), *args],
                cwd=cwd,
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> ScoreServer:
        import requests  # the [test] extra's; a processor author's tests ([dev]) never get here

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"score serve exited early:\n{self.output()}")
            try:
                if requests.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"score serve not ready after {timeout} s:\n{self.output()}")

    def stop(self) -> int | None:
        code = stop_process_group(self.process, grace=60)
        Path(self.log_path).unlink(missing_ok=True)
        return code


@pytest.fixture(scope="session")
def score_server(triton: LocalTriton) -> Iterator[ScoreServer]:
    """``score serve`` with the example processors, in front of the session's Triton."""
    server = ScoreServer("--triton-url", triton.url, "--workers", "2")
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def plain_server(triton: LocalTriton) -> Iterator[ScoreServer]:
    """``score serve`` with no processors: every model goes through the default codec."""
    server = ScoreServer("--triton-url", triton.url, "--processors", "none")
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def run_score(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``score ARGS`` to completion, with a ``TRITON_URL`` where nothing answers: for the
    refusals that must come before anything starts."""
    return subprocess.run(
        [SCORE_COMMAND, *args],
        cwd=cwd,
        env={**os.environ, "TRITON_URL": "127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def echo_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    """A Triton serving the ``echo`` fixture (every datatype back unchanged; a negative
    ``f32`` is a 400) and ``scaler`` (y = 2x): the lean hop's and coalescing's models."""
    import shutil

    repository = tmp_path_factory.mktemp("echo") / "repository"
    for name in ("echo", "scaler"):
        shutil.copytree(ROOT / "tests" / "fixtures" / name, repository / name)
    server = start_triton(repository)
    try:
        yield server
    finally:
        server.stop()
