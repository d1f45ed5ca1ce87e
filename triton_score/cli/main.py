"""The ``score`` command: ``score triton`` runs a local Triton, ``score serve`` the scorer,
``score build`` generates the models that the repository does not commit, ``score new``
writes a processor and its test for a model, ``score check`` finds what would fail,
``score replay`` sends captured requests to another model version and compares.

Each sub-command is a small function over parsed arguments; the exit code is returned, never
``sys.exit``-ed from deep inside, so the commands are callable from tests.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from triton_score.settings import ProcessSettings


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


def _add_code_dir_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--code-dir",
        default=None,
        help=f"{what} (default: $SCORE_CODE_DIR, the entry script's folder, else ./score)",
    )


def _add_triton_url_argument(parser: argparse.ArgumentParser, purpose: str, span: str) -> None:
    """``--triton-url``: a running Triton, else a local one started on the repository."""
    parser.add_argument(
        "--triton-url",
        default=None,
        help=f"a running Triton {purpose} (default $TRITON_URL); when nothing answers there, "
        f"a local one is started on the repository {span}",
    )


def _process_settings() -> ProcessSettings:
    """The process settings, for the commands' defaults; what cannot be read falls back to
    the default here and is refused in one line when ``score serve`` starts."""
    try:
        return ProcessSettings.from_env()
    except (ValueError, TypeError):
        return ProcessSettings()


def _triton_args(args: argparse.Namespace) -> tuple[str, ...]:
    if args.triton_args is not None:
        return tuple(args.triton_args)
    return _process_settings().triton_args


def cmd_triton(args: argparse.Namespace) -> int:
    """Run a local Triton in the foreground until Ctrl-C / SIGTERM."""
    from triton_score.local import LocalTriton, TritonNotFound, TritonStartError, find_tritonserver
    from triton_score.local.install import prepare_pytriton
    from triton_score.repository.locations import find_model_repository

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
    from triton_score.serve.supervisor import ServeOptions, Supervisor

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
        health_port=args.health_port,
    )
    return Supervisor(options, _say).run()


def cmd_azmlinfsrv(args: argparse.Namespace) -> int:
    """azmlinfsrv's command line, mapped onto ``score serve``: switching is one word.

    As azmlinfsrv does, the flags become the environment the server and the script see:
    ``--model_dir`` is ``AZUREML_MODEL_DIR`` (over the environment's), ``--access_control_
    allow_origins`` is ``AML_CORS_ORIGINS``; and it listens on every interface by default.
    """
    from triton_score.serve.supervisor import ServeOptions, Supervisor

    for flag, value in (
        ("--appinsights_instrumentation_key", args.appinsights_instrumentation_key),
        ("--config_file", args.config_file),
    ):
        if value is not None:
            _say(
                f"error: {flag} is azmlinfsrv's and not supported here "
                "(docs/entry-scripts.md: tracing and logs instead of Application Insights, "
                "environment variables instead of a config file)"
            )
            return 2
    if args.model_dir is not None:
        os.environ["AZUREML_MODEL_DIR"] = args.model_dir
    if args.access_control_allow_origins is not None:
        os.environ["AML_CORS_ORIGINS"] = args.access_control_allow_origins
    options = ServeOptions(
        entry_script=args.entry_script,
        host=args.host,
        port=args.port,
        workers=args.worker_count,
        health_port=args.health_port,
        triton_url=args.triton_url,
    )
    return Supervisor(options, _say).run()


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (1-65535)")
    return port


def _positive(text: str) -> int:
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text}: at least 1")
    return count


def cmd_build(args: argparse.Namespace) -> int:
    """Run the model builders beside the repository; every one must succeed."""
    from triton_score.repository.builds import BuildError, find_builders, run_builds
    from triton_score.repository.locations import find_model_repository

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


class CommandError(RuntimeError):
    """A command cannot go on; the message is the one line it prints."""


@contextlib.contextmanager
def _triton(
    args: argparse.Namespace, repository: Path | None, models: Sequence[str] | None = None
) -> Iterator[str]:
    """The Triton a command talks to: the one at ``--triton-url`` (``$TRITON_URL``) when it
    answers, else a local one on ``repository`` (free ports; only ``models``, when given),
    stopped when the command is done. Yields its ``host:port``."""
    from triton_score.local.ensure import NoTriton, local_triton_for
    from triton_score.local.processes import free_port
    from triton_score.settings import Settings

    url = (args.triton_url or Settings.from_env().triton_url).removeprefix("http://")
    try:
        triton = local_triton_for(
            url,
            repository,
            tritonserver=args.tritonserver,
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            progress=_say,
            build=args.build,
            models=models,
        )
    except (NoTriton, ValueError) as exc:
        raise CommandError(str(exc)) from None
    if triton is None:
        _say(f"{args.command}: using the Triton running at {url}")
        yield url
        return
    try:
        triton.start(timeout=180)
        yield triton.url
    finally:
        triton.stop()


def _repository(args: argparse.Namespace) -> Path | None:
    from triton_score.repository.locations import find_model_repository

    try:
        return find_model_repository(args.models)
    except FileNotFoundError:
        if args.models:
            raise
        return None


def _shown(path: Path | str) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def cmd_new(args: argparse.Namespace) -> int:
    """Write a processor for a model, and its test, from the model's live metadata."""
    from triton_score.errors import ModelNotFound, ScoringError
    from triton_score.kit.scaffold import ScaffoldError, write_scaffold
    from triton_score.local import TritonStartError
    from triton_score.repository.locations import find_code_directory
    from triton_score.settings import Settings
    from triton_score.triton.gateway import TritonGateway

    model_name = args.model or args.name
    command = "score new " + " ".join(shlex.quote(a) for a in args.argv if a != "--force")
    try:
        repository = _repository(args)
        settings = Settings.from_env()
        code = find_code_directory(args.code_dir or settings.code_directory, settings.entry_script)
        code = code or Path("score")
        from triton_score.local.ensure import answers

        url = (args.triton_url or settings.triton_url).removeprefix("http://")
        if repository is not None and not (repository / model_name).is_dir() and not answers(url):
            folders = sorted(p.name for p in repository.iterdir() if p.is_dir())
            raise CommandError(
                f"{_shown(repository)} has no model folder {model_name!r} (it has {folders}); "
                "add the model first: docs/first-processor.md"
            )
        with _triton(args, repository, models=[model_name]) as url:
            gateway = TritonGateway(url, concurrency=1, timeout_s=30)
            try:
                model = gateway.model_info(model_name)
            except ModelNotFound:
                served = gateway.ready_model_names()
                raise CommandError(
                    f"Triton at {url} serves no model {model_name!r}"
                    + (f"; it serves {served}" if served else "")
                    + (f" (is models/{model_name}/ in {repository}?)" if repository else "")
                ) from None
            finally:
                gateway.close()
        folder = repository / model_name if repository is not None else None
        if folder is not None and folder.is_dir():
            from dataclasses import replace

            model = replace(model, directory=folder.resolve())
        written = write_scaffold(
            model,
            args.name,
            code_directory=code,
            tests_directory=Path(args.tests),
            repository=repository if repository is not None else Path("models/triton"),
            command=command,
            force=args.force,
            template=args.template,
        )
    except (CommandError, FileNotFoundError, ScaffoldError, TritonStartError) as exc:
        _say(f"error: {exc}")
        return 1
    except ScoringError as exc:
        _say(f"error: {exc.message}")
        return 1
    _say(f"new: wrote {_shown(written.processor)} (the processor of model {model_name!r})")
    _say(f"new: wrote {_shown(written.test)} (its test)")
    if written.todo:
        _say(f"next: {written.todo}")
    _say(f"next: python -m pytest {_shown(written.test)}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Check the model repository and the processors; exit 1 on any problem."""
    from triton_score.errors import ScoringError
    from triton_score.kit.check import Report, check_processors, check_repository, render
    from triton_score.local import TritonStartError
    from triton_score.processors.loading import ProcessorLoadError, load_processors
    from triton_score.runtime import resolve_settings
    from triton_score.settings import Settings
    from triton_score.triton.gateway import TritonGateway

    report = Report()
    try:
        repository = _repository(args)
    except FileNotFoundError as exc:
        _say(f"error: {exc}")
        return 2
    overrides: dict[str, Any] = {"model_repository": str(repository or "")}
    if args.processors is not None:
        overrides["processors"] = tuple(p.strip() for p in args.processors.split(",") if p.strip())
    if args.code_dir is not None:
        overrides["code_directory"] = args.code_dir
    settings = resolve_settings(Settings.from_env(None, **overrides))
    if repository is not None:
        if args.build:  # the generated models first, as a local Triton would have them
            from triton_score.repository.builds import BuildError, run_builds

            try:
                run_builds(repository, progress=_say)
            except BuildError as exc:
                report.errors.append(str(exc))
        report.repository = check_repository(repository)
    registry = None
    try:
        registry = load_processors(
            settings.processors,
            code_directory=settings.code_directory or None,
            model_repository=settings.model_repository or None,
        )
    except (ProcessorLoadError, Exception) as exc:  # noqa: BLE001 - any import failure
        report.errors.append(f"processors cannot be loaded: {exc}")
    if settings.code_directory:  # what loads here but would not in the image
        from triton_score.kit.image_imports import missing_in_image

        code = Path(settings.code_directory)
        for missing in missing_in_image(code):
            report.errors.append(missing.message(Path(_shown(code / "requirements.txt"))))
    broken = {row.model for row in report.repository if row.failed}
    # A model the repository check refused would stop Triton: load the others only.
    loaded = [row.model for row in report.repository if not row.failed] if broken else None
    where = "?"
    try:
        with _triton(args, repository, models=loaded) as url:
            where = url
            gateway = TritonGateway(url, concurrency=1, timeout_s=60)
            try:
                models = gateway.load_models()
                if registry is not None:
                    report.processors = check_processors(registry, models, gateway, broken)
            finally:
                gateway.close()
    except (CommandError, TritonStartError) as exc:
        report.errors.append(f"Triton: {exc}")
    except ScoringError as exc:
        report.errors.append(f"Triton at {where}: {exc.message}")
    header = (
        f"score check: model repository {_shown(repository) if repository else '(none)'}, "
        f"code directory {_shown(settings.code_directory) if settings.code_directory else '(none)'}"
        f", Triton {where}"
    )
    render(report, header)
    return 1 if report.problems else 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay a capture against a model (version); exit 1 beyond ``--max-disagreement``."""
    from triton_score.errors import ScoringError
    from triton_score.kit.replay import Progress, ReplayReport, capture_size, render_report, replay
    from triton_score.local import TritonStartError
    from triton_score.runtime import build_runtime
    from triton_score.settings import Settings
    from triton_score.telemetry.capture import capture_files, read_records

    if not Path(args.capture_dir).is_dir() or not capture_files(args.capture_dir):
        _say(f"error: no capture files (capture-*.jsonl) in {args.capture_dir}")
        return 2
    try:
        repository = _repository(args)
    except FileNotFoundError as exc:
        _say(f"error: {exc}")
        return 2
    overrides: dict[str, Any] = {"capture": (), "model_repository": str(repository or "")}
    if args.processors is not None:
        overrides["processors"] = tuple(p.strip() for p in args.processors.split(",") if p.strip())
    if args.code_dir is not None:
        overrides["code_directory"] = args.code_dir
    try:
        with _triton(args, repository) as url:
            # Never AZUREML_ENTRY_SCRIPT's run(): it hands back no tensors to compare.
            settings = Settings.from_env(None, triton_url=url, entry_script="", **overrides)
            runtime = build_runtime(settings)
            assert runtime.scorer is not None
            try:
                scorer = runtime.scorer
                scorer.ensure_loaded()
                if args.version:
                    version = scorer.catalog.pin(args.model, args.version).version
                else:
                    version = scorer.plan(args.model).model.version
                report = ReplayReport(
                    args.model,
                    version,
                    url,
                    compare=args.compare,
                    atol=args.atol,
                    rtol=args.rtol,
                    max_disagreement=args.max_disagreement,
                )
                replay(
                    scorer,
                    read_records(args.capture_dir),
                    report,
                    captured_model=args.captured_model or args.model,
                    limit=args.limit,
                    progress=Progress(capture_size(args.capture_dir)),
                )
            finally:
                runtime.close()
    except (CommandError, TritonStartError) as exc:
        _say(f"error: Triton: {exc}")
        return 2
    except ScoringError as exc:
        _say(f"error: {exc.message}")
        return 2
    render_report(report)
    if args.report:
        import orjson

        Path(args.report).write_bytes(
            orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        )
        _say(f"replay: wrote {args.report}")
    if not report.replayed:
        _say(f"error: the capture holds no request to {args.captured_model or args.model}")
        return 2
    return 0 if report.passed else 1


def _share_argument(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share from 0 to 1")
    return value


def _tolerance_argument(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a tolerance (0 or more)")
    return value


def _add_replay_parser(commands: Any) -> None:
    from triton_score.kit.replay import COMPARE_MODES

    replay = commands.add_parser(
        "replay",
        help="send the requests a capture recorded (SCORE_CAPTURE) to a model version through "
        "the same processors, compare with what was captured; exit 1 beyond "
        "--max-disagreement",
    )
    replay.add_argument("capture_dir", help="the capture directory (SCORE_CAPTURE_DIR)")
    replay.add_argument("--model", required=True, help="the model to replay against")
    replay.add_argument(
        "--version", default="", help="its version (default: the one Triton serves by default)"
    )
    replay.add_argument(
        "--captured-model",
        default="",
        help="replay the captured requests of this model (default: --model)",
    )
    replay.add_argument(
        "--compare",
        choices=COMPARE_MODES,
        default="auto",
        help="what makes a request disagree: auto (top-1 where an output ranks classes, "
        "values elsewhere) or values (any element beyond the tolerance)",
    )
    replay.add_argument("--atol", type=_tolerance_argument, default=1e-5, help="(1e-5)")
    replay.add_argument("--rtol", type=_tolerance_argument, default=1e-3, help="(1e-3)")
    replay.add_argument(
        "--max-disagreement",
        type=_share_argument,
        default=0.0,
        help="the share of disagreeing requests (0..1) allowed before exit 1 (default 0)",
    )
    replay.add_argument("--limit", type=_positive, default=0, help="replay at most N requests")
    replay.add_argument("--report", default=None, help="write the JSON report there")
    replay.add_argument(
        "--processors",
        default=None,
        help="processor modules or .py files, comma-separated (default: $SCORE_PROCESSORS)",
    )
    _add_code_dir_argument(replay, "the processors' code directory")
    _add_triton_arguments(replay)
    _add_triton_url_argument(replay, "to replay against", "for the replay")
    replay.set_defaults(func=cmd_replay)


def build_parser() -> argparse.ArgumentParser:
    from triton_score.kit.scaffold import TEMPLATES  # a tuple of names: no heavy import

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
        default=_process_settings().host,
        help="bind address (default $SCORE_HOST or 127.0.0.1; images use 0.0.0.0)",
    )
    serve.add_argument("--port", type=int, default=_process_settings().port, help="(5001)")
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
    serve.add_argument(
        "--health-port",
        type=_port,
        default=None,
        help="with SEPERATE_HEALTH_ENDPOINT=true, the port of the probes (default $HEALTH_PORT "
        "or 5000)",
    )
    serve.set_defaults(func=cmd_serve)

    azml = commands.add_parser(
        "azmlinfsrv",
        help="azmlinfsrv's command line (--entry_script, --model_dir, --port...), served by "
        "score serve",
    )
    azml.add_argument("--entry_script", default=None, help="the entry script (score.py)")
    azml.add_argument("--model_dir", default=None, help="sets AZUREML_MODEL_DIR for the script")
    azml.add_argument("--port", type=_port, default=5001, help="(5001)")
    azml.add_argument(
        "--health_port",
        type=_port,
        default=None,
        help="with SEPERATE_HEALTH_ENDPOINT=true (default $HEALTH_PORT or 5000)",
    )
    azml.add_argument("--worker_count", type=_positive, default=None, help="(1)")
    azml.add_argument(
        "--access_control_allow_origins", default=None, help="CORS origins, comma-separated"
    )
    azml.add_argument("--appinsights_instrumentation_key", default=None, help=argparse.SUPPRESS)
    azml.add_argument("--config_file", default=None, help=argparse.SUPPRESS)
    azml.add_argument(
        "--host", default="0.0.0.0", help="bind address (default 0.0.0.0, as azmlinfsrv)"
    )
    azml.add_argument(
        "--triton-url", default=None, help="Triton HTTP host:port (default $TRITON_URL)"
    )
    azml.set_defaults(func=cmd_azmlinfsrv)

    build = commands.add_parser(
        "build",
        help="generate the models the repository does not commit (run the build_*.py "
        "builders beside it); score serve and score triton do it first",
    )
    _add_models_argument(build)
    build.add_argument("--force", action="store_true", help="rebuild even what is up to date")
    build.set_defaults(func=cmd_build)

    new = commands.add_parser(
        "new",
        help="write a processor for a model (in the code directory) and its pytest file, "
        "from the model's live metadata",
    )
    new.add_argument("name", help="the processor's name: writes <name>_processor.py")
    new.add_argument("--model", default=None, help="the model, as Triton names it (default: NAME)")
    _add_triton_arguments(new)
    _add_code_dir_argument(new, "where the processor goes")
    new.add_argument("--tests", default="tests", help="where its test goes (default: ./tests)")
    _add_triton_url_argument(new, "to read the metadata from", "for the moment it takes")
    new.add_argument(
        "--template",
        choices=TEMPLATES,
        default="instance",
        help="what the processor takes: 'instance' (default), the model's inputs by name, one "
        "instance a request; 'tabular', records of named fields as JSON or CSV, a prediction "
        "each",
    )
    new.add_argument("--force", action="store_true", help="overwrite files that exist")
    new.set_defaults(func=cmd_new)

    check = commands.add_parser(
        "check",
        help="check the model repository (ONNX files against config.pbtxt) and every "
        "processor (its request_example against Triton's metadata); exit 1 on a problem",
    )
    _add_triton_arguments(check)
    check.add_argument(
        "--processors",
        default=None,
        help="processor modules or .py files, comma-separated, checked before those of the "
        "code directory (default: $SCORE_PROCESSORS)",
    )
    _add_code_dir_argument(check, "the code directory")
    _add_triton_url_argument(check, "to check against", "for the check")
    check.set_defaults(func=cmd_check)
    _add_replay_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]  # for the files `score new` writes: the command that wrote them
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
