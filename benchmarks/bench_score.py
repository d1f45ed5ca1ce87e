#!/usr/bin/env python
"""Benchmark: the ways of serving a model, side by side, in one command (issue 8).

One run starts its own Triton (``triton_score.local.LocalTriton`` on free ports, serving
``models/triton``; the model builders run first, so ``imagenet_lite0`` exists) and, in front
of it, every server it compares; then, for each of ``--runs`` rounds, each concurrency, each
payload and each path, it measures a cell. Paths (``--paths``): ``direct`` (Triton itself),
``seed`` (azmlinfsrv + the seed-style script ``tests/fixtures/seed_score.py``), ``floor``
(``floor_app.py``: the least a Flask app under the same gevent worker does), ``entry``
(``score serve --entry-script``, the same script), ``score`` (``/score/<m>``, default codec),
``processor`` (``/score/<m>`` through the template's processors) and ``forward`` (``/v2``
forwarded by ``score serve``). Payloads (``--payloads``): ``small`` (a digit), ``image`` (a
JPEG → top-5, against a hand-written client doing the same decode), ``t224-json`` and
``t224-binary`` (a 3x224x224 FP32 tensor). Then NVIDIA's ``perf_analyzer`` against Triton and
against our ``/v2`` (``perf_analyzer.py``), and P5: start-up and worker memory
(``bench_memory.py``).

It prints one markdown table per payload (medians, ratios to direct Triton and to the seed
stack, the mean Triton batch), the perf_analyzer rows, P5 and issue 8's goals P1–P5 judged
from the numbers (``bench_report.py``); ``--json`` saves everything raw, ``--plot`` draws a
PNG. It stops everything it started, also on errors, Ctrl-C and SIGTERM.

    .venv/bin/python benchmarks/bench_score.py                       # ~14 min on 2 cores
    .venv/bin/python benchmarks/bench_score.py --payloads small --paths seed,score --runs 5

Load generator: ``wrk`` (one thread, ``-c`` connections) when installed, else this process
on gevent greenlets (``--tool``); the output says which. Either way it runs on the same cores
as Triton and the servers: the numbers compare paths on one machine, they are not capacity.

Progress goes to stderr, the report to stdout. See ``benchmarks/README.md``.
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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import bench_memory
import gevent
import numpy as np
import perf_analyzer
import tritonclient.http as httpclient
from bench_report import Startup, evaluate_goals, fmt, payload_table, plot
from geventhttpclient import HTTPClient
from perf_analyzer import PerfRow

from triton_score.local import LocalTriton
from triton_score.local.processes import descendants, free_port, process_table, stop_process_group

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
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
PATHS = ("direct", "seed", "floor", "bare", "entry", "score", "processor", "forward")
PAYLOADS = ("small", "image", "t224-json", "t224-binary")
#: Which paths each payload is measured on (the seed script and the entry script know
#: digits only; the image's ``direct`` is the hand-written client).
PAYLOAD_PATHS = {
    "small": PATHS,
    "image": ("direct", "processor"),
    "t224-json": ("direct", "score"),
    "t224-binary": ("direct", "score", "forward"),
}
SMALL_MODEL, IMAGE_MODEL = "digits_onnx", "imagenet_lite0"
#: perf_analyzer's runs: (model, --shape, concurrency), against Triton and against our /v2.
#: ``--features``: what each costs, by changing one setting of the ``score`` path at a time
#: (``small``, c=:data:`FEATURE_CONCURRENCY`). name -> (what it is, the env it changes).
FEATURE_KEY = "bench-key-0123456789abcdef"
FEATURES: dict[str, tuple[str, dict[str, str]]] = {
    "access-log-off": ("access line off (SCORE_LOG_LEVEL=WARNING)", {"SCORE_LOG_LEVEL": "WARNING"}),
    "json-logs": ("JSON log lines (SCORE_LOG_FORMAT=json)", {"SCORE_LOG_FORMAT": "json"}),
    "api-keys": ("API keys on (Authorization: Bearer)", {"SCORE_API_KEYS": FEATURE_KEY}),
    "coalesce-off": ("coalescing off (SCORE_COALESCE=off)", {"SCORE_COALESCE": "off"}),
    "shedding-off": ("shedding off (SCORE_MAX_IN_FLIGHT=0)", {"SCORE_MAX_IN_FLIGHT": "0"}),
    # Data capture at 10 % sampling (the budget: <= +5 % CPU per request), into the scratch
    # folder: "{scratch}" is filled in when the server starts.
    "capture-10pct": (
        "data capture of 10 % of requests (SCORE_CAPTURE=*=0.1)",
        {"SCORE_CAPTURE": "*=0.1", "SCORE_CAPTURE_DIR": "{scratch}/capture"},
    ),
    "tracing-on": (
        "tracing on, nothing exported (SCORE_TRACING=otel, OTEL_TRACES_EXPORTER=none)",
        {"SCORE_TRACING": "otel", "OTEL_TRACES_EXPORTER": "none"},
    ),
}
#: Features with no setting to turn them off: their share is in the py-spy profile.
UNSWITCHED = ("metrics", "request ids", "validation")
FEATURE_CONCURRENCY = 8
PERF_RUNS = ((SMALL_MODEL, "image:8,8", 1), (SMALL_MODEL, "image:8,8", 8))
PERF_SECONDS = 20  # a rough upper bound per perf_analyzer run, for the estimate
#: The goal for ``entry`` against ``seed`` at every concurrency: at least its throughput, and
#: a p99 within this factor + this many ms of its p99.
GOAL_P99_FACTOR, GOAL_P99_SLACK_MS = 1.1, 1.0

#: azmlinfsrv's console script, bound to 127.0.0.1 instead of its hard-coded 0.0.0.0 (as in
#: tests/compat/test_azmlinfsrv.py: azmlinfsrv has no host option or variable).
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
    load = parse_wrk_output(proc.stdout) if proc.returncode == 0 else None
    if load is None:
        nan = float("nan")
        return Load(0, 1, duration, nan, nan, (proc.stderr or proc.stdout)[-300:])
    return load


def parse_wrk_output(stdout: str) -> Load | None:
    """The ``BENCH`` line :data:`WRK_SCRIPT`'s ``done`` writes: requests, non-2xx answers,
    all errors, duration and percentiles (microseconds). Non-2xx answers are not successes."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH ")), "")
    if not line:
        return None
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
            problem = ""
            if self.process.poll() is not None:
                problem = f"{self.name} exited early:\n{self.log_tail()}"
            elif time.monotonic() - started > timeout:
                problem = f"{self.name} not ready after {timeout:.0f} s\n{self.log_tail()}"
            if problem:
                self.stop()  # not yet anyone's to stop: nothing of it may outlive the run
                raise RuntimeError(problem)
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
    name: str,
    scratch: Path,
    triton_url: str,
    models: Path,
    workers: int,
    *extra: str,
    env_extra: dict[str, str] | None = None,
) -> Server:
    """``score serve`` (Gunicorn, gevent workers) in front of the benchmark's Triton."""
    server = Server(name, scratch)
    env = {**os.environ, **(env_extra or {})}
    env.pop("SCORE_ACCESS_LOG", None)
    env["SCORE_GRACEFUL_TIMEOUT"] = "5"  # idle at stop time; don't wait 30 s if not
    cmd = [*SCORE_CMD, "serve", "--models", str(models), "--host", "127.0.0.1"]
    cmd += ["--port", str(server.port), "--triton-url", triton_url, "--workers", str(workers)]
    server.launch([*cmd, *extra], env, cwd=scratch)
    server.wait_for(lambda: "score: ready" in server.log_text())
    return server


def start_floor(scratch: Path, triton_url: str, workers: int, app: str = "app") -> Server:
    """``floor_app.py`` under Gunicorn's gevent worker, with ``score serve``'s worker count and
    keep-alive: the least a Flask app (``app``), or a bare WSGI callable (``bare``), can do for
    the ``small`` payload."""
    server = Server("floor" if app == "app" else "bare", scratch)
    env = {**os.environ, "TRITON_URL": triton_url}
    cmd = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", str(workers)]
    cmd += ["--keep-alive", "5", "--worker-connections", "256", "--chdir", str(BENCHMARKS)]
    cmd += ["-b", f"127.0.0.1:{server.port}", f"floor_app:{app}"]
    server.launch(cmd, env, cwd=scratch)
    server.wait_for(lambda: server.log_text().count("Booting worker") >= workers)
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
    """One way of scoring one payload: where it goes, what is sent, who serves it."""

    payload: str  # one of PAYLOADS
    name: str  # one of PATHS
    label: str
    model: str  # whose Triton statistics give the cell's mean batch
    host_port: str
    path: str
    body: bytes
    headers: dict[str, str]
    connect: Connect  # the python load generator's connection
    server: Server | None = None  # None: Triton itself
    wrk_script: Path | None = None
    #: False: only this process can send it (the hand-written image client decodes per call).
    wrk_ok: bool = True
    #: Measured at this concurrency only (the feature variants); ``None``: at every one.
    only_at: int | None = None


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
    """A path and payload at a concurrency: a :class:`Sample` per round, reported by their
    medians (``bench_report.Measured``)."""

    payload: str
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
    def batch(self) -> float:
        """Mean Triton batch: inferences per execution across the cell (Triton's /stats)."""
        return self.median(lambda s: s.per_execution or None)

    @property
    def errors(self) -> int:
        return sum(s.load.errors for s in self.samples)

    @property
    def cpu_ms(self) -> float:
        """CPU per request (ms) of the serving processes, from ``/proc``: the server's whole
        process tree (Gunicorn's master and workers), or Triton's for ``direct``."""

        def per_request(s: Sample) -> float | None:
            cores = s.cpu_server if s.cpu_server is not None else s.cpu_triton
            return cores / s.rps * 1000 if s.rps > 0 else None

        return self.median(per_request)

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


def port_of(host_port: str) -> int:
    return int(host_port.rpartition(":")[2])


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


# -- the payloads ------------------------------------------------------------------------------
def imagenet_preprocess() -> Callable[[bytes], np.ndarray]:
    """``preprocess_imagenet_image`` of the template's processor, the very code it runs."""
    import importlib.util

    path = ROOT / "score" / "imagenet_processor.py"
    spec = importlib.util.spec_from_file_location("bench_imagenet_processor", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.preprocess_imagenet_image


def sample_jpeg() -> bytes:
    """A real photo (scikit-learn's ``china.jpg``, 640x427) as a JPEG of quality 90."""
    import io

    from PIL import Image
    from sklearn.datasets import load_sample_image

    buffer = io.BytesIO()
    Image.fromarray(load_sample_image("china.jpg")).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def image_client_connector(triton_url: str, jpeg: bytes, top_k: int = 5) -> Connect:
    """The hand-written client P3 compares ``/score`` with: per call, the processor's
    decode/resize/normalise in this process, then Triton with ``class_count`` (top-k), the
    answer split into (score, index, label) — on a gevent client, like our workers."""
    preprocess = imagenet_preprocess()

    def connect() -> tuple[Call, Callable[[], None]]:
        client = httpclient.InferenceServerClient(
            triton_url,
            concurrency=1,
            connection_timeout=NETWORK_TIMEOUT_S,
            network_timeout=NETWORK_TIMEOUT_S,
        )
        outputs = [
            httpclient.InferRequestedOutput("probabilities", binary_data=True, class_count=top_k)
        ]

        def call() -> None:
            pixels = preprocess(jpeg)[np.newaxis]
            tensor = httpclient.InferInput("image", list(pixels.shape), "FP32")
            tensor.set_data_from_numpy(pixels, binary_data=True)
            result = client.infer(IMAGE_MODEL, [tensor], outputs=outputs)
            top = [e.decode().split(":", 2) for e in result.as_numpy("probabilities").ravel()]
            if len(top) != top_k:
                raise RuntimeError(f"expected {top_k} classes, got {len(top)}")

        return call, client.close

    return connect


def binary_request(
    inputs: dict[str, np.ndarray], datatypes: dict[str, str], outputs: list[str]
) -> tuple[list[httpclient.InferInput], list[httpclient.InferRequestedOutput], bytes, dict]:
    """The v2 binary-tensor request tritonclient would send: its objects, body and headers."""
    infer_inputs = []
    for name, array in inputs.items():
        infer_input = httpclient.InferInput(name, list(array.shape), datatypes[name])
        infer_input.set_data_from_numpy(array, binary_data=True)
        infer_inputs.append(infer_input)
    requested = [httpclient.InferRequestedOutput(n, binary_data=True) for n in outputs]
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        infer_inputs, outputs=requested
    )
    headers = {"Content-Type": "application/octet-stream"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return infer_inputs, requested, body, headers


def v2_json_body(inputs: dict[str, np.ndarray], datatypes: dict[str, str]) -> bytes:
    """A v2 JSON inference request (tensors as flat JSON arrays)."""
    tensors = [
        {"name": n, "shape": list(a.shape), "datatype": datatypes[n], "data": a.ravel().tolist()}
        for n, a in inputs.items()
    ]
    return json.dumps({"inputs": tensors}).encode()


def sample_inputs(meta: dict, model: str) -> dict[str, np.ndarray]:
    """One batch-1 request: a digit from scikit-learn for ``digits_onnx``, else a fixed array
    shaped from Triton's metadata."""
    inputs = {}
    for spec in meta["inputs"]:
        shape = [1 if d < 0 else d for d in spec["shape"]]
        if model == "digits_onnx" and spec["name"] == "image":
            from sklearn.datasets import load_digits  # only needed here

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


def fetch(target: Target) -> tuple[int, bytes]:
    """One request of ``target`` (for the answer checks): status and body."""
    request = urllib.request.Request(
        f"http://{target.host_port}{target.path}",
        data=target.body,
        method="POST",
        headers=target.headers,
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc).encode()


# -- the run -----------------------------------------------------------------------------------
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class Bench:
    args: argparse.Namespace
    triton: LocalTriton
    scratch: Path
    wrk: str | None
    targets: list[Target] = field(default_factory=list)
    servers: dict[str, Server] = field(default_factory=dict)
    cells: dict[tuple[str, str, int], Cell] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)
    #: Cells whose path could not give a valid answer before timing (why, per target).
    marks: dict[tuple[str, str], str] = field(default_factory=dict)

    # servers, started on first need ------------------------------------------------------------
    def server(self, kind: str) -> Server:
        """``plain`` (``--processors none``), ``proc`` (the template's code directory),
        ``entry`` (``--entry-script``) or ``seed`` (azmlinfsrv)."""
        if kind in self.servers:
            return self.servers[kind]
        args, url = self.args, self.triton.url
        if kind == "plain":
            extra = ["--processors", "none"]
            server = start_score_serve("score-plain", self.scratch, url, args.models,
                                       args.workers, *extra)  # fmt: skip
        elif kind == "proc":
            extra = ["--code-dir", str(ROOT / "score")]
            server = start_score_serve("score-processors", self.scratch, url, args.models,
                                       args.workers, *extra)  # fmt: skip
        elif kind == "floor":
            server = start_floor(self.scratch, url, args.workers)
        elif kind == "bare":
            server = start_floor(self.scratch, url, args.workers, app="bare")
        elif kind.startswith("feature:"):
            _, env = FEATURES[kind.partition(":")[2]]
            env = {key: value.format(scratch=self.scratch) for key, value in env.items()}
            server = start_score_serve(f"score-{kind[8:]}", self.scratch, url, args.models,
                                       args.workers, "--processors", "none",
                                       env_extra=env)  # fmt: skip
        elif kind == "entry":
            extra = ["--entry-script", str(self.seed_script())]
            server = start_score_serve("score-entry", self.scratch, url, args.models,
                                       args.workers, *extra)  # fmt: skip
        else:
            server = start_azmlinfsrv(self.scratch, self.seed_script(), args.workers)
        self.servers[kind] = server
        return server

    _seed: Path | None = None

    def seed_script(self) -> Path:
        if self._seed is None:
            self._seed = serve_seed_script(self.args.entry_script, self.triton.url, self.scratch)
        return self._seed

    def metadata(self, model: str) -> dict:
        status, meta = http_json(f"http://{self.triton.url}/v2/models/{model}")
        if status != 200 or not isinstance(meta, dict):
            raise RuntimeError(f"Triton does not serve {model!r} (HTTP {status})")
        return meta

    def through(self, kind: str, payload: str, name: str, label: str, model: str, path: str,
                body: bytes, headers: dict[str, str]) -> Target:  # fmt: skip
        server = self.server(kind)
        connect = http_connector(server.port, path, body, headers)
        host_port = f"127.0.0.1:{server.port}"
        return Target(payload, name, label, model, host_port, path, body, headers, connect, server)

    # the targets ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """Start the servers, build each payload's requests and check the answers."""
        for payload in self.args.payloads:
            paths = [p for p in PAYLOAD_PATHS[payload] if p in self.args.paths]
            if paths:
                getattr(self, "prepare_" + payload.replace("-", "_"))(paths)
        for target in self.targets:
            if self.wrk and target.wrk_ok:
                name = f"{target.payload}-{target.name}"
                target.wrk_script = write_wrk_script(
                    self.scratch, name, target.path, target.body, target.headers
                )

    def prepare_small(self, paths: list[str]) -> None:
        url, model = self.triton.url, SMALL_MODEL
        meta = self.metadata(model)
        inputs = sample_inputs(meta, model)
        datatypes = {spec["name"]: spec["datatype"] for spec in meta["inputs"]}
        names = [spec["name"] for spec in meta["outputs"]]
        infer_inputs, outputs, body, headers = binary_request(inputs, datatypes, names)
        client = httpclient.InferenceServerClient(url)
        try:
            result = client.infer(model, infer_inputs, outputs=outputs)
            reference = {name: result.as_numpy(name) for name in names}
        finally:
            client.close()
        v2 = f"/v2/models/{model}/infer"
        # The default codec's request, for /score and for the floor app.
        score_body = json.dumps({"inputs": {k: v.tolist() for k, v in inputs.items()}}).encode()
        for name in paths:
            if name == "direct":
                connect = direct_connector(url, model, infer_inputs, outputs)
                target = Target("small", name, "direct Triton", model, url, v2, body, headers,
                                connect)  # fmt: skip
            elif name == "score":
                target = self.through("plain", "small", name, "POST /score (default codec)",
                                      model, f"/score/{model}", score_body,
                                      JSON_HEADERS)  # fmt: skip
                self.check_outputs(target, reference)
            elif name in ("floor", "bare"):
                label = "floor (minimal Flask app)" if name == "floor" else "floor without Flask"
                target = self.through(name, "small", name, label, model, f"/score/{model}",
                                      score_body, JSON_HEADERS)  # fmt: skip
                self.check_script(target, reference)
            elif name == "processor":
                proc_body = json.dumps({"image": inputs["image"][0].tolist()}).encode()
                target = self.through("proc", "small", name, "POST /score + processor", model,
                                      f"/score/{model}", proc_body, JSON_HEADERS)  # fmt: skip
                self.check_status(target)
            elif name == "forward":
                target = self.through("plain", "small", name, "/v2 forwarded", model, v2, body,
                                      headers)  # fmt: skip
                self.check_status(target)
            else:  # seed or entry: the same script, the same body
                script_body = json.dumps({"image": inputs["image"][0].tolist()}).encode()
                label = "azmlinfsrv + script" if name == "seed" else "score serve --entry-script"
                kind = "seed" if name == "seed" else "entry"
                target = self.through(kind, "small", name, label, model, "/score", script_body,
                                      JSON_HEADERS)  # fmt: skip
                self.check_script(target, reference)
            self.targets.append(target)
        if self.args.features and "score" in paths:
            for feature, (label, env) in FEATURES.items():
                headers = dict(JSON_HEADERS)
                if "SCORE_API_KEYS" in env:
                    headers["Authorization"] = f"Bearer {FEATURE_KEY}"
                target = self.through(f"feature:{feature}", "small", f"score:{feature}", label,
                                      model, f"/score/{model}", score_body,
                                      headers)  # fmt: skip
                target.only_at = FEATURE_CONCURRENCY
                self.check_outputs(target, reference)
                self.targets.append(target)

    def prepare_image(self, paths: list[str]) -> None:
        jpeg = sample_jpeg()
        for name in paths:
            if name == "direct":
                connect = image_client_connector(self.triton.url, jpeg)
                call, close = connect()
                try:
                    call()  # the hand-written client works before it is timed
                finally:
                    close()
                target = Target("image", name, "hand-written client", IMAGE_MODEL,
                                self.triton.url, "", jpeg, {}, connect, wrk_ok=False)  # fmt: skip
            else:
                target = self.through("proc", "image", name, "JPEG → /score + processor",
                                      IMAGE_MODEL, f"/score/{IMAGE_MODEL}?top_k=5", jpeg,
                                      {"Content-Type": "image/jpeg"})  # fmt: skip
                status, answer = fetch(target)
                top = json.loads(answer) if status == 200 else None
                if not (isinstance(top, list) and len(top) == 5):
                    self.mark(target, f"answered HTTP {status}: {answer[:120]!r}")
            self.targets.append(target)

    def t224(self) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, np.ndarray]]:
        """The image's real input (FP32 [1, 3, 224, 224]) and Triton's answer to it."""
        pixels = imagenet_preprocess()(sample_jpeg())[np.newaxis]
        inputs, datatypes = {"image": pixels}, {"image": "FP32"}
        infer_inputs, outputs, _, _ = binary_request(inputs, datatypes, ["probabilities"])
        client = httpclient.InferenceServerClient(self.triton.url)
        try:
            result = client.infer(IMAGE_MODEL, infer_inputs, outputs=outputs)
        finally:
            client.close()
        return inputs, datatypes, {"probabilities": result.as_numpy("probabilities")}

    def prepare_t224_json(self, paths: list[str]) -> None:
        inputs, datatypes, reference = self.t224()
        for name in paths:
            if name == "direct":
                body = v2_json_body(inputs, datatypes)
                path = f"/v2/models/{IMAGE_MODEL}/infer"
                connect = http_connector(port_of(self.triton.url), path, body, JSON_HEADERS)
                target = Target("t224-json", name, "direct Triton (v2 JSON)", IMAGE_MODEL,
                                self.triton.url, path, body, JSON_HEADERS, connect)  # fmt: skip
            else:
                body = json.dumps({"inputs": {"image": inputs["image"].tolist()}}).encode()
                target = self.through("plain", "t224-json", name, "JSON → /score default codec",
                                      IMAGE_MODEL, f"/score/{IMAGE_MODEL}", body,
                                      JSON_HEADERS)  # fmt: skip
                self.check_outputs(target, reference, rtol=1e-4)
            self.targets.append(target)

    def prepare_t224_binary(self, paths: list[str]) -> None:
        inputs, datatypes, _ = self.t224()
        infer_inputs, outputs, body, headers = binary_request(inputs, datatypes, ["probabilities"])
        v2 = f"/v2/models/{IMAGE_MODEL}/infer"
        for name in paths:
            if name == "direct":
                connect = direct_connector(self.triton.url, IMAGE_MODEL, infer_inputs, outputs)
                target = Target("t224-binary", name, "direct Triton (binary)", IMAGE_MODEL,
                                self.triton.url, v2, body, headers, connect)  # fmt: skip
            elif name == "score":
                target = self.through("plain", "t224-binary", name, "binary → /score",
                                      IMAGE_MODEL, f"/score/{IMAGE_MODEL}", body,
                                      headers)  # fmt: skip
                self.check_status(target)
            else:
                target = self.through("plain", "t224-binary", name, "/v2 forwarded",
                                      IMAGE_MODEL, v2, body, headers)  # fmt: skip
                self.check_status(target)
            self.targets.append(target)

    # answer checks: a wrong answer marks the cell (it is still measured, its errors counted) ---
    def mark(self, target: Target, why: str) -> None:
        self.marks[(target.payload, target.name)] = why
        say(f"bench: {target.payload} {target.name}: {why} (measured anyway, marked)")

    def check_status(self, target: Target) -> None:
        status, answer = fetch(target)
        if status != 200:
            self.mark(target, f"answered HTTP {status}: {answer[:160]!r}")

    def check_outputs(
        self, target: Target, reference: dict[str, np.ndarray], rtol: float = 1e-5
    ) -> None:
        """``/score``'s default codec must answer what Triton answers."""
        status, raw = fetch(target)
        if status != 200:
            self.mark(target, f"answered HTTP {status}: {raw[:160]!r}")
            return
        answer = json.loads(raw)
        for name, want in reference.items():
            if want.dtype != np.object_:
                got = np.asarray(answer["outputs"][name], dtype=want.dtype)
                if not np.allclose(got, want, rtol=rtol, atol=1e-6):
                    self.mark(target, f"output {name!r} differs from Triton's")

    def check_script(self, target: Target, reference: dict[str, np.ndarray]) -> None:
        """The script's answer (top class) must be Triton's."""
        status, raw = fetch(target)
        probabilities = next(iter(reference.values()))[0]
        answer = json.loads(raw) if status == 200 else None
        if not isinstance(answer, dict):
            self.mark(target, f"answered HTTP {status}: {raw[:160]!r}")
        elif answer.get("index") != int(np.argmax(probabilities)) or not np.isclose(
            answer.get("score", -1), float(np.max(probabilities)), atol=1e-5
        ):
            self.mark(target, f"answered {answer}, Triton {probabilities}")

    # measuring -----------------------------------------------------------------------------
    def measure(self, target: Target, concurrency: int) -> Sample:
        args = self.args
        greenlet_load(target.connect, concurrency, args.warmup)  # unmeasured; same server side
        server_pid = target.server.pid if target.server else None

        def snapshot() -> tuple[TritonStats, float, float, float, float]:
            return (
                TritonStats.read(self.triton.url, target.model),
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
            self.first_errors.append(
                f"{target.payload} {target.name} c{concurrency}: {load.first_error}"
            )
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
                    if target.only_at is not None and target.only_at != concurrency:
                        continue
                    sample = self.measure(target, concurrency)
                    key = (target.payload, target.name, concurrency)
                    cell = self.cells.setdefault(key, Cell(*key))
                    cell.samples.append(sample)
                    say(
                        f"bench: run {round_}/{args.runs} {target.payload:11} {target.name:9} "
                        f"c{concurrency:<3} {sample.rps:6.0f} req/s  p50 "
                        f"{sample.load.p50_ms:7.2f} ms  p99 {sample.load.p99_ms:7.2f} ms  "
                        f"batch {sample.per_execution:4.2f}  {sample.load.errors} errors  "
                        f"other CPU {sample.cpu_other:.2f}"
                    )

    def stop(self) -> None:
        for server in reversed(list(self.servers.values())):
            server.stop()
        self.servers.clear()

    # NVIDIA's tool, against Triton and against us ------------------------------------------
    def perf_analyzer(self) -> list[PerfRow]:
        """``perf_analyzer`` on Triton and on ``score serve``'s ``/v2`` (the forwarder)."""
        rows = []
        surfaces = [("Triton", self.triton.url)]
        if "plain" in self.servers or "forward" in self.args.paths:
            surfaces.append(("score serve /v2", f"127.0.0.1:{self.server('plain').port}"))
        for model, shape, concurrency in PERF_RUNS:
            for name, url in surfaces:
                say(f"bench: perf_analyzer -m {model} --shape {shape} -c {concurrency} on {name}")
                row = perf_analyzer.run(name, url, model, shape, concurrency, self.scratch)
                say(f"bench:   {row.throughput:.0f} infer/s p50 {row.p50_ms:.2f} ms {row.error}")
                rows.append(row)
        return rows

    # P5 --------------------------------------------------------------------------------------
    def startup_and_memory(self) -> Startup:
        """Issue 8's P5 (see ``bench_memory``): worker RSS after the runs, a valid large
        binary body, a 50 MB JSON body, then a fresh ``score serve``'s ready time."""
        result = Startup(big_json_mb=self.args.big_body_mb)
        plain = self.server("plain")
        assert plain.pid is not None
        ours = {k: s for k, s in self.servers.items() if k in ("plain", "proc") and s.pid}
        sizes = {k: bench_memory.workers_memory(s.pid) for k, s in ours.items()}  # type: ignore[arg-type]
        result.worker_rss_mb = max(rss for rss, _ in sizes.values())
        result.worker_hwm_mb = max(hwm for _, hwm in sizes.values())
        for kind, (rss, hwm) in sizes.items():
            result.notes.append(f"{kind} server workers after the runs: VmRSS {rss:.0f} MB, "
                                f"VmHWM {hwm:.0f} MB")  # fmt: skip

        # The largest valid binary body: a full batch of imagenet_lite0 (before the big JSON
        # body, whose peak would hide this one's).
        status, config = http_json(f"http://{self.triton.url}/v2/models/{IMAGE_MODEL}/config")
        batch = int(config.get("max_batch_size", 0)) if isinstance(config, dict) else 0
        if status == 200 and batch > 0:
            tensor = np.zeros((batch, 3, 224, 224), dtype=np.float32)
            body, headers = bench_memory.binary_tensor_body("image", tensor, "FP32",
                                                            "probabilities")  # fmt: skip
            result.binary_body_mb = len(body) / 2**20
            _, hwm_before = bench_memory.workers_memory(plain.pid)
            url = f"http://127.0.0.1:{plain.port}/score/{IMAGE_MODEL}"
            result.binary_status = bench_memory.post(url, body, headers)
            _, hwm_after = bench_memory.workers_memory(plain.pid)
            result.binary_peak_growth_mb = hwm_after - hwm_before
            result.notes.append(
                f"no model accepts a {self.args.big_body_mb:g} MB binary body: the largest "
                f"valid one is {IMAGE_MODEL}'s full batch ({batch} x 3x224x224 FP32, "
                f"{result.binary_body_mb:.1f} MB); /score answered HTTP {result.binary_status}"
            )
        else:
            result.notes.append(f"{IMAGE_MODEL} not served: no valid large binary body")

        body = bench_memory.big_json_body(self.args.big_body_mb)
        url = f"http://127.0.0.1:{plain.port}/score/{SMALL_MODEL}"
        say(f"bench: P5: {len(body) / 2**20:.0f} MB JSON body to {url}")
        result.big_json_status = bench_memory.post(url, body, JSON_HEADERS)
        result.big_json_rss_mb = bench_memory.workers_memory(plain.pid)[1]

        # A fresh score serve with its own Triton (models built: --no-build), as deployed.
        server = Server("score-ready", self.scratch)
        cmd = [*SCORE_CMD, "serve", "--models", str(self.args.models), "--no-build"]
        cmd += ["--host", "127.0.0.1", "--port", str(server.port)]
        cmd += ["--triton-url", f"127.0.0.1:{free_port()}", "--triton-grpc-port",
                str(free_port()), "--triton-metrics-port", str(free_port())]  # fmt: skip
        cmd += ["--workers", str(self.args.workers), "--code-dir", str(ROOT / "score")]
        env = dict(os.environ, SCORE_GRACEFUL_TIMEOUT="5")
        server.launch(cmd, env, cwd=self.scratch)
        try:
            process = server.process
            assert process is not None
            result.ready_s = bench_memory.wait_ready(
                f"http://127.0.0.1:{server.port}/v2/health/ready", lambda: process.poll() is None
            )
            if result.ready_s is None:
                result.notes.append("the fresh score serve never became ready: "
                                    + server.log_tail(3).replace("\n", " | "))  # fmt: skip
        finally:
            server.stop()
        return result


# -- report ------------------------------------------------------------------------------------
def render(
    bench: Bench,
    tool: str,
    command: str,
    total_s: float,
    perf: list[PerfRow],
    startup: Startup | None,
) -> str:
    args = bench.args
    out = [
        f"Command: `{command}` ({total_s:.0f} s). {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPU(s), Python {platform.python_version()}; load generator: {tool}; "
        f"{args.duration:g} s per cell after {args.warmup:g} s of warm-up; median of "
        f"{args.runs} run(s), the rounds cycle through the paths; `--workers {args.workers}` "
        "for every server.",
    ]
    for payload in args.payloads:
        if not any(k[0] == payload for k in bench.cells):
            continue
        out += ["", f"### {payload}: {PAYLOAD_TITLES[payload]}", ""]
        out += payload_table(payload, bench.cells, args.paths, args.concurrency)
        marks = [f"- ⚠ {p}: {why}" for (pl, p), why in bench.marks.items() if pl == payload]
        out += [""] + marks if marks else []
        if payload == "small" and args.features:
            out += ["", "#### What each feature costs (`--features`)", ""]
            out += feature_table(bench.cells)
    if perf:
        out += ["", "### NVIDIA perf_analyzer (HTTP, batch 1)", ""]
        out += ["| server | model | conc | infer/s | p50 ms | p99 ms | note |", "|---" * 7 + "|"]
        for r in perf:
            out.append(f"| {r.target} | {r.model} | {r.concurrency} | {fmt(r.throughput, 0)} "
                       f"| {fmt(r.p50_ms)} | {fmt(r.p99_ms)} | {r.error} |")  # fmt: skip
    if startup is not None:
        out += ["", "### Start-up and memory (P5)", ""]
        out.append(f"- warm `score serve` (own Triton, models built) ready in "
                   f"{fmt(startup.ready_s, 1)} s")  # fmt: skip
        out.append(f"- worker VmRSS after the runs (largest): {fmt(startup.worker_rss_mb, 0)} MB;"
                   f" VmHWM {fmt(startup.worker_hwm_mb, 0)} MB")  # fmt: skip
        out.append(f"- {startup.big_json_mb:g} MB JSON body to /score/{SMALL_MODEL}: HTTP "
                   f"{startup.big_json_status}; worker VmHWM after: "
                   f"{fmt(startup.big_json_rss_mb, 0)} MB")  # fmt: skip
        out.append(f"- valid binary body of {fmt(startup.binary_body_mb, 1)} MB: HTTP "
                   f"{startup.binary_status}; worker peak growth "
                   f"{fmt(startup.binary_peak_growth_mb, 0)} MB")  # fmt: skip
        out += [f"- {note}" for note in startup.notes]
    out += ["", "### Goals (issue 8)", ""]
    out += [f"- **{goal}**: {verdict}" for goal, verdict in evaluate_goals(bench.cells, startup)]
    disturbed = max((c.cpu_other_max for c in bench.cells.values()), default=0.0)
    out += ["", "Notes:", ""]
    out.append(
        "- `req/s vs direct` and `p50 added over direct`: against the same payload's `direct` "
        "at the same concurrency (for `image`, the hand-written client); `req/s vs seed`: "
        "against azmlinfsrv + the seed script. `mean Triton batch`: inferences per execution "
        "of the model across the cell (Triton's `/v2/models/<m>/stats`)."
    )
    if disturbed > DISTURBED_CORES:
        out.append(f"- Other processes used up to {disturbed:.1f} cores during some cells: "
                   "disturbed; re-run on a quiet machine.")  # fmt: skip
    out += [f"- first error ({e})" for e in bench.first_errors[:10]]
    return "\n".join(out)


PAYLOAD_TITLES = {
    "small": f"{SMALL_MODEL}, one 8x8 FP32 image",
    "image": f"a JPEG (640x427) → top-5 of {IMAGE_MODEL}",
    "t224-json": f"3x224x224 FP32 as JSON ({IMAGE_MODEL}, no processor)",
    "t224-binary": f"3x224x224 FP32 as v2 binary tensors ({IMAGE_MODEL}, no processor)",
}


def results_json(
    bench: Bench, perf: list[PerfRow], startup: Startup | None, total_s: float
) -> dict:
    """Everything measured, raw (every sample of every cell) and summarised."""
    cells = []
    for (payload, path, conc), cell in bench.cells.items():
        cells.append({
            "payload": payload, "path": path, "concurrency": conc,
            "rps": cell.rps, "p50_ms": cell.p50, "p99_ms": cell.p99, "batch": cell.batch,
            "errors": cell.errors, "mark": bench.marks.get((payload, path), ""),
            "samples": [asdict(s) for s in cell.samples],
        })  # fmt: skip
    return {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(bench.args).items()},
        "seconds": total_s,
        "cells": cells,
        "perf_analyzer": [asdict(r) for r in perf],
        "startup": asdict(startup) if startup else None,
        "goals": dict(evaluate_goals(bench.cells, startup)),
    }


def parse_ints(text: str) -> list[int]:
    values = [int(v) for v in text.replace(" ", "").split(",") if v]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,8,32; got {text!r}")
    return values


def parse_names(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [v for v in text.replace(" ", "").split(",") if v]
        unknown = [n for n in names if n not in allowed]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"choose among {','.join(allowed)}; got {text!r}")
        return [n for n in allowed if n in names]  # the table's order

    return parse


def feature_table(cells: dict) -> list[str]:
    """``/score`` with one setting changed, against ``/score`` as it is, at the same
    concurrency and in the same rounds."""
    conc = FEATURE_CONCURRENCY
    base = cells.get(("small", "score", conc))
    rows = [
        f"| `/score` at c={conc} with | req/s | vs as is | CPU ms/req | CPU vs as is |",
        "|---|---|---|---|---|",
    ]
    if base is not None:
        rows.append(f"| as it is (the defaults) | {base.rps:.0f} | 1.00 | {fmt(base.cpu_ms, 3)} "
                    "| 1.00 |")  # fmt: skip
    for feature, (label, _) in FEATURES.items():
        cell = cells.get(("small", f"score:{feature}", conc))
        if cell is None:
            continue
        rps_ratio = cell.rps / base.rps if base and base.rps else None
        cpu_ratio = cell.cpu_ms / base.cpu_ms if base and base.cpu_ms else None
        rows.append(f"| {label} | {cell.rps:.0f} | {fmt(rps_ratio)} | {fmt(cell.cpu_ms, 3)} "
                    f"| {fmt(cpu_ratio)} |")  # fmt: skip
    for name in UNSWITCHED:
        rows.append(f"| {name} off | no switch: see the py-spy profile | | | |")
    return rows


def estimate_seconds(args: argparse.Namespace, perf_runs: int) -> float:
    """Roughly how long a run takes: cells x (duration + warm-up) x runs, plus the rest."""
    cells = sum(
        len([p for p in PAYLOAD_PATHS[payload] if p in args.paths]) for payload in args.payloads
    ) * len(args.concurrency)
    if getattr(args, "features", False) and "small" in args.payloads and "score" in args.paths:
        cells += len(FEATURES)
    per_cell = max(1, round(args.duration)) + args.warmup + 0.3
    servers = 60.0  # Triton and up to four servers
    startup = 0.0 if args.no_startup else 30.0
    return cells * args.runs * per_cell + perf_runs * PERF_SECONDS + servers + startup


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--paths", type=parse_names(PATHS), default=list(PATHS), help=",".join(PATHS))
    add("--payloads", type=parse_names(PAYLOADS), default=list(PAYLOADS), help=",".join(PAYLOADS))
    add("--concurrency", type=parse_ints, default=[1, 8, 32], help="connections (1,8,32)")
    add("--runs", type=int, default=3, help="rounds; each cell reports the median (3)")
    add("--duration", type=float, default=4.5, help="measured seconds per cell (4.5)")
    add("--warmup", type=float, default=0.5, help="unmeasured seconds before each cell (0.5)")
    add("--workers", type=int, default=2, help="WORKER_COUNT of every server (2)")
    add("--tool", choices=("auto", "wrk", "python"), default="auto", help="load generator")
    add("--models", type=Path, default=DEFAULT_MODELS, help="model repository (models/triton)")
    add("--entry-script", type=Path, default=SEED_SCRIPT,
        help="the script seed and entry serve (tests/fixtures/seed_score.py)")  # fmt: skip
    add("--no-perf-analyzer", action="store_true", help="skip NVIDIA perf_analyzer")
    add("--features", action="store_true",
        help="what each feature costs: /score with one setting changed, at c=8")  # fmt: skip
    add("--no-startup", action="store_true", help="skip P5 (ready time, memory, big bodies)")
    add("--big-body-mb", type=float, default=50.0, help="size of P5's invalid JSON body (50)")
    add("--json", type=Path, default=None, help="write the raw results to this JSON file")
    add("--plot", type=Path, default=ROOT / "benchmarks" / "results.png",
        help="PNG plot of req/s (benchmarks/results.png); 'none' for no plot")  # fmt: skip
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
        f"{wrk_version(wrk)} (-t1 -cN; the hand-written image client: python)"
        if wrk
        else "python (gevent greenlets, one keep-alive connection each)"
    )
    perf_runs = 0 if args.no_perf_analyzer else 2 * len(PERF_RUNS)
    estimate = estimate_seconds(args, perf_runs)
    say(f"bench: load generator: {tool}; load average {os.getloadavg()[0]:.2f}")
    say(f"bench: estimated run time {estimate / 60:.1f} min")
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
    perf: list[PerfRow] = []
    startup: Startup | None = None
    code = 0
    with terminate_as_interrupt():
        try:
            triton.start(timeout=300)  # runs the model builders first (imagenet_lite0)
            bench.prepare()
            bench.run()
            if not args.no_perf_analyzer:
                perf = bench.perf_analyzer()
            if not args.no_startup:
                startup = bench.startup_and_memory()
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
    say(f"bench: done in {total:.0f} s (estimated {estimate:.0f} s); Triton, the servers and "
        "their /dev/shm regions stopped")  # fmt: skip
    if bench.cells:
        print(render(bench, tool, command_line(argv), total, perf, startup))
        if args.json:
            args.json.write_text(json.dumps(results_json(bench, perf, startup, total), indent=1))
            say(f"bench: raw results in {args.json}")
        if str(args.plot) != "none":
            title = (f"req/s, median of {args.runs} run(s), {args.workers} worker(s), "
                     f"{os.cpu_count()} CPU(s)")  # fmt: skip
            plot(bench.cells, args.payloads, args.paths, args.concurrency, args.plot, title)
            say(f"bench: plot in {args.plot}")
    if code == 0 and any(c.errors for c in bench.cells.values()):
        code = 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
