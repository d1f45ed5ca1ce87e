"""triton-score: data scientists' pre- and post-processing in front of NVIDIA Triton."""

__version__ = "0.1.0"
