#!/usr/bin/env python
"""Benchmark: the ways of serving one model, side by side, in one command.

One run starts its own Triton (``triton_score.local.LocalTriton`` on free ports, serving
``models/triton``) and, in front of it, every server it compares; then, for each of
``--runs`` rounds, each concurrency and each path, it measures a cell; it prints one
markdown table of the per-cell medians, with ratios to direct Triton and to the seed stack,
and stops everything it started. The paths (``--paths``, all by default):

- ``direct``: Triton's own ``/v2/models/<m>/infer`` (binary tensors), the floor;
- ``seed``: the stack entry-script mode replaces: AzureML's inference server ``azmlinfsrv``
  (its stock Gunicorn settings: sync workers) running the seed-style entry script
  (``tests/fixtures/seed_score.py``: ``import tritonhttpclient``, one client built in
  ``init()``, metadata + infer per request);
- ``entry``: ``score serve --entry-script`` with the same script, unmodified;
- ``score``: ``score serve``'s ``POST /score/<m>`` with the default codec (no processors).

The seed script hard-codes ``localhost:8000``; the benchmark serves a copy of it with that
address replaced by its own Triton's (so it needs no fixed port). Both servers get
``--workers`` workers (``WORKER_COUNT``).

    .venv/bin/python benchmarks/bench_score.py
    .venv/bin/python benchmarks/bench_score.py --paths seed,entry --concurrency 8 --runs 5

Load generator: ``wrk`` (one thread, ``-c`` connections) when installed, else this process
on gevent greenlets (``--tool``); the table says which. Either way it runs on the same cores
as Triton and the servers: the numbers compare paths on one machine, they are not capacity.

Progress goes to stderr, the table to stdout. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
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
from triton_score.local.processes import descendants, free_port, process_table, stop_process_group

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ROOT / "models" / "triton"
SEED_SCRIPT = ROOT / "tests" / "fixtures" / "seed_score.py"
#: The address the seed script hard-codes; the served copy points at the benchmark's Triton.
SEED_TRITON = "localhost:8000"
#: ``score`` console script of this interpreter's environment, else ``python -m triton_score``.
_SCORE_SCRIPT = Path(sys.executable).with_name("score")
SCORE_CMD = (
    [str(_SCORE_SCRIPT)] if _SCORE_SCRIPT.is_file() else [sys.executable, "-m", "triton_score"]
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
NETWORK_TIMEOUT_S = 10.0
#: A cell during which other processes used more CPU than this (cores) is flagged.
DISTURBED_CORES = 0.25
PATHS = ("direct", "seed", "entry", "score")
#: The goal for ``entry`` against ``seed`` at every concurrency: at least its throughput, and
#: a p99 within this factor + this many ms of its p99.
GOAL_P99_FACTOR, GOAL_P99_SLACK_MS = 1.1, 1.0

#: azmlinfsrv's console script, bound to 127.0.0.1 instead of its hard-coded 0.0.0.0 (as in
#: tests/test_azmlinfsrv.py: azmlinfsrv has no host option or variable).
AZMLINFSRV_LAUNCHER = """\
import sys
from importlib.metadata import entry_points

import azureml_inference_server_http.constants as constants

constants.DEFAULT_HOST = "127.0.0.1"  # before amlserver does `from .constants import *`
(script,) = entry_points(group="console_scripts", name="azmlinfsrv")
sys.argv[0] = "azmlinfsrv"
sys.exit(script.load()())
"""
#: Inherited variables that would change what azmlinfsrv or the script serve.
AZMLINFSRV_CLEARED_ENV = (
    "AML_APP_ROOT",
    "AZUREML_CONFIG_FILE",
    "AZUREML_ENTRY_SCRIPT",
    "AZUREML_MODEL_DIR",
    "AZUREML_SOURCE_DIRECTORY",
    "GUNICORN_CMD_ARGS",
    "HEALTH_PORT",
    "PROMETHEUS_MULTIPROC_DIR",
    "SEPERATE_HEALTH_ENDPOINT",
    "SERVER_PORT",
)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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
        return status, body


# -- CPU accounting --------------------------------------------------------------------------
def tree_cpu_seconds(root: int | None) -> float:
    """CPU seconds used so far by ``root`` and its live descendants."""
    if root is None:
        return 0.0
    table = process_table()
    return sum(table[pid].cpu_ticks for pid in descendants(root, table)) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent running processes since boot, or stolen by the hypervisor
    (``/proc/stat``: user, nice, system, steal; not idle, iowait or interrupts, which here are
    mostly the benchmark's own loopback traffic)."""
    with open("/proc/stat") as f:
        user, nice, system, _, _, _, _, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + steal) / CLK_TCK


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

    @classmethod
    def read(cls, triton_url: str, model: str) -> TritonStats:
        status, body = http_json(f"http://{triton_url}/v2/models/{model}/stats")
        if status != 200 or not isinstance(body, dict) or not body.get("model_stats"):
            raise RuntimeError(f"cannot read Triton statistics of {model!r} (HTTP {status})")
        stats = body["model_stats"][0]
        return cls(int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0)))

    def __sub__(self, other: TritonStats) -> TritonStats:
        return TritonStats(self.inferences - other.inferences, self.executions - other.executions)


# -- load generators ---------------------------------------------------------------------------
@dataclass
class Load:
    """What one load generator run measured."""

    requests: int  # successful
    errors: int
    elapsed_s: float
    p50_ms: float
    p99_ms: float
    first_error: str = ""


Call = Callable[[], None]  # one request; raises on failure
#: Opens one persistent connection: returns a :data:`Call` on it and a function closing it.
Connect = Callable[[], tuple[Call, Callable[[], None]]]


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


def greenlet_load(connect: Connect, concurrency: int, duration: float) -> Load:
    """One greenlet per connection, each sending its next request as soon as the previous one
    is answered (closed loop), for ``duration`` seconds."""
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

    with connections(connect, concurrency) as calls:
        started = time.perf_counter()
        deadline = started + duration
        greenlets = [gevent.spawn(worker, call, deadline) for call in calls]
        gevent.joinall(greenlets, timeout=duration + NETWORK_TIMEOUT_S + 5)
        elapsed = time.perf_counter() - started
        gevent.killall(greenlets, timeout=2)
    p50, p99 = (
        (float(v) * 1000 for v in np.percentile(latencies, [50, 99]))
        if latencies
        else (float("nan"), float("nan"))
    )
    return Load(len(latencies), errors[0], elapsed, p50, p99, first_error[0] if first_error else "")


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


def wrk_load(wrk: str, url: str, script: Path, concurrency: int, duration: float) -> Load:
    """``wrk -t1 -c<concurrency>`` with a Lua script that sends the request and reports."""
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
        nan = float("nan")
        return Load(0, 1, duration, nan, nan, (proc.stderr or proc.stdout)[-300:])
    requests, status_errors, errors, duration_us, p50_us, p99_us = line.split()[1:7]
    return Load(
        int(requests) - int(status_errors),
        int(errors),
        int(duration_us) / 1e6,
        float(p50_us) / 1000,
        float(p99_us) / 1000,
        f"{errors} wrk errors (non-2xx or socket)" if int(errors) else "",
    )


def write_wrk_script(
    scratch: Path, name: str, path: str, body: bytes, headers: dict[str, str]
) -> Path:
    body_file = scratch / f"{name}.body"
    body_file.write_bytes(body)
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    script = scratch / f"{name}.lua"
    script.write_text(WRK_SCRIPT.format(body=body_file, path=path, headers=lines))
    return script


def wrk_version(wrk: str) -> str:
    proc = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10)
    words = (proc.stdout or proc.stderr).split()  # "wrk debian/4.1.0-3+b2 [epoll] ..."
    if len(words) > 1 and words[0] == "wrk":
        return f"wrk {words[1].rpartition('/')[2].split('-')[0]}"
    return "wrk"


# -- servers -------------------------------------------------------------------------------------
class Server:
    """A server process we start in its own session and stop by its process group."""

    def __init__(self, name: str, scratch: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = scratch / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self, cmd: list[str], env: dict[str, str], cwd: Path) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        say(f"bench: {self.name} (pid {self.process.pid}) on 127.0.0.1:{self.port}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def wait_for(self, ready: Callable[[], bool], timeout: float = 120.0) -> None:
        assert self.process is not None
        started = time.monotonic()
        while not ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(
                    f"{self.name} not ready after {timeout:.0f} s\n{self.log_tail()}"
                )
            time.sleep(0.2)
        say(f"bench: {self.name} ready in {time.monotonic() - started:.1f} s")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self) -> None:
        """SIGTERM (it drains), SIGKILL after 20 s, then SIGKILL what is left of its group."""
        if self.process is not None:
            stop_process_group(self.process, grace=20)
            self.process = None


def start_score_serve(
    name: str, scratch: Path, triton_url: str, models: Path, workers: int, *extra: str
) -> Server:
    """``score serve`` (Gunicorn, gevent workers) in front of the benchmark's Triton."""
    server = Server(name, scratch)
    env = dict(os.environ)
    env.pop("SCORE_ACCESS_LOG", None)
    env["SCORE_GRACEFUL_TIMEOUT"] = "5"  # idle at stop time; don't wait 30 s if not
    cmd = [*SCORE_CMD, "serve", "--models", str(models), "--host", "127.0.0.1"]
    cmd += ["--port", str(server.port), "--triton-url", triton_url, "--workers", str(workers)]
    server.launch([*cmd, *extra], env, cwd=scratch)
    server.wait_for(lambda: "score: ready" in server.log_text())
    return server


def start_azmlinfsrv(scratch: Path, script: Path, workers: int) -> Server:
    """azmlinfsrv as AzureML runs it: its stock Gunicorn settings (sync workers), so from a
    folder with no ``gunicorn.conf.py``; bound to 127.0.0.1."""
    server = Server("azmlinfsrv", scratch)
    folder = scratch / "azmlinfsrv"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in AZMLINFSRV_CLEARED_ENV}
    env["WORKER_COUNT"] = str(workers)
    env["XDG_RUNTIME_DIR"] = str(folder)  # Gunicorn >= 25.1 puts a control socket there
    cmd = [sys.executable, "-c", AZMLINFSRV_LAUNCHER, "--entry_script", str(script)]
    server.launch([*cmd, "--port", str(server.port)], env, cwd=folder)
    # Every worker has run the script's init() (GET / answers before the others have).
    server.wait_for(
        lambda: server.log_text().count("Users's init has completed successfully") >= workers
    )
    return server


# -- one path, one cell ----------------------------------------------------------------------
@dataclass
class Target:
    """One way of scoring the request: where it goes, what is sent, who serves it."""

    name: str  # one of PATHS
    label: str
    host_port: str
    path: str
    body: bytes
    headers: dict[str, str]
    connect: Connect  # the python load generator's connection
    server: Server | None = None  # None: Triton itself
    wrk_script: Path | None = None


@dataclass
class Sample:
    """One measured cell of one round."""

    load: Load
    per_execution: float
    cpu_gen: float
    cpu_triton: float
    cpu_server: float | None
    cpu_other: float

    @property
    def rps(self) -> float:
        return self.load.requests / self.load.elapsed_s if self.load.elapsed_s > 0 else 0.0


@dataclass
class Cell:
    """A path at a concurrency: one :class:`Sample` per round, reported by their medians."""

    target: str
    concurrency: int
    samples: list[Sample] = field(default_factory=list)

    def median(self, value: Callable[[Sample], float | None]) -> float:
        values = [v for v in (value(s) for s in self.samples) if v is not None and v == v]
        return statistics.median(values) if values else float("nan")

    @property
    def rps(self) -> float:
        return self.median(lambda s: s.rps)

    @property
    def p50(self) -> float:
        return self.median(lambda s: s.load.p50_ms)

    @property
    def p99(self) -> float:
        return self.median(lambda s: s.load.p99_ms)

    @property
    def errors(self) -> int:
        return sum(s.load.errors for s in self.samples)

    @property
    def cpu_other_max(self) -> float:
        return max((s.cpu_other for s in self.samples), default=0.0)


def http_connector(port: int, path: str, body: bytes, headers: dict[str, str]) -> Connect:
    """``POST path`` with ``body`` over one keep-alive connection (``geventhttpclient``)."""

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


def http_target(name: str, label: str, server: Server, path: str, body: bytes) -> Target:
    """A path through one of our servers: a JSON body posted to ``path``."""
    headers = {"Content-Type": "application/json"}
    connect = http_connector(server.port, path, body, headers)
    return Target(name, label, f"127.0.0.1:{server.port}", path, body, headers, connect, server)


def direct_connector(
    triton_url: str,
    model: str,
    inputs: list[httpclient.InferInput],
    outputs: list[httpclient.InferRequestedOutput],
) -> Connect:
    """Triton directly: a ``tritonclient.http`` client (binary tensors) per connection."""

    def connect() -> tuple[Call, Callable[[], None]]:
        client = httpclient.InferenceServerClient(
            triton_url,
            concurrency=1,
            connection_timeout=NETWORK_TIMEOUT_S,
            network_timeout=NETWORK_TIMEOUT_S,
        )

        def call() -> None:
            client.infer(model, inputs, outputs=outputs)

        return call, client.close

    return connect


# -- the request ---------------------------------------------------------------------------------
def sample_inputs(meta: dict, model: str) -> dict[str, np.ndarray]:
    """One batch-1 request: a digit from scikit-learn for ``digits_onnx``, else a fixed array
    shaped from Triton's metadata."""
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


def serve_seed_script(source: Path, triton_url: str, scratch: Path) -> Path:
    """A copy of the entry script with its hard-coded ``localhost:8000`` replaced by
    ``triton_url``: nothing else changes."""
    text = source.read_text()
    if SEED_TRITON not in text:
        say(f"bench: {source.name} does not mention {SEED_TRITON}; served as it is")
    folder = scratch / "script"
    folder.mkdir()
    copy = folder / source.name
    copy.write_text(text.replace(SEED_TRITON, triton_url))
    return copy


# -- the run -----------------------------------------------------------------------------------
@dataclass
class Bench:
    args: argparse.Namespace
    triton: LocalTriton
    scratch: Path
    wrk: str | None
    targets: list[Target] = field(default_factory=list)
    servers: list[Server] = field(default_factory=list)
    cells: dict[tuple[str, int], Cell] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)

    def prepare(self) -> None:
        """Start the servers, build each path's request and check its answer."""
        args, url, model = self.args, self.triton.url, self.args.model
        status, meta = http_json(f"http://{url}/v2/models/{model}")
        if status != 200 or not isinstance(meta, dict):
            raise RuntimeError(f"Triton does not serve {model!r} (HTTP {status})")
        inputs = sample_inputs(meta, model)
        datatypes = {spec["name"]: spec["datatype"] for spec in meta["inputs"]}
        infer_inputs = []
        for name, array in inputs.items():
            infer_input = httpclient.InferInput(name, list(array.shape), datatypes[name])
            infer_input.set_data_from_numpy(array, binary_data=True)
            infer_inputs.append(infer_input)
        output_names = [spec["name"] for spec in meta["outputs"]]
        outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in output_names]
        client = httpclient.InferenceServerClient(url)
        try:
            result = client.infer(model, infer_inputs, outputs=outputs)
            reference = {name: result.as_numpy(name) for name in output_names}
        finally:
            client.close()

        for name in args.paths:
            if name == "direct":
                body, json_size = httpclient.InferenceServerClient.generate_request_body(
                    infer_inputs, outputs=outputs
                )
                headers = {"Content-Type": "application/octet-stream"}
                if json_size is not None:
                    headers["Inference-Header-Content-Length"] = str(json_size)
                target = Target(
                    name,
                    "direct Triton",
                    url,
                    f"/v2/models/{model}/infer",
                    body,
                    headers,
                    direct_connector(url, model, infer_inputs, outputs),
                )
            elif name == "score":
                server = start_score_serve(
                    "score-serve", self.scratch, url, args.models, args.workers,
                    "--processors", "none",
                )  # fmt: skip
                self.servers.append(server)
                body = json.dumps({"inputs": {k: v.tolist() for k, v in inputs.items()}}).encode()
                target = http_target(name, f"POST /score/{model}", server, f"/score/{model}", body)
                self.check_score(target, reference)
            else:  # seed or entry: the same script, the same body
                script = self.seed_script()
                if name == "seed":
                    server = start_azmlinfsrv(self.scratch, script, args.workers)
                    label = "azmlinfsrv + script"
                else:
                    server = start_score_serve(
                        "score-serve-entry", self.scratch, url, args.models, args.workers,
                        "--entry-script", str(script),
                    )  # fmt: skip
                    label = "score serve --entry-script"
                self.servers.append(server)
                body = json.dumps({"image": inputs["image"][0].tolist()}).encode()
                target = http_target(name, label, server, "/score", body)
                self.check_script(target, reference)
            if self.wrk:
                target.wrk_script = write_wrk_script(
                    self.scratch, name, target.path, target.body, target.headers
                )
            self.targets.append(target)

    _seed: Path | None = None

    def seed_script(self) -> Path:
        if self._seed is None:
            if self.args.model != "digits_onnx":
                raise RuntimeError("the seed and entry paths score digits_onnx only")
            self._seed = serve_seed_script(self.args.entry_script, self.triton.url, self.scratch)
        return self._seed

    @staticmethod
    def post(target: Target) -> tuple[int, object]:
        return http_json(f"http://{target.host_port}{target.path}", data=target.body, timeout=30)

    def check_score(self, target: Target, reference: dict[str, np.ndarray]) -> None:
        """``/score`` must answer what Triton answers (before timing anything)."""
        status, answer = self.post(target)
        if status != 200 or not isinstance(answer, dict):
            raise RuntimeError(f"{target.label} answered HTTP {status}: {answer!r}")
        for name, want in reference.items():
            if want.dtype != np.object_:
                got = np.asarray(answer["outputs"][name], dtype=want.dtype)
                np.testing.assert_allclose(got, want, rtol=1e-5)

    def check_script(self, target: Target, reference: dict[str, np.ndarray]) -> None:
        """The script's answer (top class) must be Triton's."""
        status, answer = self.post(target)
        probabilities = next(iter(reference.values()))[0]
        if status != 200 or not isinstance(answer, dict):
            raise RuntimeError(f"{target.label} answered HTTP {status}: {answer!r}")
        if answer.get("index") != int(np.argmax(probabilities)) or not np.isclose(
            answer.get("score", -1), float(np.max(probabilities)), atol=1e-5
        ):
            raise RuntimeError(f"{target.label} answered {answer}, Triton {probabilities}")

    def measure(self, target: Target, concurrency: int) -> Sample:
        args = self.args
        greenlet_load(target.connect, concurrency, args.warmup)  # unmeasured; same server side
        server_pid = target.server.pid if target.server else None

        def snapshot() -> tuple[TritonStats, float, float, float, float]:
            return (
                TritonStats.read(self.triton.url, args.model),
                own_cpu_seconds(),
                tree_cpu_seconds(self.triton.pid),
                tree_cpu_seconds(server_pid),
                machine_busy_seconds(),
            )

        before = snapshot()
        if self.wrk and target.wrk_script:
            url = f"http://{target.host_port}"
            load = wrk_load(self.wrk, url, target.wrk_script, concurrency, args.duration)
        else:
            load = greenlet_load(target.connect, concurrency, args.duration)
        after = snapshot()
        stats = after[0] - before[0]
        elapsed = load.elapsed_s
        gen, triton, server, machine = ((a - b) / elapsed for a, b in zip(after[1:], before[1:]))
        if load.first_error:
            self.first_errors.append(f"{target.name} c{concurrency}: {load.first_error}")
        return Sample(
            load,
            stats.inferences / stats.executions if stats.executions else 0.0,
            gen,
            triton,
            server if server_pid else None,
            max(0.0, machine - gen - triton - (server if server_pid else 0.0)),
        )

    def run(self) -> None:
        args = self.args
        for round_ in range(1, args.runs + 1):
            for concurrency in args.concurrency:
                for target in self.targets:
                    sample = self.measure(target, concurrency)
                    cell = self.cells.setdefault(
                        (target.name, concurrency), Cell(target.name, concurrency)
                    )
                    cell.samples.append(sample)
                    say(
                        f"bench: run {round_}/{args.runs} {target.name:6} c{concurrency:<3} "
                        f"{sample.rps:6.0f} req/s  p50 {sample.load.p50_ms:7.2f} ms  "
                        f"p99 {sample.load.p99_ms:7.2f} ms  {sample.load.errors} errors  "
                        f"other CPU {sample.cpu_other:.2f}"
                    )

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()


# -- report ------------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}"


def ratio(value: float, base: Cell | None, attribute: str) -> str:
    if base is None:
        return "-"
    reference = getattr(base, attribute)
    if not reference or reference != reference or value != value:
        return "-"
    return f"{value / reference:.2f}"


def meets_goal(entry: Cell, seed: Cell) -> bool:
    p99_limit = GOAL_P99_FACTOR * seed.p99 + GOAL_P99_SLACK_MS
    return entry.rps >= seed.rps and entry.p99 <= p99_limit and not entry.errors


def render(bench: Bench, tool: str, command: str, total_s: float) -> str:
    args = bench.args
    head = (
        "| path | conc | req/s | p50 ms | p99 ms | errors | req/s vs direct | p99 vs direct "
        "| req/s vs seed | p99 vs seed | Triton inf/exec | CPU gen/triton/server/other "
        "| req/s min–max |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    labels = {t.name: t.label for t in bench.targets}
    disturbed = 0.0
    for concurrency in args.concurrency:
        direct = bench.cells.get(("direct", concurrency))
        seed = bench.cells.get(("seed", concurrency))
        for name in args.paths:
            c = bench.cells.get((name, concurrency))
            if c is None:
                continue
            disturbed = max(disturbed, c.cpu_other_max)
            cpu = "/".join(
                fmt(c.median(f), 1)
                for f in (
                    lambda s: s.cpu_gen,
                    lambda s: s.cpu_triton,
                    lambda s: s.cpu_server,
                    lambda s: s.cpu_other,
                )
            ) + (" *" if c.cpu_other_max > DISTURBED_CORES else "")
            rates = [s.rps for s in c.samples]
            rows.append(
                f"| {labels[name]} | {concurrency} | {c.rps:.0f} | {fmt(c.p50)} | {fmt(c.p99)} "
                f"| {c.errors} | {ratio(c.rps, direct, 'rps')} | {ratio(c.p99, direct, 'p99')} "
                f"| {ratio(c.rps, seed, 'rps')} | {ratio(c.p99, seed, 'p99')} "
                f"| {fmt(c.median(lambda s: s.per_execution))} | {cpu} "
                f"| {min(rates):.0f}–{max(rates):.0f} |"
            )
    cpu_count = os.cpu_count() or 0
    notes = [
        "",
        f"- Command: `{command}` ({total_s:.0f} s).",
        f"- {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_count} CPU(s), "
        f"Python {platform.python_version()}; model `{args.model}`, one batch-1 request per "
        f"call; load generator: {tool}; {args.duration:g} s per cell after {args.warmup:g} s "
        f"of warm-up; each value is the median of {args.runs} runs (the rounds interleave the "
        f"paths); `--workers {args.workers}` for both servers.",
        "- `vs direct`, `vs seed`: this row's median over the same concurrency's median of "
        "direct Triton, and of azmlinfsrv + the script (the stack entry-script mode replaces).",
        "- `Triton inf/exec`: inferences per model execution (> 1: the dynamic batcher merged "
        "requests). `CPU gen/triton/server/other`: cores used by the load generator, Triton "
        f"(+ stubs), the server in front of it and everything else (sum <= {cpu_count}).",
    ]
    if {"entry", "seed"} <= {name for name, _ in bench.cells}:
        verdicts = []
        for concurrency in args.concurrency:
            entry, seed = bench.cells[("entry", concurrency)], bench.cells[("seed", concurrency)]
            limit = GOAL_P99_FACTOR * seed.p99 + GOAL_P99_SLACK_MS
            verdicts.append(
                f"c={concurrency} {'met' if meets_goal(entry, seed) else 'MISSED'} "
                f"({entry.rps:.0f} vs {seed.rps:.0f} req/s, p99 {entry.p99:.1f} vs <= {limit:.1f})"
            )
        notes.append(
            f"- Goal, entry vs seed (req/s >= seed's, p99 <= {GOAL_P99_FACTOR:g} x seed's + "
            f"{GOAL_P99_SLACK_MS:g} ms, no errors): " + "; ".join(verdicts) + "."
        )
    if disturbed > DISTURBED_CORES:
        notes.append(
            f"- `*`: in at least one run other processes used more than {DISTURBED_CORES} "
            f"cores during that cell (up to {disturbed:.1f}): disturbed; re-run on a quiet "
            "machine."
        )
    notes.extend(f"- first error ({e})" for e in bench.first_errors[:10])
    return "\n".join(rows + notes)


def parse_ints(text: str) -> list[int]:
    values = [int(v) for v in text.replace(" ", "").split(",") if v]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,8,32; got {text!r}")
    return values


def parse_paths(text: str) -> list[str]:
    names = [v for v in text.replace(" ", "").split(",") if v]
    unknown = [n for n in names if n not in PATHS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"paths are among {','.join(PATHS)}; got {text!r}")
    return [n for n in PATHS if n in names]  # the table's order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--paths", type=parse_paths, default=list(PATHS), help="direct,seed,entry,score (all)")
    add("--concurrency", type=parse_ints, default=[1, 8, 32], help="connections (1,8,32)")
    add("--runs", type=int, default=3, help="rounds; each cell reports the median (3)")
    add("--duration", type=float, default=5.0, help="measured seconds per cell (5)")
    add("--warmup", type=float, default=0.5, help="unmeasured seconds before each cell (0.5)")
    add("--workers", type=int, default=2, help="WORKER_COUNT of every server (2)")
    add("--tool", choices=("auto", "wrk", "python"), default="auto", help="load generator")
    add("--model", default="digits_onnx", help="model for direct and score (digits_onnx)")
    add("--models", type=Path, default=DEFAULT_MODELS, help="model repository (models/triton)")
    add(
        "--entry-script",
        type=Path,
        default=SEED_SCRIPT,
        help="the script seed and entry serve (tests/fixtures/seed_score.py)",
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


def command_line(argv: list[str]) -> str:
    here = Path.cwd()
    python = Path(sys.executable)
    shown = str(python.relative_to(here)) if python.is_relative_to(here) else "python"
    script = Path(__file__).resolve()
    script_shown = str(script.relative_to(here)) if script.is_relative_to(here) else script.name
    return shlex.join([shown, script_shown, *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.runs < 1 or args.workers < 1:
        say("error: --duration and --runs and --workers must be > 0, --warmup >= 0")
        return 2
    wrk = shutil.which("wrk") if args.tool in ("auto", "wrk") else None
    if args.tool == "wrk" and not wrk:
        say("error: --tool wrk, but wrk is not installed (apt-get install -y wrk)")
        return 2
    tool = (
        f"{wrk_version(wrk)} (-t1 -cN)"
        if wrk
        else "python (gevent greenlets, one keep-alive connection each)"
    )
    say(f"bench: load generator: {tool}; load average {os.getloadavg()[0]:.2f}")
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="bench-score-"))
    triton = LocalTriton(
        args.models,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        progress=lambda line: say(f"bench: {line}"),
    )
    bench = Bench(args, triton, scratch, wrk)
    code = 0
    with terminate_as_interrupt():
        try:
            triton.start(timeout=120)
            bench.prepare()
            bench.run()
        except KeyboardInterrupt:
            say("bench: interrupted; stopping what was started")
            code = 130
        except (RuntimeError, AssertionError, OSError) as exc:
            say(f"error: {type(exc).__name__}: {exc}")
            code = 1
        finally:
            bench.stop()
            triton.stop()
            shutil.rmtree(scratch, ignore_errors=True)
    total = time.monotonic() - started
    say(f"bench: done in {total:.0f} s; Triton, the servers and their /dev/shm regions stopped")
    if bench.cells:
        print(render(bench, tool, command_line(argv), total))
    if code == 0 and any(c.errors for c in bench.cells.values()):
        code = 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
