"""``AMLRequest`` and ``@rawhttp``, for entry scripts that want the HTTP request itself.

Scripts import them the way AzureML documents it::

    from azureml.contrib.services.aml_request import AMLRequest, rawhttp

``@rawhttp`` on ``run(request)`` makes the server call ``run`` with the request object
(method, headers, query arguments, body, uploaded files: a Flask request). Like azmlinfsrv's
decorator it records the request in a module flag, so the server can see it even when other
decorators hide the function; it also marks the function itself.
"""

from __future__ import annotations

import contextlib
from typing import Any, TypeVar

from flask import Request

F = TypeVar("F")

#: Set by :func:`rawhttp`; the loader clears it before importing a script and reads it after.
#: (azmlinfsrv's own module has a flag of the same name, read the same way.)
_rawHttpRequested = False
#: Attribute :func:`rawhttp` sets on the function it decorates.
MARK = "__aml_rawhttp__"


def rawhttp(func: F) -> F:
    """Call the decorated ``run`` with the HTTP request instead of its body."""
    global _rawHttpRequested
    _rawHttpRequested = True
    with contextlib.suppress(AttributeError, TypeError):  # a builtin: the flag is enough
        setattr(func, MARK, True)
    return func


def is_marked(func: Any) -> bool:
    return bool(getattr(func, MARK, False))


class AMLRequest(Request):
    """The type of what a ``@rawhttp`` ``run`` receives: a Flask request.

    Only a name to annotate with (as in azmlinfsrv); the server passes its own request.
    """
