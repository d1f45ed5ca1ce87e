"""``@input_schema`` / ``@output_schema`` (the ``inference-schema`` package), when a script
uses them.

``inference-schema`` is optional: a script decorated with it has imported it, so it is only
looked up in ``sys.modules``; a script that does not use it costs nothing and needs nothing.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

SCHEMA_UTIL = "inference_schema.schema_util"
#: What azmlinfsrv documents for a run() without schema decorators.
UNDECLARED: dict[str, Any] = {"type": "object", "example": {}}


def is_schema_decorated(function: Callable[..., Any]) -> bool:
    util = sys.modules.get(SCHEMA_UTIL)
    return util is not None and bool(util.is_schema_decorated(function))


def service_schemas(function: Callable[..., Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request and response schemas of ``run``, as azmlinfsrv puts them in its OpenAPI
    document (``ServiceInput``, ``ServiceOutput``): from the decorators, else open objects."""
    if not is_schema_decorated(function):
        return dict(UNDECLARED), dict(UNDECLARED)
    util = sys.modules[SCHEMA_UTIL]
    inputs, outputs = util.get_input_schema(function), util.get_output_schema(function)
    return copy.deepcopy(inputs), copy.deepcopy(outputs)
