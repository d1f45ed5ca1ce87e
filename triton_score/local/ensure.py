"""The Triton a command talks to: the one that answers at ``TRITON_URL``, or a local one.

``score serve`` and the commands that need a Triton (``score triton``, ``score check``...)
make the same decision: when something answers at the URL, use it; when nothing does and the
URL is this machine, start a ``tritonserver`` on the model repository; otherwise say why not,
in one line. :func:`local_triton_for` makes it once for both.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from triton_score.local.install import TritonNotFound, find_tritonserver
from triton_score.local.server import LocalTriton
from triton_score.repository.locations import is_local_address, split_address


class NoTriton(RuntimeError):
    """Nothing answers at the URL, and no local Triton can stand in: the one line to print."""


def answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a Triton answers ``/v2/health/live`` at ``url`` (``host:port``)."""
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/live", timeout=timeout) as reply:
            return int(reply.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def local_triton_for(
    url: str, repository: Path | None, *, tritonserver: str | None = None, **launch: Any
) -> LocalTriton | None:
    """``None`` when a Triton answers at ``url``: use it. Otherwise a :class:`LocalTriton` on
    ``repository`` (not started yet; ``launch`` are its arguments: ports, progress...), when
    ``url`` is this machine and a ``tritonserver`` is found.

    :raises NoTriton: ``url`` is another machine, there is no repository, or no binary.
    :raises ValueError: ``url`` is not ``host:port``.
    """
    url = url.removeprefix("http://")
    host, _ = split_address(url)
    if answers(url):
        return None
    if not is_local_address(host):
        raise NoTriton(f"nothing answers at TRITON_URL={url} (not a local address)")
    if repository is None:
        raise NoTriton(f"nothing answers at TRITON_URL={url}, and no model repository found")
    try:
        install = find_tritonserver(tritonserver)
    except TritonNotFound as exc:
        raise NoTriton(f"nothing answers at TRITON_URL={url}, and {exc}") from None
    return LocalTriton(repository, install=install, **launch)
