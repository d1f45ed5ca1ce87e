"""Gunicorn configuration for running the scorer directly: ``gunicorn -c gunicorn.conf.py``.

``score serve`` uses the same settings; they live in :mod:`triton_score.gunicorn_conf` so the
installed package carries them. Override with the environment variables documented there
(``WORKER_COUNT``, ``WORKER_TIMEOUT``, ``SCORE_HOST``, ``SCORE_PORT``...).
"""

from triton_score.gunicorn_conf import *  # noqa: F403
