"""``x-ms-server-version``: which server answered, on every answer.

azmlinfsrv adds ``x-ms-server-version: azmlinfsrv/<version>`` to each response, unless
``SERVER_VERSION_LOG_RESPONSE_ENABLED`` is set to anything but ``true``; AzureML's tooling
and support scripts read it. We send our own name and version the same way.

The header is worked out once, from :class:`~triton_score.settings.Settings`
(:func:`server_version_headers`), and added to every answer by
:meth:`triton_score.http.envelope.Envelope.close` (every route, error handler and refusal,
Flask's routes and the ``/score`` front alike).
"""

from __future__ import annotations

from triton_score import __version__
from triton_score.settings import Settings

SERVER_VERSION_HEADER = "x-ms-server-version"
#: Our name and version, as azmlinfsrv writes its own (``azmlinfsrv/1.5.1``).
SERVER_VERSION = f"triton-score/{__version__}"


def server_version_headers(settings: Settings) -> tuple[tuple[str, str], ...]:
    """The ``(name, value)`` pairs to add to every answer: ours, or none when switched off."""
    if not settings.server_version_header:
        return ()
    return ((SERVER_VERSION_HEADER, SERVER_VERSION),)
