"""Time a local Triton's cold start with the example models: process start to ready.

    python benchmarks/triton_cold_start.py [--runs 5] [--models models/triton]

Each run starts a fresh ``tritonserver`` (LocalTriton, free ports, the ONNX wrapper included),
waits for ``/v2/health/ready``, stops it (time not counted) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from triton_score.local import LocalTriton, find_tritonserver
from triton_score.local.processes import free_port

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--models", default=str(ROOT / "models" / "triton"))
    args = parser.parse_args()
    install = find_tritonserver()  # prepared once, outside the timing
    times = []
    print(f"tritonserver: {install.executable} ({install.source})\n")
    print("| run | start → ready (s) | stop (s) |\n|---|---|---|")
    for run in range(1, args.runs + 1):
        triton = LocalTriton(
            args.models,
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            install=install,
        )
        started = time.perf_counter()
        try:
            triton.start(timeout=120)
            ready = time.perf_counter() - started
        finally:
            stop_started = time.perf_counter()
            triton.stop()
            stopped = time.perf_counter() - stop_started
        times.append(ready)
        print(f"| {run} | {ready:.2f} | {stopped:.2f} |")
    print(f"\nmedian start → ready: {statistics.median(times):.2f} s over {len(times)} runs")


if __name__ == "__main__":
    main()
