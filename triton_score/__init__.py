"""triton-score: data scientists' pre- and post-processing in front of NVIDIA Triton.

The public API, small on purpose:

- :func:`processor` — mark a class as a model's pre/post-processor (see
  :mod:`triton_score.processors`, and ``docs/processors.md``);
- :class:`Request`, :class:`ModelInfo`, :class:`TensorSpec` — what processors receive;
- :class:`BadRequest` — raise it for a request that cannot be scored (400);
- :class:`Response` — return it from ``postprocess`` to choose status, headers, content type;
- :class:`Triton` — what an optional ``predict()`` calls models with;
- :func:`create_app` — the Flask app factory Gunicorn runs;
- :mod:`triton_score.entry` — ``init()``/``run()`` for use as an AzureML entry script.
"""

__version__ = "0.2.0"

from triton_score.codecs.request import Request
from triton_score.codecs.response import Response
from triton_score.errors import BadRequest, ScoringError
from triton_score.model.info import ModelInfo, TensorSpec
from triton_score.processors import processor
from triton_score.triton.handle import Triton


def create_app(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See :func:`triton_score.http.app.create_app` (imported lazily: Flask is not needed to write
    or unit-test a processor)."""
    from triton_score.http.app import create_app as factory

    return factory(*args, **kwargs)


__all__ = [
    "BadRequest",
    "ModelInfo",
    "Request",
    "Response",
    "ScoringError",
    "TensorSpec",
    "Triton",
    "create_app",
    "processor",
]
