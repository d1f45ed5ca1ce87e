"""What kind of worker this process is.

Gunicorn's gevent worker monkey-patches the process after the fork; the same code also runs
unpatched (tests, ``score check``, AzureML's sync workers). Everything that runs greenlets
(the request deadline, coalescing, the metadata refresher, the connection sampler, data
capture's writer, the offload pool) asks :func:`gevent_patched`, the one test of it. It
imports nothing of the package, so any layer may ask.
"""

from __future__ import annotations


def gevent_patched() -> bool:
    """Whether gevent has monkey-patched this process (as Gunicorn's gevent worker does)."""
    try:
        from gevent.monkey import is_module_patched
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return bool(is_module_patched("threading"))
