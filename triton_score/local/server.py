"""Start, watch and stop one ``tritonserver`` process.

:class:`LocalTriton` is what ``score triton``, ``score serve`` and the tests use::

    with LocalTriton("models/triton", http_port=8000) as triton:
        print(triton.url)          # "127.0.0.1:8000"

It never hangs and never leaves debris behind:

- the model builders beside the repository (:mod:`triton_score.repository.builds`) run first, so a
  generated model is complete before Triton reads the repository;
- startup polls ``/v2/health/ready`` while printing which models are loaded; if the process
  exits or the timeout passes, :class:`TritonStartError` carries the tail of Triton's log;
- the server runs in its own process group, with a short ``--exit-timeout-secs``; stopping
  sends SIGTERM to the group, then SIGKILL if it is still there;
- the python backend's shared-memory regions get a prefix unique to this server, so exactly
  the ``/dev/shm`` files it created are removed after it stops (Triton leaves them behind
  when a stub crashed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from triton_score.local.install import TritonInstall, find_tritonserver
from triton_score.settings import environment

SHM_DIR = Path("/dev/shm")
LOG_TAIL_LINES = 40


class TritonStartError(RuntimeError):
    """Triton did not become ready; ``log_tail`` holds the end of its log."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(
            f"{message}\n--- tritonserver log (tail) ---\n{log_tail}" if log_tail else message
        )
        self.log_tail = log_tail


def _get_json(url: str, *, method: str = "GET", timeout: float = 2.0) -> tuple[int, object]:
    data = b"{}" if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, None


#: Our own secrets, which Triton and the models' code (python-backend stubs inherit Triton's
#: environment) have no business reading.
SECRET_VARIABLES = frozenset({"SCORE_API_KEYS", "SCORE_API_KEYS_FILE"})


def triton_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment ``tritonserver`` gets: ours, without :data:`SECRET_VARIABLES`."""
    source = environment() if environ is None else environ
    return {k: v for k, v in source.items() if k not in SECRET_VARIABLES}


class LocalTriton:
    """One ``tritonserver`` serving a model repository on this machine.

    :param model_repository: the repository to serve. It is never modified, except by the
        model builders beside it (``build_*.py``, see :mod:`triton_score.repository.builds`), which
        generate their model folders into it before the server starts.
    :param host: address for HTTP, gRPC and metrics; ``127.0.0.1`` unless you mean otherwise.
    :param http_port: HTTP port; gRPC and metrics default to the next two ports.
    :param install: a :class:`TritonInstall`; found with :func:`find_tritonserver` if omitted.
    :param wrap_onnx: serve ONNX models through python-backend wrappers: ``None`` (default)
        does so only when the binary has no onnxruntime backend.
    :param exit_timeout: Triton's ``--exit-timeout-secs``; short, so a stop is prompt.
    :param extra_args: more ``tritonserver`` arguments.
    :param progress: called with one line of human-readable progress at a time.
    :param build: run the model builders first (:func:`triton_score.repository.builds.run_builds`).
    :param models: load only these models (Triton's explicit model control mode); ``None``
        loads the whole repository, and one model that fails to load stops the server.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        http_port: int = 8000,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        install: TritonInstall | None = None,
        wrap_onnx: bool | None = None,
        exit_timeout: int = 5,
        extra_args: Sequence[str] = (),
        progress: Callable[[str], None] | None = None,
        build: bool = True,
        models: Sequence[str] | None = None,
    ) -> None:
        self.model_repository = Path(model_repository)
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port if grpc_port is not None else http_port + 1
        self.metrics_port = metrics_port if metrics_port is not None else http_port + 2
        self.install = install
        self.wrap_onnx = wrap_onnx
        self.exit_timeout = exit_timeout
        self.extra_args = list(extra_args)
        self.progress = progress or (lambda line: None)
        self.build = build
        self.models = list(models) if models is not None else None
        self.process: subprocess.Popen[bytes] | None = None
        self.shm_prefix = f"triton_score_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self.wrapped_models: list[str] = []
        self._scratch: Path | None = None
        self._log_file: Path | None = None

    # -- addresses -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``host:port`` of the HTTP endpoint, the form ``tritonclient.http`` expects."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{host}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def log_path(self) -> Path | None:
        return self._log_file

    def shm_regions(self) -> list[Path]:
        """The ``/dev/shm`` files this server's python backend created (and has not removed)."""
        return sorted(SHM_DIR.glob(self.shm_prefix + "*")) if SHM_DIR.is_dir() else []

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if not self._log_file or not self._log_file.is_file():
            return ""
        text = self._log_file.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    # -- lifecycle -------------------------------------------------------------------------
    def command(self, repository: Path) -> list[str]:
        assert self.install is not None
        return [
            str(self.install.executable),
            f"--model-repository={repository}",
            f"--backend-directory={self.install.backend_dir}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            # GPU metrics only where there is a GPU: elsewhere they only add DCGM warnings.
            f"--allow-gpu-metrics={'true' if has_nvidia_gpu() else 'false'}",
            f"--exit-timeout-secs={self.exit_timeout}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *self._model_control(),
            *self.extra_args,
        ]

    def _model_control(self) -> list[str]:
        if self.models is None:
            return []
        return ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]

    def start(self, timeout: float = 120.0) -> LocalTriton:
        """Start the server and wait until it is ready (or raise :class:`TritonStartError`)."""
        if self.process is not None:
            raise RuntimeError("this LocalTriton was already started")
        self.install = self.install or find_tritonserver()
        self._scratch = Path(tempfile.mkdtemp(prefix="triton-score-"))
        self._log_file = self._scratch / "tritonserver.log"
        try:
            if self.build:
                self._build_models()
            repository = self._served_repository()
            cmd = self.command(repository)
            with open(self._log_file, "wb") as log:
                self.process = subprocess.Popen(
                    cmd,
                    env=triton_environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: stop() reaches every child
                )
            self.progress(
                f"triton: started {self.install.source} tritonserver (pid {self.process.pid}), "
                f"serving {self.model_repository}; log: {self._log_file}"
            )
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _build_models(self) -> None:
        """Generate the models that are not committed: Triton exits on an incomplete one."""
        from triton_score.repository.builds import BuildError, run_builds

        try:
            run_builds(self.model_repository, progress=self.progress)
        except BuildError as exc:
            raise TritonStartError(str(exc)) from exc

    def _served_repository(self) -> Path:
        assert self.install is not None and self._scratch is not None
        if not self.model_repository.is_dir():
            raise TritonStartError(f"model repository {str(self.model_repository)!r} not found")
        wrap = self.wrap_onnx
        if wrap is None:
            wrap = not self.install.has_backend("onnxruntime")
        if not wrap:
            return self.model_repository.resolve()
        from triton_score.local.onnx_wrapper import (
            ModelRepositoryError,
            prepare_repository,
        )

        try:
            repository, self.wrapped_models = prepare_repository(
                self.model_repository, self._scratch, only=self.models
            )
        except ModelRepositoryError as exc:
            raise TritonStartError(str(exc)) from None
        if self.wrapped_models:
            self.progress(
                "triton: no onnxruntime backend in this tritonserver; serving ONNX models "
                f"with onnxruntime in python-backend wrappers: {', '.join(self.wrapped_models)}"
            )
        return repository

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        base = f"http://{self.url}"
        started = time.monotonic()
        last_report = ""
        while True:
            code = self.process.poll()
            if code is not None:
                raise TritonStartError(
                    f"tritonserver exited with code {code} before it was ready "
                    "(a model that fails to load stops the server)",
                    self.log_tail(),
                )
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                raise TritonStartError(
                    f"tritonserver was not ready after {timeout:.0f} s", self.log_tail()
                )
            try:
                status, _ = _get_json(f"{base}/v2/health/ready", timeout=1.0)
                _, index = _get_json(f"{base}/v2/repository/index", method="POST", timeout=1.0)
            except (urllib.error.URLError, OSError):
                status, index = 0, None
            models = index if isinstance(index, list) else []
            # The index lists each version of a model: a model is named once.
            ready = sorted({m.get("name", "?") for m in models if m.get("state") == "READY"})
            report = f"{len(ready)}/{len(models)} models ready" if models else "starting"
            if status == 200:
                self.progress(
                    f"triton: ready at http://{self.url} in {elapsed:.1f} s "
                    f"({len(ready)} models: {', '.join(ready) or 'none'})"
                )
                return
            if report != last_report:
                self.progress(f"triton: {report} ({elapsed:.1f} s)")
                last_report = report
            time.sleep(0.2)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        """Stop the server's whole process group and remove its shm regions and scratch files.

        Safe to call more than once. :return: the server's exit code, if it was started.
        """
        code = None
        if self.process is not None:
            code = self._terminate_group(self.process)
        for region in self.shm_regions():
            region.unlink(missing_ok=True)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        return code

    def _terminate_group(self, process: subprocess.Popen[bytes]) -> int | None:
        pgid = process.pid  # start_new_session made it the group leader
        for sig, wait in ((signal.SIGTERM, self.exit_timeout + 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; give its children (python backend stubs) a moment too.
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(pgid):
                time.sleep(0.05)
            if not _group_alive(pgid):
                break
        return process.poll()

    def __enter__(self) -> LocalTriton:
        if self.process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def has_nvidia_gpu() -> bool:
    """Is an NVIDIA driver device present (what ``docker run --gpus`` exposes)?"""
    return Path("/dev/nvidiactl").exists()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
