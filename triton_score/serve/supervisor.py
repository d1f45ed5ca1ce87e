"""``score serve``: Triton (when needed) plus Gunicorn, supervised together.

1. If nothing answers at ``TRITON_URL`` and a ``tritonserver`` binary is available, run the
   model builders beside the repository (:mod:`triton_score.repository.builds`), then start a
   local Triton on it (see :mod:`triton_score.local`).
2. Start Gunicorn with :mod:`triton_score.serve.gunicorn_conf` (``WORKER_COUNT`` gevent
   workers, each building its own Triton client after the fork).
3. Wait until ``/v2/health/ready`` answers, print where to send requests.
4. Supervise: if either process dies, stop the other and exit non-zero.
5. On SIGTERM/SIGINT, stop in this order, and exit 0:

   a. *draining*: ``/v2/health/ready`` answers 503 (``"draining": true``) in every worker
      while scoring goes on as usual, for ``SCORE_DRAIN_S`` seconds (default 0), so a load
      balancer that polls readiness stops sending new requests before connections are
      refused. A second signal ends this wait;
   b. Gunicorn stops accepting (new connections are refused) and its workers finish the
      requests they have, up to ``SCORE_GRACEFUL_TIMEOUT`` seconds (answers go out with
      ``Connection: close``);
   c. Triton stops last.

   The workers learn of (a) from a file, ``SCORE_DRAIN_FILE``, which ``score serve`` names
   and creates when the signal comes: a file, not a signal, since Gunicorn's workers treat
   SIGTERM as "stop now".
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from triton_score.local import LocalTriton, TritonStartError
from triton_score.local.ensure import NoTriton, answers, local_triton_for
from triton_score.repository.locations import (
    find_model_repository,
    split_address,
)
from triton_score.serve.triton_trace import check_tracing, otlp_traces_url, triton_trace_args
from triton_score.settings import ProcessSettings, Settings, environment, settings_error

#: Run in a child process by :meth:`Supervisor._check_entry_script`.
ENTRY_SCRIPT_CHECK = (
    "import sys; from triton_score.azureml.host import check; sys.exit(check(sys.argv[1]))"
)


@dataclass
class ServeOptions:
    models: str | None = None
    processors: str | None = None
    entry_script: str | None = None
    code_directory: str | None = None
    host: str = "127.0.0.1"
    port: int = 5001
    workers: int | None = None
    triton_url: str | None = None
    tritonserver: str | None = None
    triton_grpc_port: int | None = None
    triton_metrics_port: int | None = None
    ready_timeout: float = 300.0
    #: Run the model builders (``build_*.py`` beside the repository) before a local Triton.
    build: bool = True
    #: More ``tritonserver`` arguments for a local Triton (``--triton-arg``).
    triton_args: tuple[str, ...] = ()
    #: The port of the separate health listener (``HEALTH_PORT``; used with
    #: ``SEPERATE_HEALTH_ENDPOINT=true``); ``None``: the environment's, else 5000.
    health_port: int | None = None


def _http_status(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def find_shadows(*folders: Path) -> list[Path]:
    """Files or folders named ``triton_score`` that would be imported instead of this package.

    Gunicorn puts the working directory first on ``sys.path``, and an entry script's folder is
    on it while the script is imported: a ``triton_score.py`` or ``triton_score/`` there
    shadows the installed runtime, and the failure would be a confusing ImportError later.
    """
    ours = Path(__file__).resolve().parent.parent  # triton_score/, above serve/
    found = []
    for folder in folders:
        for candidate in (folder / "triton_score.py", folder / "triton_score"):
            if candidate.exists() and candidate.resolve() != ours:
                found.append(candidate)
    return found


def _model_names(triton_url: str) -> list[str]:
    request = urllib.request.Request(
        f"http://{triton_url}/v2/repository/index", data=b"{}", method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            index = json.loads(response.read())
        return sorted(m["name"] for m in index if m.get("state") == "READY")
    except (OSError, ValueError, KeyError):
        return []


def _no_module(spec: str) -> bool:
    """Is ``spec`` (``pkg.module`` or ``pkg.module:Class``) a module no worker will find?

    Only the top-level package is looked up (nothing is imported), on the path a Gunicorn
    worker has: the working folder first.
    """
    target = spec.strip().partition(":")[0]
    if not target or target.endswith(".py") or "/" in target:
        return False
    top = target.split(".")[0]
    if top in sys.modules:
        return False
    return importlib.machinery.PathFinder.find_spec(top, [os.getcwd(), *sys.path]) is None


class Supervisor:
    """Runs and watches the two processes; :meth:`run` returns the exit code."""

    def __init__(self, options: ServeOptions, say: Callable[[str], None]) -> None:
        self.options = options
        self.say = say
        self.triton: LocalTriton | None = None
        self.gunicorn: subprocess.Popen[bytes] | None = None
        self.stopping = False
        #: Signals received (SIGTERM/SIGINT): a second one ends the drain early.
        self.signals = 0
        self._metrics_dir: str | None = None
        self._state_dir: str | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        self.signals += 1
        if self.drain_file is not None and self.gunicorn is not None:
            self.drain_file.touch()  # readiness 503 now, not at the next supervision tick

    @property
    def drain_file(self) -> Path | None:
        """The file whose existence makes the workers' readiness 503 (``SCORE_DRAIN_FILE``)."""
        return Path(self._state_dir, "draining") if self._state_dir else None

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._run()
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self) -> int:
        opts = self.options
        folders = [Path.cwd()]
        if opts.entry_script:
            folders.append(Path(opts.entry_script).resolve().parent)
        shadows = find_shadows(*folders)
        if shadows:
            self.say(
                f"error: {shadows[0]} would be imported instead of the installed triton_score "
                "package; rename it, or run score serve from another folder"
            )
            return 2
        if opts.entry_script and not Path(opts.entry_script).is_file():
            self.say(f"error: entry script {opts.entry_script!r} does not exist")
            return 2
        if opts.processors and opts.processors != "none":
            missing = [
                spec
                for spec in opts.processors.split(",")
                if spec.strip().endswith(".py") and not Path(spec.strip()).is_file()
            ]
            if missing:
                self.say(f"error: processor file {missing[0].strip()!r} does not exist")
                return 2
            unknown = [spec.strip() for spec in opts.processors.split(",") if _no_module(spec)]
            if unknown:
                self.say(f"error: processor module {unknown[0]!r} cannot be found")
                return 2
        environ = environment()
        refused = check_tracing(environ) or settings_error(environ)
        if refused:
            self.say(f"error: {refused}")
            return 2
        refused = self._check_entry_script()
        if refused:
            self.say(refused)
            return 2
        try:
            triton_url = (opts.triton_url or "").removeprefix("http://")
            triton_url = triton_url or Settings.from_env(environ).triton_url
            _, port = split_address(triton_url)
            repository = self._repository(triton_url)
        except (FileNotFoundError, ValueError) as exc:
            self.say(f"error: {exc}")
            return 2
        refused = self._check_health_port()
        if refused:
            self.say(f"error: {refused}")
            return 2
        try:
            self.triton = local_triton_for(
                triton_url,
                repository,
                tritonserver=opts.tritonserver,
                host="127.0.0.1",
                http_port=port,
                grpc_port=opts.triton_grpc_port,
                metrics_port=opts.triton_metrics_port,
                extra_args=self._triton_args(),
                progress=self.say,
                build=opts.build,
            )
        except NoTriton as exc:
            self.say(f"error: {exc}")
            return 1
        if self.triton is None:
            self.say(f"score: using the Triton already running at {triton_url}")
        else:
            try:
                self.triton.start()
            except TritonStartError as exc:
                self.say(f"error: {exc}")
                return 1
            triton_url = self.triton.url
        if self.stopping:
            return 0
        self._start_gunicorn(repository, triton_url)
        return self._supervise(triton_url)

    def _repository(self, triton_url: str) -> Path | None:
        """The model repository; ``None`` when there is none here but the Triton at
        ``triton_url`` answers (its repository is its own: an entry script, or processors
        from the code directory, need no local copy).

        :raises FileNotFoundError: no repository, and nothing answers (or ``--models`` names
            a folder that is not there).
        """
        try:
            return find_model_repository(self.options.models).resolve()
        except FileNotFoundError:
            if self.options.models or not answers(triton_url):
                raise
            return None

    def _check_health_port(self) -> str:
        """Why the separate health listener cannot start (one line), or ``""``."""
        settings = Settings.from_env()  # settings_error() has accepted it
        if not settings.separate_health_endpoint:
            return ""
        port = self.options.health_port or settings.health_port
        if port == self.options.port:
            return f"the health port ({port}) must differ from the scoring port"
        return ""

    def _triton_args(self) -> list[str]:
        """``--triton-arg``s, after Triton's OpenTelemetry flags when ``SCORE_TRACING=otel``
        and those arguments say nothing of tracing (:func:`triton_trace_args`)."""
        args = list(self.options.triton_args)
        environ = environment()
        if Settings.from_env(environ).tracing != "otel" or any(
            arg.startswith("--trace") for arg in args
        ):
            return args
        trace = triton_trace_args(environ)
        if trace:
            self.say(
                "score: Triton traces the requests that bring a traceparent, "
                f"to {otlp_traces_url(environ)}"
            )
        else:
            self.say("score: Triton exports OTLP/HTTP only: its spans are not exported")
        return [*trace, *args]

    def _check_entry_script(self) -> str:
        """Load the entry script (``--entry-script`` or ``AZUREML_ENTRY_SCRIPT``) as a worker
        will, in a child process, without calling ``init()``: why it cannot be served (one
        line), or ``""``. Run before anything starts, so a script azmlinfsrv would refuse
        (a run() it cannot call, an import error) is one clear line, not a worker traceback."""
        script = self.options.entry_script or Settings.from_env().entry_script
        if not script:
            return ""
        # What the workers will see (the script may read it at import time).
        triton = {"TRITON_URL": self.options.triton_url} if self.options.triton_url else {}
        try:
            done = subprocess.run(
                [sys.executable, "-c", ENTRY_SCRIPT_CHECK, str(Path(script).resolve())],
                env={**environment(), **triton},
                stdin=subprocess.DEVNULL,
                # Shown only when the check fails (with where it failed): otherwise what the
                # script prints shows when a worker loads it.
                capture_output=True,
                text=True,
                errors="replace",
                timeout=self.options.ready_timeout,
            )
        except subprocess.TimeoutExpired:
            return (
                f"error: loading entry script {script} took over {self.options.ready_timeout:.0f} s"
            )
        if done.returncode == 0:
            return ""
        if done.stdout.strip():
            print(done.stdout.rstrip("\n"), flush=True)  # the server's log stream: stdout
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reported = [line for line in lines if line.startswith("error: ")]
        if reported:
            return reported[-1]
        tail = "\n".join(lines[-20:])
        return f"error: loading entry script {script} failed (exit code {done.returncode}):\n{tail}"

    def _start_gunicorn(self, repository: Path | None, triton_url: str) -> None:
        opts = self.options
        env = environment()
        # Prometheus chooses per-process or shared values at import time: the directory must
        # exist (and be empty) before any worker imports prometheus_client.
        self._metrics_dir = tempfile.mkdtemp(prefix="triton-score-metrics-")
        self._state_dir = tempfile.mkdtemp(prefix="triton-score-state-")
        env.update(
            TRITON_URL=triton_url,
            SCORE_HOST=opts.host,
            SCORE_PORT=str(opts.port),
            PROMETHEUS_MULTIPROC_DIR=self._metrics_dir,
            SCORE_DRAIN_FILE=str(self.drain_file),
        )
        if repository is not None:
            env["SCORE_MODEL_REPOSITORY"] = str(repository)
        if opts.health_port is not None:
            env["HEALTH_PORT"] = str(opts.health_port)
        if self.triton is not None:  # ours: its metrics port (/metrics/triton), its gRPC port
            host = split_address(self.triton.url)[0]
            env["SCORE_TRITON_METRICS_URL"] = f"{host}:{self.triton.metrics_port}"
            env.setdefault("SCORE_TRITON_GRPC_URL", f"{host}:{self.triton.grpc_port}")
        if opts.workers is not None:
            env["WORKER_COUNT"] = str(opts.workers)
        if opts.processors:
            env["SCORE_PROCESSORS"] = opts.processors
        if opts.entry_script:
            # Absolute, so AML_APP_ROOT (AzureML's base for a relative script) does not apply;
            # the script reads both, as under azmlinfsrv (which also defaults the root to the
            # working folder).
            env["AZUREML_ENTRY_SCRIPT"] = str(Path(opts.entry_script).resolve())
        if env.get("AZUREML_ENTRY_SCRIPT"):
            env.setdefault("AML_APP_ROOT", os.getcwd())
        if opts.code_directory:
            env["SCORE_CODE_DIR"] = str(Path(opts.code_directory).resolve())
        self.gunicorn = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--config",
                "python:triton_score.serve.gunicorn_conf",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # signals are ours to forward, in order
        )
        self.say(
            f"score: gunicorn (pid {self.gunicorn.pid}) starting "
            f"{env.get('WORKER_COUNT', '1')} worker(s) on http://{opts.host}:{opts.port}"
        )

    def _supervise(self, triton_url: str) -> int:
        assert self.gunicorn is not None
        opts = self.options
        base = f"http://{'127.0.0.1' if opts.host in ('0.0.0.0', '') else opts.host}:{opts.port}"
        announced = False
        started = time.monotonic()
        while not self.stopping:
            code = self.gunicorn.poll()
            if code is not None:
                self.say(f"error: gunicorn exited with code {code}")
                return code or 1
            if self.triton is not None and not self.triton.is_running():
                self.say(f"error: tritonserver exited unexpectedly:\n{self.triton.log_tail()}")
                return 1
            if not announced:
                if _http_status(f"{base}/v2/health/ready") == 200:
                    announced = True
                    names = _model_names(triton_url)
                    self.say(f"score: ready in {time.monotonic() - started:.1f} s at {base}")
                    for name in names:
                        self.say(f"  POST {base}/score/{name}")
                    self.say(f"  docs: {base}/swagger.json   metrics: {base}/metrics")
                elif time.monotonic() - started > opts.ready_timeout:
                    self.say(f"error: not ready after {opts.ready_timeout:.0f} s")
                    return 1
            time.sleep(0.2)
        self.say("score: stopping (draining in-flight requests)")
        return 0

    def _drain(self) -> None:
        """Readiness 503 in every worker, then wait ``SCORE_DRAIN_S`` seconds (or until a
        second signal, or until Gunicorn is gone) with scoring still served."""
        assert self.gunicorn is not None and self.drain_file is not None
        self.drain_file.touch()
        drain_s = ProcessSettings.from_env().drain_s  # checked at start (settings_error)
        if drain_s <= 0:
            return
        self.say(f"score: draining: readiness is 503, still serving for {drain_s:g} s")
        signals = self.signals
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and self.signals == signals:
            if self.gunicorn.poll() is not None:
                return
            time.sleep(0.05)

    def shutdown(self) -> None:
        if self.gunicorn is not None and self.gunicorn.poll() is None:
            if self.stopping:  # asked to stop: not a crash of Triton or of Gunicorn
                self._drain()
            try:
                self.gunicorn.send_signal(signal.SIGTERM)  # graceful: workers finish requests
                self.gunicorn.wait(timeout=ProcessSettings.from_env().graceful_timeout_s + 10)
            except subprocess.TimeoutExpired:
                os.killpg(self.gunicorn.pid, signal.SIGKILL)
                self.gunicorn.wait()
        if self.gunicorn is not None:
            with contextlib.suppress(ProcessLookupError):  # workers left by a killed master
                os.killpg(self.gunicorn.pid, signal.SIGKILL)
        if self.triton is not None:
            self.triton.stop()
        for folder in (self._metrics_dir, self._state_dir):
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
