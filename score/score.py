"""The deployment's entry script: AzureML's ``init()``/``run()``, handed over to triton_score.

AzureML (``code_configuration.scoring_script``), ``azmlinfsrv --entry_script score.py`` and
``score serve --entry-script score.py`` all run this file. ``score serve`` sees that these
are triton_score's own functions and serves natively: every model at ``/score/<model>``
with the processors of this folder, plus ``/v2``. azmlinfsrv calls them as written:
``init()`` once per worker, ``run()`` per request on the default model (``SCORE_MODEL``).

Keep this file this small: processors go in ``processors.py`` (or ``*_processor.py``) beside
it; see ``docs/processors.md``.
"""

from triton_score.entry import init, run

__all__ = ["init", "run"]
