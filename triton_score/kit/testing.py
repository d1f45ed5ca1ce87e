"""A pytest plugin for testing processors against the real Triton, in a few lines.

Load it in a test module or in your top-level ``conftest.py`` (it is not registered for
every pytest run)::

    pytest_plugins = ["triton_score.testing"]


    def test_iris(triton_score_client):
        client = triton_score_client("score/iris_processor.py")
        response = client.post("/score/iris", json={"X": [5.1, 3.5, 1.4, 0.2]})
        assert response.status_code == 200
        assert response.get_json()["probabilities"][0]["label"] == "setosa"

Fixtures (all prefixed ``triton_score_``, so they never clash with a project's own):

- ``triton_score_repository`` (session): the model repository to serve; ``$SCORE_MODEL_REPOSITORY``,
  else ``models/triton`` under pytest's root folder. Override it (a fixture of that name in
  your ``conftest.py`` or test module) to serve another one.
- ``triton_score_code_dir`` (session): the code directory whose processors
  ``triton_score_client()`` loads when given none; ``$SCORE_CODE_DIR``, else ``score/``
  under the root folder, when there is one.
- ``triton_score_triton``: a real local Triton serving the repository, started once per test
  session and repository (free ports; the model builders run first, as ``score serve`` runs
  them), stopped at the end of the session.
- ``triton_score_client``: ``triton_score_client(*processors, **settings)`` is a Flask test
  client of the scoring app in front of that Triton, with these processors (``.py`` files,
  modules, ``module:Class``) and no others; with none, the processors ``score serve`` would
  load. ``settings`` are :class:`~triton_score.settings.Settings` fields.
- ``triton_score_model_info``: ``triton_score_model_info("iris")`` is the
  :class:`~triton_score.ModelInfo` of a model of the repository built from its
  ``config.pbtxt``, offline (also a model folder or a ``config.pbtxt`` path).

- ``triton_score_processor``: ``triton_score_processor("score/iris_processor.py", "iris")``
  is an instance of a model's processor, created as the server creates it.
- ``triton_score_preprocess``: ``triton_score_preprocess(processor, model)`` runs a processor
  on its ``request_example`` as the server would and checks every tensor against the
  ``ModelInfo``: the tensors, or a failure naming every problem (no server needed).

Import nothing from this module in a test: name the fixtures (pytest rewrites the plugin's
asserts only when it loads the plugin itself).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from triton_score.model.info import ModelInfo
from triton_score.settings import ProcessSettings

if TYPE_CHECKING:
    from flask.testing import FlaskClient

    from triton_score.local import LocalTriton

__all__ = ["TritonServers"]


class TritonServers:
    """The local Tritons of a test session, one per model repository, started on first use."""

    def __init__(self) -> None:
        self._servers: dict[Path, LocalTriton] = {}

    def get(self, repository: str | os.PathLike[str]) -> LocalTriton:
        """The server of ``repository``, started now if it is not running yet."""
        from triton_score.local import LocalTriton
        from triton_score.local.processes import free_port

        key = Path(repository).resolve()
        server = self._servers.get(key)
        if server is None or not server.is_running():
            if server is not None:
                server.stop()
            server = LocalTriton(
                key,
                http_port=free_port(),
                grpc_port=free_port(),
                metrics_port=free_port(),
                progress=print,
            )
            server.start(timeout=180)
            self._servers[key] = server
        return server

    def stop(self) -> None:
        for server in self._servers.values():
            server.stop()
        self._servers.clear()


@pytest.fixture(scope="session")
def triton_score_servers() -> Iterator[TritonServers]:
    """The session's local Tritons (see :class:`TritonServers`), all stopped at its end."""
    servers = TritonServers()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def triton_score_repository(pytestconfig: pytest.Config) -> Path:
    """The model repository the tests serve: ``$SCORE_MODEL_REPOSITORY``, else
    ``models/triton`` under pytest's root folder. Override this fixture to choose."""
    explicit = ProcessSettings.from_env().model_repository
    return Path(explicit) if explicit else pytestconfig.rootpath / "models" / "triton"


@pytest.fixture(scope="session")
def triton_score_code_dir(pytestconfig: pytest.Config) -> Path | None:
    """The code directory: ``$SCORE_CODE_DIR``, else ``score/`` under pytest's root folder."""
    explicit = ProcessSettings.from_env().code_directory
    if explicit:
        return Path(explicit)
    folder = pytestconfig.rootpath / "score"
    return folder if folder.is_dir() else None


@pytest.fixture(scope="module")
def triton_score_triton(
    triton_score_servers: TritonServers, triton_score_repository: Path
) -> LocalTriton:
    """A real Triton serving ``triton_score_repository`` (started once per session)."""
    return triton_score_servers.get(triton_score_repository)


@pytest.fixture
def triton_score_client(
    triton_score_triton: LocalTriton,
    triton_score_repository: Path,
    triton_score_code_dir: Path | None,
) -> Iterator[Callable[..., FlaskClient]]:
    """``triton_score_client(*processors, **settings)``: a Flask test client of the scoring
    app, in front of ``triton_score_triton``, with these processors and no others (none: the
    processors ``score serve`` would load from the code directory)."""
    from triton_score.http.app import create_app
    from triton_score.processors.loading import load_processors
    from triton_score.runtime import Runtime, build_runtime
    from triton_score.settings import Settings

    runtimes: list[Runtime] = []

    def make(*processors: str | os.PathLike[str], **settings: Any) -> FlaskClient:
        specs = [str(p) for p in processors]
        registry = load_processors(
            specs,
            code_directory=None if specs else triton_score_code_dir,
            model_repository=None if specs else triton_score_repository,
            use_entry_points=not specs,
        )
        options: dict[str, Any] = {
            "triton_url": triton_score_triton.url,
            "model_repository": str(triton_score_repository),
            "code_directory": str(triton_score_code_dir or ""),
            "metadata_refresh_s": 0,
            **settings,
        }
        runtime = build_runtime(Settings(**options), registry=registry)
        runtimes.append(runtime)
        return create_app(runtime=runtime).test_client()

    try:
        yield make
    finally:
        for runtime in runtimes:
            runtime.close()


@pytest.fixture
def triton_score_model_info(triton_score_repository: Path) -> Callable[[str | Path], ModelInfo]:
    """``triton_score_model_info("iris")``: the model's :class:`ModelInfo` from its
    ``config.pbtxt``, offline; a model name of the repository, a model folder or a file."""

    def make(model: str | Path) -> ModelInfo:
        path = Path(model)
        if not path.exists() and len(path.parts) == 1:
            path = triton_score_repository / str(model)
        return ModelInfo.from_config_file(path)

    return make


@pytest.fixture
def triton_score_processor() -> Callable[[str | os.PathLike[str], str], Any]:
    """``triton_score_processor("score/iris_processor.py", "iris")``: an instance of the
    processor of a model that a ``.py`` file, module or ``module:Class`` defines, created as
    the server creates it (``load`` not called yet)."""
    from triton_score.kit.check import load_processor

    return load_processor


@pytest.fixture
def triton_score_preprocess() -> Callable[..., dict[str, Any]]:
    """``triton_score_preprocess(processor, model, example=None)``: run a processor (an
    instance, or a file/module as above) on its ``request_example`` (or ``example``) as the
    server would, ``load(model)`` first, and check every tensor against ``model`` (a
    :class:`~triton_score.ModelInfo`): returns the tensors, or fails naming every problem."""
    from triton_score.kit.check import load_processor, preprocess_example

    def run(processor: Any, model: ModelInfo, example: Any = None) -> dict[str, Any]:
        if isinstance(processor, str | os.PathLike):
            processor = load_processor(processor, model.name)
        return preprocess_example(processor, model, example)

    return run
