"""All runtime settings in one typed object, read from the environment once.

Environment variables keep the names AzureML and the AzureML-Triton image use
(``WORKER_COUNT``, ``AZUREML_MODEL_DIR``, ``AZUREML_ENTRY_SCRIPT``...), plus ``SCORE_*`` for
what is ours. Nothing else in the package reads ``os.environ`` for configuration.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from triton_score.repository.locations import resolve_entry_script, split_address

_T = TypeVar("_T")


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.replace(";", ",").split(",") if part.strip())


# -- reading one variable -------------------------------------------------------------------
#: How a variable's text becomes a setting: ``(variable, text, environ) -> value``; raises
#: ``ValueError`` with the variable's name for a value it cannot use.
Reader = Callable[[str, str, Mapping[str, str]], Any]


@dataclass(frozen=True)
class FromEnv:
    """Where a setting comes from: its variable, how it is read, and whether a variable that
    is set but blank counts as unset (most do; an empty key list must not, see below)."""

    variable: str
    read: Reader
    blank_is_unset: bool = False


def _as_is(variable: str, text: str, environ: Mapping[str, str]) -> str:
    return text


def _stripped(variable: str, text: str, environ: Mapping[str, str]) -> str:
    return text.strip()


def _lower(variable: str, text: str, environ: Mapping[str, str]) -> str:
    return text.strip().lower()


def _upper(variable: str, text: str, environ: Mapping[str, str]) -> str:
    return text.strip().upper()


def _list(variable: str, text: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    return _split(text)


def _lower_list(variable: str, text: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(item.lower() for item in _split(text))


def _address(variable: str, text: str, environ: Mapping[str, str]) -> str:
    return text.removeprefix("http://")


def _grpc_address(variable: str, text: str, environ: Mapping[str, str]) -> str:
    address = text.strip().removeprefix("grpc://").removeprefix("http://")
    if address:
        try:
            split_address(address)
        except ValueError:
            raise ValueError(f"{variable} must look like host:port, got {text!r}") from None
    return address


def _number(kind: type) -> Reader:
    def read(variable: str, text: str, environ: Mapping[str, str]) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{variable}={text!r} is not a valid {kind.__name__}") from None

    return read


def _pairs(variable: str, text: str, environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in _split(text):
        name, equals, value = item.partition("=")
        if not equals or not name.strip() or not value.strip():
            raise ValueError(f"{variable}: {item!r} is not name=value")
        pairs.append((name.strip(), value.strip()))
    return tuple(pairs)


def _keys(variable: str, text: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    # A variable that is there but empty (a templated manifest, a Secret with no value, a CI
    # variable that did not resolve) meant "keys required": refuse to start open.
    keys = tuple(key.strip() for key in text.split(",") if key.strip())
    if not keys:
        raise ValueError(
            f"{variable} is set but holds no key: list at least one key, or unset it to serve "
            "without keys"
        )
    return keys


def _key_file(variable: str, text: str, environ: Mapping[str, str]) -> str:
    if not text.strip():
        raise ValueError(
            f"{variable} is set but names no file: give the key file's path, or unset it to "
            "serve without keys"
        )
    return text.strip()


def _entry_script(variable: str, text: str, environ: Mapping[str, str]) -> str:
    return resolve_entry_script(text, environ.get("AML_APP_ROOT", ""))


def _exactly_true(variable: str, text: str, environ: Mapping[str, str]) -> bool:
    # azmlinfsrv's reading of its switches: on only for "true" (any case, here), off for
    # anything else, "" included.
    return text.strip().lower() == "true"


def _port(variable: str, text: str, environ: Mapping[str, str]) -> int:
    port = _number(int)(variable, text, environ)
    if not 1 <= port <= 65535:
        raise ValueError(f"{variable}={text!r} is not a port (1-65535)")
    return int(port)


def _tracing(variable: str, text: str, environ: Mapping[str, str]) -> str:
    return tracing_mode(text)


def _capture(variable: str, text: str, environ: Mapping[str, str]) -> tuple[tuple[str, float], ...]:
    return capture_rates(text)


def _redact(variable: str, text: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    # Redaction is a privacy feature: set but empty would capture everything in the clear.
    names = _split(text)
    if not names:
        raise ValueError(
            f"{variable} is set but names no field: list the fields to redact, or unset it"
        )
    return names


def setting(
    variable: str, default: Any, read: Reader = _as_is, *, blank_is_unset: bool = False
) -> Any:
    """A field of :class:`Settings` read from ``variable`` by :meth:`Settings.from_env`."""
    return field(default=default, metadata={"env": FromEnv(variable, read, blank_is_unset)})


#: Route groups ``SCORE_AUTH_EXEMPT`` may open (``/``, ``/v2/health/live`` and
#: ``/v2/health/ready`` are always open): ``/metrics`` and ``/metrics/triton``; ``/swagger.json``;
#: the ``/v2/...`` routes forwarded to Triton.
AUTH_GROUPS = ("metrics", "docs", "v2")
#: ``SCORE_LLM_ADAPTERS`` values: the Triton LLM interfaces (:mod:`triton_score.llm.adapters`).
LLM_ADAPTERS = ("vllm", "tensorrt_llm")
LOG_FORMATS = ("text", "json")
#: ``SCORE_COALESCE`` values (:func:`triton_score.triton.coalesce.coalesces` says what they do).
COALESCE_MODES = ("auto", "on", "off")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: Triton's default metrics port, beside ``TRITON_URL``'s host.
TRITON_METRICS_PORT = 8002
#: ``SCORE_TRACING`` values: what turns tracing off, and what turns OpenTelemetry on.
TRACING_OFF = ("", "off", "none", "false", "0")
TRACING_OTEL = ("otel", "opentelemetry")
#: ``SCORE_OFFLOAD`` values: processor stages in a thread pool for the processors that declare
#: ``offload = True`` (``auto``), for every processor (``on``), or never (``off``).
OFFLOAD_MODES = ("auto", "on", "off")
#: ``SCORE_SHM`` values (:mod:`triton_score.triton.shm` says what each does).
SHM_MODES = ("auto", "on", "off")


def settings_error(environ: Mapping[str, str]) -> str:
    """Why the settings in ``environ`` cannot start a server (one line), or ``""``.

    ``score serve`` and Gunicorn's master ask before any worker starts, so that a bad setting
    (an empty ``SCORE_API_KEYS`` above all: it must never mean "no keys") stops the server at
    once with exit code 2, instead of every worker failing to boot.
    """
    try:
        Settings.from_env(environ)
        ProcessSettings.from_env(environ)
    except (ValueError, TypeError) as exc:
        return str(exc)
    return ""


def insecure_bind_warning(settings: Settings, host: str) -> str:
    """A warning when the server listens beyond this machine with no API keys; ``""`` if not."""
    if settings.auth_enabled or host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        return ""
    return (
        f"no API keys (SCORE_API_KEYS, SCORE_API_KEYS_FILE) and bound to {host}: anyone who "
        "reaches the port can score, read model metadata and run models through /v2; set keys "
        "unless an endpoint or a network policy in front does the checking (docs/security.md)"
    )


def tracing_mode(value: str) -> str:
    """``"otel"`` or ``""`` (off), from a ``SCORE_TRACING`` value; anything else is an error."""
    mode = value.strip().lower()
    if mode in TRACING_OFF:
        return ""
    if mode in TRACING_OTEL:
        return "otel"
    raise ValueError(f"SCORE_TRACING={value!r}: use 'otel' (OpenTelemetry) or 'off'")


#: The ``SCORE_CAPTURE`` entry that applies to every model without an entry of its own.
CAPTURE_ANY_MODEL = "*"


def capture_rates(value: str) -> tuple[tuple[str, float], ...]:
    """``SCORE_CAPTURE`` as ``((model, rate), ...)``: ``digits_onnx=0.1,*=0.01`` captures 10 %
    of ``digits_onnx``'s requests and 1 % of every other model's; a bare rate (``0.05``) is
    ``*=0.05``; a rate is a fraction from 0 (never) to 1 (every request). ``off`` (or empty)
    captures nothing. Anything else is an error naming the entry."""
    if value.strip().lower() in ("", "off", "none", "0", "false"):
        return ()
    rates: dict[str, float] = {}
    for entry in _split(value):
        model, sep, rate_text = entry.rpartition("=")
        model = model.strip() if sep else CAPTURE_ANY_MODEL
        if not model:
            raise ValueError(f"SCORE_CAPTURE entry {entry!r}: name a model before '='")
        try:
            rate = float(rate_text)
        except ValueError:
            raise ValueError(
                f"SCORE_CAPTURE entry {entry!r}: the rate must be a number from 0 to 1 "
                "(e.g. digits_onnx=0.1,*=0.01)"
            ) from None
        if not 0.0 <= rate <= 1.0:  # NaN fails this too
            raise ValueError(
                f"SCORE_CAPTURE entry {entry!r}: the rate is a fraction from 0 to 1, "
                f"not {rate_text}"
            )
        if model in rates:
            raise ValueError(f"SCORE_CAPTURE names model {model!r} twice")
        rates[model] = rate
    return tuple(rates.items())


@dataclass(frozen=True)
class Settings:
    """Everything the scoring runtime can be told; see :meth:`from_env` for the variables."""

    #: Triton's HTTP endpoint, ``host:port`` (``TRITON_URL``).
    triton_url: str = setting("TRITON_URL", "localhost:8000", _address)
    #: Triton's gRPC endpoint, ``host:port`` (``SCORE_TRITON_GRPC_URL``): streams to decoupled
    #: models (the OpenAI front) go there, where Triton documents that a client that goes away
    #: cancels the model's work; empty (the default unless ``score serve`` starts Triton
    #: itself): over HTTP (which Triton 2.51 cancels too when the connection closes).
    triton_grpc_url: str = setting("SCORE_TRITON_GRPC_URL", "", _grpc_address)
    #: The longest wait for a stream's next response from Triton, in seconds
    #: (``SCORE_STREAM_IDLE_S``); past it the stream ends with an error event.
    stream_idle_s: float = setting("SCORE_STREAM_IDLE_S", 60.0, _number(float), blank_is_unset=True)
    #: The model ``/score`` serves; empty means "the only model" (``SCORE_MODEL``).
    default_model: str = setting("SCORE_MODEL", "")
    #: Processor modules, ``.py`` files or ``module:Class`` (``SCORE_PROCESSORS``).
    processors: tuple[str, ...] = setting("SCORE_PROCESSORS", (), _list)
    #: The model repository (``SCORE_MODEL_REPOSITORY``); empty: found as
    #: :func:`~triton_score.repository.locations.find_model_repository` says.
    model_repository: str = setting("SCORE_MODEL_REPOSITORY", "")
    #: Where the OpenAI front (``/v1``, docs/llm.md) finds each language model's tokenizer
    #: and chat template: ``<folder>/<model>/`` (``SCORE_LLM_FOLDER``); empty: the model's
    #: folder in the model repository.
    llm_folder: str = setting("SCORE_LLM_FOLDER", "")
    #: Which Triton LLM interface a model has, when its inputs do not say
    #: (``SCORE_LLM_ADAPTERS``, ``model=vllm,other=tensorrt_llm``).
    llm_adapters: tuple[tuple[str, str], ...] = setting("SCORE_LLM_ADAPTERS", (), _pairs)
    #: ``max_tokens`` of a chat completion that sets none (``SCORE_LLM_MAX_TOKENS``).
    llm_max_tokens: int = setting("SCORE_LLM_MAX_TOKENS", 256, _number(int))
    #: The deployment's code directory, searched first for processors (``SCORE_CODE_DIR``);
    #: empty: the entry script's folder, else ``./score``.
    code_directory: str = setting("SCORE_CODE_DIR", "")
    #: An AzureML entry script (``AZUREML_ENTRY_SCRIPT``, relative to ``AML_APP_ROOT`` as
    #: AzureML sets it). The template's ``score.py`` is served natively; any other script's
    #: ``init()``/``run()`` are served as azmlinfsrv would.
    entry_script: str = setting("AZUREML_ENTRY_SCRIPT", "", _entry_script, blank_is_unset=True)
    #: Origins allowed by CORS, comma-separated (``AML_CORS_ORIGINS``, as azmlinfsrv).
    cors_origins: tuple[str, ...] = setting("AML_CORS_ORIGINS", (), _list)
    #: Send ``x-ms-server-version: triton-score/<version>`` on every answer, as azmlinfsrv sends
    #: its own (``SERVER_VERSION_LOG_RESPONSE_ENABLED``: unset or ``true``; any other value
    #: turns it off).
    server_version_header: bool = setting(
        "SERVER_VERSION_LOG_RESPONSE_ENABLED", True, _exactly_true
    )
    #: Also listen on :attr:`health_port` for the liveness probe ``/`` (and
    #: ``/v2/health/*``), as azmlinfsrv does (``SEPERATE_HEALTH_ENDPOINT=true``, its spelling).
    separate_health_endpoint: bool = setting("SEPERATE_HEALTH_ENDPOINT", False, _exactly_true)
    #: The port of that health listener (``HEALTH_PORT``; 5000, azmlinfsrv's default); other
    #: routes answer 404 there.
    health_port: int = setting("HEALTH_PORT", 5000, _port, blank_is_unset=True)
    #: Upper bound on one scoring request, in ms (``SCORING_TIMEOUT_MS``); overrun -> 504.
    scoring_timeout_ms: int = setting(
        "SCORING_TIMEOUT_MS", 60_000, _number(int), blank_is_unset=True
    )
    #: How long ``init()`` waits for Triton to be ready, in seconds (``SCORE_TRITON_WAIT_S``).
    triton_wait_s: float = setting(
        "SCORE_TRITON_WAIT_S", 120.0, _number(float), blank_is_unset=True
    )
    #: Concurrent connections each worker keeps to Triton (``SCORE_TRITON_CONCURRENCY``); also
    #: the default ``concurrency`` of the clients an entry script creates.
    triton_concurrency: int = setting(
        "SCORE_TRITON_CONCURRENCY", 64, _number(int), blank_is_unset=True
    )
    #: Largest request body accepted, in bytes (``SCORE_MAX_BODY_BYTES``); more -> 413.
    max_body_bytes: int = setting(
        "SCORE_MAX_BODY_BYTES", 100 * 1024 * 1024, _number(int), blank_is_unset=True
    )
    #: Most rows (the batch dimension) one ``/score`` request may send (``SCORE_MAX_ROWS``);
    #: more is a 413 naming the limit. A request with more rows than the model's
    #: ``max_batch_size`` is split into Triton calls of at most ``max_batch_size`` rows
    #: (:mod:`triton_score.triton.batches`); a processor's ``max_rows`` may lower it for its model.
    #: 4096 rows of 10 features is ~400 KB of JSON; of 3x224x224 images, the body limit
    #: (``SCORE_MAX_BODY_BYTES``) comes first.
    max_rows: int = setting("SCORE_MAX_ROWS", 4096, _number(int), blank_is_unset=True)
    #: Models to serve; empty means every model Triton has ready (``SCORE_MODELS``).
    models: tuple[str, ...] = setting("SCORE_MODELS", (), _list)
    #: Where gunicorn workers share Prometheus metrics (``PROMETHEUS_MULTIPROC_DIR``).
    prometheus_multiproc_dir: str = setting("PROMETHEUS_MULTIPROC_DIR", "")
    #: Seconds between two readings of every model's metadata and config by each worker, so
    #: a model Triton reloads (new config or version) is picked up without a restart
    #: (``SCORE_METADATA_REFRESH_S``); 0 turns it off.
    metadata_refresh_s: float = setting(
        "SCORE_METADATA_REFRESH_S", 10.0, _number(float), blank_is_unset=True
    )
    #: While this file exists, ``/v2/health/ready`` answers 503 (``SCORE_DRAIN_FILE``):
    #: ``score serve`` creates it on SIGTERM, ``SCORE_DRAIN_S`` seconds before Gunicorn stops
    #: accepting; under a plain Gunicorn, create it yourself (a Kubernetes preStop hook).
    drain_file: str = setting("SCORE_DRAIN_FILE", "", _stripped)
    #: API keys a client must send as ``Authorization: Bearer <key>`` (``SCORE_API_KEYS``,
    #: comma-separated). With these or :attr:`api_keys_file`, every route but ``/`` and
    #: ``/v2/health/*`` (and the :attr:`auth_exempt` groups) needs one.
    api_keys: tuple[str, ...] = setting("SCORE_API_KEYS", (), _keys)
    #: A file of API keys, one a line (``SCORE_API_KEYS_FILE``); read again when it changes,
    #: so keys rotate without a restart. Its keys are valid beside :attr:`api_keys`.
    api_keys_file: str = setting("SCORE_API_KEYS_FILE", "", _key_file)
    #: Route groups that need no key (``SCORE_AUTH_EXEMPT``): see :data:`AUTH_GROUPS`.
    auth_exempt: tuple[str, ...] = setting("SCORE_AUTH_EXEMPT", (), _lower_list)
    #: ``text`` or ``json`` (JSON lines) for the log, access lines included (``SCORE_LOG_FORMAT``).
    log_format: str = setting("SCORE_LOG_FORMAT", "text", _lower, blank_is_unset=True)
    #: Level of the ``triton_score`` log (``SCORE_LOG_LEVEL``); ``WARNING`` drops access lines.
    log_level: str = setting("SCORE_LOG_LEVEL", "INFO", _upper, blank_is_unset=True)
    #: Triton's Prometheus endpoint, proxied at ``/metrics/triton`` (``SCORE_TRITON_METRICS_URL``:
    #: ``host:port`` or a URL); empty: ``TRITON_URL``'s host, port 8002, ``/metrics``.
    triton_metrics_url: str = setting("SCORE_TRITON_METRICS_URL", "", _stripped)

    #: OpenTelemetry tracing, ``"otel"`` or off (``""``, the default) (``SCORE_TRACING``):
    #: spans for each scoring request and its stages, exported as the standard ``OTEL_*``
    #: variables say, and a ``traceparent`` to Triton; see :mod:`triton_score.telemetry.tracing`.
    tracing: str = setting("SCORE_TRACING", "", _tracing)
    #: Join requests in flight in one worker into one Triton call along the batch axis
    #: (``SCORE_COALESCE``): ``auto`` (the default: every model with ``max_batch_size`` > 1,
    #: those with Triton's ``dynamic_batching`` included), ``on`` (the same) or ``off``;
    #: :func:`triton_score.triton.coalesce.coalesces` says why.
    coalesce: str = setting("SCORE_COALESCE", "auto", _lower, blank_is_unset=True)
    #: Triton calls in flight per model (and input shape, output set) in each worker while
    #: coalescing (``SCORE_COALESCE_CALLS``); requests beyond them wait for the next call,
    #: which takes them all (up to ``max_batch_size`` rows).
    coalesce_calls: int = setting("SCORE_COALESCE_CALLS", 2, _number(int), blank_is_unset=True)

    #: Scoring requests one worker keeps in flight (``SCORE_MAX_IN_FLIGHT``); one more is
    #: answered 503 with ``Retry-After`` at once, before its body is read, instead of queueing
    #: towards a 504. 0: no limit. The default, 128, is half of Gunicorn's
    #: ``SCORE_WORKER_CONNECTIONS`` (256), so that the worker still accepts the connections of
    #: probes, ``/metrics``, ``/v2`` and idle keep-alive clients when scoring is full (at 256
    #: connections Gunicorn stops accepting, and clients wait unanswered in the kernel's
    #: queue); and twice ``SCORE_TRITON_CONCURRENCY`` (64), so that every connection to Triton
    #: stays busy while as many requests again are in pre- or post-processing. A limit at or
    #: above ``SCORE_WORKER_CONNECTIONS`` never fires.
    max_in_flight: int = setting("SCORE_MAX_IN_FLIGHT", 128, _number(int), blank_is_unset=True)
    #: The ``Retry-After`` of that 503, in whole seconds (``SCORE_RETRY_AFTER_S``).
    retry_after_s: int = setting("SCORE_RETRY_AFTER_S", 1, _number(int), blank_is_unset=True)
    #: Which processor stages (``preprocess``, an ``outputs()`` method, ``postprocess``; never
    #: ``predict``, which calls Triton) run in a thread pool, so that CPU-heavy work does not
    #: stall the worker's other requests and its health probes (``SCORE_OFFLOAD``): ``auto``
    #: those of processors that declare ``offload = True``; ``on`` every processor's, the
    #: default codec's included; ``off`` none. Only under Gunicorn's gevent workers; elsewhere
    #: (Flask in-process, azmlinfsrv) stages run inline. See :mod:`triton_score.scoring.offload`.
    offload: str = setting("SCORE_OFFLOAD", "auto", _lower, blank_is_unset=True)
    #: Threads of that pool, per worker (``SCORE_OFFLOAD_THREADS``). Numpy, Pillow and most
    #: tokenizers release the GIL, so up to one thread per core computes in parallel; the
    #: default, 4, covers the 2 to 4 cores of a typical scoring container and leaves a spare
    #: slot or two for a stage blocked on I/O. More threads than cores only add contention
    #: (and each holds its stage's memory); further requests wait for a free thread.
    offload_threads: int = setting("SCORE_OFFLOAD_THREADS", 4, _number(int), blank_is_unset=True)
    #: System shared memory for large input tensors (``SCORE_SHM``): ``auto`` (the default)
    #: when Triton's host is this machine, ``on`` whatever its host (a pod sharing
    #: ``/dev/shm``), ``off`` never. A region that cannot be created or registered falls
    #: back to HTTP; see :mod:`triton_score.triton.shm`.
    shm: str = setting("SCORE_SHM", "auto", _lower, blank_is_unset=True)
    #: Size of each worker's shared memory region, in bytes (``SCORE_SHM_BYTES``, 16 MiB:
    #: 27 images of 3×224×224 FP32 in flight). Reserved in ``/dev/shm`` at first use, which
    #: Docker sizes 64 MB by default (``--shm-size``) for all workers and Triton's python
    #: backend together. Tensors that find no room go by HTTP.
    shm_bytes: int = setting("SCORE_SHM_BYTES", 16 * 1024 * 1024, _number(int), blank_is_unset=True)
    #: Inputs of at least this many bytes go by shared memory (``SCORE_SHM_MIN_BYTES``,
    #: 64 KiB); smaller ones cost less to copy into the HTTP body.
    shm_min_bytes: int = setting(
        "SCORE_SHM_MIN_BYTES", 64 * 1024, _number(int), blank_is_unset=True
    )

    #: Which requests are captured, per model (``SCORE_CAPTURE``): ``model=rate`` entries,
    #: ``*`` for every other model, a rate from 0 to 1 (``digits_onnx=0.1,*=0.01``); empty
    #: (the default): none, at no cost. See :mod:`triton_score.telemetry.capture`.
    capture: tuple[tuple[str, float], ...] = setting("SCORE_CAPTURE", (), _capture)
    #: Where captured requests are written (``SCORE_CAPTURE_DIR``), as JSON lines, one file
    #: set per worker process; required when :attr:`capture` captures anything.
    capture_dir: str = setting("SCORE_CAPTURE_DIR", "", _stripped)
    #: A capture file is closed and the next one begun at this size, in bytes
    #: (``SCORE_CAPTURE_MAX_BYTES``, 64 MiB).
    capture_max_bytes: int = setting(
        "SCORE_CAPTURE_MAX_BYTES", 64 * 1024 * 1024, _number(int), blank_is_unset=True
    )
    #: Capture files each worker process keeps (``SCORE_CAPTURE_MAX_FILES``, 8); its oldest is
    #: removed when one more begins. A worker's disk use stays under files x bytes.
    capture_max_files: int = setting(
        "SCORE_CAPTURE_MAX_FILES", 8, _number(int), blank_is_unset=True
    )
    #: Captured requests a worker holds for its writer (``SCORE_CAPTURE_QUEUE``, 1024); when
    #: the writer is behind and the queue is full, a capture is dropped and counted
    #: (``score_capture_dropped_total``), never waited for.
    capture_queue: int = setting("SCORE_CAPTURE_QUEUE", 1024, _number(int), blank_is_unset=True)
    #: Field names whose values are never written (``SCORE_CAPTURE_REDACT``, comma-separated):
    #: JSON keys at any depth of the payload and the answer, query parameters, and tensors of
    #: that name. Set but empty is an error at start.
    capture_redact: tuple[str, ...] = setting("SCORE_CAPTURE_REDACT", (), _redact)

    def __post_init__(self) -> None:
        if any(rate > 0 for _, rate in self.capture) and not self.capture_dir:
            raise ValueError("SCORE_CAPTURE is on but SCORE_CAPTURE_DIR names no directory")
        if self.capture_max_bytes < 1024:
            raise ValueError(
                f"SCORE_CAPTURE_MAX_BYTES={self.capture_max_bytes}: use 1024 bytes or more"
            )
        if self.capture_max_files < 1 or self.capture_queue < 1:
            raise ValueError("SCORE_CAPTURE_MAX_FILES and SCORE_CAPTURE_QUEUE: use 1 or more")
        if self.llm_max_tokens < 1:
            raise ValueError("SCORE_LLM_MAX_TOKENS: use 1 or more")
        if not self.stream_idle_s > 0:  # also refuses nan
            raise ValueError(f"SCORE_STREAM_IDLE_S={self.stream_idle_s}: use more than 0")
        adapters = sorted({kind for _, kind in self.llm_adapters} - set(LLM_ADAPTERS))
        if adapters:
            raise ValueError(
                f"SCORE_LLM_ADAPTERS: unknown adapter {adapters[0]!r}; "
                f"choose among {', '.join(LLM_ADAPTERS)}"
            )
        unknown = sorted(set(self.auth_exempt) - set(AUTH_GROUPS))
        if unknown:
            raise ValueError(
                f"SCORE_AUTH_EXEMPT: unknown route group {unknown[0]!r}; "
                f"choose among {', '.join(AUTH_GROUPS)}"
            )
        if self.log_format not in LOG_FORMATS:
            raise ValueError(
                f"SCORE_LOG_FORMAT={self.log_format!r}: choose {' or '.join(LOG_FORMATS)}"
            )
        if self.max_in_flight < 0:
            raise ValueError(f"SCORE_MAX_IN_FLIGHT={self.max_in_flight}: use 0 (no limit) or more")
        if self.max_rows < 1:
            raise ValueError(f"SCORE_MAX_ROWS={self.max_rows}: at least 1 row per request")
        if self.retry_after_s < 0:
            raise ValueError(f"SCORE_RETRY_AFTER_S={self.retry_after_s}: use 0 or more seconds")
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(
                f"SCORE_OFFLOAD={self.offload!r}: choose among {', '.join(OFFLOAD_MODES)}"
            )
        if self.offload_threads < 1:
            raise ValueError(f"SCORE_OFFLOAD_THREADS={self.offload_threads}: use 1 or more")
        if self.shm not in SHM_MODES:
            raise ValueError(f"SCORE_SHM={self.shm!r}: choose among {', '.join(SHM_MODES)}")
        if self.shm_bytes < 0 or self.shm_min_bytes < 0:
            raise ValueError("SCORE_SHM_BYTES and SCORE_SHM_MIN_BYTES cannot be negative")
        if self.coalesce not in COALESCE_MODES:
            raise ValueError(
                f"SCORE_COALESCE={self.coalesce!r}: choose among {', '.join(COALESCE_MODES)}"
            )
        if self.coalesce_calls < 1:
            raise ValueError(f"SCORE_COALESCE_CALLS={self.coalesce_calls}: at least 1")
        for key in self.api_keys:
            if not key or not key.isascii() or not key.isprintable() or " " in key:
                # Header values arrive as latin-1 and tokens hold no spaces: such a key
                # could never match, and a request would be refused with no clue why.
                raise ValueError(
                    "SCORE_API_KEYS: a key must be printable ASCII without spaces "
                    f"(key {self.api_keys.index(key) + 1} is not)"
                )
        if self.log_level not in LOG_LEVELS:
            raise ValueError(
                f"SCORE_LOG_LEVEL={self.log_level!r}: choose among {', '.join(LOG_LEVELS)}"
            )

    @property
    def auth_enabled(self) -> bool:
        """Whether API keys are required (keys listed, or a key file named)."""
        return bool(self.api_keys or self.api_keys_file)

    @property
    def log_level_number(self) -> int:
        return int(logging.getLevelName(self.log_level))

    @property
    def triton_host(self) -> str:
        """``TRITON_URL``'s host (``localhost`` when it names none)."""
        return split_address(self.triton_url)[0]

    @property
    def triton_port(self) -> int:
        return split_address(self.triton_url)[1]

    def triton_metrics_endpoint(self) -> str:
        """Triton's metrics as a URL: ``http://host:port/metrics`` unless told otherwise."""
        url = self.triton_metrics_url.strip()
        if not url:
            return f"http://{self.triton_host}:{TRITON_METRICS_PORT}/metrics"
        if "://" not in url:
            url = "http://" + url
        scheme, _, rest = url.partition("://")
        if "/" not in rest:
            rest += "/metrics"
        return f"{scheme}://{rest}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``), then apply ``overrides``."""
        return _from_env(cls, environ, overrides)


def _shell_words(variable: str, text: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise ValueError(f"{variable}={text!r}: {exc}") from None


@dataclass(frozen=True)
class ProcessSettings:
    """What the processes around the app are: ``score serve``'s supervisor, Gunicorn's
    master and workers, and the tools that find a model repository or a ``tritonserver``.

    :class:`Settings` is how a worker serves a request; these are read before any worker
    exists (Gunicorn's configuration, the supervisor's start and stop), or by tools that
    serve nothing. Read the same way, from each field's variable.
    """

    #: The address Gunicorn binds (``SCORE_HOST``; images use 0.0.0.0) and its port.
    host: str = setting("SCORE_HOST", "127.0.0.1", _stripped, blank_is_unset=True)
    port: int = setting("SCORE_PORT", 5001, _port, blank_is_unset=True)
    #: Gunicorn workers (``WORKER_COUNT``, AzureML's name) and each one's connections.
    workers: int = setting("WORKER_COUNT", 1, _number(int), blank_is_unset=True)
    worker_connections: int = setting(
        "SCORE_WORKER_CONNECTIONS", 256, _number(int), blank_is_unset=True
    )
    #: Seconds a worker may stay silent before Gunicorn restarts it (``WORKER_TIMEOUT``).
    worker_timeout_s: int = setting("WORKER_TIMEOUT", 300, _number(int), blank_is_unset=True)
    #: Seconds the workers get to finish their requests on SIGTERM.
    graceful_timeout_s: int = setting(
        "SCORE_GRACEFUL_TIMEOUT", 30, _number(int), blank_is_unset=True
    )
    #: Gunicorn's own access log file (``SCORE_ACCESS_LOG``); ours is the log stream.
    access_log: str = setting("SCORE_ACCESS_LOG", "", _stripped)
    #: Seconds of serving with readiness at 503 before ``score serve`` stops its workers.
    drain_s: float = setting("SCORE_DRAIN_S", 0.0, _number(float), blank_is_unset=True)
    #: The file whose existence tells the workers that ``score serve`` is stopping (set by
    #: the supervisor for its Gunicorn, not by users).
    drain_file: str = setting("SCORE_DRAIN_FILE", "", _stripped)
    #: Extra ``tritonserver`` arguments for a local Triton (shell words).
    triton_args: tuple[str, ...] = setting("SCORE_TRITON_ARGS", (), _shell_words)
    #: A ``tritonserver`` binary to use instead of looking for one.
    tritonserver: str = setting("TRITONSERVER", "", _stripped)
    #: The model repository (``SCORE_MODEL_REPOSITORY``), else one under ``AZUREML_MODEL_DIR``.
    model_repository: str = setting("SCORE_MODEL_REPOSITORY", "")
    azureml_model_dir: str = setting("AZUREML_MODEL_DIR", "")
    #: The code directory of the processors (``SCORE_CODE_DIR``).
    code_directory: str = setting("SCORE_CODE_DIR", "")
    #: Where the workers share Prometheus metrics (set by ``score serve``).
    prometheus_multiproc_dir: str = setting("PROMETHEUS_MULTIPROC_DIR", "")
    #: The user's cache folder (``XDG_CACHE_HOME``), else ``~/.cache``.
    cache_home: str = setting("XDG_CACHE_HOME", "", _stripped)
    #: NLTK's data path (``NLTK_DATA``, ``os.pathsep``-separated).
    nltk_data: str = setting("NLTK_DATA", "")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> ProcessSettings:
        """Read settings from ``environ`` (default ``os.environ``), then apply ``overrides``."""
        return _from_env(cls, environ, overrides)

    @property
    def cache_dir(self) -> Path:
        """``$XDG_CACHE_HOME/triton-score`` (``~/.cache/triton-score``)."""
        return Path(self.cache_home or Path.home() / ".cache") / "triton-score"


def _from_env(cls: type[_T], environ: Mapping[str, str] | None, overrides: dict[str, Any]) -> _T:
    """A settings dataclass from ``environ`` (default ``os.environ``): each field's variable,
    read by its reader, then ``overrides``. The one place the package reads its environment."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for each in fields(cls):  # type: ignore[arg-type]
        source: FromEnv | None = each.metadata.get("env")
        if source is None:
            continue
        text = env.get(source.variable)
        if text is None or (source.blank_is_unset and not text.strip()):
            continue
        values[each.name] = source.read(source.variable, text, env)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    for key in overrides:
        if key not in known:
            raise TypeError(f"unknown setting {key!r}")
    return replace(cls(**values), **overrides)  # type: ignore[type-var]


def environment() -> dict[str, str]:
    """A copy of this process's environment, for the child processes a tool starts."""
    return dict(os.environ)
