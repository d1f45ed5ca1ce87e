"""Find and import processor modules.

Sources, all loaded once at start-up (never per request), in this order; when two sources
have a processor for the same model, the earlier source wins (and the log says so), while two
processors for one model within one source are an error:

1. specs in ``SCORE_PROCESSORS`` / ``--processors`` (comma-separated): a module name
   (``my_pkg.processors``), a ``.py`` file path, or ``module:Class`` for one class;
2. the deployment's **code directory** (``score/`` in the template, where ``score.py``
   lives): ``processors.py`` and every ``*_processor.py`` / ``*_processors.py`` in it;
3. ``processors.py`` beside the model repository (``models/processors.py`` for
   ``models/triton``), the layout of earlier versions;
4. the ``triton_score.processors`` entry-point group of installed packages, so a package
   can ship processors with ``[project.entry-points."triton_score.processors"]``.

The single spec ``none`` turns processors off: every model uses the default codec.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import itertools
import os
import re
import sys
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from triton_score.processors import ProcessorDefinitionError, ProcessorRegistry

ENTRY_POINT_GROUP = "triton_score.processors"
CONVENTIONAL_FILE = "processors.py"
#: Processor files of a code directory (``score new`` writes ``<name>_processor.py``).
CODE_DIRECTORY_PATTERNS = (CONVENTIONAL_FILE, "*_processor.py", "*_processors.py")
NO_PROCESSORS = "none"


class ProcessorLoadError(RuntimeError):
    """A processor spec could not be imported; the message names the spec."""


_fresh_imports = itertools.count(1)


def import_file(path: Path, *, fresh: bool = False) -> ModuleType:
    """Import a ``.py`` file under a stable, unique module name.

    :param fresh: run the file again, under a new name, even if it was imported before (an
        entry script: what its decorators record while it runs is read right after).
    """
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    name = f"score_user_{path.stem}_{digest}"
    if fresh:
        name += f"_{next(_fresh_imports)}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ProcessorLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # Let the file import its siblings (helpers next to processors.py), as a script would.
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(path.parent))
    return module


#: The code directory's list of the processors' own dependencies, which the image installs.
REQUIREMENTS_FILE = "requirements.txt"


def _shown(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive
        return str(path)


def _requirement_names(requirements: Path) -> set[str]:
    """The project names a requirements file lists, normalised (PEP 503), options skipped."""
    names = set()
    lines = requirements.read_text(errors="replace").splitlines() if requirements.is_file() else []
    for line in lines:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
        if match:
            names.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return names


def missing_module_hint(exc: ModuleNotFoundError, path: Path | None) -> str:
    """What to do about a processor import that is not installed: for a processor file of a
    code directory, its ``requirements.txt`` (what the image installs beyond triton_score).

    Empty when the missing module is no top-level package of its own (a submodule of an
    installed package, a sibling file of the processor), which no requirement would fix."""
    if not exc.name:
        return ""
    top = exc.name.partition(".")[0]
    folder = path.resolve().parent if path is not None else None
    if folder is not None and ((folder / top).is_dir() or (folder / f"{top}.py").is_file()):
        return ""
    try:
        if top != exc.name and importlib.util.find_spec(top) is not None:
            return ""
    except (ImportError, ValueError):
        pass
    if folder is None:
        return f". {top!r} is not installed here: install the package that provides it"
    requirements = folder / REQUIREMENTS_FILE
    install = f"pip install -c constraints.txt -r {_shown(requirements)}"
    if re.sub(r"[-_.]+", "-", top).lower() in _requirement_names(requirements):
        return f". {_shown(requirements)} lists {top!r}, but it is not installed here: {install}"
    return (
        f". {top!r} is not installed here, and the image has only triton_score (with the "
        f"examples' extras) and what {_shown(requirements)} lists: add the package that "
        f"provides {top!r} to {_shown(requirements)}, then {install}"
    )


def load_spec(registry: ProcessorRegistry, spec: str, *, required: bool = True) -> int:
    """Load one spec into ``registry``; returns the number of processor classes found.

    :param required: a spec the user named must define a processor; a file found by
        convention may define none.
    """
    target, _, attribute = spec.partition(":")
    try:
        if target.endswith(".py") or "/" in target:
            path = Path(target)
            if not path.is_file():
                raise ProcessorLoadError(f"processor file {target!r} does not exist")
            module = import_file(path)
        else:
            module = importlib.import_module(target)
    except ProcessorLoadError:
        raise
    except ProcessorDefinitionError as exc:
        raise ProcessorLoadError(f"processor {spec!r}: {exc}") from exc
    except ModuleNotFoundError as exc:
        hint = missing_module_hint(exc, Path(target) if target.endswith(".py") else None)
        raise ProcessorLoadError(
            f"processor {spec!r} failed to import: {type(exc).__name__}: {exc}{hint}"
        ) from exc
    except Exception as exc:
        raise ProcessorLoadError(
            f"processor {spec!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    if attribute:
        cls = getattr(module, attribute, None)
        if cls is None:
            raise ProcessorLoadError(f"processor {spec!r}: {target} has no {attribute!r}")
        registry.register(cls, spec)
        return 1
    count = registry.register_module(module, spec)
    if count == 0 and required:
        raise ProcessorLoadError(f"processor {spec!r} defines no @processor class")
    return count


def code_directory_files(code_directory: str | Path) -> list[Path]:
    """The processor files of a code directory, in a stable order."""
    folder = Path(code_directory)
    if not folder.is_dir():
        return []
    found = {p for pattern in CODE_DIRECTORY_PATTERNS for p in folder.glob(pattern)}
    return sorted(p for p in found if p.is_file())


def load_processors(
    specs: Iterable[str] = (),
    *,
    code_directory: str | Path | None = None,
    model_repository: str | Path | None = None,
    use_entry_points: bool = True,
) -> ProcessorRegistry:
    """Build a registry from the sources listed in this module's docstring, in order."""
    registry = ProcessorRegistry()
    specs = list(specs)
    if specs == [NO_PROCESSORS]:
        return registry
    for spec in specs:
        load_spec(registry, spec)
    registry.next_source()
    if code_directory:
        for path in code_directory_files(code_directory):
            load_spec(registry, str(path), required=False)
        registry.next_source()
    if model_repository:
        beside = Path(model_repository).parent / CONVENTIONAL_FILE
        if beside.is_file():
            load_spec(registry, str(beside), required=False)
        registry.next_source()
    if use_entry_points:
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = entry_point.load()
            except Exception as exc:
                raise ProcessorLoadError(
                    f"entry point {entry_point.name!r} ({entry_point.value}) failed: {exc}"
                ) from exc
            if isinstance(loaded, ModuleType):
                registry.register_module(loaded, f"entry point {entry_point.name}")
            else:
                registry.register(loaded, f"entry point {entry_point.name}")
    return registry
