"""``AMLResponse``: what a ``run()`` returns to choose the status code and headers.

Scripts import it the way AzureML documents it::

    from azureml.contrib.services.aml_response import AMLResponse

    return AMLResponse({"error": "no image"}, 400, {"Cache-Control": "no-store"}, json_str=True)

It behaves as azmlinfsrv's class does: a Flask response whose body is ``message`` (encoded as
JSON with ``json_str=True``, or ``{}`` when ``message`` is ``None``), with the status and
headers given; a header value with commas becomes one header per comma-separated value; and
``x-ms-run-function-failed`` is set. Where azmlinfsrv would fail, it is lenient: numpy values
encode as JSON, non-string header values are converted, and ``Content-Type`` is matched in any
case.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flask import Response

from triton_score.codecs.response import jsonable

#: The response header azmlinfsrv uses to say that run() failed.
RUN_FUNCTION_FAILED = "x-ms-run-function-failed"


class AMLResponse(Response):
    """A response a ``run()`` returns as it is: body, status code and headers of its choice."""

    def __init__(
        self,
        message: Any,
        status_code: int = 200,
        response_headers: Mapping[str, Any] | None = None,
        json_str: bool = False,
        run_function_failed: bool = False,
    ) -> None:
        headers = dict(response_headers or {})
        if message is None:
            super().__init__("{}", status=status_code, mimetype="application/json")
        elif json_str:
            body = json.dumps(message, default=jsonable)
            super().__init__(body, status=status_code, mimetype="application/json")
        else:
            super().__init__(message, status=status_code)
            if any(name.lower() == "content-type" for name in headers):
                del self.headers["Content-Type"]  # the script's own is added below
        self.headers[RUN_FUNCTION_FAILED] = str(bool(run_function_failed))
        for name, value in headers.items():
            for part in str(value).split(","):
                self.headers.add(name, part.strip())
