"""Per-request latency of one Triton call with the large input through system shared memory
versus in the HTTP body (issue 8, lever 4).

It starts a local Triton on ``tests/fixtures/shm_repo`` (``shm_sum``: the sum of each row, a
python-backend model that costs little and answers one float, so what is measured is the
input's way to Triton, as for a classifier of images), then
for each payload size calls :meth:`TritonGateway.infer` sequentially, ``--requests`` times
through a gateway with a region and ``--requests`` times through one without, alternating
blocks of 20 so drift on a shared machine hits both alike, and prints the medians::

    .venv/bin/python benchmarks/shm_latency.py                  # ~20 s
    .venv/bin/python benchmarks/shm_latency.py --requests 500 --sizes 16384,602112

The python backend itself copies the input once more into its own /dev/shm region for the
stub process: a C++ or ONNX/TensorRT backend reads the region in place.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from triton_score.local import LocalTriton
from triton_score.local.processes import free_port
from triton_score.triton.gateway import TritonGateway

REPOSITORY = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "shm_repo"
IMAGE_BYTES = 3 * 224 * 224 * 4


def measure(gateway: TritonGateway, model: object, inputs: dict[str, np.ndarray]) -> float:
    start = time.perf_counter()
    gateway.infer(model, inputs)  # type: ignore[arg-type]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="per path and size (200)")
    parser.add_argument(
        "--sizes",
        default=f"16384,65536,262144,{IMAGE_BYTES},{8 * IMAGE_BYTES}",
        help="input bytes per request, comma-separated (default: 16 KiB to 8 images)",
    )
    options = parser.parse_args()
    sizes = [int(s) for s in options.sizes.split(",")]

    triton = LocalTriton(
        REPOSITORY, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    ).start(timeout=120)
    shm = TritonGateway(triton.url, shm_bytes=64 << 20, shm_min_bytes=1)
    http = TritonGateway(triton.url)
    try:
        model = http.model_info("shm_sum")
        print(f"{'input':>12} {'rows':>4} {'HTTP p50 ms':>12} {'shm p50 ms':>11} {'saved':>7}")
        for size in sizes:
            rows = max(1, size // IMAGE_BYTES) if size >= IMAGE_BYTES else 1
            x = np.random.default_rng(0).standard_normal((rows, size // 4 // rows), np.float32)
            inputs = {"x": x}
            for gateway in (shm, http):  # warm up: connections, the region's registration
                for _ in range(5):
                    measure(gateway, model, inputs)
            times: dict[str, list[float]] = {"shm": [], "http": []}
            for _ in range(0, options.requests, 20):
                for name, gateway in (("shm", shm), ("http", http)):
                    times[name] += [measure(gateway, model, inputs) for _ in range(20)]
            p50 = {name: statistics.median(t) * 1000 for name, t in times.items()}
            saved = 1 - p50["shm"] / p50["http"]
            print(f"{size:>12,} {rows:>4} {p50['http']:>12.2f} {p50['shm']:>11.2f} {saved:>7.0%}")
    finally:
        shm.close()
        http.close()
        triton.stop()


if __name__ == "__main__":
    main()
