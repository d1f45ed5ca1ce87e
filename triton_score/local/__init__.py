"""Run a real Triton Inference Server on this machine, with no Docker and no GPU.

Three pieces, used by ``score triton``, ``score serve`` and the test-suite alike:

- :mod:`triton_score.local.install` finds a ``tritonserver`` binary (``$TRITONSERVER``, ``PATH``,
  the official image's ``/opt/tritonserver``, or the one bundled in the ``nvidia-pytriton``
  wheel, prepared so that it actually runs).
- :mod:`triton_score.local.onnx_wrapper` serves ONNX models through generated python-backend
  wrappers when the binary has no onnxruntime backend (the PyPI binary has none).
- :mod:`triton_score.local.server` starts, watches and stops one server process.
"""

from triton_score.local.install import TritonInstall, TritonNotFound, find_tritonserver
from triton_score.local.server import LocalTriton, TritonStartError

__all__ = [
    "LocalTriton",
    "TritonInstall",
    "TritonNotFound",
    "TritonStartError",
    "find_tritonserver",
]
