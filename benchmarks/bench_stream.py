#!/usr/bin/env python3
"""Streaming through the gateway against Triton's own stream: time to first token, tokens/s.

    python benchmarks/bench_stream.py [--concurrency 1,8,32] [--runs 3] [--duration 6]
                                      [--upstream grpc|http] [--max-tokens 32]

One Triton serves ``tiny_lm`` (the toy decoupled model: a word per 20 ms step, every stream
in flight stepped together, as vLLM steps its batch) with its tokenizer (built here by
``models/build_tiny_lm.py``, nothing downloaded); one ``score serve`` (``--workers 1``: one
worker holds every stream) sits in front of it. Each cell runs ``concurrency`` clients for
``duration`` seconds, each sending streamed requests back to back, on these paths:

- ``direct``: Triton's ``/v2/models/tiny_lm/generate_stream``;
- ``forward``: the same request through the gateway's ``/v2`` forwarder (bytes passed on);
- ``v1``: the OpenAI front's ``/v1/completions`` with ``stream: true`` (tokenizer, stop
  scanning, OpenAI's chunks), from Triton over ``--upstream``;
- ``score``: ``/score/tiny_lm`` with ``Accept: text/event-stream`` and a processor whose
  ``postprocess`` runs once per token (``tests/fixtures/stream_processor.py``).

Time to first token (TTFT) is from sending the request to the first event with text; tokens/s
counts events with text over the cell. Medians of ``--runs`` rounds (the rounds cycle through
the paths). Goals (issue 16): added TTFT p50 <= 2 ms, tokens/s >= 90 % of direct.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from triton_score.local import LocalTriton  # noqa: E402
from triton_score.local.processes import free_port  # noqa: E402

PATHS = ("direct", "forward", "v1", "score")
PROMPT = "a class"


def _request(path: str, max_tokens: int, seed: int) -> tuple[str, dict, dict[str, str]]:
    sampling = json.dumps({"max_tokens": max_tokens, "seed": seed})
    if path in ("direct", "forward"):
        body = {
            "text_input": PROMPT,
            "stream": True,
            "exclude_input_in_output": True,
            "sampling_parameters": sampling,
        }
        return "/v2/models/tiny_lm/generate_stream", body, {}
    if path == "v1":
        body = {
            "model": "tiny_lm",
            "prompt": PROMPT,
            "max_tokens": max_tokens,
            "seed": seed,
            "stream": True,
        }
        return "/v1/completions", body, {}
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "seed": seed}
    return "/score/tiny_lm", body, {"Accept": "text/event-stream"}


def _stream_once(
    host: str, port: int, path: str, max_tokens: int, seed: int
) -> tuple[float, int, bool]:
    """One streamed request: (TTFT seconds, tokens, ok)."""
    target, body, headers = _request(path, max_tokens, seed)
    connection = http.client.HTTPConnection(host, port, timeout=60)
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    try:
        connection.request(
            "POST", target, json.dumps(body), {"Content-Type": "application/json", **headers}
        )
        answer = connection.getresponse()
        if answer.status != 200:
            answer.read()
            return 0.0, 0, False
        for line in answer:
            if not line.startswith(b"data: {"):
                continue
            if b'"text' not in line or b'"text":""' in line:
                continue  # OpenAI's finish chunk, or nothing new
            tokens += 1
            if not first:
                first = time.perf_counter() - started
        return first, tokens, tokens > 0
    finally:
        connection.close()


def run_cell(
    host: str, port: int, path: str, concurrency: int, duration: float, max_tokens: int
) -> dict[str, float]:
    stop = time.perf_counter() + duration
    lock = threading.Lock()
    ttfts: list[float] = []
    counts = {"tokens": 0, "errors": 0, "streams": 0}

    def client(index: int) -> None:
        seed = index * 1000
        while time.perf_counter() < stop:
            seed += 1
            first, tokens, ok = _stream_once(host, port, path, max_tokens, seed)
            with lock:
                if ok:
                    ttfts.append(first)
                    counts["tokens"] += tokens
                    counts["streams"] += 1
                else:
                    counts["errors"] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ttfts.sort()
    return {
        "ttft_p50_ms": 1000 * statistics.median(ttfts) if ttfts else float("nan"),
        "ttft_p99_ms": 1000 * ttfts[int(0.99 * (len(ttfts) - 1))] if ttfts else float("nan"),
        "tokens_per_s": counts["tokens"] / elapsed,
        "streams": counts["streams"],
        "errors": counts["errors"],
    }


def _build_repository(folder: Path) -> Path:
    import importlib.util

    repository = folder / "repository"
    shutil.copytree(
        ROOT / "models" / "triton" / "tiny_lm",
        repository / "tiny_lm",
        ignore=shutil.ignore_patterns("*.json"),
    )
    spec = importlib.util.spec_from_file_location(
        "build_tiny_lm_bench", ROOT / "models" / "build_tiny_lm.py"
    )
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    builder.build(repository, log=lambda line: None)
    return repository


def _start_gateway(repository: Path, triton: LocalTriton, upstream: str, scratch: Path):
    port = free_port()
    env = {
        **os.environ,
        "SCORE_LLM_FOLDER": str(repository),
        "SCORE_GRACEFUL_TIMEOUT": "5",
    }
    env.pop("SCORE_TRITON_GRPC_URL", None)
    if upstream == "grpc":
        env["SCORE_TRITON_GRPC_URL"] = f"127.0.0.1:{triton.grpc_port}"
    command = [sys.executable, "-m", "triton_score", "serve", "--port", str(port)]
    command += ["--triton-url", triton.url, "--workers", "1", "--models", str(repository)]
    command += ["--processors", str(ROOT / "tests" / "fixtures" / "stream_processor.py")]
    log = open(scratch / "gateway.log", "wb")  # noqa: SIM115 - open for the process's life
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((scratch / "gateway.log").read_text())
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/v2/health/ready")
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the gateway did not get ready")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--upstream", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--paths", default=",".join(PATHS))
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    paths = [p for p in args.paths.split(",") if p]
    scratch = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    triton = LocalTriton(
        _build_repository(scratch),
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        progress=lambda line: print(line, file=sys.stderr),
    ).start(timeout=120)
    gateway = None
    try:
        gateway, port = _start_gateway(scratch / "repository", triton, args.upstream, scratch)
        triton_host, triton_port = triton.url.split(":")
        targets = {
            "direct": (triton_host, int(triton_port)),
            "forward": ("127.0.0.1", port),
            "v1": ("127.0.0.1", port),
            "score": ("127.0.0.1", port),
        }
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for round_ in range(args.runs):
            for concurrency in levels:
                for path in paths:
                    host, target_port = targets[path]
                    cell = run_cell(
                        host, target_port, path, concurrency, args.duration, args.max_tokens
                    )
                    results.setdefault((path, concurrency), []).append(cell)
                    print(
                        f"bench: run {round_ + 1}/{args.runs} {path:8s} c{concurrency:<3d} "
                        f"TTFT p50 {cell['ttft_p50_ms']:7.2f} ms  {cell['tokens_per_s']:8.1f} "
                        f"tokens/s  {cell['errors']} errors",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        if gateway is not None:
            os.killpg(gateway.pid, signal.SIGTERM)
            gateway.wait(timeout=60)
        triton.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    command = "python benchmarks/bench_stream.py " + " ".join(argv or sys.argv[1:])
    print(
        f"Command: `{command.strip()}`; upstream {args.upstream}; {os.cpu_count()} CPU(s); "
        f"tiny_lm, {args.max_tokens} tokens a stream, 20 ms a step; median of {args.runs}.\n"
    )
    print(
        "| path | conc | TTFT p50 ms | TTFT p99 ms | added TTFT p50 ms | tokens/s "
        "| tokens/s vs direct | errors |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for concurrency in levels:
        base = results.get(("direct", concurrency))
        base_ttft = statistics.median(c["ttft_p50_ms"] for c in base) if base else None
        base_rate = statistics.median(c["tokens_per_s"] for c in base) if base else None
        for path in paths:
            cells = results[(path, concurrency)]
            ttft = statistics.median(c["ttft_p50_ms"] for c in cells)
            p99 = statistics.median(c["ttft_p99_ms"] for c in cells)
            rate = statistics.median(c["tokens_per_s"] for c in cells)
            errors = sum(int(c["errors"]) for c in cells)
            added = f"{ttft - base_ttft:.2f}" if base_ttft is not None and path != "direct" else "-"
            ratio = f"{rate / base_rate:.2f}" if base_rate and path != "direct" else "-"
            print(
                f"| {path} | {concurrency} | {ttft:.2f} | {p99:.2f} | {added} | {rate:.0f} "
                f"| {ratio} | {errors} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
