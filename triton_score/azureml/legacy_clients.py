"""The Triton client's 2020 module names, behaving as that generation of the client did.

Entry scripts written for the AzureML-Triton image of 2020 import ``tritonhttpclient``,
``tritonclientutils`` and ``tritongrpcclient``: the top-level packages of the Triton client
before it moved under ``tritonclient`` (``tritonclient.http``, ``tritonclient.utils``,
``tritonclient.grpc``). Today's ``tritonclient`` still ships those names as thin
re-exports of the new ones, but the new ones changed in one way a script sees:

- **BYTES results.** Until early 2021 (client 2.8, the "trailing zeros" fix) a BYTES output
  that came back as binary data was returned by ``InferResult.as_numpy`` (and
  ``deserialize_bytes_tensor``) as a fixed-width ``np.bytes_`` array (dtype ``S<n>``);
  since then it is an object array of ``bytes``. A 2020 script that tests
  ``array.dtype.type == np.bytes_`` and otherwise calls ``str.split`` on each element
  (the classification strings ``score:index:label`` of ``class_count``) then fails with
  ``TypeError: a bytes-like object is required, not 'str'``. A BYTES output sent as JSON
  was, and still is, an object array of ``str``.
- **Import side effects.** The re-exports call ``warnings.simplefilter("always",
  DeprecationWarning)`` for the whole process and warn; the 2020 packages did neither.

Everything else a script can reach under those names is the same object as in
today's client: ``InferenceServerException`` (one class, so an ``except`` on either name
catches what either client raises), ``triton_to_np_dtype``, ``np_to_triton_dtype``,
``InferInput``, ``InferRequestedOutput(name, binary_data=True, class_count=1)``...

:func:`install_legacy_clients` puts a finder first on ``sys.meta_path`` that builds these
three modules when, and only when, something imports them (the gRPC one needs ``grpcio``,
which only scripts that use it must have). ``tritonclient.http``, ``tritonclient.grpc`` and
``tritonclient.utils`` are not touched: the legacy classes are subclasses of theirs, so code
that checks ``isinstance(result, tritonclient.http.InferResult)`` still sees one.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np

#: The legacy module -> the module of today's client it stands for.
LEGACY_MODULES = {
    "tritonclientutils": "tritonclient.utils",
    "tritonhttpclient": "tritonclient.http",
    "tritongrpcclient": "tritonclient.grpc",
}
#: Submodules the 2020 gRPC package had, served as today's (protobuf messages, unchanged).
LEGACY_SUBMODULES = {
    f"tritongrpcclient.{name}": f"tritonclient.grpc.{target}"
    for name, target in (
        ("grpc_service_pb2", "service_pb2"),
        ("grpc_service_pb2_grpc", "service_pb2_grpc"),
        ("model_config_pb2", "model_config_pb2"),
    )
}
#: Marks the modules built here.
LEGACY_MARK = "__triton_score_legacy__"


def fixed_width(array: np.ndarray | None) -> np.ndarray | None:
    """A BYTES tensor as the 2020 client returned it: ``np.bytes_``, as wide as its longest
    element (numpy drops trailing NUL bytes of each element, as it did then)."""
    if array is None or array.dtype != np.object_:
        return array
    return np.array(array.ravel().tolist(), dtype=np.bytes_).reshape(array.shape)


# -- tritonclientutils -------------------------------------------------------------------
def _utils_overrides(utils: ModuleType) -> dict[str, Any]:
    def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
        """A serialized BYTES tensor as a 1-D ``np.bytes_`` array (the 2020 client's form)."""
        return fixed_width(utils.deserialize_bytes_tensor(encoded_tensor))  # type: ignore[return-value]

    return {"deserialize_bytes_tensor": deserialize_bytes_tensor}


# -- tritonhttpclient --------------------------------------------------------------------
def _http_overrides(http: ModuleType) -> dict[str, Any]:
    class InferResult(http.InferResult):  # type: ignore[name-defined,misc]
        """Today's result, but a binary BYTES output is a fixed-width ``np.bytes_`` array."""

        def as_numpy(self, name: str) -> np.ndarray | None:
            array = super().as_numpy(name)
            output = self.get_output(name) if array is not None else None
            if output is None or output.get("datatype") != "BYTES":
                return array
            if "binary_data_size" not in (output.get("parameters") or {}):
                return array  # sent as JSON: str elements, in 2020 as today
            return fixed_width(array)

    class InferAsyncRequest(http.InferAsyncRequest):  # type: ignore[name-defined,misc]
        def get_result(self, block: bool = True, timeout: float | None = None) -> Any:
            return _as(InferResult, super().get_result(block=block, timeout=timeout))

    class InferenceServerClient(http.InferenceServerClient):  # type: ignore[name-defined,misc]
        """Today's client, whose results are :class:`InferResult` of the 2020 kind."""

        def infer(self, *args: Any, **kwargs: Any) -> Any:
            return _as(InferResult, super().infer(*args, **kwargs))

        def async_infer(self, *args: Any, **kwargs: Any) -> Any:
            return _as(InferAsyncRequest, super().async_infer(*args, **kwargs))

    return _named(
        "tritonhttpclient",
        InferResult=InferResult,
        InferAsyncRequest=InferAsyncRequest,
        InferenceServerClient=InferenceServerClient,
    )


# -- tritongrpcclient --------------------------------------------------------------------
def _grpc_overrides(grpc: ModuleType) -> dict[str, Any]:
    class InferResult(grpc.InferResult):  # type: ignore[name-defined,misc]
        """Today's result, but a BYTES output is a fixed-width ``np.bytes_`` array."""

        def as_numpy(self, name: str) -> np.ndarray | None:
            array = super().as_numpy(name)
            output = self.get_output(name) if array is not None else None
            if output is None or output.datatype != "BYTES":
                return array
            return fixed_width(array)

    def legacy_callback(callback: Callable[..., Any]) -> Callable[..., Any]:
        def deliver(result: Any, error: Any) -> Any:
            return callback(_as(InferResult, result), error)

        return deliver

    class InferenceServerClient(grpc.InferenceServerClient):  # type: ignore[name-defined,misc]
        """Today's client, whose results are :class:`InferResult` of the 2020 kind."""

        def infer(self, *args: Any, **kwargs: Any) -> Any:
            return _as(InferResult, super().infer(*args, **kwargs))

        def async_infer(self, model_name: str, inputs: Sequence[Any], callback: Any, **kw: Any):  # type: ignore[no-untyped-def]
            return super().async_infer(model_name, inputs, legacy_callback(callback), **kw)

        def start_stream(self, callback: Any, *args: Any, **kwargs: Any) -> Any:
            return super().start_stream(legacy_callback(callback), *args, **kwargs)

    return _named(
        "tritongrpcclient", InferResult=InferResult, InferenceServerClient=InferenceServerClient
    )


def _as(cls: type, value: Any) -> Any:
    """``value`` (an instance of ``cls``'s base, or ``None``) as an instance of ``cls``: the
    subclasses add no state, so changing the class is all it takes."""
    if value is not None and not isinstance(value, cls):
        value.__class__ = cls
    return value


def _named(module: str, **classes: type) -> dict[str, type]:
    for name, cls in classes.items():
        cls.__name__ = cls.__qualname__ = name
        cls.__module__ = module
    return classes


_OVERRIDES: dict[str, Callable[[ModuleType], dict[str, Any]]] = {
    "tritonclientutils": _utils_overrides,
    "tritonhttpclient": _http_overrides,
    "tritongrpcclient": _grpc_overrides,
}


def build_legacy_module(name: str) -> ModuleType:
    """The legacy module ``name``: today's module's public names, with the 2020 behaviour."""
    source = importlib.import_module(LEGACY_MODULES[name])
    module = ModuleType(name, f"The 2020 Triton client's {name}, served by triton_score.")
    public = getattr(source, "__all__", None) or [n for n in vars(source) if n[0] != "_"]
    for attribute in public:
        if hasattr(source, attribute):
            setattr(module, attribute, getattr(source, attribute))
    for attribute, value in _OVERRIDES[name](source).items():
        setattr(module, attribute, value)
    setattr(module, LEGACY_MARK, True)
    return module


class LegacyClientFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the legacy names (:data:`LEGACY_MODULES`, :data:`LEGACY_SUBMODULES`) first."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in LEGACY_MODULES and fullname not in LEGACY_SUBMODULES:
            return None
        package = fullname in LEGACY_MODULES
        return importlib.machinery.ModuleSpec(fullname, self, is_package=package)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        if spec.name in LEGACY_SUBMODULES:
            # A module of its own (the import system sets its __spec__), with today's names.
            source = importlib.import_module(LEGACY_SUBMODULES[spec.name])
            module = ModuleType(spec.name, source.__doc__)
            module.__dict__.update({k: v for k, v in vars(source).items() if k[:2] != "__"})
            return module
        return build_legacy_module(spec.name)

    def exec_module(self, module: ModuleType) -> None:
        """Built whole by :meth:`create_module`."""


def install_legacy_clients() -> None:
    """From now on in this process, ``import tritonhttpclient`` (``tritonclientutils``,
    ``tritongrpcclient``) gives the 2020 behaviour; idempotent. A legacy module imported
    before (today's re-export) is forgotten, so the script's own import builds ours."""
    if not any(isinstance(finder, LegacyClientFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, LegacyClientFinder())
    for name in (*LEGACY_MODULES, *LEGACY_SUBMODULES):
        module = sys.modules.get(name)
        if (
            module is not None
            and name in LEGACY_MODULES
            and not getattr(module, LEGACY_MARK, False)
        ):
            del sys.modules[name]
