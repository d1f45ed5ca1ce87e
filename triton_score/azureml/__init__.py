"""AzureML's entry-script API, without AzureML's server.

Entry scripts import ``AMLRequest``, ``rawhttp`` and ``AMLResponse`` from
``azureml.contrib.services.aml_request`` / ``aml_response`` (AzureML's documentation) or from
``azureml_inference_server_http.api.aml_request`` / ``aml_response`` (azmlinfsrv's modules).
:func:`install_import_aliases` makes both paths importable before a script is loaded:

- ``azureml_inference_server_http.api.*``: azmlinfsrv's own modules when it is installed,
  otherwise this package's (:mod:`.aml_request`, :mod:`.aml_response`);
- ``azureml.contrib.services.*``: left alone when importable, otherwise the same modules
  as above, which is what azmlinfsrv does when its server starts.

Only these leaf modules are registered (no ``azureml`` or ``azureml_inference_server_http``
package), so ``from <path> import <name>`` works, as under azmlinfsrv, and code that probes
for azmlinfsrv is not fooled.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from triton_score.azureml import aml_request, aml_response
from triton_score.azureml.aml_request import AMLRequest, rawhttp
from triton_score.azureml.aml_response import AMLResponse

__all__ = ["AMLRequest", "AMLResponse", "install_import_aliases", "rawhttp"]

#: azmlinfsrv's module -> ours, for the modules a script may import.
AZMLINFSRV_MODULES = {
    "azureml_inference_server_http.api.aml_request": aml_request,
    "azureml_inference_server_http.api.aml_response": aml_response,
}
#: AzureML's documented path -> azmlinfsrv's module it stands for.
CONTRIB_MODULES = {
    "azureml.contrib.services.aml_request": "azureml_inference_server_http.api.aml_request",
    "azureml.contrib.services.aml_response": "azureml_inference_server_http.api.aml_response",
}


def importable(name: str) -> bool:
    """Whether ``import name`` would find a module (already imported counts)."""
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package is missing or not a package
        return False


def install_import_aliases() -> dict[str, ModuleType]:
    """Make the entry-script API importable by both paths; returns what each name is."""
    resolved: dict[str, ModuleType] = {}
    for name, ours in AZMLINFSRV_MODULES.items():
        if importable(name):
            resolved[name] = importlib.import_module(name)
        else:
            sys.modules[name] = resolved[name] = ours
    for name, target in CONTRIB_MODULES.items():
        if importable(name):
            resolved[name] = importlib.import_module(name)
        else:
            sys.modules[name] = resolved[name] = resolved[target]
    return resolved


def raw_http_flags() -> list[ModuleType]:
    """The loaded modules whose ``rawhttp`` sets a ``_rawHttpRequested`` flag: ours, and
    azmlinfsrv's (or another ``aml_request``) when it is what a script imports."""
    modules = [aml_request]
    for name in (*AZMLINFSRV_MODULES, *CONTRIB_MODULES):
        module = sys.modules.get(name)
        if module is not None and module not in modules and hasattr(module, "_rawHttpRequested"):
            modules.append(module)
    return modules
