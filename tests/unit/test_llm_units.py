"""The model side of the OpenAI front, without Triton: stops, detokenization, adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from triton_score.llm.adapters import (
    AdapterError,
    Generation,
    TensorRtLlmAdapter,
    VllmAdapter,
    choose_adapter,
)
from triton_score.llm.detokenize import REPLACEMENT, IncrementalDetokenizer, Utf8Pieces
from triton_score.llm.stops import StopScanner
from triton_score.model.info import ModelInfo, TensorSpec

tokenizers = pytest.importorskip("tokenizers")

TEXT = "naïve café 日本語のテキスト 😀🎉 ümlaut straße " * 20


def test_a_stop_sequence_spanning_chunks_is_never_sent() -> None:
    scanner = StopScanner(("foo bar",))
    sent = [scanner.add(piece) for piece in (" a", " fo", "o b", "ar", " z")]
    assert "".join(sent) == " a "
    assert scanner.stopped and scanner.flush() == ""


def test_text_that_only_began_a_stop_sequence_is_released() -> None:
    scanner = StopScanner(("foo bar", "xyz"))
    sent = [scanner.add(piece) for piece in (" a", " fo", "o x", "y")]
    assert "".join(sent) == " a foo "  # "xy" may still begin "xyz"
    assert scanner.flush() == "xy" and not scanner.stopped


def test_the_earliest_stop_sequence_wins() -> None:
    scanner = StopScanner(("end", "b"))
    assert scanner.add("a b c end") == "a "


def _byte_level_tokenizer() -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(["plain ascii words only"] * 5, trainer=trainer)
    return tokenizer


def test_incremental_detokenization_never_sends_half_a_character() -> None:
    tokenizer = _byte_level_tokenizer()
    ids = tokenizer.encode(TEXT).ids  # type: ignore[attr-defined]
    whole = tokenizer.decode(ids)  # type: ignore[attr-defined]
    assert whole == TEXT
    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = [detokenizer.add([token]) for token in ids]
    pieces.append(detokenizer.flush())
    assert "".join(pieces) == TEXT
    assert not any(REPLACEMENT in piece for piece in pieces)
    # the test means something: one id alone does decode to half a character here
    assert any(REPLACEMENT in tokenizer.decode([token]) for token in ids)  # type: ignore[attr-defined]


def test_utf8_pieces_join_a_character_split_between_reads() -> None:
    data = TEXT.encode()
    pieces = Utf8Pieces()
    out = [pieces.add(data[i : i + 3]) for i in range(0, len(data), 3)] + [pieces.flush()]
    assert "".join(out) == TEXT and not any(REPLACEMENT in piece for piece in out)


def _model(*names: str) -> ModelInfo:
    return ModelInfo("m", inputs=tuple(TensorSpec(n, "BYTES", (1,)) for n in names))


def test_the_adapter_is_read_from_the_inputs_or_declared() -> None:
    generation = Generation("hi", 5, temperature=0.5, seed=3, stop=("x",))
    vllm = choose_adapter(_model("text_input", "stream", "sampling_parameters"))
    body = vllm.body(generation)
    assert isinstance(vllm, VllmAdapter) and body["exclude_input_in_output"] is True
    assert json.loads(body["sampling_parameters"]) == {
        "max_tokens": 5,
        "temperature": 0.5,
        "seed": 3,
        "stop": ["x"],
    }
    trt = choose_adapter(_model("text_input", "max_tokens", "stream", "temperature"))
    assert isinstance(trt, TensorRtLlmAdapter)
    # only the inputs the model has: no random_seed here
    assert trt.body(generation) == {
        "text_input": "hi",
        "max_tokens": 5,
        "stream": True,
        "temperature": 0.5,
    }
    declared = choose_adapter(_model("text_input", "whatever"), "tensorrt_llm")
    assert declared.name == "tensorrt_llm"
    with pytest.raises(AdapterError, match="SCORE_LLM_ADAPTERS"):
        choose_adapter(_model("text_input", "whatever"))
    with pytest.raises(AdapterError, match="text_input"):
        choose_adapter(_model("input_ids"))
    assert vllm.text({"text_output": ["a", "b"]}) == "ab"


def test_template_file_beats_the_config_and_a_folder_without_tokenizer_is_refused(
    tmp_path: Path,
) -> None:
    from triton_score.llm.text import ModelText, ModelTextError

    tokenizer = _byte_level_tokenizer()
    tokenizer.save(str(tmp_path / "tokenizer.json"))  # type: ignore[attr-defined]
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": "{{ messages[0]['content'] }}!", "eos_token": "</s>"})
    )
    text = ModelText.load("m", tmp_path)
    assert text.chat_prompt([{"role": "user", "content": "hi"}]) == "hi!"
    (tmp_path / "chat_template.jinja").write_text("[{{ messages[0]['role'] }}]{{ eos_token }}")
    text = ModelText.load("m", tmp_path)
    assert text.chat_prompt([{"role": "user", "content": "hi"}]) == "[user]</s>"
    (tmp_path / "chat_template.jinja").write_text("{{ ''.__class__.__mro__ }}")
    with pytest.raises(ModelTextError):  # the sandbox: no way to Python's objects
        ModelText.load("m", tmp_path).chat_prompt([{"role": "user", "content": "x"}])
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(ModelTextError, match="tokenizer.json"):
        ModelText.load("m", tmp_path)


def test_llm_settings_are_read_and_checked() -> None:
    from triton_score.settings import Settings

    read = Settings.from_env({"SCORE_LLM_ADAPTERS": "a=vllm, b=tensorrt_llm"})
    assert read.llm_adapters == (("a", "vllm"), ("b", "tensorrt_llm"))
    with pytest.raises(ValueError, match="unknown adapter 'onnx'"):
        Settings.from_env({"SCORE_LLM_ADAPTERS": "a=onnx"})
    with pytest.raises(ValueError, match="not name=value"):
        Settings.from_env({"SCORE_LLM_ADAPTERS": "a"})
    with pytest.raises(ValueError, match="SCORE_LLM_MAX_TOKENS"):
        Settings.from_env({"SCORE_LLM_MAX_TOKENS": "0"})
