"""tiny_lm, the toy decoupled language model of the example repository, and its tokenizer builder.

The unit tests load ``models/triton/tiny_lm/1/model.py`` by path (its sampler and stop-string
holdback are plain Python); the integration tests ask the session's real Triton, over HTTP's
``generate``/``generate_stream`` and over gRPC's stream (the only way Triton cancels).
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import queue
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import requests

from triton_score.local import LocalTriton

ROOT = Path(__file__).resolve().parents[2]
MODEL_FILE = ROOT / "models" / "triton" / "tiny_lm" / "1" / "model.py"
BUILDER_FILE = ROOT / "models" / "build_tiny_lm.py"


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny() -> ModuleType:
    return _load(MODEL_FILE, "tiny_lm_model")


def test_same_seed_same_words_other_seed_other_words(tiny: ModuleType) -> None:
    lm = tiny.TinyLM.from_stdlib()
    first = list(itertools.islice(lm.words("a class", tiny.Sampling(seed=1)), 30))
    again = list(itertools.islice(lm.words("a class", tiny.Sampling(seed=1)), 30))
    other = list(itertools.islice(lm.words("a class", tiny.Sampling(seed=2)), 30))
    assert first == again
    assert first != other
    greedy = list(itertools.islice(lm.words("a class", tiny.Sampling(temperature=0.0)), 5))
    assert greedy == list(itertools.islice(lm.words("a class", tiny.Sampling(temperature=0)), 5))


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("[1]", "a JSON object"),
        ("{", "not JSON"),
        ('{"max_tokens": 0}', "max_tokens"),
        ('{"max_tokens": "many"}', "max_tokens"),
        ('{"top_p": 0}', "top_p"),
        ('{"temperature": -1}', "temperature"),
        ('{"stop": [""]}', "stop"),
        ('{"seed": "x"}', "seed"),
    ],
)
def test_bad_sampling_parameters_name_the_parameter(tiny: ModuleType, text: str, word: str) -> None:
    with pytest.raises(tiny.SamplingError, match=word):
        tiny.Sampling.from_json(text)


def test_sampling_reads_vllm_strings_and_a_single_stop(tiny: ModuleType) -> None:
    sampling = tiny.Sampling.from_json('{"max_tokens": "5", "stop": "x", "ignore_eos": true}')
    assert (sampling.max_tokens, sampling.stop) == (5, ("x",))


def test_stop_string_across_pieces_is_held_back_and_never_sent(tiny: ModuleType) -> None:
    watch = tiny.StopWatch(("foo bar",))
    sent = [watch.add(piece) for piece in (" a", " fo", "o b", "ar", " z")]
    assert "".join(sent) == " a "
    assert watch.stopped
    watch = tiny.StopWatch(("foo bar",))
    sent = [watch.add(piece) for piece in (" a", " fo", "o x")]
    assert "".join(sent) + watch.flush() == " a foo x"  # held back, then released


def test_builder_is_deterministic_and_keeps_a_current_build(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    builder = _load(BUILDER_FILE, "build_tiny_lm")
    folder = tmp_path / "tiny_lm"
    shutil.copytree(MODEL_FILE.parent.parent, folder, ignore=shutil.ignore_patterns("*.json"))
    lines: list[str] = []
    builder.build(tmp_path, log=lines.append)
    digest = hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
    assert len(lines) == 1
    builder.build(tmp_path, log=lines.append)  # current: nothing written
    assert len(lines) == 1
    builder.build(tmp_path, force=True, log=lines.append)
    assert hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest() == digest
    (folder / "tokenizer.json").write_text("{}")  # a damaged output is rebuilt
    builder.build(tmp_path, log=lines.append)
    assert len(lines) == 3

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tiny = _load(MODEL_FILE, "tiny_lm_model_2")
    lm = tiny.TinyLM.from_stdlib()
    words = list(itertools.islice(lm.words("a class", tiny.Sampling(seed=4)), 40))
    # One generated word is one token, none unknown: usage counts are the model's steps.
    encoded = tokenizer.encode("".join(" " + w for w in words))
    assert len(encoded.ids) == len(words)
    assert tokenizer.token_to_id(builder.UNKNOWN) not in encoded.ids
    config = json.loads((folder / "tokenizer_config.json").read_text())
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = ImmutableSandboxedEnvironment().from_string(config["chat_template"])
    prompt = template.render(
        messages=[{"role": "user", "content": "Hi"}], add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


# -- against the real Triton ---------------------------------------------------------------
def _generate(triton: LocalTriton, stream: bool, **sampling: object) -> requests.Response:
    body = {
        "text_input": "What is a class",
        "stream": stream,
        "sampling_parameters": json.dumps(sampling),
    }
    path = "generate_stream" if stream else "generate"
    return requests.post(
        f"http://{triton.url}/v2/models/tiny_lm/{path}", json=body, stream=stream, timeout=60
    )


def _events(response: requests.Response) -> list[tuple[float, dict[str, object]]]:
    events = []
    for line in response.iter_lines():
        if line.startswith(b"data: "):
            events.append((time.monotonic(), json.loads(line[6:])))
    return events


def test_streams_one_word_per_event_as_it_generates(triton: LocalTriton) -> None:
    started = time.monotonic()
    response = _generate(triton, True, max_tokens=12, seed=7)
    assert response.status_code == 200
    events = _events(response)
    assert len(events) == 12
    # Each step sleeps 20 ms: the first word arrives long before the last.
    assert events[-1][0] - events[0][0] > 0.15
    assert events[0][0] - started < events[-1][0] - started - 0.15
    streamed = "".join(str(event["text_output"]) for _, event in events)
    whole = _generate(triton, False, max_tokens=12, seed=7).json()["text_output"]
    assert whole == "What is a class" + streamed  # the prompt is included, unless excluded


def test_stop_and_max_tokens_and_errors(triton: LocalTriton) -> None:
    full = _generate(triton, False, max_tokens=8, seed=3).json()["text_output"]
    cut_at = full.split()[7]
    stopped = _generate(triton, False, max_tokens=8, seed=3, stop=[" " + cut_at]).json()
    assert not stopped["text_output"].endswith(cut_at)
    assert full.startswith(stopped["text_output"])
    refused = _generate(triton, False, max_tokens=0)
    assert refused.status_code == 400
    assert "max_tokens" in refused.json()["error"]


def _metric(triton: LocalTriton, name: str) -> float:
    text = requests.get(f"http://127.0.0.1:{triton.metrics_port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in Triton's metrics")


def test_a_cancelled_grpc_stream_stops_the_model_within_a_few_steps(triton: LocalTriton) -> None:
    grpcclient = pytest.importorskip("tritonclient.grpc")
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{triton.grpc_port}")
    answers: queue.Queue[object] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put(error or result))

    def tensor(name: str, datatype: str, value: object) -> object:
        entry = grpcclient.InferInput(name, [1], datatype)
        entry.set_data_from_numpy(np.array([value], dtype=object if datatype == "BYTES" else bool))
        return entry

    steps = _metric(triton, "tiny_lm_steps_total")
    cancelled = _metric(triton, "tiny_lm_cancelled_total")
    inputs = [
        tensor("text_input", "BYTES", b"a class"),
        tensor("stream", "BOOL", True),
        tensor("sampling_parameters", "BYTES", json.dumps({"max_tokens": 1000}).encode()),
    ]
    try:
        client.async_stream_infer("tiny_lm", inputs)
        for _ in range(3):
            answer = answers.get(timeout=30)
            assert not isinstance(answer, Exception), answer
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()
    time.sleep(0.5)
    after = _metric(triton, "tiny_lm_steps_total")
    time.sleep(0.5)
    assert _metric(triton, "tiny_lm_steps_total") == after  # stopped
    assert after - steps < 3 + 10  # 1000 asked; at 20 ms a step, a few more at most
    assert _metric(triton, "tiny_lm_cancelled_total") == cancelled + 1
