"""The OpenAI-compatible front (``/v1``) against the real Triton and the real ``score serve``.

A Triton of its own serves two copies of ``tiny_lm`` whose tokenizer the committed builder
writes: ``tiny_lm`` (ChatML, from ``tokenizer_config.json``) and ``tiny_plain`` (another
layout, from a ``chat_template.jinja`` file), so the two get different prompts. The gateway
requires an API key, which the official ``openai`` client sends as ``Authorization: Bearer``.

The gateway streams from Triton over gRPC (``SCORE_TRITON_GRPC_URL``), as ``score serve`` does
with a Triton of its own: a client that goes away cancels the model's work. One more gateway
over HTTP shows that Triton 2.51 cancels there too, when the connection to it closes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, ScoreServer, start_triton
from triton_score.local import LocalTriton

openai = pytest.importorskip("openai")
pytest.importorskip("tokenizers")

KEY = "test-key-for-the-openai-front-0123"
PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: {{ message['content'] }}\n"
    "{% endfor %}ASSISTANT:"
)
MESSAGES = [{"role": "user", "content": "What is a class"}]


@pytest.fixture(scope="module")
def llm_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("llm") / "repository"
    source = ROOT / "models" / "triton" / "tiny_lm"
    shutil.copytree(source, repository / "tiny_lm", ignore=shutil.ignore_patterns("*.json"))
    spec = importlib.util.spec_from_file_location(
        "build_tiny_lm_front", ROOT / "models" / "build_tiny_lm.py"
    )
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    builder.build(repository, log=lambda line: None)
    plain = repository / "tiny_plain"
    shutil.copytree(repository / "tiny_lm", plain)
    config = (plain / "config.pbtxt").read_text()
    (plain / "config.pbtxt").write_text(config.replace('name: "tiny_lm"', 'name: "tiny_plain"'))
    (plain / "chat_template.jinja").write_text(PLAIN_TEMPLATE)  # wins over tokenizer_config's
    trt = repository / "trt_like"  # TensorRT-LLM's interface, the tiny_lm tokenizer
    shutil.copytree(ROOT / "tests" / "fixtures" / "trt_like", trt)
    shutil.copy(repository / "tiny_lm" / "tokenizer.json", trt / "tokenizer.json")
    return repository


@pytest.fixture(scope="module")
def llm_triton(llm_repository: Path) -> Iterator[LocalTriton]:
    server = start_triton(llm_repository)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def llm_server(llm_triton: LocalTriton, llm_repository: Path) -> Iterator[ScoreServer]:
    server = ScoreServer(
        "--triton-url",
        llm_triton.url,
        "--processors",
        "none",
        "--workers",
        "1",  # every stream through one worker: it holds a greenlet each, not a worker
        env={
            "SCORE_LLM_FOLDER": str(llm_repository),
            "SCORE_API_KEYS": KEY,
            "SCORE_TRITON_GRPC_URL": f"127.0.0.1:{llm_triton.grpc_port}",
        },
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture()
def client(llm_server: ScoreServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{llm_server.url}/v1", api_key=KEY, max_retries=0)


def _count(repository: Path, model: str, text: str) -> int:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(repository / model / "tokenizer.json"))
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def test_models_lists_the_language_models(client: openai.OpenAI) -> None:
    assert sorted(model.id for model in client.models.list()) == [
        "tiny_lm",
        "tiny_plain",
        "trt_like",
    ]


def test_chat_not_streamed_counts_usage_with_each_models_template(
    client: openai.OpenAI, llm_repository: Path
) -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    config = json.loads((llm_repository / "tiny_lm" / "tokenizer_config.json").read_text())
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    prompts = {
        "tiny_lm": environment.from_string(config["chat_template"]),
        "tiny_plain": environment.from_string(PLAIN_TEMPLATE),
    }
    answers = {}
    for model, template in prompts.items():
        answer = client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=6, temperature=0, seed=1
        )
        prompt = template.render(messages=MESSAGES, add_generation_prompt=True)
        assert answer.object == "chat.completion"
        assert answer.choices[0].message.role == "assistant"
        assert answer.choices[0].finish_reason == "length"
        assert answer.usage is not None
        assert answer.usage.prompt_tokens == _count(llm_repository, model, prompt)
        assert answer.usage.completion_tokens == 6
        assert answer.usage.total_tokens == answer.usage.prompt_tokens + 6
        answers[model] = (answer.usage.prompt_tokens, answer.choices[0].message.content)
    # tiny_lm continues from the prompt's last word: "assistant" versus ":"
    assert answers["tiny_lm"] != answers["tiny_plain"]


def test_completion_streamed_is_the_completion_not_streamed(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="tiny_lm", prompt="a class", max_tokens=10, seed=3)
    chunks = list(
        client.completions.create(
            model="tiny_lm",
            prompt="a class",
            max_tokens=10,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].text
    assert len(text.split()) >= 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 10


def test_stop_sequence_cuts_the_answer(client: openai.OpenAI) -> None:
    full = client.completions.create(model="tiny_lm", prompt="a class", max_tokens=8, seed=5)
    words = full.choices[0].text.split()
    stop = " " + words[5]
    cut = client.completions.create(
        model="tiny_lm", prompt="a class", max_tokens=8, seed=5, stop=[stop]
    )
    assert full.choices[0].text.startswith(cut.choices[0].text)
    assert stop not in cut.choices[0].text
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < 8


def test_async_chat_stream_and_completion(llm_server: ScoreServer) -> None:
    async def run() -> tuple[str, list[str | None]]:
        client = openai.AsyncOpenAI(base_url=f"{llm_server.url}/v1", api_key=KEY, max_retries=0)
        stream = await client.chat.completions.create(
            model="tiny_plain", messages=MESSAGES, max_tokens=7, seed=2, stream=True
        )
        parts, reasons = [], []
        async for chunk in stream:
            parts.append(chunk.choices[0].delta.content or "")
            reasons.append(chunk.choices[0].finish_reason)
        whole = await client.completions.create(model="tiny_lm", prompt="a class", max_tokens=4)
        await client.close()
        assert whole.usage is not None and whole.usage.completion_tokens == 4
        return "".join(parts), reasons

    text, reasons = asyncio.run(run())
    assert len(text.split()) >= 4
    assert reasons[-1] == "length" and all(r is None for r in reasons[:-1])


def test_chunks_arrive_while_the_model_is_still_generating(llm_server: ScoreServer) -> None:
    started = time.monotonic()
    response = requests.post(
        f"{llm_server.url}/v1/completions",
        json={"model": "tiny_lm", "prompt": "a class", "max_tokens": 25, "stream": True},
        headers={"Authorization": f"Bearer {KEY}"},
        stream=True,
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    arrivals = []
    for line in response.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            if json.loads(line[6:])["choices"][0]["text"]:
                arrivals.append(time.monotonic() - started)
        elif line == b"data: [DONE]":
            arrivals.append(-1.0)
    assert arrivals[-1] == -1.0  # the stream ends with [DONE]
    words = arrivals[:-1]
    assert len(words) >= 20
    # 20 ms a step: the first word is out long before the model has finished.
    assert words[-1] - words[0] > 0.3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
        ({"wishes": 3}, "wishes"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
        ),
    ],
)
def test_refused_fields_get_openais_error_shape(
    llm_server: ScoreServer, body: dict[str, object], param: str
) -> None:
    request = {"model": "tiny_lm", "messages": MESSAGES, **body}
    response = requests.post(
        f"{llm_server.url}/v1/chat/completions",
        json=request,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_the_client_sees_refusals_and_unknown_models(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="tiny_lm", prompt="a", n=2)
    assert refused.value.param == "n"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no_such_model", prompt="a")


def test_the_api_key_is_required_as_a_bearer_token(llm_server: ScoreServer) -> None:
    wrong = openai.OpenAI(base_url=f"{llm_server.url}/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    response = requests.get(f"{llm_server.url}/v1/models", timeout=10)
    assert response.status_code == 401


def test_curl_streams_sse_to_done(llm_server: ScoreServer) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("no curl here")
    body = json.dumps({"model": "tiny_lm", "messages": MESSAGES, "max_tokens": 3, "stream": True})
    out = subprocess.run(
        [
            curl,
            "-sN",
            f"{llm_server.url}/v1/chat/completions",
            "-H",
            f"Authorization: Bearer {KEY}",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    events = [line[6:] for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_the_docs_openai_example_runs(
    llm_server: ScoreServer, capsys: pytest.CaptureFixture[str]
) -> None:
    page = (ROOT / "docs" / "llm.md").read_text()
    example = page.split("```python\n", 1)[1].split("```", 1)[0]
    assert "http://localhost:5001/v1" in example
    example = example.replace("http://localhost:5001", llm_server.url)
    exec(compile(example.replace("unused-without-keys", KEY), "docs/llm.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "completion_tokens=12" in printed and len(printed.split()) > 20


def test_without_a_folder_setting_the_model_repository_is_read(
    llm_triton: LocalTriton, llm_repository: Path
) -> None:
    server = ScoreServer(
        "--triton-url",
        llm_triton.url,
        "--processors",
        "none",
        env={"SCORE_MODEL_REPOSITORY": str(llm_repository)},
    )
    try:
        server.wait_ready()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        assert sorted(model.id for model in client.models.list()) == [
            "tiny_lm",
            "tiny_plain",
            "trt_like",
        ]
    finally:
        server.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_models_refusal_is_an_openai_error_not_a_broken_stream(
    llm_server: ScoreServer, stream: bool
) -> None:
    response = requests.post(  # tiny_lm refuses more than 4096 tokens itself
        f"{llm_server.url}/v1/completions",
        json={"model": "tiny_lm", "prompt": "a", "max_tokens": 5000, "stream": stream},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "max_tokens" in error["message"] and error["type"] == "invalid_request_error"


def test_a_tensorrt_llm_model_gets_its_own_inputs_and_the_gateway_stops_it(
    client: openai.OpenAI,
) -> None:
    whole = client.completions.create(
        model="trt_like", prompt="alpha beta gamma", max_tokens=5, seed=9, temperature=0.5
    )
    # max_tokens, random_seed and temperature arrived as TensorRT-LLM's inputs
    assert whole.choices[0].text == " alpha beta gamma random_seed=9 temperature=0.5"
    assert whole.choices[0].finish_reason == "length"
    # TensorRT-LLM is not told the stop sequence: the gateway finds it across responses
    chunks = client.completions.create(
        model="trt_like", prompt="alpha beta gamma", max_tokens=9, stop=["ta gam"], stream=True
    )
    pieces = [chunk.choices[0] for chunk in chunks]
    assert "".join(p.text for p in pieces) == " alpha be"
    assert pieces[-1].finish_reason == "stop"


# -- a client that goes away; many streams at once ----------------------------------------------
def _triton_metric(triton: LocalTriton, name: str) -> float:
    text = requests.get(f"http://127.0.0.1:{triton.metrics_port}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


def _leave_after_three_words(url: str) -> None:
    """A streamed chat of up to 2000 words, left after its third; the connection closed."""
    response = requests.post(
        f"{url}/v1/chat/completions",
        json={"model": "tiny_lm", "messages": MESSAGES, "max_tokens": 2000, "stream": True},
        headers={"Authorization": f"Bearer {KEY}"},
        stream=True,
        timeout=60,
    )
    assert response.status_code == 200
    words = 0
    for line in response.iter_lines():
        if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["delta"].get(
            "content"
        ):
            words += 1
            if words == 3:
                break
    response.close()


def _steps_after_leaving(triton: LocalTriton, url: str) -> tuple[float, float, float]:
    """(steps the model took after the client left, cancellations counted, steps still
    being taken a second later)."""
    cancelled = _triton_metric(triton, "tiny_lm_cancelled_total")
    steps = _triton_metric(triton, "tiny_lm_steps_total")
    _leave_after_three_words(url)
    time.sleep(1.0)
    after = _triton_metric(triton, "tiny_lm_steps_total")
    time.sleep(0.5)
    still = _triton_metric(triton, "tiny_lm_steps_total") - after
    return after - steps, _triton_metric(triton, "tiny_lm_cancelled_total") - cancelled, still


def test_a_client_that_goes_away_cancels_the_models_work(
    llm_server: ScoreServer, llm_triton: LocalTriton
) -> None:
    taken, cancelled, still = _steps_after_leaving(llm_triton, llm_server.url)
    assert cancelled == 1
    assert still == 0, "the model went on generating after the cancellation"
    assert taken < 3 + 10, f"{taken} steps: 2000 asked; at 20 ms a step, a few more at most"


def test_over_http_triton_cancels_too_when_its_connection_closes(
    llm_triton: LocalTriton, llm_repository: Path
) -> None:
    server = ScoreServer(
        "--triton-url",
        llm_triton.url,
        "--processors",
        "none",
        env={"SCORE_LLM_FOLDER": str(llm_repository), "SCORE_API_KEYS": KEY},
    )
    try:
        server.wait_ready()
        taken, cancelled, still = _steps_after_leaving(llm_triton, server.url)
    finally:
        server.stop()
    # Triton's docs name only gRPC (and the C API) for cancellation; Triton 2.51 also cancels a
    # generate_stream whose HTTP connection closes. This pins what docs/llm.md says of it.
    assert cancelled == 1 and still == 0
    assert taken < 3 + 10


def test_64_streams_on_one_worker_complete_and_a_slow_reader_stalls_none(
    llm_server: ScoreServer,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def stream(index: int) -> tuple[int, float]:
        started = time.monotonic()
        response = requests.post(
            f"{llm_server.url}/v1/completions",
            json={
                "model": "tiny_lm",
                "prompt": "a class",
                "max_tokens": 20,
                "seed": index,
                "stream": True,
            },
            headers={"Authorization": f"Bearer {KEY}"},
            stream=True,
            timeout=120,
        )
        assert response.status_code == 200
        pieces = 0
        for line in response.iter_lines():
            if line == b"data: [DONE]":
                return pieces, time.monotonic() - started
            if line.startswith(b"data: {"):
                if index == 0:
                    time.sleep(0.25)  # the slow reader
                pieces += bool(json.loads(line[6:])["choices"][0]["text"])
        raise AssertionError(f"stream {index} ended without [DONE]")

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(stream, range(64)))
    assert all(pieces >= 15 for pieces, _ in results), results
    slow = results[0][1]
    others = sorted(seconds for _, seconds in results[1:])
    assert slow > 4.0  # ~21 events at 0.25 s each
    assert others[-1] < slow / 2, "the other streams waited for the slow reader"

    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(
        f"{llm_server.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    ).text
    samples = {
        (sample.name, sample.labels.get("model"), sample.labels.get("outcome")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("score_llm_output_tokens_total", "tiny_lm", None)] >= 64 * 15
    assert samples[("score_streams_total", "tiny_lm", "completed")] >= 64
    assert samples[("score_streams_in_flight", "tiny_lm", None)] == 0
    assert samples[("score_stream_first_response_seconds_count", "tiny_lm", None)] >= 64
