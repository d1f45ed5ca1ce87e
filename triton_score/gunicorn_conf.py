"""``triton_score.gunicorn_conf``: the documented path of :mod:`triton_score.serve.gunicorn_conf`
(Gunicorn's ``--config python:triton_score.gunicorn_conf``).

The module lives in its layer's folder; this name stays because users, configs and images
name it. Importing it gives that very module (one module, one set of globals), not a copy.
"""

import sys

from triton_score.serve import gunicorn_conf as _moved

sys.modules[__name__] = _moved
