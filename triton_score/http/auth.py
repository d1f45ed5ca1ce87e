"""API keys: ``Authorization: Bearer <key>`` on every route but the probes.

Keys come from ``SCORE_API_KEYS`` (comma-separated) and ``SCORE_API_KEYS_FILE`` (one a line,
``#`` comments and blank lines ignored). Either alone turns the check on. The file is looked
at (one ``stat``) at most once a :data:`CHECK_INTERVAL_S` per worker and read again only when
it changed, so keys rotate without a restart: list the new key beside the old one, move the
clients, then drop the old one. Replace the file atomically (write a temporary file, rename
it; a Kubernetes Secret volume does): a half-written file is read as it is. A file that
disappears (or becomes anything but a regular file of at most :data:`MAX_KEY_FILE_BYTES`)
revokes its keys: fail closed, with a WARNING. Only a regular file is ever opened, and
without blocking: a FIFO or a device put in its place cannot stall a worker.

What is open without a key: ``/``, ``/v2/health/live`` and ``/v2/health/ready`` (AzureML's and
Kubernetes' probes carry none), CORS preflights (browsers never send credentials on them; the
preflight is answered here, no view runs), and the route groups of ``SCORE_AUTH_EXEMPT``
(:data:`~triton_score.settings.AUTH_GROUPS`).

Keys are compared in constant time: the SHA-256 of the presented key against the SHA-256 of
every valid key, with :func:`hmac.compare_digest`, all of them every time. The store keeps
only the digests; the listed keys stay in :class:`~triton_score.settings.Settings` and in
the worker's environment, which is why ``tritonserver`` is started without them
(:func:`triton_score.local.server.triton_environment`). The ``Authorization`` header is
removed from the WSGI environ once read, so nothing downstream (the ``/v2`` forwarder,
processors, an entry script, the user field of Gunicorn's access log) sees it; a key is
never logged, echoed in an error or used as a metric label.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from stat import S_ISREG
from typing import Any

from triton_score.errors import Unauthorized

log = logging.getLogger(__name__)

#: Seconds between two looks (a ``stat``) at the key file, per worker.
CHECK_INTERVAL_S = 1.0
#: Paths that never need a key: the liveness and readiness probes.
OPEN_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready"})
#: Shorter keys are accepted but logged (by count, never by value) as easy to guess.
SHORT_KEY = 16
#: A key file larger than this is not a key file: refused (its keys revoked), never read.
MAX_KEY_FILE_BYTES = 1024 * 1024

_ENVIRON_KEY = "HTTP_AUTHORIZATION"


def route_group(path: str) -> str:
    """The group a path belongs to: ``open``, ``metrics``, ``docs``, ``v2``, ``score``, ``v1``
    or ``other`` (unknown paths need a key too: no route listing for strangers)."""
    if path in OPEN_PATHS:
        return "open"
    if path == "/metrics" or path.startswith("/metrics/"):
        return "metrics"
    if path in ("/swagger.json", "/openapi.json"):
        return "docs"
    if path == "/v2" or path.startswith("/v2/"):
        return "v2"
    if path == "/score" or path.startswith("/score/"):
        return "score"
    if path == "/v1" or path.startswith("/v1/"):  # the OpenAI front: never exempt
        return "v1"
    return "other"


def is_preflight(environ: Mapping[str, Any]) -> bool:
    """A CORS preflight: ``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``."""
    return (
        environ.get("REQUEST_METHOD") == "OPTIONS"
        and "HTTP_ORIGIN" in environ
        and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ
    )


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _parse_keys(lines: Iterable[str]) -> list[str]:
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def usable_key(key: str) -> bool:
    """Whether a client could ever present ``key``: printable ASCII, no spaces (a header
    value arrives as latin-1, a bearer token holds no whitespace)."""
    return bool(key) and key.isascii() and key.isprintable() and " " not in key


class _Refused(Exception):
    """The key file is there but is not one (a FIFO, a directory, a huge file)."""


def _why(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)


class KeyStore:
    """The valid keys (as digests): the listed ones, plus the key file's, kept current.

    :param clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        keys: Iterable[str] = (),
        path: str | os.PathLike[str] | None = None,
        *,
        interval_s: float = CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        listed = _parse_keys(keys)
        self._static = tuple(_digest(k) for k in listed)
        self._path = Path(path) if path else None
        self._interval = interval_s
        self._clock = clock
        self._file_keys: tuple[bytes, ...] = ()
        self._signature: tuple[int, ...] | None = None
        self._missing_reported = False
        self._warn_short(listed, "SCORE_API_KEYS")
        if self._path is not None:
            self._reload()
        self._checked = clock()

    @property
    def count(self) -> int:
        return len(self._static) + len(self._file_keys)

    def keys(self) -> tuple[bytes, ...]:
        """The digests of every valid key, after a look at the file when it is due."""
        if self._path is not None:
            now = self._clock()
            if now - self._checked >= self._interval:
                self._checked = now
                self._reload()
        return self._static + self._file_keys

    def verify(self, key: str) -> bool:
        """Is ``key`` valid? Compared with every valid key, in constant time, no early exit."""
        presented = _digest(key)
        valid = False
        for known in self.keys():
            valid |= hmac.compare_digest(presented, known)
        return valid

    def _reload(self) -> None:
        assert self._path is not None
        try:
            stat = self._path.stat()
            if not S_ISREG(stat.st_mode):
                raise _Refused("not a regular file")
            if stat.st_size > MAX_KEY_FILE_BYTES:
                raise _Refused(f"larger than {MAX_KEY_FILE_BYTES} bytes")
        except (OSError, _Refused) as exc:
            self._revoke(_why(exc))
            return
        signature = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if signature == self._signature:
            return
        try:
            # O_NONBLOCK: if the path turned into a FIFO since the stat, open() returns at once.
            fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as file:
                if not S_ISREG(os.fstat(file.fileno()).st_mode):
                    raise _Refused("not a regular file")
                raw = file.read(MAX_KEY_FILE_BYTES + 1)
        except (OSError, _Refused) as exc:
            self._revoke(
                exc.strerror or type(exc).__name__ if isinstance(exc, OSError) else str(exc)
            )
            return
        text = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")  # a BOM
        candidates = _parse_keys(text.splitlines())
        keys = [k for k in candidates if usable_key(k)]
        if len(keys) < len(candidates):
            log.warning(
                "SCORE_API_KEYS_FILE %s: %d line(s) skipped, not printable ASCII without spaces "
                "(no client could send such a key)",
                self._path,
                len(candidates) - len(keys),
            )
        first = self._signature is None
        self._file_keys = tuple(_digest(k) for k in keys)
        self._signature = signature
        self._missing_reported = False
        log.info(
            "API keys: %d from SCORE_API_KEYS_FILE %s%s",
            len(keys),
            self._path,
            "" if first else " (changed)",
        )
        self._warn_short(keys, "SCORE_API_KEYS_FILE")

    def _revoke(self, why: str) -> None:
        """The file cannot be used: none of its keys is valid from now on (fail closed)."""
        revoked = len(self._file_keys)
        self._file_keys = ()
        self._signature = None
        if not self._missing_reported:
            self._missing_reported = True
            log.warning(
                "SCORE_API_KEYS_FILE %s cannot be used (%s): %s",
                self._path,
                why,
                f"its {revoked} key(s) are revoked" if revoked else "no key from it is valid",
            )

    @staticmethod
    def _warn_short(keys: list[str], source: str) -> None:
        short = sum(1 for k in keys if len(k) < SHORT_KEY)
        if short:
            log.warning(
                "%s: %d key(s) shorter than %d characters, easy to guess", source, short, SHORT_KEY
            )


class ApiKeyAuth:
    """The check every request goes through first (:class:`~triton_score.http.envelope.Envelope`
    calls :meth:`take`, then :meth:`check`).

    :param exempt: route groups open without a key (``SCORE_AUTH_EXEMPT``).
    :param on_failure: called with (group, reason) for each refusal (metrics).
    """

    def __init__(
        self,
        keys: KeyStore,
        exempt: Iterable[str] = (),
        on_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        self.keys = keys
        self.exempt = frozenset(exempt)
        self.on_failure = on_failure or (lambda group, reason: None)

    @staticmethod
    def take(environ: dict[str, Any]) -> str | None:
        """Move ``Authorization`` out of the request, first thing: nothing downstream sees a
        key, even when something answers before :meth:`check`."""
        return environ.pop(_ENVIRON_KEY, None)  # type: ignore[no-any-return]

    def check(self, environ: Mapping[str, Any], path: str, header: str | None) -> bool:
        """Whether ``path`` may be served with the ``Authorization`` ``header`` taken.

        :returns: ``True`` for a CORS preflight, answered 200 at once (the CORS headers are
            added to it); ``False`` to go on.
        :raises Unauthorized: no valid key.
        """
        group = route_group(path)
        if group == "open" or group in self.exempt:
            return False
        if is_preflight(environ):
            return True
        if header is None:
            self.on_failure(group, "missing")
            raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or any(c.isspace() for c in token):
            self.on_failure(group, "malformed")
            raise Unauthorized(
                "the Authorization header must be 'Bearer <key>'", error="invalid_request"
            )
        if not self.keys.verify(token):
            self.on_failure(group, "invalid")
            raise Unauthorized("the API key is not valid", error="invalid_token")
        return False
