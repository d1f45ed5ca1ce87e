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
   crude stem (strip possessive ``'s``, ``ing``, ``ed``, plural ``s``/``ies``, final ``e``;
   a short table maps common irregular verbs, built -> build).
2. Split the context into sentences at ``.``, ``?`` and ``!`` tokens (not after a single-letter
   or title abbreviation, nor between digits as in ``3 . 5``).
3. Score each sentence by the distinct query stems it shares with the question, each weighted
   by 1 / (number of sentences containing it): a stem found in every sentence tells little.
4. Candidates are maximal runs of content words that are not query words; a run may continue
   across ``of``/``of the`` and name particles (``the Bank of England``, ``Pierre de
   Coubertin``) and across ``,``/``.`` between digits (``1,200``).
5. The question word sets the expected type: who -> capitalised name (bonus after ``by``),
   where -> capitalised place (bonus after ``in``/``at``/...), when / what year -> a year, month,
   weekday or decade, how many/much/long/... -> a number (the run is trimmed to the number,
   plus its unit for how long/tall/...). "Which ocean ..." lets a name take in the adjacent noun
   ("Atlantic Ocean"); "How many nations ..." prefers a number directly before "nations"; other
   "which" questions prefer capitalised names.
6. The answer is the candidate of the best-scoring sentence; ties go to the expected type, then
   to the candidate nearest a matched query word (content words and, doubly, punctuation in
   between), then flanked by more query words, then following rather than preceding the word
   (the object in "chlorophyll absorbs sunlight"), then hanging on a later question word, then
   the earliest. If nothing qualifies, the first content word.

It answers simple factoid questions whose answer sits in one sentence next to the question's
words; it cannot paraphrase, resolve pronouns or return clauses.

Clients tokenize as bidaf-9's do, with ``nltk.word_tokenize`` (``score/qa_processor.py``), so
a double quote arrives as two backticks or two apostrophes and ``don't`` as ``do`` + ``n't``.
``tokenize`` below is a dependency-free approximation of it, used by this file's offline tests.
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


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOPWORDS = _wordset(
    """
    a an the and or but nor so yet if then than that this these those there here
    is are was were be been being am do does did done doing have has had having
    i me my mine we us our ours you your yours he him his she her hers it its they them their
    theirs itself himself herself themselves
    of in on at by for with from to into onto over under about after before during between
    through within without against among across along around up down out off upon via
    as also not no only very too just more most much many some any all each both either
    neither other such own same few several can could will would shall should may might must
    what which who whom whose where when why how 's
    although though while because since until unless whereas however therefore thus
    almost nearly mostly mainly largely entirely fully quite rather slightly even still
    later earlier now soon often usually always never sometimes once again
    """
)
WH_WORDS = _wordset("what which who whom whose where when why how")
SENTENCE_END = frozenset({".", "?", "!"})
ABBREVIATIONS = _wordset("mr mrs ms dr st jr sr prof mt vs etc")
# Words allowed inside a candidate run when content words stand on both sides.
NAME_PARTICLES = _wordset("de del della da du des la le von van")
PLACE_PREPOSITIONS = _wordset("in at on near from into to inside")
MONTHS = _wordset(  # "may" is left out: it is far more often the verb
    "january february march april june july august september october november december"
)
WEEKDAYS = _wordset("monday tuesday wednesday thursday friday saturday sunday")
TIME_WORDS = MONTHS | WEEKDAYS | {"century", "centuries", "bc", "ad", "bce", "ce"}
NUMBER_WORDS = _wordset(
    """
    zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
    fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty
    ninety hundred thousand million billion trillion dozen dozens hundreds thousands millions
    half quarter
    """
)
# Common irregular verb forms -> base form (regular ones are handled by _stem's suffix rules).
IRREGULAR = {
    "built": "build", "wrote": "write", "written": "write", "began": "begin", "begun": "begin",
    "made": "make", "took": "take", "taken": "take", "gave": "give", "given": "give",
    "went": "go", "gone": "go", "came": "come", "saw": "see", "seen": "see", "found": "find",
    "bought": "buy", "brought": "bring", "taught": "teach", "thought": "think", "won": "win",
    "led": "lead", "left": "leave", "held": "hold", "grew": "grow", "grown": "grow",
    "flew": "fly", "flown": "fly", "fell": "fall", "fallen": "fall", "ran": "run", "sang": "sing",
    "sung": "sing", "spoke": "speak", "spoken": "speak", "drew": "draw", "drawn": "draw",
    "became": "become", "kept": "keep", "sold": "sell", "told": "tell", "rose": "rise",
    "risen": "rise", "chose": "choose", "chosen": "choose", "ate": "eat", "eaten": "eat",
    "lost": "lose", "paid": "pay", "sent": "send", "spent": "spend", "stood": "stand",
    "struck": "strike", "broke": "break", "broken": "break", "froze": "freeze", "met": "meet",
}  # fmt: skip
QUANTITY_HOW = _wordset("many much")
MEASURE_HOW = _wordset("long old far tall high large big deep wide heavy fast")

OTHER, PERSON, PLACE, TIME, QUANTITY, MEASURE = (
    "other",
    "person",
    "place",
    "time",
    "quantity",
    "measure",
)


def tokenize(text: str) -> list[str]:
    """Words (with inner ``-``/``'``) and single punctuation marks: close to word_tokenize."""
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
    w = IRREGULAR.get(w, w)
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith("ing") and len(w) > 5:
        w = w[:-3]
    elif w.endswith("ed") and len(w) > 3 and w[-3] != "e":  # died -> di, but need -> need
        w = w[:-2]
    elif w.endswith("s") and len(w) > 3 and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeioulsz":  # planned -> plan
        w = w[:-1]
    if len(w) > 2 and w.endswith("e"):  # name / named / naming -> nam, die / died -> di
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
    content = [w for w in span if _is_content(w) and w.lower() not in NAME_PARTICLES]
    if qtype in (PERSON, PLACE):
        if any(_is_number(w) or _is_time(w) for w in span):
            return 0  # "in 1694" is not a place, "by 2030" not a person
        score = 2 if content and all(_is_capitalised(w) for w in content) else 0
        cue = {"by"} if qtype == PERSON else PLACE_PREPOSITIONS
        return score + (1 if prev in cue else 0)
    if qtype == TIME:
        return 2 if any(_is_time(w) for w in span) else 0
    if qtype in (QUANTITY, MEASURE):
        return 2 if any(_is_number(w) for w in span) else 0
    return 0


def _head_noun(query_lower: list[str]) -> str:
    """Stem of the asked-for noun: "Which ocean ..." -> ocean, "How many nations ..." -> nation."""
    words = [w for w in query_lower if not _is_punct(w)]
    for i, w in enumerate(words[:-1]):
        if w in {"which", "what"} and _is_content(words[i + 1]):
            return _stem(words[i + 1])
        if w == "how" and words[i + 1] in QUANTITY_HOW and i + 2 < len(words):
            return _stem(words[i + 2]) if _is_content(words[i + 2]) else ""
    return ""


def _absorb_head(words, stems, run, head, lo, hi) -> tuple[tuple[int, int], bool]:
    """Let a name take in the asked-for noun next to it: "Atlantic" + "Ocean" -> "Atlantic Ocean".

    Returns (run, absorbed); a name carrying the asked-for noun is the kind of thing asked for.
    """
    start, end = run
    if not head or not _is_capitalised(words[start]):
        return run, False
    if end + 1 < hi and stems[end + 1] == head and _is_capitalised(words[end + 1]):
        return (start, end + 1), True
    if start - 1 >= lo and stems[start - 1] == head and _is_capitalised(words[start - 1]):
        return (start - 1, end), True
    return run, False


def _prefix_counts(flags: list[bool]) -> list[int]:
    """counts[i] = how many of flags[:i] are true, so any slice is counted in O(1)."""
    counts = [0]
    for flag in flags:
        counts.append(counts[-1] + flag)
    return counts


def _distance(run, matched, rank, content, punct) -> tuple[int, int, int, int]:
    """How close the run is to the matched query words, as a sort key (smaller is closer).

    (distance, -flanking, side, -rank): distance to the nearest query word counts content words
    plus, doubly, punctuation in between; flanking is how many query words are at that distance
    ("collect nectar from flowers"); side is 0 when the run follows such a word (the object in
    "chlorophyll absorbs sunlight"), 1 when it precedes it; rank is how late that word's stem
    comes in the question ("What did the Titanic strike?": the answer hangs on the final verb).
    """
    if not matched:
        return 0, 0, 0, 0
    found = []
    for k in matched:
        if run[0] <= k <= run[1]:
            return 0, 0, 0, 0
        a, b = (k + 1, run[0]) if k < run[0] else (run[1] + 1, k)
        # Prefix sums keep this O(1): a long sentence must not cost cubic time (a DoS).
        d = 1 + (content[b] - content[a]) + 2 * (punct[b] - punct[a])
        found.append((d, 0 if k < run[0] else 1, -rank[k]))
    nearest = min(d for d, _, _ in found)
    flanking = sum(d == nearest for d, _, _ in found)
    side, neg_rank = min((s, r) for d, s, r in found if d == nearest)
    return nearest, -flanking, side, neg_rank


def _candidates(words, stems, lo, hi, is_cand, qtype, head):
    """Yield (span, counts_head): candidate answer spans in [lo, hi) for the question type.

    counts_head is True for a number directly followed by the asked-for noun ("fourteen nations"
    for "How many nations ...").
    """
    for run in _runs(words, lo, hi, is_cand):
        counts_head = bool(
            qtype == QUANTITY and head and run[1] + 1 < hi and stems[run[1] + 1] == head
        )
        pieces = _split_by_case(words, run) if qtype in (PERSON, PLACE) else [run]
        for piece in pieces:
            if qtype == TIME:
                piece = _trim(words, piece, _is_time, keep_tail=False)
            elif qtype == QUANTITY:
                piece = _trim(words, piece, _is_number, keep_tail=False)
            elif qtype == MEASURE:
                piece = _trim(words, piece, _is_number, keep_tail=True)
            yield piece, counts_head


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
    query_order = [_stem(q) for q in query_lower if _is_content(q) and q not in WH_WORDS]
    query_stems = {q for q in query_order if q}
    query_rank = {q: i for i, q in enumerate(query_order)}  # last occurrence wins
    qtype = _question_type(query_lower)

    head = _head_noun(query_lower)
    # "Which country ..." asks for one named thing of a kind: prefer capitalised names.
    prefer_names = qtype == OTHER and "which" in query_lower

    stems = [_stem(w) for w in words]
    is_query = [_is_content(w) and s in query_stems for w, s in zip(words, stems, strict=True)]
    is_cand = [_is_content(w) and not q for w, q in zip(words, is_query, strict=True)]
    rank = [query_rank.get(s, 0) if q else 0 for s, q in zip(stems, is_query, strict=True)]
    content = _prefix_counts([_is_content(w) for w in words])
    punct = _prefix_counts([_is_punct(w) for w in words])
    sentences = _sentences(words)
    matched_stems = [{stems[k] for k in range(lo, hi) if is_query[k]} for lo, hi in sentences]
    # Sentence frequency of each query stem: a stem found in every sentence tells us little.
    df = {s: sum(s in m for m in matched_stems) for s in query_stems}

    best = None  # (sort key, span)
    for idx, (lo, hi) in enumerate(sentences):
        overlap = round(sum(1.0 / df[s] for s in matched_stems[idx]), 6)
        matched = [k for k in range(lo, hi) if is_query[k]]
        for run, counts_head in _candidates(words, stems, lo, hi, is_cand, qtype, head):
            run, absorbed = _absorb_head(words, stems, run, head, lo, hi)
            closeness = _distance(run, matched, rank, content, punct)
            tscore = _type_score(words, run, qtype) + 2 * absorbed + counts_head
            if prefer_names and _is_capitalised(words[run[0]]):
                tscore += 1
            key = (-overlap, -tscore, closeness, idx, run[0])
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
            except Exception as exc:  # noqa: BLE001 - never crash the stub: report per request
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[],
                        # Bad input is the client's fault: INVALID_ARG makes Triton answer 400.
                        error=pb_utils.TritonError(
                            f"qa_lexical: {exc}",
                            pb_utils.TritonError.INVALID_ARG
                            if isinstance(exc, ValueError)
                            else pb_utils.TritonError.INTERNAL,
                        ),
                    )
                )
        return responses

    def finalize(self):
        pass
