"""Small helpers shared by test modules (importable because tests/ is on sys.path)."""

from __future__ import annotations

import importlib.util
import json
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def load_file(path: Path, name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@cache
def held_out_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits the example classifier never saw in training: images [N,8,8], labels [N]."""
    build = load_file(ROOT / "models" / "build_examples.py", "build_examples")
    images, labels = build.held_out_digits()
    return np.asarray(images, dtype=np.float32), np.asarray(labels)


def qa_cases() -> list[dict[str, str]]:
    return json.loads((ROOT / "tests" / "qa_cases.json").read_text())
