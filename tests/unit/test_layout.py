"""The package's layout: the documented import paths keep working, and the top level holds
only the public API, the composition root and the layer folders (docs/architecture.md)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "triton_score"

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
    "llm",
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


def _modules() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__main__" or path.name == "onnx_model.py":  # a CLI; Triton's model
            continue
        found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def test_every_module_imports_on_its_own() -> None:
    """Each module, first in a fresh interpreter: an import cycle fails here, whichever
    module a user happens to import first."""
    script = (
        "import importlib, subprocess, sys\n"
        "bad = []\n"
        "for name in sys.argv[1:]:\n"
        "    done = subprocess.run([sys.executable, '-c', f'import {name}'],\n"
        "                          capture_output=True, text=True)\n"
        "    if done.returncode:\n"
        "        bad.append((name, done.stderr.strip().splitlines()[-1]))\n"
        "print(bad)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *_modules()], capture_output=True, text=True, timeout=600
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_only_settings_reads_the_environment() -> None:
    """``settings.py`` reads the environment; the rest of the package asks it (a child's
    environment is :func:`triton_score.settings.environment`). Writing a variable for the
    processes a command starts (``score azmlinfsrv``'s flags) is no read."""
    readers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "settings.py" and path.parent == PACKAGE:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if "os.getenv" in code or (
                "os.environ" in code and not re.search(r"os\.environ\[[^]]+\]\s*=", code)
            ):
                readers.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not readers, "\n".join(readers)
