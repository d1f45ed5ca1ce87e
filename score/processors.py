"""Processors for the template's example models (the QA one is in ``qa_processor.py``).

``score serve`` loads this file because it is in the code directory (``score/``), with every
``*_processor.py`` beside it. Each class turns a friendly request into the model's tensors and
the tensors back into a friendly answer; see ``docs/processors.md`` for the rules.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from triton_score import BadRequest, ModelInfo, Request, processor

# -- digits_onnx -----------------------------------------------------------------------------


@processor("digits_onnx")
class DigitsClassifier:
    """8x8 grey-level digit images (values 0..16, as scikit-learn's digits) -> the digit.

    Request: ``{"image": [[...8 values...], ...8 rows]}`` or ``{"images": [image, ...]}``
    (at most the model's ``max_batch_size``). Response: one prediction per image with the
    top three classes, computed by Triton's classification extension.
    """

    top_k = 3
    outputs = {"probabilities": top_k}  # Triton returns "score:index:label" for the top 3
    #: A full batch of 64 images as pretty-printed JSON is ~60 KB: 1 MiB is plenty, and
    #: keeps a client from making the worker parse 100 MiB of nested lists.
    max_body_bytes = 1024 * 1024

    request_schema = {
        "type": "object",
        "properties": {
            "image": {"type": "array", "description": "8x8 grid of numbers 0..16"},
            "images": {"type": "array", "description": "several 8x8 images"},
        },
    }
    request_example = {
        "image": [
            [0, 0, 5, 13, 9, 1, 0, 0],
            [0, 0, 13, 15, 10, 15, 5, 0],
            [0, 3, 15, 2, 0, 11, 8, 0],
            [0, 4, 12, 0, 0, 8, 8, 0],
            [0, 5, 8, 0, 0, 9, 8, 0],
            [0, 4, 11, 0, 1, 12, 7, 0],
            [0, 2, 14, 5, 10, 12, 0, 0],
            [0, 0, 6, 13, 10, 0, 0, 0],
        ]
    }

    def load(self, model: ModelInfo) -> None:
        """Optional: runs once per worker at start-up (read a vocabulary, a label map...)."""
        self.max_images = model.max_batch_size  # 16: more is a 400 that says so

    def preprocess(self, request: Request, model: ModelInfo) -> dict[str, np.ndarray]:
        """The decoded request -> {input name: array}, validated against the model's metadata."""
        payload = request.json
        if not isinstance(payload, dict) or not ({"image", "images"} & payload.keys()):
            raise BadRequest('send {"image": <8x8 grid of numbers 0..16>} or {"images": [...]}')
        images = payload["images"] if "images" in payload else [payload["image"]]
        if isinstance(images, list) and len(images) > self.max_images:
            raise BadRequest(f"send at most {self.max_images} images at a time")
        try:
            pixels = np.asarray(images, dtype=np.float32)
        except (TypeError, ValueError):
            raise BadRequest("each image must be an 8x8 grid of numbers") from None
        if pixels.ndim != 3 or pixels.shape[1:] != (8, 8):
            raise BadRequest(f"each image must be 8x8, got shape {list(pixels.shape[1:])}")
        if not np.isfinite(pixels).all() or (
            pixels.size and (pixels.min() < 0 or pixels.max() > 16)
        ):
            raise BadRequest("pixel values must be numbers between 0 and 16")
        return {"image": pixels}

    def postprocess(
        self, outputs: dict[str, np.ndarray], request: Request, model: ModelInfo
    ) -> Any:
        """{output name: array} -> what the client receives (JSON-able, or bytes)."""
        predictions = []
        for row in outputs["probabilities"]:
            top = []
            for entry in row:
                score, index, label = entry.decode().split(":", 2)
                top.append({"digit": int(index), "label": label, "probability": float(score)})
            predictions.append({"digit": top[0]["digit"], "label": top[0]["label"], "top": top})
        return {"predictions": predictions}
