"""The floor: the least a Flask app under Gunicorn's gevent worker can do for ``/score``.

The benchmark's ``floor`` path (``bench_score.py --paths floor``) serves the ``small``
payload with this app, under the same worker class, worker count and keep-alive as
``score serve``, so the CPU a ``/score`` request costs above this is what our features cost.
It does the job and nothing else:

- decode: ``orjson`` on the body ``{"inputs": {"image": [[8x8]]}}``, the default codec's;
- infer: a hand-built v2 binary request to Triton (JSON header, FP32 bytes,
  ``Inference-Header-Content-Length``) on kept-alive ``geventhttpclient`` connections, with
  coalescing as ours: at most :data:`CALLS` calls in flight, the requests that arrive
  meanwhile joined along the batch axis (up to the model's ``max_batch_size``, 16);
- answer: the top class, ``{"index": i, "score": p}``, computed here from the binary output
  (cheaper than asking Triton for ``classification`` and parsing its strings).

No validation, metrics, access log, request ids, auth, shedding or tracing: those are what the
comparison measures. Start it as the benchmark does::

    TRITON_URL=127.0.0.1:8000 gunicorn -k gevent -w 2 --keep-alive 5 -b 127.0.0.1:5002 \\
        --chdir benchmarks floor_app:app

Since ``/score`` is served in front of Flask's request cycle (``triton_score.http.score_wsgi``),
there is a second floor without Flask: :func:`bare`, the same job as a plain WSGI callable
(``floor_app:bare``, the benchmark's ``bare`` path). What Flask costs is the difference
between the two floors.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import gevent
import numpy as np
import orjson
from flask import Flask, Response, request
from gevent.event import AsyncResult
from geventhttpclient import HTTPClient

MODEL = "digits_onnx"
MAX_BATCH = 16  # the model's max_batch_size
CALLS = 2  # calls in flight before requests wait to be joined (ours: SCORE_COALESCE_CALLS)
INFER_PATH = f"/v2/models/{MODEL}/infer"
OUTPUTS = [{"name": "probabilities", "parameters": {"binary_data": True}}]

_host, _, _port = os.environ.get("TRITON_URL", "127.0.0.1:8000").rpartition(":")
triton = HTTPClient(_host, int(_port), concurrency=64, network_timeout=30)
app = Flask(__name__)

waiting: list[tuple[np.ndarray, AsyncResult]] = []
in_flight = 0


def call(images: np.ndarray) -> np.ndarray:
    """One Triton call for a batch of 8x8 images: the probabilities, one row per image."""
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": list(images.shape),
                    "parameters": {"binary_data_size": images.nbytes},
                }
            ],
            "outputs": OUTPUTS,
        }
    )
    answer = triton.post(
        INFER_PATH,
        header + images.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    body = answer.read()
    if answer.status_code != 200:
        raise RuntimeError(f"Triton answered {answer.status_code}: {body[:200]!r}")
    offset = int(answer["inference-header-content-length"])
    return np.frombuffer(body, "<f4", offset=offset).reshape(len(images), -1)


def infer(image: np.ndarray) -> np.ndarray:
    """The probabilities of one image: its own call when fewer than CALLS are in flight,
    else a place in the next joined call."""
    global in_flight
    if in_flight >= CALLS:
        result = AsyncResult()
        waiting.append((image, result))
        return result.get()  # type: ignore[no-any-return]
    in_flight += 1
    try:
        return call(image[np.newaxis])[0]
    finally:
        in_flight -= 1
        if waiting:  # only under contention: a greenlet sends what waited
            gevent.spawn(send_waiting)


def send_waiting() -> None:
    global in_flight
    while waiting and in_flight < CALLS:
        batch = waiting[:MAX_BATCH]
        del waiting[:MAX_BATCH]
        in_flight += 1
        try:
            rows = call(np.stack([image for image, _ in batch]))
        except Exception as exc:  # noqa: BLE001 - every waiter gets the failure
            for _, result in batch:
                result.set_exception(exc)
            continue
        finally:
            in_flight -= 1
        for (_, result), row in zip(batch, rows, strict=True):
            result.set(row)


def answer(body: bytes) -> bytes:
    """The job, for both floors: decode, infer (coalesced), the top class back."""
    payload = orjson.loads(body)
    image = np.asarray(payload["inputs"]["image"], dtype=np.float32).reshape(8, 8)
    probabilities = infer(image)
    top = int(np.argmax(probabilities))
    return orjson.dumps({"index": top, "score": float(probabilities[top])})


@app.post("/score/<model>")
def score(model: str) -> Response:
    return Response(answer(request.get_data()), mimetype="application/json")


def bare(environ: dict, start_response: Callable[..., object]) -> list[bytes]:
    """The floor without Flask: ``POST /score/<model>`` as a plain WSGI callable."""
    if environ["REQUEST_METHOD"] != "POST" or not environ["PATH_INFO"].startswith("/score/"):
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = answer(environ["wsgi.input"].read(length))
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start_response("200 OK", headers)
    return [body]
