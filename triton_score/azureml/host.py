"""Serve a user's AzureML entry script (``init()`` + ``run()``) unmodified.

An AzureML entry script is a plain ``.py`` file: ``init()`` is called once per worker and
``run()`` once per request. ``run`` receives the request the way azmlinfsrv, AzureML's own
server, passes it (see :mod:`triton_score.azureml.inputs`, and ``docs/entry-scripts.md``):

- ``run(data)``: the body as a string; ``run(data, request_headers)`` also the headers;
- ``@rawhttp``: the HTTP request itself; it may return an ``AMLResponse`` (status, headers);
- ``@input_schema``: the JSON body's fields as keyword arguments, converted by the decorators.

What ``run`` returns is sent back as JSON, or as it is when it is a response object. Scripts
written for the AzureML-Triton image of 2020 import ``tritonhttpclient``,
``tritonclientutils`` or ``tritongrpcclient`` (the old names of ``tritonclient.http``,
``.utils``, ``.grpc``): they get those modules as that generation of the client behaved
(:mod:`triton_score.azureml.legacy_clients`); ``azureml.contrib.services.aml_request`` and
``aml_response`` resolve as they do under azmlinfsrv, installed or not.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from flask import Request

from triton_score.azureml import install_import_aliases, raw_http_flags
from triton_score.azureml.aml_request import is_marked
from triton_score.azureml.inputs import choose_input_parser
from triton_score.azureml.legacy_clients import install_legacy_clients
from triton_score.azureml.schema import is_schema_decorated, service_schemas
from triton_score.errors import RunFunctionFailed, ScoringError
from triton_score.processors.loading import ProcessorLoadError, import_file

log = logging.getLogger(__name__)


class RunResult(NamedTuple):
    """What ``run()`` returned, and how long it took (``x-ms-run-fn-exec-ms``)."""

    output: Any
    elapsed_ms: float


class EntryScript:
    """A loaded entry script; :meth:`init` once per worker, :meth:`run` per request.

    Loading checks what azmlinfsrv checks, each failure a :class:`ProcessorLoadError` with a
    clear message: ``init`` and ``run`` exist; ``run`` takes no ``*args``, ``**kwargs`` or
    positional-only parameters, and some parameter besides ``request_headers``; it is not
    both ``@rawhttp`` and ``@input_schema``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ProcessorLoadError(f"entry script {str(self.path)!r} does not exist")
        self.module, flagged = self._load()
        for name in ("init", "run"):
            if not callable(getattr(self.module, name, None)):
                raise ProcessorLoadError(f"entry script {self.path.name} has no {name}() function")
        #: The ``run`` called per request: a driver module's, when the script is a proxy that
        #: some AzureML SDKs generate (azmlinfsrv calls the real script's run() directly).
        self.function = self.module.run
        driver = getattr(self.module, "driver_module", None)
        if isinstance(driver, ModuleType) and callable(getattr(driver, "run", None)):
            self.function = driver.run
        #: ``@rawhttp``: run() receives the request object.
        self.raw_http = flagged or is_marked(self.function)
        self.input_parser, self.wants_headers = choose_input_parser(
            self.function,
            raw_http=self.raw_http,
            schema_decorated=is_schema_decorated(self.function),
            where=f"entry script {self.path.name}",
        )

    def _load(self) -> tuple[ModuleType, bool]:
        """Import the script; and whether ``@rawhttp`` was applied while it ran."""
        install_import_aliases()
        install_legacy_clients()
        flags = raw_http_flags()
        for module in flags:
            module._rawHttpRequested = False  # type: ignore[attr-defined]
        try:
            module = import_file(self.path, fresh=True)
        except (Exception, SystemExit) as exc:
            raise ProcessorLoadError(
                f"entry script {self.path.name} failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        # The script may have imported azmlinfsrv's module itself: its flag counts too.
        return module, any(m._rawHttpRequested for m in {*flags, *raw_http_flags()})

    def init(self) -> None:
        self.module.init()

    @property
    def methods(self) -> frozenset[str]:
        """The HTTP methods ``run`` is called for on ``/score``."""
        return self.input_parser.methods

    def schemas(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Request and response schemas for ``/swagger.json`` (from ``@input_schema`` and
        ``@output_schema``, else open objects), as azmlinfsrv documents them."""
        return service_schemas(self.function)

    def run(self, request: Request, request_id: str = "") -> RunResult:
        """Call ``run()`` with what ``request`` holds, the way the script asks for it.

        :raises ScoringError: the request does not fit (400, 415), or ``run()`` raised
            (:class:`RunFunctionFailed`, 500; the traceback goes to the log only).
        """
        arguments = self.input_parser(request)
        if self.wants_headers:
            arguments["request_headers"] = dict(request.headers)
        started = time.perf_counter()
        try:
            output = self.function(**arguments)
        except ScoringError:
            raise
        except Exception as exc:
            log.exception(
                "run() of entry script %s failed (request %s)", self.path.name, request_id
            )
            raise RunFunctionFailed(
                f"the entry script's run() failed; see the server log for request id {request_id}",
                details={"request_id": request_id},
            ) from exc
        return RunResult(output, (time.perf_counter() - started) * 1000)


def is_native(script: EntryScript) -> bool:
    """Whether ``script`` hands over to triton_score (``from triton_score.entry import init,
    run``, as the template's ``score.py`` does): then it is served natively, with processors,
    every model at ``/score/<model>`` and ``/v2``, rather than through its ``run()``."""
    from triton_score.azureml import entry  # entry builds runtimes, which load scripts

    return script.module.init is entry.init and script.module.run is entry.run


def check(path: str) -> int:
    """Load the entry script at ``path`` as a worker would, without calling ``init()``: print
    why it cannot be served, as one line on stderr, and where on stdout (the server's log
    stream, where azmlinfsrv users look: for a syntax error the file, the line and the
    caret), and return 2; or return 0.

    ``score serve`` runs this in a child process before it starts anything.
    """
    try:
        EntryScript(path)
    except ProcessorLoadError as exc:
        if exc.__cause__ is not None:
            print(where_it_failed(exc.__cause__, path), file=sys.stdout, flush=True)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


def where_it_failed(exc: BaseException, path: str) -> str:
    """``exc``, raised while importing the entry script at ``path``, as Python reports it,
    with the frames of the user's own files only (none of the loader's)::

        entry script /app/score.py failed to import:
          File "/app/score.py", line 4
            def run(data)
                         ^
        SyntaxError: expected ':'
    """
    ours = str(Path(__file__).resolve().parent.parent)  # triton_score/, above azureml/
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith((ours, "<frozen"))
    ]
    lines = [f"entry script {Path(path).resolve()} failed to import:\n"]
    if frames:
        lines += ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip("\n")
