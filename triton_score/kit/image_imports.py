"""Which imports of a code directory's processors the container image would lack.

A processor that imports a package installed on the author's machine but not in the image
loads here and fails in production (``pandas`` from a test extra, say). The image installs
``triton-score[qa,imagenet]`` (the Dockerfile's line; :data:`IMAGE_EXTRAS`) and the code
directory's ``requirements.txt``, each with what they depend on. :func:`missing_in_image`
reads every processor file's imports (its syntax tree: nothing is run), leaves out the
standard library, ``triton_score`` and the code directory's own modules, and names each
imported package that no distribution of that set provides.

Installed metadata answers "which distribution provides module ``m``" and "what does ``d``
depend on", so the check sees what this machine has: a package missing here is the import
error ``score check`` reports anyway.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

#: The extras the Dockerfile installs with the package.
IMAGE_EXTRAS = ("qa", "imagenet")
#: The distribution of this package.
PACKAGE = "triton-score"


@dataclass(frozen=True)
class MissingImport:
    """``file`` imports ``module`` (line ``line``), which ``distributions`` provide here but
    the image does not install."""

    file: Path
    line: int
    module: str
    distributions: tuple[str, ...]

    def message(self, requirements: Path) -> str:
        provided = " or ".join(self.distributions)
        return (
            f"{self.file.name}:{self.line} imports {self.module!r} (from {provided}), which "
            f"is installed here but not in the image: add {self.distributions[0]} to "
            f"{requirements}"
        )


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(lines: Iterable[str]) -> list[Requirement]:
    found = []
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if not text or text.startswith("-"):
            continue
        try:
            found.append(Requirement(text))
        except InvalidRequirement:
            continue
    return found


def image_distributions(requirements_file: Path | None) -> set[str]:
    """The (normalised) names of the distributions the image would hold: this package with
    :data:`IMAGE_EXTRAS`, the requirements file's, and everything they depend on."""
    wanted: list[tuple[str, tuple[str, ...]]] = [(PACKAGE, IMAGE_EXTRAS)]
    if requirements_file is not None and requirements_file.is_file():
        lines = requirements_file.read_text(errors="replace").splitlines()
        wanted += [(r.name, tuple(r.extras)) for r in _requirements(lines)]
    seen: set[str] = set()
    while wanted:
        name, extras = wanted.pop()
        key = _normal(name)
        if key in seen and not extras:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: nothing more to learn from it
        for requirement in _requirements(requires):
            environments = [{"extra": extra} for extra in ("", *extras)]
            marker = requirement.marker
            applies = marker is None or any(marker.evaluate(env) for env in environments)
            if applies and (_normal(requirement.name) not in seen or requirement.extras):
                wanted.append((requirement.name, tuple(requirement.extras)))
    return seen


#: Modules this package provides under another package's name (AzureML's entry-script API,
#: which ``score serve`` gives scripts as azmlinfsrv does).
PROVIDED = ("azureml.contrib.services",)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Module names ``path`` imports (absolute imports only), with their line."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return []  # loading the processor reports it
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return found


def missing_in_image(
    code_directory: Path, requirements_file: Path | None = None
) -> list[MissingImport]:
    """Every import of the ``*.py`` files of ``code_directory`` whose package the image would
    not have (see the module's docstring); ``requirements_file`` defaults to the folder's
    ``requirements.txt``."""
    folder = Path(code_directory)
    if requirements_file is None:
        requirements_file = folder / "requirements.txt"
    image = image_distributions(requirements_file)
    providers = metadata.packages_distributions()
    local = {p.stem for p in folder.glob("*.py")} | {
        p.name for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").is_file()
    }
    missing = []
    for path in sorted(folder.glob("*.py")):
        reported: set[str] = set()
        for dotted, line in _imports(path):
            if dotted.startswith(PROVIDED):
                continue
            module = dotted.partition(".")[0]
            if module in reported or module in local or module in sys.stdlib_module_names:
                continue
            if module in ("triton_score", "__future__"):
                continue
            distributions = tuple(providers.get(module, ()))
            if not distributions:
                continue  # not installed here: the import error says so
            if any(_normal(d) in image for d in distributions):
                continue
            reported.add(module)
            missing.append(MissingImport(path, line, dotted, distributions))
    return missing
