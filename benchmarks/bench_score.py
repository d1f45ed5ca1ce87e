#!/usr/bin/env python
"""Benchmark: direct Triton (``tritonclient.http``) vs the scoring middleware (``POST /score``).

One run starts its own Triton (``triton_score.local.LocalTriton`` on free ports, serving
``models/triton``), measures the direct path, then starts ``score serve`` once per worker
count (``--triton-url`` pointing at that Triton, so every cell hits the same server) and
measures ``POST /score/<model>``; it prints a markdown table and stops everything it started.

    .venv/bin/python benchmarks/bench_score.py
    .venv/bin/python benchmarks/bench_score.py --duration 5 --concurrency 1,4,16 --wrk

Load generator: this process, on gevent greenlets (no monkey patching), one persistent
HTTP connection per greenlet: a ``tritonclient.http`` client each for the direct path (binary
tensors), a ``geventhttpclient`` client each for the middleware. With ``--wrk``, every cell is
measured a second time with ``wrk`` (one thread, ``-c`` connections). Either way the load
generator runs on the same cores as Triton and Gunicorn: the numbers are for comparing the
two paths on one machine, not capacity figures.

Progress goes to stderr, the table to stdout. See ``benchmarks/README.md`` for the columns.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import gevent
import numpy as np
import tritonclient.http as httpclient
from geventhttpclient import HTTPClient

from triton_score.local import LocalTriton

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ROOT / "models" / "triton"
#: ``score`` console script of this interpreter's environment, else ``python -m triton_score``.
_SCORE_SCRIPT = Path(sys.executable).with_name("score")
SCORE_CMD = (
    [str(_SCORE_SCRIPT)] if _SCORE_SCRIPT.is_file() else [sys.executable, "-m", "triton_score"]
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
NETWORK_TIMEOUT_S = 10.0
#: A cell during which other processes used more CPU than this (cores) is flagged.
DISTURBED_CORES = 0.25


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(url: str, *, data: bytes | None = None, timeout: float = 5.0) -> tuple[int, object]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, None
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, None


# -- CPU accounting --------------------------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime in clock ticks), for every process we can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) "
        table[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def descendants(root: int, table: dict[int, tuple[int, int]] | None = None) -> list[int]:
    """``root`` and every process below it."""
    table = table if table is not None else _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2 :].split()[19])


def tree_cpu_seconds(root: int | None) -> float:
    """CPU seconds used so far by ``root`` and its live descendants."""
    if root is None:
        return 0.0
    table = _proc_table()
    return sum(table[pid][1] for pid in descendants(root, table)) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``; idle and iowait excluded)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


def own_cpu_seconds() -> float:
    """CPU seconds of this process plus its waited-for children (``wrk``)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


# -- Triton statistics -------------------------------------------------------------------------
@dataclass(frozen=True)
class TritonStats:
    inferences: int = 0
    executions: int = 0
    success_count: int = 0
    success_ns: int = 0

    @classmethod
    def read(cls, triton_url: str, model: str) -> TritonStats:
        status, body = http_json(f"http://{triton_url}/v2/models/{model}/stats")
        if status != 200 or not isinstance(body, dict) or not body.get("model_stats"):
            raise RuntimeError(f"cannot read Triton statistics of {model!r} (HTTP {status})")
        stats = body["model_stats"][0]
        inference = stats.get("inference_stats", {})
        return cls(
            inferences=int(stats.get("inference_count", 0)),
            executions=int(stats.get("execution_count", 0)),
            success_count=int(inference.get("success", {}).get("count", 0)),
            success_ns=int(inference.get("success", {}).get("ns", 0)),
        )

    def __sub__(self, other: TritonStats) -> TritonStats:
        return TritonStats(
            *(getattr(self, f) - getattr(other, f) for f in self.__dataclass_fields__)
        )


def score_timings(port: int | None, model: str) -> tuple[float, float, float]:
    """(request count, seconds inside the app, seconds in the Triton call) from the
    middleware's own Prometheus histograms (all workers), or zeros without a middleware."""
    if port is None:
        return 0.0, 0.0, 0.0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0.0, 0.0, 0.0
    values = {"count": 0.0, "total": 0.0, "infer": 0.0}
    wanted = {
        f'score_request_duration_seconds_count{{model="{model}"}}': "count",
        f'score_request_duration_seconds_sum{{model="{model}"}}': "total",
        f'score_stage_duration_seconds_sum{{model="{model}",stage="infer"}}': "infer",
    }
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            values[wanted[name]] = float(value)
    return values["count"], values["total"], values["infer"]


# -- one measured cell -------------------------------------------------------------------------
@dataclass
class Cell:
    path: str  # "direct" or "score"
    tool: str  # "python" or "wrk"
    workers: int | None
    concurrency: int
    requests: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    stats: TritonStats = field(default_factory=TritonStats)
    app_ms: float = float("nan")  # mean time inside the middleware's view function
    app_infer_ms: float = float("nan")  # ... of which the Triton call
    cpu_gen: float = 0.0
    cpu_triton: float = 0.0
    cpu_score: float | None = None
    cpu_machine: float = 0.0
    first_error: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def per_execution(self) -> float:
        return self.stats.inferences / self.stats.executions if self.stats.executions else 0.0

    @property
    def triton_ms(self) -> float:
        """Mean time a request spent inside Triton (queue + compute), from its statistics."""
        s = self.stats
        return s.success_ns / s.success_count / 1e6 if s.success_count else float("nan")


Call = Callable[[], None]  # one request; raises on failure
#: Opens one persistent connection: returns a :data:`Call` on it and a function closing it.
Connect = Callable[[], tuple[Call, Callable[[], None]]]


def greenlet_load(calls: list[Call], duration: float) -> tuple[list[float], int, float, str]:
    """Run one greenlet per call (per connection), each in a loop, for ``duration`` seconds.

    :return: latencies of successful requests (s), error count, elapsed seconds, first error.
    """
    latencies: list[float] = []
    errors = [0]
    first_error: list[str] = []

    def worker(call: Call, deadline: float) -> None:
        clock = time.perf_counter
        while True:
            started = clock()
            if started >= deadline:
                return
            try:
                call()
            except Exception as exc:  # noqa: BLE001 - counted and reported, load goes on
                errors[0] += 1
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}"[:300])
                gevent.sleep(0.01)  # don't spin on a dead server
                continue
            latencies.append(clock() - started)

    started = time.perf_counter()
    deadline = started + duration
    greenlets = [gevent.spawn(worker, call, deadline) for call in calls]
    gevent.joinall(greenlets, timeout=duration + NETWORK_TIMEOUT_S + 5)
    elapsed = time.perf_counter() - started
    gevent.killall(greenlets, timeout=2)
    return latencies, errors[0], elapsed, first_error[0] if first_error else ""


def wrk_load(
    wrk: str, url: str, script: Path, concurrency: int, duration: float
) -> tuple[int, int, float, float, float, str]:
    """Run ``wrk``; returns requests, errors, elapsed s, p50 ms, p99 ms, first error."""
    cmd = [
        wrk,
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={int(NETWORK_TIMEOUT_S)}s",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration + 30, stdin=subprocess.DEVNULL
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), "")
    if proc.returncode != 0 or not line:
        return 0, 1, duration, float("nan"), float("nan"), (proc.stderr or proc.stdout)[-300:]
    requests, status_errors, errors, duration_us, p50_us, p99_us = line.split()[1:7]
    note = f"{errors} wrk errors (non-2xx or socket)" if int(errors) else ""
    return (
        int(requests) - int(status_errors),
        int(errors),
        int(duration_us) / 1e6,
        float(p50_us) / 1000,
        float(p99_us) / 1000,
        note,
    )


WRK_SCRIPT = """
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.path = "{path}"
wrk.body = f:read("*a")
f:close()
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %f %f\\n", summary.requests, e.status,
    e.connect + e.read + e.write + e.status + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99)))
end
"""


def write_wrk_script(
    scratch: Path, name: str, path: str, body: bytes, headers: dict[str, str]
) -> Path:
    body_file = scratch / f"{name}.body"
    body_file.write_bytes(body)
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    script = scratch / f"{name}.lua"
    script.write_text(WRK_SCRIPT.format(body=body_file, path=path, headers=lines))
    return script


# -- the two paths -------------------------------------------------------------------------
def sample_inputs(triton_url: str, model: str) -> dict[str, np.ndarray]:
    """One batch-1 request for ``model``: a digit from scikit-learn for ``digits_onnx``,
    a fixed array shaped from Triton's metadata for any other model."""
    status, meta = http_json(f"http://{triton_url}/v2/models/{model}")
    if status != 200 or not isinstance(meta, dict):
        raise RuntimeError(f"Triton does not serve {model!r} (HTTP {status})")
    inputs = {}
    for spec in meta["inputs"]:
        shape = [1 if d < 0 else d for d in spec["shape"]]
        if model == "digits_onnx" and spec["name"] == "image":
            from sklearn.datasets import load_digits  # noqa: PLC0415 - only needed here

            inputs["image"] = load_digits().images[:1].astype(np.float32)  # [1, 8, 8]
        elif spec["datatype"] == "BYTES":
            inputs[spec["name"]] = np.full(shape, b"benchmark", dtype=np.object_)
        else:
            dtype = httpclient.triton_to_np_dtype(spec["datatype"])
            size = int(np.prod(shape))
            inputs[spec["name"]] = (np.arange(size) % 7).astype(dtype).reshape(shape)
    return inputs


def triton_infer_args(
    triton_url: str, model: str, inputs: dict[str, np.ndarray]
) -> tuple[list[httpclient.InferInput], list[httpclient.InferRequestedOutput], list[str]]:
    status, meta = http_json(f"http://{triton_url}/v2/models/{model}")
    assert status == 200 and isinstance(meta, dict)
    datatypes = {spec["name"]: spec["datatype"] for spec in meta["inputs"]}
    infer_inputs = []
    for name, array in inputs.items():
        infer_input = httpclient.InferInput(name, list(array.shape), datatypes[name])
        infer_input.set_data_from_numpy(array, binary_data=True)
        infer_inputs.append(infer_input)
    names = [spec["name"] for spec in meta["outputs"]]
    outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in names]
    return infer_inputs, outputs, names


def direct_connector(triton_url: str, model: str, inputs: dict[str, np.ndarray]) -> Connect:
    """Direct path: a ``tritonclient.http`` client (binary tensors) per connection."""
    infer_inputs, outputs, _ = triton_infer_args(triton_url, model, inputs)

    def connect() -> tuple[Call, Callable[[], None]]:
        client = httpclient.InferenceServerClient(
            triton_url,
            concurrency=1,
            connection_timeout=NETWORK_TIMEOUT_S,
            network_timeout=NETWORK_TIMEOUT_S,
        )

        def call() -> None:
            client.infer(model, infer_inputs, outputs=outputs)

        return call, client.close

    return connect


def score_connector(port: int, model: str, body: bytes) -> Connect:
    """Middleware path: ``POST /score/<model>`` with a JSON body, one keep-alive connection."""
    path = f"/score/{model}"
    headers = {"Content-Type": "application/json"}

    def connect() -> tuple[Call, Callable[[], None]]:
        client = HTTPClient(
            "127.0.0.1",
            port=port,
            concurrency=1,
            connection_timeout=NETWORK_TIMEOUT_S,
            network_timeout=NETWORK_TIMEOUT_S,
        )

        def call() -> None:
            response = client.post(path, body=body, headers=headers)
            content = response.read()
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {content[:200]!r}")

        return call, client.close

    return connect


@contextlib.contextmanager
def connections(connect: Connect, count: int) -> Iterator[list[Call]]:
    """``count`` persistent connections, closed on exit."""
    opened = [connect() for _ in range(count)]
    try:
        yield [call for call, _ in opened]
    finally:
        for _, close in opened:
            with contextlib.suppress(Exception):
                close()


# -- score serve -----------------------------------------------------------------------------
class ScoreServer:
    """One ``score serve`` process (Gunicorn + gevent workers) in front of a given Triton."""

    def __init__(self, triton_url: str, models: Path, workers: int, scratch: Path) -> None:
        self.triton_url = triton_url
        self.models = models
        self.workers = workers
        self.port = free_port()
        self.log_path = scratch / f"score-serve-w{workers}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> ScoreServer:
        env = dict(os.environ)
        env.pop("SCORE_ACCESS_LOG", None)
        env["SCORE_GRACEFUL_TIMEOUT"] = "5"  # idle at stop time; don't wait 30 s if not
        cmd = [
            *SCORE_CMD,
            "serve",
            "--models",
            str(self.models),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--triton-url",
            self.triton_url,
            "--workers",
            str(self.workers),
            # The default codec ({"inputs": {...}}), not models/processors.py: the request is
            # the same tensor the direct path sends.
            "--processors",
            "none",
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        say(f"bench: score serve (pid {self.process.pid}) --workers {self.workers} :{self.port}")
        started = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"score serve exited early:\n{self.log_tail()}")
            if "score: ready" in self.log_path.read_text(errors="replace"):
                break
            if time.monotonic() - started > timeout:
                raise RuntimeError(
                    f"score serve not ready after {timeout:.0f} s\n{self.log_tail()}"
                )
            time.sleep(0.2)
        say(f"bench: score serve ready in {time.monotonic() - started:.1f} s")
        return self

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self) -> None:
        """SIGTERM (drain, stop Gunicorn), then SIGKILL whatever of its tree is left, by PID."""
        if self.process is None:
            return
        tree = {pid: _start_time(pid) for pid in descendants(self.process.pid)}
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                say(f"bench: score serve (pid {self.process.pid}) ignored SIGTERM; killing")
        # Leftovers (a stuck Gunicorn, orphaned workers): only the very processes seen above,
        # recognised by PID *and* start time, so a recycled PID is never hit.
        for pid, started in tree.items():
            if started is not None and _start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.process = None


# -- the run -----------------------------------------------------------------------------------
@dataclass
class Bench:
    args: argparse.Namespace
    triton: LocalTriton
    scratch: Path
    cells: list[Cell] = field(default_factory=list)
    wrk: str | None = None

    def measure(
        self,
        cell: Cell,
        warmup: Callable[[], object],
        run: Callable[[], tuple[list[float] | None, int, int, float, float, float, str]],
        server: ScoreServer | None,
    ) -> Cell:
        """Warm up, snapshot counters, run the load, snapshot again, fill ``cell``."""
        label = cell.path + (f" w{cell.workers}" if cell.workers else "")
        say(f"bench: {label} c{cell.concurrency} [{cell.tool}] ...")
        warmup()
        score_pid = server.pid if server else None
        score_port = server.port if server else None

        def snapshot() -> tuple[TritonStats, tuple[float, ...], tuple[float, float, float]]:
            cpu = (
                own_cpu_seconds(),
                tree_cpu_seconds(self.triton.pid),
                tree_cpu_seconds(score_pid),
                machine_busy_seconds(),
            )
            return (
                TritonStats.read(self.triton.url, self.args.model),
                cpu,
                score_timings(score_port, self.args.model),
            )

        stats0, cpu0, app0 = snapshot()
        latencies, requests, errors, elapsed, p50, p99, first_error = run()
        stats1, cpu1, app1 = snapshot()
        if latencies is not None:
            requests = len(latencies)
            if latencies:
                p50, p99 = (float(v) * 1000 for v in np.percentile(latencies, [50, 99]))
        cell.requests, cell.errors, cell.elapsed_s = requests, errors, elapsed
        cell.p50_ms, cell.p99_ms, cell.first_error = p50, p99, first_error
        cell.stats = stats1 - stats0
        cell.cpu_gen = (cpu1[0] - cpu0[0]) / elapsed
        cell.cpu_triton = (cpu1[1] - cpu0[1]) / elapsed
        cell.cpu_score = (cpu1[2] - cpu0[2]) / elapsed if score_pid else None
        cell.cpu_machine = (cpu1[3] - cpu0[3]) / elapsed
        count = app1[0] - app0[0]
        if count > 0:
            cell.app_ms = (app1[1] - app0[1]) / count * 1000
            cell.app_infer_ms = (app1[2] - app0[2]) / count * 1000
        say(
            f"bench:   {cell.rps:.0f} req/s, p50 {cell.p50_ms:.2f} ms, p99 {cell.p99_ms:.2f} ms, "
            f"{cell.errors} errors, {cell.per_execution:.2f} inferences/execution"
            + (f"; first error: {first_error}" if first_error else "")
        )
        self.cells.append(cell)
        return cell

    def python_cell(self, cell: Cell, connect: Connect, server: ScoreServer | None) -> None:
        with connections(connect, cell.concurrency) as calls:

            def run():  # noqa: ANN202
                latencies, errors, elapsed, first = greenlet_load(calls, self.args.duration)
                return latencies, 0, errors, elapsed, 0.0, 0.0, first

            self.measure(cell, lambda: greenlet_load(calls, self.args.warmup), run, server)

    def wrk_cell(
        self, cell: Cell, connect: Connect, url: str, script: Path, server: ScoreServer | None
    ) -> None:
        assert self.wrk is not None
        wrk = self.wrk

        def warmup() -> None:  # the server side warms up the same way as for python cells
            with connections(connect, cell.concurrency) as calls:
                greenlet_load(calls, self.args.warmup)

        def run():  # noqa: ANN202
            requests, errors, elapsed, p50, p99, first = wrk_load(
                wrk, url, script, cell.concurrency, self.args.duration
            )
            return None, requests, errors, elapsed, p50, p99, first

        self.measure(cell, warmup, run, server)

    def run(self) -> None:
        args = self.args
        url = self.triton.url
        inputs = sample_inputs(url, args.model)
        body = json.dumps({"inputs": {k: v.tolist() for k, v in inputs.items()}}).encode()
        infer_inputs, outputs, output_names = triton_infer_args(url, args.model, inputs)
        direct_body, json_size = httpclient.InferenceServerClient.generate_request_body(
            infer_inputs, outputs=outputs
        )
        client = httpclient.InferenceServerClient(url)
        try:
            reference = client.infer(args.model, infer_inputs, outputs=outputs)
        finally:
            client.close()

        direct_script = score_script = None
        if self.wrk:
            headers = {"Content-Type": "application/octet-stream"}
            if json_size is not None:
                headers["Inference-Header-Content-Length"] = str(json_size)
            direct_script = write_wrk_script(
                self.scratch, "direct", f"/v2/models/{args.model}/infer", direct_body, headers
            )
            score_script = write_wrk_script(
                self.scratch,
                "score",
                f"/score/{args.model}",
                body,
                {"Content-Type": "application/json"},
            )

        connect_direct = direct_connector(url, args.model, inputs)
        for concurrency in args.concurrency:
            self.python_cell(Cell("direct", "python", None, concurrency), connect_direct, None)
            if direct_script:
                self.wrk_cell(
                    Cell("direct", "wrk", None, concurrency),
                    connect_direct,
                    f"http://{url}",
                    direct_script,
                    None,
                )

        for workers in args.workers:
            server = ScoreServer(url, args.models, workers, self.scratch)
            try:
                server.start()
                self.check_score_response(server.port, body, reference, output_names)
                connect_score = score_connector(server.port, args.model, body)
                for concurrency in args.concurrency:
                    self.python_cell(
                        Cell("score", "python", workers, concurrency), connect_score, server
                    )
                    if score_script:
                        self.wrk_cell(
                            Cell("score", "wrk", workers, concurrency),
                            connect_score,
                            f"http://127.0.0.1:{server.port}",
                            score_script,
                            server,
                        )
            finally:
                server.stop()

    def check_score_response(
        self, port: int, body: bytes, reference: object, output_names: list[str]
    ) -> None:
        """The middleware must answer what Triton answers (before timing anything)."""
        status, answer = http_json(f"http://127.0.0.1:{port}/score/{self.args.model}", data=body)
        if status != 200 or not isinstance(answer, dict):
            raise RuntimeError(f"POST /score/{self.args.model} answered HTTP {status}: {answer}")
        for name in output_names:
            want = reference.as_numpy(name)  # type: ignore[attr-defined]
            got = answer["outputs"][name]
            if want.dtype != np.object_:
                np.testing.assert_allclose(np.asarray(got, dtype=want.dtype), want, rtol=1e-5)


# -- report ------------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}"


def render(cells: list[Cell], args: argparse.Namespace, total_s: float) -> str:
    direct = {(c.tool, c.concurrency): c for c in cells if c.path == "direct"}
    head = (
        "| path | tool | workers | conc | req/s | p50 ms | p99 ms | errors "
        "| Triton inf/exec | Triton ms/req | app ms/req (infer call) | CPU gen/triton/score/other "
        "| p50 overhead vs direct |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    busiest_other = 0.0
    for c in cells:
        if c.path == "score":
            path = f"POST /score/{args.model}"
        else:
            path = "direct Triton" + (" (tritonclient.http)" if c.tool == "python" else "")
        overhead = "-"
        base = direct.get((c.tool, c.concurrency))
        if c.path == "score" and base is not None:
            diff = c.p50_ms - base.p50_ms
            overhead = f"+{diff:.2f} ms" if diff >= 0 else f"{diff:.2f} ms"
            if base.p50_ms > 0:
                overhead += f" (x{c.p50_ms / base.p50_ms:.1f})"
        other = max(0.0, c.cpu_machine - c.cpu_gen - c.cpu_triton - (c.cpu_score or 0.0))
        busiest_other = max(busiest_other, other)
        cpu = "/".join(
            [fmt(c.cpu_gen, 1), fmt(c.cpu_triton, 1), fmt(c.cpu_score, 1), fmt(other, 1)]
        ) + (" *" if other > DISTURBED_CORES else "")
        app = "-" if c.app_ms != c.app_ms else f"{c.app_ms:.2f} ({c.app_infer_ms:.2f})"
        rows.append(
            f"| {path} | {c.tool} | {c.workers or '-'} | {c.concurrency} | {c.rps:.0f} "
            f"| {fmt(c.p50_ms)} | {fmt(c.p99_ms)} | {c.errors} | {fmt(c.per_execution)} "
            f"| {fmt(c.triton_ms)} | {app} | {cpu} | {overhead} |"
        )
    cpu_count = os.cpu_count() or 0
    notes = [
        "",
        f"- {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{cpu_count} CPU(s), Python {platform.python_version()}; "
        f"model `{args.model}`, one batch-1 request per call; {args.duration:g} s per cell "
        f"after {args.warmup:g} s warm-up (python rows); whole run {total_s:.0f} s.",
        f"- The load generator (this process's gevent greenlets, or wrk) shares the {cpu_count} "
        "cores with Triton and Gunicorn. `CPU gen/triton/score/other`: cores used during the "
        "cell by the load generator, Triton (+ python-backend stubs), `score serve` "
        f"(+ Gunicorn and its workers) and everything else on the machine (sum <= {cpu_count}). "
        "Treat the numbers as a comparison of the two paths, not as capacity.",
        "- `Triton inf/exec`: inferences per model execution during the cell "
        "(> 1 means the dynamic batcher merged requests); `Triton ms/req`: mean time a "
        "request spent inside Triton (queue + compute), from its statistics.",
        "- `app ms/req (infer call)`: mean time inside the middleware's view function and, "
        "in brackets, in its Triton call (the middleware's own `score_request_duration_seconds`"
        ' and `score_stage_duration_seconds{stage="infer"}` histograms); the rest of the '
        "client-side latency is Gunicorn, HTTP and waiting for the worker's event loop.",
    ]
    if busiest_other > DISTURBED_CORES:
        notes.append(
            f"- `*`: other processes used more than {DISTURBED_CORES} cores during that cell "
            f"(up to {busiest_other:.1f}): its numbers are disturbed; re-run on a quiet machine."
        )
    for c in cells:
        if c.first_error:
            notes.append(f"- first error ({c.path} c{c.concurrency} {c.tool}): {c.first_error}")
    return "\n".join(rows + notes)


def parse_ints(text: str) -> list[int]:
    values = [int(v) for v in text.replace(" ", "").split(",") if v]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,16; got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per cell (3)")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per cell (0.5)")
    parser.add_argument(
        "--concurrency", type=parse_ints, default=[1, 16], help="requests in flight (1,16)"
    )
    parser.add_argument(
        "--workers", type=parse_ints, default=[1, 2], help="Gunicorn worker counts (1,2)"
    )
    parser.add_argument("--model", default="digits_onnx", help="model to score (digits_onnx)")
    parser.add_argument(
        "--models", type=Path, default=DEFAULT_MODELS, help="model repository (models/triton)"
    )
    parser.add_argument(
        "--wrk", action="store_true", help="also measure every cell with wrk (if installed)"
    )
    return parser


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` below stops what it started."""

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration <= 0 or args.warmup < 0:
        say("error: --duration must be > 0 and --warmup >= 0")
        return 2
    wrk = shutil.which("wrk") if args.wrk else None
    if args.wrk and not wrk:
        say("bench: --wrk given but wrk is not installed (apt-get install wrk); python mode only")
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="bench-score-"))
    triton = LocalTriton(
        args.models,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        progress=lambda line: say(f"bench: {line}"),
    )
    bench = Bench(args, triton, scratch, wrk=wrk)
    code = 0
    with terminate_as_interrupt():
        try:
            triton.start(timeout=120)
            bench.run()
        except KeyboardInterrupt:
            say("bench: interrupted; stopping what was started")
            code = 130
        except (RuntimeError, AssertionError, OSError) as exc:
            say(f"error: {type(exc).__name__}: {exc}")
            code = 1
        finally:
            triton.stop()
            shutil.rmtree(scratch, ignore_errors=True)
    total = time.monotonic() - started
    say(f"bench: done in {total:.0f} s; Triton, score serve and their /dev/shm regions stopped")
    if bench.cells:
        print(render(bench.cells, args, total))
    if code == 0 and any(c.errors for c in bench.cells):
        code = 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
