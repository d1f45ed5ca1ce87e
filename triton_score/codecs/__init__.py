"""Bytes on the wire <-> Python objects.

- :mod:`triton_score.codecs.request` decodes an HTTP body into a :class:`Request`
  (JSON or raw bytes);
- :mod:`triton_score.codecs.tensors` is the default codec: JSON tensors <-> named numpy arrays,
  checked against the model's metadata;
- :mod:`triton_score.codecs.binary` is its binary half: the v2 binary tensor extension
  (``Inference-Header-Content-Length``) and raw ``application/octet-stream`` tensors in,
  Triton's binary response out;
- :mod:`triton_score.codecs.response` encodes what a postprocessor returns (JSON, numpy-aware).
"""

from triton_score.codecs.request import Request, decode_request
from triton_score.codecs.response import encode_response

__all__ = ["Request", "decode_request", "encode_response"]
