"""One gevent worker keeps many requests in flight, so Triton's dynamic batcher gets to batch.

AzureML's sync workers allow at most WORKER_COUNT requests in flight: with one worker, Triton
would see one request at a time (inferences per execution = 1.0). Triton's own statistics
tell whether requests through the middleware were merged into batches.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import requests
from conftest import ScoreServer
from helpers import held_out_digits

from triton_score.local import LocalTriton


def stats(triton: LocalTriton, model: str) -> tuple[int, int]:
    body = requests.get(f"http://{triton.url}/v2/models/{model}/stats", timeout=5).json()
    entry = body["model_stats"][0]
    return int(entry["inference_count"]), int(entry["execution_count"])


def test_one_worker_feeds_the_dynamic_batcher(
    triton: LocalTriton, plain_server: ScoreServer
) -> None:
    images, _ = held_out_digits()
    bodies = [json.dumps({"inputs": {"image": images[i : i + 1].tolist()}}) for i in range(32)]
    sessions = [requests.Session() for _ in range(16)]

    def send(i: int) -> int:
        response = sessions[i % 16].post(
            plain_server.url + "/score/digits_onnx",
            data=bodies[i % 32],
            headers={"content-type": "application/json"},
            timeout=30,
        )
        return response.status_code

    inferences0, executions0 = stats(triton, "digits_onnx")
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(send, range(320)))
    inferences1, executions1 = stats(triton, "digits_onnx")
    assert codes == [200] * 320
    inferences, executions = inferences1 - inferences0, executions1 - executions0
    ratio = inferences / executions
    print(
        f"1 gevent worker, 16 clients: {inferences} inferences in {executions} executions "
        f"({ratio:.2f} per execution)"
    )
    assert inferences == 320
    assert ratio > 1.2, "requests reached Triton one at a time: nothing was batched"
