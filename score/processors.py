"""Processors for the template's example models.

``score serve`` loads this file because it sits beside the model repository
(``models/triton``). Each class turns a friendly request into the model's tensors and the
tensors back into a friendly answer; see ``docs/processors.md`` for the rules.

Try them (after ``score serve``)::

    curl -s localhost:5001/score/qa_lexical -H 'content-type: application/json' \\
      -d '{"context": "It was completed in 1889.", "question": "When was it completed?"}'
"""

from __future__ import annotations

import re
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

    def preprocess(self, request: Request, model: ModelInfo) -> dict[str, np.ndarray]:
        payload = request.json
        if not isinstance(payload, dict) or not ({"image", "images"} & payload.keys()):
            raise BadRequest('send {"image": <8x8 grid of numbers 0..16>} or {"images": [...]}')
        images = payload["images"] if "images" in payload else [payload["image"]]
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
        predictions = []
        for row in outputs["probabilities"]:
            top = []
            for entry in row:
                score, index, label = entry.decode().split(":", 2)
                top.append({"digit": int(index), "label": label, "probability": float(score)})
            predictions.append({"digit": top[0]["digit"], "label": top[0]["label"], "top": top})
        return {"predictions": predictions}


# -- qa_lexical (and the real bidaf-9, which has the same interface) -------------------------

#: The tokenisation rule the QA model was written for (words, hyphenated words, punctuation).
TOKEN = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]")
CHARS_PER_WORD = 16  # bidaf-9 takes the first 16 characters of each word


def tokenize(text: str) -> list[re.Match[str]]:
    return list(TOKEN.finditer(text))


def bidaf_tensors(tokens: list[re.Match[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Words ``[n, 1]`` (lower-case) and characters ``[n, 1, 1, 16]`` as bidaf-9 expects."""
    words = np.array([t.group().lower() for t in tokens], dtype=object).reshape(-1, 1)
    chars = np.full((len(tokens), 1, 1, CHARS_PER_WORD), "", dtype=object)
    for i, token in enumerate(tokens):
        letters = list(token.group()[:CHARS_PER_WORD])
        chars[i, 0, 0, : len(letters)] = letters
    return words, chars


@processor("qa_lexical", "bidaf-9")
class QuestionAnswering:
    """``{"context": "...", "question": "..."}`` -> ``{"answer": "...", "start", "end"}``.

    ``start``/``end`` are character offsets of the answer in the context; the answer is cut
    from the original text, so punctuation and case come back as written.
    """

    request_schema = {
        "type": "object",
        "required": ["context", "question"],
        "properties": {"context": {"type": "string"}, "question": {"type": "string"}},
    }
    request_example = {
        "context": "The Eiffel Tower was designed by the company of Gustave Eiffel and "
        "completed in 1889. It is 330 metres tall.",
        "question": "When was the Eiffel Tower completed?",
    }
    max_chars = 10_000  # the lexical model's cost grows with the square of a sentence

    def _texts(self, request: Request) -> tuple[str, str]:
        payload = request.json
        if not isinstance(payload, dict):
            raise BadRequest('send {"context": "<text>", "question": "<text>"}')
        texts = []
        for field in ("context", "question"):
            value = payload.get(field)
            if not isinstance(value, str) or not TOKEN.search(value):
                raise BadRequest(f'"{field}" must be a non-empty string')
            if len(value) > self.max_chars:
                raise BadRequest(f'"{field}" is longer than {self.max_chars} characters')
            texts.append(value)
        return texts[0], texts[1]

    def preprocess(self, request: Request, model: ModelInfo) -> dict[str, np.ndarray]:
        context, question = self._texts(request)
        context_word, context_char = bidaf_tensors(tokenize(context))
        query_word, query_char = bidaf_tensors(tokenize(question))
        return {
            "context_word": context_word,
            "context_char": context_char,
            "query_word": query_word,
            "query_char": query_char,
        }

    def postprocess(
        self, outputs: dict[str, np.ndarray], request: Request, model: ModelInfo
    ) -> Any:
        context, _ = self._texts(request)
        tokens = tokenize(context)
        start = int(outputs["start_pos"].reshape(-1)[0])
        end = int(outputs["end_pos"].reshape(-1)[0])
        if not 0 <= start <= end < len(tokens):
            raise ValueError(
                f"model returned an invalid span {start}..{end} for {len(tokens)} words"
            )
        first, last = tokens[start].start(), tokens[end].end()
        return {"answer": context[first:last], "start": first, "end": last}
