"""``x-ms-server-version``: which server answered, on every answer.

azmlinfsrv adds ``x-ms-server-version: azmlinfsrv/<version>`` to each response, unless
``SERVER_VERSION_LOG_RESPONSE_ENABLED`` is set to anything but ``true``; AzureML's tooling
and support scripts read it. We send our own name and version the same way.

The header is worked out once, from :class:`~triton_score.settings.Settings`
(:func:`server_version_headers`), and added by one function (:func:`stamp`): the Flask app
calls it from an ``after_request`` hook (so every route, error handler and refusal passes
it), and any other path that answers without Flask applies the same pairs.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from werkzeug.datastructures import Headers

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


def stamp(headers: Headers | MutableMapping[str, str], pairs: tuple[tuple[str, str], ...]) -> None:
    """Add ``pairs`` (from :func:`server_version_headers`) to a response's ``headers``."""
    for name, value in pairs:
        headers[name] = value
