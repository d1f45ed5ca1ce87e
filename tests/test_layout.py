"""The package's layout: the documented import paths keep working, and the top level holds
only the public API, the composition root and the layer folders (docs/architecture.md)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "triton_score"

#: What the top level of triton_score/ may hold: every other module is in a layer's folder.
TOP_LEVEL = {
    "__init__.py",
    "__main__.py",
    "errors.py",
    "settings.py",
    "runtime.py",
    # the documented paths, kept as aliases of the moved modules
    "entry.py",
    "testing.py",
    "nltk_data.py",
    "gunicorn_conf.py",
}
LAYERS = {
    "http",
    "scoring",
    "codecs",
    "processors",
    "model",
    "triton",
    "telemetry",
    "azureml",
    "serve",
    "cli",
    "kit",
    "repository",
    "local",
}
ALIASES = {
    "triton_score.entry": "triton_score.azureml.entry",
    "triton_score.testing": "triton_score.kit.testing",
    "triton_score.nltk_data": "triton_score.kit.nltk_data",
    "triton_score.gunicorn_conf": "triton_score.serve.gunicorn_conf",
}


def test_the_top_level_holds_the_api_and_the_layer_folders_only() -> None:
    files = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py"}
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert files == TOP_LEVEL, files ^ TOP_LEVEL
    assert folders == LAYERS, folders ^ LAYERS


@pytest.mark.parametrize(("documented", "module"), sorted(ALIASES.items()))
def test_a_documented_path_is_the_moved_module_itself(documented: str, module: str) -> None:
    assert importlib.import_module(documented) is importlib.import_module(module)


def test_the_other_documented_paths_resolve() -> None:
    from triton_score.cli import main
    from triton_score.http.app import create_app
    from triton_score.processors import Processor, processor

    assert callable(main) and callable(create_app) and callable(processor) and Processor
    from triton_score.entry import init, run
    from triton_score.testing import TritonServers

    assert callable(init) and callable(run) and TritonServers


def test_python_m_runs_the_documented_modules() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "triton_score.nltk_data", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: python -m triton_score.nltk_data" in done.stdout


def test_gunicorn_reads_its_settings_through_the_documented_path() -> None:
    """``--config python:triton_score.gunicorn_conf``: the settings are the module's names."""
    conf = importlib.import_module("triton_score.gunicorn_conf")
    assert conf.worker_class == "gevent" and callable(conf.post_fork)
