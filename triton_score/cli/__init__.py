"""The ``score`` command (``triton_score.cli:main``)."""

from triton_score.cli.main import main

__all__ = ["main"]
