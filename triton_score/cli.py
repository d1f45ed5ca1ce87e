"""The ``score`` command: ``score triton`` runs a local Triton, ``score serve`` the scorer,
``score build`` generates the models that the repository does not commit.

Each sub-command is a small function over parsed arguments; the exit code is returned, never
``sys.exit``-ed from deep inside, so the commands are callable from tests.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _add_models_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        default=None,
        help="Triton model repository (default: $SCORE_MODEL_REPOSITORY, a 'triton' folder "
        "under $AZUREML_MODEL_DIR, else ./models/triton)",
    )


def _add_triton_arguments(parser: argparse.ArgumentParser) -> None:
    _add_models_argument(parser)
    parser.add_argument(
        "--no-build",
        dest="build",
        action="store_false",
        help="start Triton without running the model builders (build_*.py beside the "
        "repository) first",
    )
    parser.add_argument(
        "--tritonserver",
        default=None,
        help="tritonserver binary (default: $TRITONSERVER, PATH, /opt/tritonserver, "
        "then the nvidia-pytriton wheel)",
    )
    parser.add_argument(
        "--triton-arg",
        dest="triton_args",
        action="append",
        default=None,
        metavar="ARG",
        help="one more argument for the local tritonserver, repeatable, written with '=' "
        "(--triton-arg=--trace-config=rate=1); default: $SCORE_TRITON_ARGS, split as a "
        "shell would",
    )


def _triton_args(args: argparse.Namespace) -> tuple[str, ...]:
    if args.triton_args is not None:
        return tuple(args.triton_args)
    return tuple(shlex.split(os.environ.get("SCORE_TRITON_ARGS", "")))


def cmd_triton(args: argparse.Namespace) -> int:
    """Run a local Triton in the foreground until Ctrl-C / SIGTERM."""
    from triton_score.local import LocalTriton, TritonNotFound, TritonStartError, find_tritonserver
    from triton_score.local.install import prepare_pytriton
    from triton_score.locations import find_model_repository

    if args.prepare:
        install = prepare_pytriton() if not args.tritonserver else None
        install = install or find_tritonserver(args.tritonserver)
        print(install.executable)
        return 0
    try:
        repository = find_model_repository(args.models)
        triton = LocalTriton(
            repository,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            install=find_tritonserver(args.tritonserver),
            extra_args=_triton_args(args),
            progress=_say,
            build=args.build,
        )
    except (TritonNotFound, FileNotFoundError, ValueError) as exc:
        _say(f"error: {exc}")
        return 2
    stopping = False

    def _stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            triton.start(timeout=args.timeout)
        except TritonStartError as exc:
            _say(f"error: {exc}")
            return 1
        _say(f"triton: serving; try: curl http://{triton.url}/v2/models/<name>   (Ctrl-C stops)")
        while not stopping and triton.is_running():
            time.sleep(0.2)
        if not stopping:
            _say(f"error: tritonserver exited unexpectedly:\n{triton.log_tail()}")
            return 1
        _say("triton: stopping")
        return 0
    finally:
        triton.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the model repository: local Triton if needed, then Gunicorn, supervised."""
    from triton_score.serve import ServeOptions, Supervisor

    options = ServeOptions(
        models=args.models,
        processors=args.processors,
        entry_script=args.entry_script,
        code_directory=args.code_dir,
        host=args.host,
        port=args.port,
        workers=args.workers,
        triton_url=args.triton_url,
        tritonserver=args.tritonserver,
        triton_grpc_port=args.triton_grpc_port,
        triton_metrics_port=args.triton_metrics_port,
        ready_timeout=args.ready_timeout,
        build=args.build,
        triton_args=_triton_args(args),
    )
    return Supervisor(options, _say).run()


def cmd_build(args: argparse.Namespace) -> int:
    """Run the model builders beside the repository; every one must succeed."""
    from triton_score.builds import BuildError, find_builders, run_builds
    from triton_score.locations import find_model_repository

    try:
        repository = find_model_repository(args.models)
        if not find_builders(repository):
            _say(
                f"build: nothing to build: no build_*.py with a build(repository, force=False) "
                f"beside {repository}"
            )
            return 0
        run_builds(repository, force=args.force, strict=True, progress=_say)
    except (FileNotFoundError, BuildError) as exc:
        _say(f"error: {exc}")
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="score", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    triton = commands.add_parser("triton", help="run a local Triton Inference Server")
    _add_triton_arguments(triton)
    triton.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    triton.add_argument("--http-port", type=int, default=8000)
    triton.add_argument("--grpc-port", type=int, default=None, help="default: HTTP port + 1")
    triton.add_argument("--metrics-port", type=int, default=None, help="default: HTTP port + 2")
    triton.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for readiness (180)"
    )
    triton.add_argument(
        "--prepare",
        action="store_true",
        help="only print the path of a runnable tritonserver (preparing the wheel's binary)",
    )
    triton.set_defaults(func=cmd_triton)

    serve = commands.add_parser(
        "serve", help="serve /score (and /v2) with Gunicorn, starting a local Triton if needed"
    )
    _add_triton_arguments(serve)
    serve.add_argument(
        "--processors",
        default=None,
        help="processor modules or .py files, comma-separated, used before those of the code "
        "directory (default: $SCORE_PROCESSORS); 'none' turns processors off",
    )
    serve.add_argument(
        "--code-dir",
        default=None,
        help="the deployment's code directory, searched first for processors (default: "
        "$SCORE_CODE_DIR, the entry script's folder, else ./score)",
    )
    serve.add_argument(
        "--entry-script",
        default=None,
        help="an AzureML entry script (default $AZUREML_ENTRY_SCRIPT): the template's "
        "score.py is served natively, any other through its init()/run()",
    )
    serve.add_argument(
        "--host",
        default=os.environ.get("SCORE_HOST", "127.0.0.1"),
        help="bind address (default $SCORE_HOST or 127.0.0.1; images use 0.0.0.0)",
    )
    serve.add_argument(
        "--port", type=int, default=int(os.environ.get("SCORE_PORT", "5001")), help="(5001)"
    )
    serve.add_argument(
        "--workers", type=int, default=None, help="Gunicorn workers (default $WORKER_COUNT or 1)"
    )
    serve.add_argument(
        "--triton-url",
        default=None,
        help="Triton HTTP host:port (default $TRITON_URL or localhost:8000)",
    )
    serve.add_argument(
        "--triton-grpc-port", type=int, default=None, help="local Triton's gRPC port"
    )
    serve.add_argument(
        "--triton-metrics-port", type=int, default=None, help="local Triton's metrics port"
    )
    serve.add_argument(
        "--ready-timeout", type=float, default=300.0, help="seconds to wait for readiness (300)"
    )
    serve.set_defaults(func=cmd_serve)

    build = commands.add_parser(
        "build",
        help="generate the models the repository does not commit (run the build_*.py "
        "builders beside it); score serve and score triton do it first",
    )
    _add_models_argument(build)
    build.add_argument("--force", action="store_true", help="rebuild even what is up to date")
    build.set_defaults(func=cmd_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
