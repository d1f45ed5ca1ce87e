"""qa_lexical: extractive question answering by lexical overlap -- NOT a neural model.

A Triton python-backend stand-in for the ONNX model zoo's BiDAF (bidaf-9.onnx) with exactly the
same interface, so the real model can replace it later without touching clients:

    inputs   context_word BYTES [-1, 1]      query_word BYTES [-1, 1]
             context_char BYTES [-1, 1, 1, 16]  query_char BYTES [-1, 1, 1, 16]
    outputs  start_pos INT32 [1]   end_pos INT32 [1]

``start_pos``/``end_pos`` are inclusive indexes into ``context_word``; the answer is
``" ".join(context_words[start:end + 1])``.  One word per row; the char inputs hold the first 16
characters of each word (bidaf-9 clients lower-case the words but not the chars). The chars are
only shape-checked and used to recover the original capitalisation of each word.

Algorithm (pure string heuristics, no learned weights, no downloaded data):

1. Lower-case; ignore punctuation and a small built-in English stopword list; compare words by a
   crude stem (strip possessive ``'s``, ``ing``, ``ed``, plural ``s``/``ies``, final ``e``).
2. Split the context into sentences at ``.``, ``?`` and ``!`` tokens (not after a single-letter
   or title abbreviation, nor between digits as in ``3 . 5``).
3. Pick the sentence sharing the most distinct query stems with the question (ties: the one with
   a candidate of the expected answer type, then the earliest).
4. Candidates in that sentence are maximal runs of content words that are not query words; a run
   may continue across ``of``/``of the`` and name particles (``the Bank of England``) and across
   ``,``/``.`` between digits (``1,200``).
5. The question word sets the expected type: who -> capitalised name (bonus after ``by``),
   where -> capitalised place (bonus after ``in``/``at``/...), when / what year -> a year, month,
   weekday or decade, how many/much/long/... -> a number (the run is trimmed to the number,
   plus its unit for how long/tall/...). The best run has the expected type, then is nearest to
   the matched query words, then earliest.

``tokenize`` is the tokenisation rule clients must use to produce ``context_word``/``query_word``.
"""

from __future__ import annotations

import json
import re

import numpy as np

try:  # only available inside the Triton python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # plain-Python tests import this file for answer_span/tokenize
    pb_utils = None

TOKEN_RE = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]")
CHAR_WIDTH = 16

STOPWORDS = frozenset(
    """
    a an the and or but nor so yet if then than that this these those there here
    is are was were be been being am do does did done doing have has had having
    i me my mine we us our ours you your yours he him his she her hers it its they them their
    theirs itself himself herself themselves
    of in on at by for with from to into onto over under about after before during between
    through within without against among across along around up down out off upon via
    as also not no only very too just more most much many some any all each both either
    neither other such own same can could will would shall should may might must
    what which who whom whose where when why how 's
    """.split()
)
WH_WORDS = frozenset({"what", "which", "who", "whom", "whose", "where", "when", "why", "how"})
SENTENCE_END = frozenset({".", "?", "!"})
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "mt", "vs", "etc"})
# Words allowed inside a candidate run when content words stand on both sides.
NAME_PARTICLES = frozenset({"de", "del", "della", "da", "du", "des", "la", "le", "von", "van"})
PLACE_PREPOSITIONS = frozenset({"in", "at", "on", "near", "from", "into", "to", "inside"})
MONTHS = frozenset(
    "january february march april june july august september october november december".split()
)
WEEKDAYS = frozenset("monday tuesday wednesday thursday friday saturday sunday".split())
TIME_WORDS = MONTHS | WEEKDAYS | {"century", "centuries", "bc", "ad", "bce", "ce"}
NUMBER_WORDS = frozenset(
    """
    zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
    fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty
    ninety hundred thousand million billion trillion dozen dozens hundreds thousands millions
    half quarter
    """.split()
)
QUANTITY_HOW = frozenset({"many", "much"})
MEASURE_HOW = frozenset(
    {"long", "old", "far", "tall", "high", "large", "big", "deep", "wide", "heavy", "fast"}
)

OTHER, PERSON, PLACE, TIME, QUANTITY, MEASURE = (
    "other",
    "person",
    "place",
    "time",
    "quantity",
    "measure",
)


def tokenize(text: str) -> list[str]:
    """The shared word tokeniser: words (with inner ``-``/``'``) and single punctuation marks."""
    return TOKEN_RE.findall(text)


def _is_punct(word: str) -> bool:
    return not any(ch.isalnum() for ch in word)


def _stem(word: str) -> str:
    """Crude suffix stripping, only ever compared with other ``_stem`` results."""
    w = word.lower()
    if w.endswith("'s"):
        w = w[:-2]
    elif w.endswith("'"):
        w = w[:-1]
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith("ing") and len(w) > 5:
        w = w[:-3]
    elif w.endswith("ed") and len(w) > 4:
        w = w[:-2]
    elif w.endswith("s") and len(w) > 3 and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeioulsz":  # planned -> plan
        w = w[:-1]
    if len(w) > 3 and w.endswith("e"):  # name / named / naming -> nam
        w = w[:-1]
    return w


def _is_content(word: str) -> bool:
    return bool(word) and not _is_punct(word) and word.lower() not in STOPWORDS


def _is_number(word: str) -> bool:
    w = word.lower()
    return any(ch.isdigit() for ch in w) or w in NUMBER_WORDS


def _is_time(word: str) -> bool:
    w = word.lower()
    if w in TIME_WORDS:
        return True
    return re.fullmatch(r"1\d{3}s?|20\d{2}s?|\d0s|\d+(st|nd|rd|th)", w) is not None


def _is_capitalised(word: str) -> bool:
    return word[:1].isupper()


def _question_type(query_lower: list[str]) -> str:
    words = [w for w in query_lower if not _is_punct(w)]
    for i, w in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w == "how" and nxt in QUANTITY_HOW:
            return QUANTITY
        if w == "how" and nxt in MEASURE_HOW:
            return MEASURE
        if w in {"who", "whom", "whose"}:
            return PERSON
        if w == "where":
            return PLACE
        if w == "when" or (w in {"what", "which"} and nxt in {"year", "date", "day", "century"}):
            return TIME
    return OTHER


def _sentences(words: list[str]) -> list[tuple[int, int]]:
    """Half-open [start, end) word ranges of the sentences; the end mark stays in its sentence."""
    spans, start = [], 0
    for i, w in enumerate(words):
        if w not in SENTENCE_END:
            continue
        prev = words[i - 1] if i > 0 else ""
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w == "." and (
            (prev.isdigit() and nxt.isdigit())
            or (len(prev) == 1 and prev.isalpha())
            or prev.lower() in ABBREVIATIONS
        ):
            continue
        spans.append((start, i + 1))
        start = i + 1
    if start < len(words):
        spans.append((start, len(words)))
    return spans


def _runs(words: list[str], lo: int, hi: int, is_candidate: list[bool]) -> list[tuple[int, int]]:
    """Inclusive (start, end) runs of candidate words in [lo, hi), bridging particles/digits."""
    runs: list[tuple[int, int]] = []
    i = lo
    while i < hi:
        if not is_candidate[i]:
            i += 1
            continue
        start = end = i
        j = i + 1
        while j < hi:
            if is_candidate[j]:
                end, j = j, j + 1
                continue
            w = words[j].lower()
            gap = 0
            if w == "of":
                gap = 2 if j + 1 < hi and words[j + 1].lower() == "the" else 1
            elif w in NAME_PARTICLES or (
                w in {",", "."} and words[end].isdigit() and j + 1 < hi and words[j + 1].isdigit()
            ):
                gap = 1
            if gap and j + gap < hi and is_candidate[j + gap]:
                j += gap
                continue
            break
        runs.append((start, end))
        i = end + 1
    return runs


def _split_by_case(words: list[str], run: tuple[int, int]) -> list[tuple[int, int]]:
    """Split a run where capitalisation changes (numbers and particles join either side)."""
    pieces, start, state = [], run[0], None
    for k in range(run[0], run[1] + 1):
        w = words[k]
        if _is_number(w) or not _is_content(w) or w.lower() in NAME_PARTICLES:
            continue
        cap = _is_capitalised(w)
        if state is not None and cap != state:
            end = k - 1
            while end > start and not _is_content(words[end]):
                end -= 1
            pieces.append((start, end))
            start = k
        state = cap
    pieces.append((start, run[1]))
    return pieces


def _trim(words: list[str], run: tuple[int, int], pred, keep_tail: bool) -> tuple[int, int]:
    """Trim a run to its first..last word satisfying ``pred`` (or first..end if keep_tail)."""
    hits = [k for k in range(run[0], run[1] + 1) if pred(words[k])]
    if not hits:
        return run
    return hits[0], (run[1] if keep_tail else hits[-1])


def _type_score(words: list[str], run: tuple[int, int], qtype: str) -> int:
    span = words[run[0] : run[1] + 1]
    prev = words[run[0] - 1].lower() if run[0] > 0 else ""
    content = [w for w in span if _is_content(w)]
    if qtype in (PERSON, PLACE):
        score = 2 if content and all(_is_capitalised(w) for w in content) else 0
        cue = {"by"} if qtype == PERSON else PLACE_PREPOSITIONS
        return score + (1 if score and prev in cue else 0)
    if qtype == TIME:
        return 2 if any(_is_time(w) for w in span) else 0
    if qtype in (QUANTITY, MEASURE):
        return 2 if any(_is_number(w) for w in span) else 0
    return 0


def _candidates(words: list[str], lo: int, hi: int, is_cand: list[bool], qtype: str):
    out = []
    for run in _runs(words, lo, hi, is_cand):
        pieces = _split_by_case(words, run) if qtype in (PERSON, PLACE) else [run]
        for piece in pieces:
            if qtype == TIME:
                piece = _trim(words, piece, _is_time, keep_tail=False)
            elif qtype == QUANTITY:
                piece = _trim(words, piece, _is_number, keep_tail=False)
            elif qtype == MEASURE:
                piece = _trim(words, piece, _is_number, keep_tail=True)
            out.append(piece)
    return out


def answer_span(context_words: list[str], query_words: list[str]) -> tuple[int, int]:
    """Inclusive (start, end) word indexes of the answer to the question within the context.

    Raises ValueError if the context has no words. Always returns a valid in-range span, even
    when no query word occurs in the context (then the best-typed candidate of the earliest
    sentence, or the first word).
    """
    words = ["" if w is None else str(w) for w in context_words]
    if not words or all(not w.strip() for w in words):
        raise ValueError("context_word is empty: the context must contain at least one word")
    query_lower = [str(q).lower() for q in query_words]
    query_stems = {
        _stem(q) for q in query_lower if _is_content(q) and q not in WH_WORDS and _stem(q)
    }
    qtype = _question_type(query_lower)

    stems = [_stem(w) for w in words]
    is_query = [_is_content(w) and s in query_stems for w, s in zip(words, stems, strict=True)]
    is_cand = [_is_content(w) and not q for w, q in zip(words, is_query, strict=True)]

    best = None  # (sort key, span)
    for idx, (lo, hi) in enumerate(_sentences(words)):
        overlap = len({stems[k] for k in range(lo, hi) if is_query[k]})
        matched = [k for k in range(lo, hi) if is_query[k]]
        for run in _candidates(words, lo, hi, is_cand, qtype):
            dist = min((min(abs(k - run[0]), abs(k - run[1])) for k in matched), default=0)
            tscore = _type_score(words, run, qtype)
            key = (-overlap, -tscore, idx, dist, run[0])
            if best is None or key < best[0]:
                best = (key, run)
    if best is not None:
        return best[1]
    first = next((k for k, w in enumerate(words) if _is_content(w)), None)
    if first is None:
        first = next((k for k, w in enumerate(words) if w.strip() and not _is_punct(w)), 0)
    return first, first


# ----------------------------------------------------------------------------------------------
# Triton python backend glue
# ----------------------------------------------------------------------------------------------


def _decode(value) -> str:
    if isinstance(value, bytes | bytearray | np.bytes_):
        return bytes(value).decode("utf-8")
    return "" if value is None else str(value)


def _words_from(array: np.ndarray, name: str) -> list[str]:
    arr = np.asarray(array, dtype=object)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    elif arr.ndim != 1:
        raise ValueError(f"{name} must have shape [-1, 1], got {list(arr.shape)}")
    return [_decode(v) for v in arr]


def _chars_from(array: np.ndarray, name: str, n_words: int) -> list[str]:
    arr = np.asarray(array, dtype=object)
    if arr.ndim < 2 or arr.shape[0] != n_words:
        raise ValueError(
            f"{name} must have shape [{n_words}, 1, 1, {CHAR_WIDTH}] (one row per word), "
            f"got {list(arr.shape)}"
        )
    rows = arr.reshape(n_words, -1)
    if rows.shape[1] > CHAR_WIDTH:
        raise ValueError(f"{name} has {rows.shape[1]} chars per word, at most {CHAR_WIDTH}")
    return ["".join(_decode(c) for c in row) for row in rows]


def _recase(words: list[str], chars: list[str]) -> list[str]:
    """bidaf-9 clients lower-case words but not chars: restore the case where they agree."""
    out = []
    for w, c in zip(words, chars, strict=True):
        if c and w[: len(c)].lower() == c.lower():
            out.append(c + w[len(c) :])
        else:
            out.append(w)
    return out


def run_request(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Validate bidaf-9 style input arrays and return (start_pos, end_pos) as int32 [1]."""
    for name in ("context_word", "context_char", "query_word", "query_char"):
        if inputs.get(name) is None:
            raise ValueError(f"missing input tensor {name!r}")
    context = _words_from(inputs["context_word"], "context_word")
    query = _words_from(inputs["query_word"], "query_word")
    if not context:
        raise ValueError("context_word is empty: the context must contain at least one word")
    context = _recase(context, _chars_from(inputs["context_char"], "context_char", len(context)))
    _chars_from(inputs["query_char"], "query_char", len(query))
    start, end = answer_span(context, query)
    return np.array([start], dtype=np.int32), np.array([end], dtype=np.int32)


class TritonPythonModel:
    """Triton python backend entry point (no batching: one question per request)."""

    def initialize(self, args):
        self.model_config = json.loads(args["model_config"]) if args else {}

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                inputs = {}
                for name in ("context_word", "context_char", "query_word", "query_char"):
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    inputs[name] = None if tensor is None else tensor.as_numpy()
                start, end = run_request(inputs)
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor("start_pos", start),
                            pb_utils.Tensor("end_pos", end),
                        ]
                    )
                )
            except Exception as exc:  # never crash the stub: report per request
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[],
                        error=pb_utils.TritonError(f"qa_lexical: {exc}"),
                    )
                )
        return responses

    def finalize(self):
        pass
