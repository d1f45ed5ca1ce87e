"""Gunicorn configuration for running the scorer directly: ``gunicorn -c gunicorn.conf.py``.

``score serve`` uses the same settings; they live in :mod:`triton_score.gunicorn_conf` so the
installed package carries them. Override with the environment variables documented there
(``WORKER_COUNT``, ``WORKER_TIMEOUT``, ``SCORE_HOST``, ``SCORE_PORT``...). The app finds the
model repository (``./models/triton``, ``SCORE_MODEL_REPOSITORY``, ``AZUREML_MODEL_DIR``) and
the processors (the code directory ``./score`` first) exactly as ``score serve`` does: both
build it with ``triton_score.runtime.build_runtime``. Unlike ``score serve``, this starts no
Triton: point ``TRITON_URL`` at a running one.
"""

from triton_score.gunicorn_conf import *  # noqa: F403
