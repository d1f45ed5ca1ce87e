"""The separate health listener (``SEPERATE_HEALTH_ENDPOINT=true``, ``HEALTH_PORT``).

azmlinfsrv can listen on a second port (5000 by default) for its liveness probe, so that a
probe never queues behind scoring traffic on the main port. Gunicorn binds both ports (see
:mod:`triton_score.serve.gunicorn_conf`) and the same app answers on each; this module keeps the
health port to the probes: ``/`` and ``/v2/health/live`` / ``/v2/health/ready``. Anything
else asked there is a 404, so the port can be opened to probes without opening scoring.
(azmlinfsrv serves every route on both ports; ours is the narrower, on purpose.)

The port a request came in on is the listening socket's (Gunicorn's ``SERVER_PORT`` for a
TCP listener), not the client's ``Host`` header. The check runs in the
:class:`~triton_score.http.envelope.Envelope`, so it covers every route, the ``/score`` front
included.
"""

from __future__ import annotations

from typing import Any

from triton_score.errors import HTTPFailure

#: What the health port answers.
HEALTH_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready"})


class HealthPort:
    """Refuses all but the probes on ``port``."""

    def __init__(self, port: int) -> None:
        self.listening = str(port)
        self._served = ", ".join(sorted(HEALTH_PATHS))

    def refusal(self, environ: dict[str, Any], path: str) -> HTTPFailure | None:
        """The 404 for ``path`` when the request came in on the health port and is no probe."""
        if environ.get("SERVER_PORT") != self.listening or path in HEALTH_PATHS:
            return None
        return HTTPFailure(
            f"port {self.listening} serves the health probes only ({self._served})",
            404,
            "health_port_only",
        )
