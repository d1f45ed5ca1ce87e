"""The separate health listener (``SEPERATE_HEALTH_ENDPOINT=true``, ``HEALTH_PORT``).

azmlinfsrv can listen on a second port (5000 by default) for its liveness probe, so that a
probe never queues behind scoring traffic on the main port. Gunicorn binds both ports (see
:mod:`triton_score.gunicorn_conf`) and the same app answers on each; this module keeps the
health port to the probes: ``/`` and ``/v2/health/live`` / ``/v2/health/ready``. Anything
else asked there is a 404, so the port can be opened to probes without opening scoring.
(azmlinfsrv serves every route on both ports; ours is the narrower, on purpose.)

The port a request came in on is the listening socket's (Gunicorn's ``SERVER_PORT`` for a
TCP listener), not the client's ``Host`` header.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Response, request

from triton_score.errors import HTTPFailure
from triton_score.http.responses import error_response

#: What the health port answers.
HEALTH_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready"})


def health_port_guard(port: int) -> Callable[[], Response | None]:
    """A ``before_request`` hook: on ``port``, a 404 for any path but :data:`HEALTH_PATHS`."""
    listening = str(port)
    served = ", ".join(sorted(HEALTH_PATHS))

    def only_probes_on_the_health_port() -> Response | None:
        if request.environ.get("SERVER_PORT") != listening or request.path in HEALTH_PATHS:
            return None
        return error_response(
            HTTPFailure(
                f"port {listening} serves the health probes only ({served})",
                404,
                "health_port_only",
            )
        )

    return only_probes_on_the_health_port
