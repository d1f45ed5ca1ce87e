"""Serve a user's AzureML entry script (``init()`` + ``run(raw)``) unmodified.

An AzureML entry script is a plain ``.py`` file: ``init()`` is called once per worker and
``run(raw_data)`` once per request, with the request body as a string; what ``run`` returns
is sent back as JSON. Scripts written for the AzureML-Triton image import
``tritonhttpclient`` (the old name of ``tritonclient.http``), which this package provides.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from triton_score.codecs.request import Request
from triton_score.errors import BadRequest, ProcessorError, ScoringError
from triton_score.processors.loading import ProcessorLoadError, import_file

log = logging.getLogger(__name__)


class EntryScript:
    """A loaded entry script; :meth:`init` once per worker, :meth:`run` per request."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ProcessorLoadError(f"entry script {str(self.path)!r} does not exist")
        self.module = import_file(self.path)
        for name in ("init", "run"):
            if not callable(getattr(self.module, name, None)):
                raise ProcessorLoadError(f"entry script {self.path.name} has no {name}() function")
        parameters = inspect.signature(self.module.run).parameters
        #: azmlinfsrv passes the headers when run() declares ``request_headers``.
        self.wants_headers = "request_headers" in parameters

    def init(self) -> None:
        self.module.init()

    def run(self, request: Request) -> Any:
        try:
            raw = request.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"the body is not valid UTF-8 (byte {exc.start})") from None
        try:
            if self.wants_headers:
                return self.module.run(raw, request_headers=dict(request.headers))
            return self.module.run(raw)
        except ScoringError:
            raise
        except Exception as exc:
            log.exception(
                "run() of entry script %s failed (request %s)", self.path.name, request.id
            )
            raise ProcessorError(
                f"the entry script's run() failed; see the server log for request id {request.id}",
                details={"request_id": request.id},
            ) from exc


def is_native(script: EntryScript) -> bool:
    """Whether ``script`` hands over to triton_score (``from triton_score.entry import init,
    run``, as the template's ``score.py`` does): then it is served natively, with processors,
    every model at ``/score/<model>`` and ``/v2``, rather than through its ``run()``."""
    from triton_score import entry  # noqa: PLC0415 - entry builds runtimes, which load scripts

    return script.module.init is entry.init and script.module.run is entry.run
