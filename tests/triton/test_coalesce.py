"""Coalescing (triton_score.triton.coalesce): concurrent requests of one worker, one Triton call.

Unit tests drive a :class:`Coalescer` with a fake gateway (greenlets and ``gevent.sleep``
stand in for a worker's requests and Triton's latency); then the same against a real Triton
(the ``echo`` model: every request must get exactly its own rows back), and end to end
through a real ``score serve`` worker, checked with Triton's own statistics.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import gevent
import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from conftest import ScoreServer
from helpers import held_out_digits

from triton_score.errors import ScoringTimeout, TritonError
from triton_score.local import LocalTriton
from triton_score.model.info import ModelInfo, TensorSpec
from triton_score.settings import Settings
from triton_score.triton import coalesce
from triton_score.triton.coalesce import Coalescer, coalesces
from triton_score.triton.gateway import TritonGateway


@pytest.fixture(autouse=True)
def as_in_a_gevent_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest is not gevent-patched; a ``score serve`` worker is, and there it coalesces."""
    monkeypatch.setattr(coalesce, "in_gevent_worker", lambda: True)


def model(name: str = "m", max_batch_size: int = 8, dynamic: bool = True) -> ModelInfo:
    return ModelInfo(
        name,
        max_batch_size=max_batch_size,
        inputs=(TensorSpec("x", "FP32", (-1, 2)),),
        outputs=(TensorSpec("y", "FP32", (-1, 2)),),
        dynamic_batching=dynamic,
    )


@dataclass
class FakeTriton:
    """y = 10 * x + row index within the call; a negative x is a 400. Records each call."""

    latency: float = 0.02
    fail_with: Exception | None = None
    calls: list[tuple[str, int, str]] = field(default_factory=list)

    def infer(
        self,
        model: ModelInfo,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, int] | None = None,
        *,
        request_id: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.calls.append((model.name, x.shape[0], request_id))
        gevent.sleep(self.latency)
        if self.fail_with is not None and x.shape[0] > 1:
            raise self.fail_with
        if (x < 0).any():
            raise TritonError("x must not be negative", status_code=400)
        return {"y": x * 10}


def rows(n: int, start: float) -> np.ndarray:
    return (np.arange(n * 2, dtype=np.float32).reshape(n, 2) + start) / 100


def run_together(coalescer: Coalescer, jobs: list[tuple[ModelInfo, np.ndarray]]) -> list:
    """Start the jobs in order, each a greenlet, as a worker's requests; their outcomes."""

    def one(info: ModelInfo, x: np.ndarray) -> object:
        try:
            return coalescer.infer(info, {"x": x}, None, request_id=f"r{x[0, 0]:.2f}")
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            return exc

    greenlets = [gevent.spawn(one, info, x) for info, x in jobs]
    gevent.joinall(greenlets, raise_error=True)
    return [g.value for g in greenlets]


def test_mixed_batch_sizes_each_get_their_own_rows() -> None:
    fake = FakeTriton()
    sizes = []
    coalescer = Coalescer(fake, mode="on", calls_per_key=1, observe=lambda m, n: sizes.append(n))
    info = model()
    xs = [rows(1, 0), rows(1, 1), rows(3, 2), rows(2, 3)]
    results = run_together(coalescer, [(info, x) for x in xs])
    # The first went at once, alone; the three that came while it was in flight: one call.
    assert [n for _, n, _ in fake.calls] == [1, 6]
    assert sizes == [1, 3]
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_array_equal(result["y"], x * 10)  # what it gets alone
    assert fake.calls[1][2] == "r0.01,r0.02,r0.03"


def test_calls_never_exceed_max_batch_size() -> None:
    fake = FakeTriton()
    coalescer = Coalescer(fake, mode="on", calls_per_key=1)
    info = model(max_batch_size=4)
    xs = [rows(1, 0)] + [rows(n, i) for i, n in enumerate([3, 2, 2, 4, 1])]
    results = run_together(coalescer, [(info, x) for x in xs])
    assert [n for _, n, _ in fake.calls] == [1, 3, 4, 4, 1]  # in arrival order, ≤ 4 rows
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_array_equal(result["y"], x * 10)


def test_a_bad_request_fails_alone() -> None:
    fake = FakeTriton()
    coalescer = Coalescer(fake, mode="on", calls_per_key=1)
    info = model()
    bad = -rows(2, 5)
    xs = [rows(1, 0), rows(1, 1), bad, rows(3, 2)]
    results = run_together(coalescer, [(info, x) for x in xs])
    assert isinstance(results[2], TritonError) and results[2].status_code == 400
    for i in (0, 1, 3):
        np.testing.assert_array_equal(results[i]["y"], xs[i] * 10)
    # 1 alone, the joined 6 (refused), then the three of it one by one.
    assert sorted(n for _, n, _ in fake.calls) == [1, 1, 2, 3, 6]


def test_a_timeout_is_not_retried() -> None:
    timeout = ScoringTimeout("Triton did not answer in time")
    fake = FakeTriton(fail_with=timeout)
    coalescer = Coalescer(fake, mode="on", calls_per_key=1)
    info = model()
    results = run_together(coalescer, [(info, rows(1, i)) for i in range(4)])
    assert [n for _, n, _ in fake.calls] == [1, 3]  # no retry of the joined call
    np.testing.assert_array_equal(results[0]["y"], rows(1, 0) * 10)
    assert all(r is timeout for r in results[1:])


def test_different_models_are_never_joined() -> None:
    fake = FakeTriton()
    coalescer = Coalescer(fake, mode="on", calls_per_key=1)
    a, b = model("a"), model("b")
    jobs = [(a if i % 2 else b, rows(1 + i % 3, i)) for i in range(10)]
    results = run_together(coalescer, jobs)
    called = {name: [] for name in "ab"}
    for name, n, _ in fake.calls:
        called[name].append(n)
    # Each model: one at once, then the rest of its own requests, ≤ 8 rows a call.
    assert called == {"a": [2, 7], "b": [1, 6, 3]}  # b: 9 rows > 8 split
    for (_, x), result in zip(jobs, results, strict=True):
        np.testing.assert_array_equal(result["y"], x * 10)


def test_what_is_never_joined() -> None:
    fake = FakeTriton()
    on = Coalescer(fake, mode="on", calls_per_key=1)
    # No batch axis; differing non-batch shapes; differing outputs: all separate calls.
    run_together(on, [(model(max_batch_size=0), rows(1, i)) for i in range(3)])
    assert [n for _, n, _ in fake.calls] == [1, 1, 1]
    fake.calls.clear()
    wide = np.zeros((1, 3), dtype=np.float32)
    run_together(on, [(model(), rows(1, 0)), (model(), wide), (model(), rows(1, 1))])
    assert sorted(n for _, n, _ in fake.calls) == [1, 1, 1]
    fake.calls.clear()
    greenlets = [gevent.spawn(on.infer, model(), {"x": rows(1, i)}, {"y": i % 2}) for i in range(4)]
    gevent.joinall(greenlets, raise_error=True)
    assert sorted(n for _, n, _ in fake.calls) == [1, 1, 1, 1]  # {"y":0} twice, {"y":1} twice
    fake.calls.clear()
    off = Coalescer(fake, mode="off")
    run_together(off, [(model(), rows(1, i)) for i in range(4)])
    assert [n for _, n, _ in fake.calls] == [1, 1, 1, 1]


def test_an_idle_worker_sends_at_once_in_the_callers_greenlet() -> None:
    seen = []

    def call(*args: object, **kwargs: object) -> dict[str, np.ndarray]:
        seen.append(gevent.getcurrent())
        return {"y": np.zeros((1, 2), dtype=np.float32)}

    gateway = FakeTriton()
    gateway.infer = call  # type: ignore[method-assign]
    coalescer = Coalescer(gateway, mode="on")
    coalescer.infer(model(), {"x": rows(1, 0)})
    assert seen == [gevent.getcurrent()]  # no timer, no hand-off to another greenlet
    assert not coalescer._lanes  # and nothing left behind


def test_a_request_whose_deadline_passes_while_queued_is_not_sent() -> None:
    fake = FakeTriton(latency=0.2)
    coalescer = Coalescer(fake, mode="on", calls_per_key=1)
    first = gevent.spawn(coalescer.infer, model(), {"x": rows(1, 0)})
    gevent.sleep(0)
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.05):
        coalescer.infer(model(), {"x": rows(1, 1)})
    first.get()
    assert [n for _, n, _ in fake.calls] == [1]
    assert not coalescer._lanes


def test_threads_never_coalesce(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coalesce, "in_gevent_worker", lambda: False)
    fake = FakeTriton()
    run_together(
        Coalescer(fake, mode="on", calls_per_key=1), [(model(), rows(1, i)) for i in range(4)]
    )
    assert [n for _, n, _ in fake.calls] == [1, 1, 1, 1]


def test_auto_joins_where_a_call_can_hold_several_requests() -> None:
    assert coalesces("auto", model(max_batch_size=8, dynamic=False))
    assert coalesces("auto", model(max_batch_size=8, dynamic=True))
    assert coalesces("on", model(max_batch_size=8, dynamic=True))
    assert not coalesces("auto", model(max_batch_size=1, dynamic=False))
    assert coalesces("on", model(max_batch_size=1))
    assert not coalesces("on", model(max_batch_size=0))
    assert not coalesces("off", model(max_batch_size=8))


def test_settings() -> None:
    settings = Settings.from_env({"SCORE_COALESCE": "OFF", "SCORE_COALESCE_CALLS": "3"})
    assert (settings.coalesce, settings.coalesce_calls) == ("off", 3)
    assert Settings.from_env({}).coalesce == "auto"
    with pytest.raises(ValueError, match="SCORE_COALESCE"):
        Settings.from_env({"SCORE_COALESCE": "sometimes"})
    with pytest.raises(ValueError, match="SCORE_COALESCE_CALLS"):
        Settings.from_env({"SCORE_COALESCE_CALLS": "0"})


# -- against a real Triton ------------------------------------------------------------------
def echo_inputs(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "f32": rng.random((n, 3), dtype=np.float32),
        "f16": rng.random((n, 2)).astype(np.float16),
        "flag": rng.random((n, 2)) > 0.5,
        "i64": rng.integers(-(2**40), 2**40, (n, 1)),
        "u8": rng.integers(0, 256, (n, 2), dtype=np.uint8),
        "text": np.array([[f"row {seed}.{i}".encode()] for i in range(n)], dtype=object),
    }


def test_real_triton_joined_calls_give_each_request_its_rows(echo_triton: LocalTriton) -> None:
    gateway = TritonGateway(echo_triton.url, concurrency=4, timeout_s=10)
    echo, scaler = gateway.model_info("echo"), gateway.model_info("scaler")
    sizes: list[int] = []
    coalescer = Coalescer(gateway, mode="on", calls_per_key=1, observe=lambda m, n: sizes.append(n))
    jobs: list[tuple[ModelInfo, dict[str, np.ndarray]]] = []
    for i, n in enumerate([1, 1, 3, 2, 1, 4]):
        jobs.append((echo, echo_inputs(n, i)))
        jobs.append((scaler, {"x": np.full((n, 4), i, dtype=np.float32)}))
    bad = echo_inputs(2, 99)
    bad["f32"][1, 0] = -1
    jobs.insert(5, (echo, bad))

    def one(info: ModelInfo, inputs: dict[str, np.ndarray]) -> object:
        try:
            return coalescer.infer(info, inputs)
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            return exc

    greenlets = [gevent.spawn(one, info, inputs) for info, inputs in jobs]
    gevent.joinall(greenlets, raise_error=True)
    for (info, inputs), greenlet in zip(jobs, greenlets, strict=True):
        result = greenlet.value
        if inputs is bad:
            assert isinstance(result, TritonError) and result.status_code == 400
            assert "negative" in result.message
            continue
        assert isinstance(result, dict), result
        if info.name == "scaler":
            np.testing.assert_array_equal(result["y"], inputs["x"] * 2)
            continue
        alone = gateway.infer(echo, inputs)
        for name, array in inputs.items():
            got = result[name + "_out"]
            assert got.shape == array.shape
            assert got.tolist() == array.tolist() == alone[name + "_out"].tolist()
    assert max(sizes) > 1, f"nothing was joined: {sizes}"
    gateway.close()


def stats(triton: LocalTriton, name: str) -> tuple[int, int]:
    body = requests.get(f"http://{triton.url}/v2/models/{name}/stats", timeout=5).json()
    entry = body["model_stats"][0]
    return int(entry["inference_count"]), int(entry["execution_count"])


def test_one_worker_joins_concurrent_requests_end_to_end(triton: LocalTriton) -> None:
    images, _ = held_out_digits()
    n = 32
    # What each image gets alone, straight from Triton: the answers to compare with.
    client = httpclient.InferenceServerClient(triton.url)
    expected = []
    for i in range(n):
        one = httpclient.InferInput("image", [1, 8, 8], "FP32")
        one.set_data_from_numpy(images[i : i + 1], binary_data=True)
        expected.append(client.infer("digits_onnx", [one]).as_numpy("probabilities")[0])
    client.close()

    server = ScoreServer(
        "--triton-url",
        triton.url,
        "--processors",
        "none",
        "--workers",
        "1",
        env={"SCORE_COALESCE": "on", "SCORE_COALESCE_CALLS": "1"},
    ).wait_ready()
    try:
        url = server.url + "/score/digits_onnx"

        def send(i: int) -> requests.Response:
            body = json.dumps({"inputs": {"image": images[i : i + 1].tolist()}})
            return requests.post(
                url, data=body, headers={"content-type": "application/json"}, timeout=30
            )

        # With processes idle, the 32 must land in one worker at once: several rounds.
        inferences0, executions0 = stats(triton, "digits_onnx")
        rounds = 3
        with ThreadPoolExecutor(n) as pool:
            answers = [list(pool.map(send, range(n))) for _ in range(rounds)]
        inferences1, executions1 = stats(triton, "digits_onnx")
        for round_answers in answers:
            for i, response in enumerate(round_answers):
                assert response.status_code == 200, response.text
                got = np.array(response.json()["outputs"]["probabilities"], dtype=np.float32)
                np.testing.assert_allclose(got, expected[i][None, :], rtol=1e-5, atol=1e-6)
        assert inferences1 - inferences0 == n * rounds
        executions = executions1 - executions0
        print(f"{n * rounds} requests in {executions} Triton executions")
        assert executions < n * rounds
        metrics = requests.get(server.url + "/metrics", timeout=5).text
        count = _metric(metrics, 'score_coalesced_requests_count{model="digits_onnx"}')
        total = _metric(metrics, 'score_coalesced_requests_sum{model="digits_onnx"}')
        assert total == n * rounds and count < total, (count, total)
    finally:
        server.stop()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")
