"""All runtime settings in one typed object, read from the environment once.

Environment variables keep the names AzureML and the AzureML-Triton image use
(``WORKER_COUNT``, ``AZUREML_MODEL_DIR``, ``AZUREML_ENTRY_SCRIPT``...), plus ``SCORE_*`` for
what is ours. Nothing else in the package reads ``os.environ`` for configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from triton_score.locations import resolve_entry_script


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.replace(";", ",").split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Everything the scoring runtime can be told; see :meth:`from_env` for the variables."""

    #: Triton's HTTP endpoint, ``host:port`` (``TRITON_URL``).
    triton_url: str = "localhost:8000"
    #: The model ``/score`` serves; empty means "the only model" (``SCORE_MODEL``).
    default_model: str = ""
    #: Processor modules, ``.py`` files or ``module:Class`` (``SCORE_PROCESSORS``).
    processors: tuple[str, ...] = ()
    #: The model repository (``SCORE_MODEL_REPOSITORY``); empty: found as
    #: :func:`~triton_score.locations.find_model_repository` says.
    model_repository: str = ""
    #: The deployment's code directory, searched first for processors (``SCORE_CODE_DIR``);
    #: empty: the entry script's folder, else ``./score``.
    code_directory: str = ""
    #: An AzureML entry script (``AZUREML_ENTRY_SCRIPT``, relative to ``AML_APP_ROOT`` as
    #: AzureML sets it). The template's ``score.py`` is served natively; any other script's
    #: ``init()``/``run()`` are served as azmlinfsrv would.
    entry_script: str = ""
    #: Origins allowed by CORS, comma-separated (``AML_CORS_ORIGINS``, as azmlinfsrv).
    cors_origins: tuple[str, ...] = ()
    #: Upper bound on one scoring request, in ms (``SCORING_TIMEOUT_MS``); overrun -> 504.
    scoring_timeout_ms: int = 60_000
    #: How long ``init()`` waits for Triton to be ready, in seconds (``SCORE_TRITON_WAIT_S``).
    triton_wait_s: float = 120.0
    #: Concurrent connections each worker keeps to Triton (``SCORE_TRITON_CONCURRENCY``); also
    #: the default ``concurrency`` of the clients an entry script creates.
    triton_concurrency: int = 64
    #: Largest request body accepted, in bytes (``SCORE_MAX_BODY_BYTES``); more -> 413.
    max_body_bytes: int = 100 * 1024 * 1024
    #: Models to serve; empty means every model Triton has ready (``SCORE_MODELS``).
    models: tuple[str, ...] = ()
    #: Where gunicorn workers share Prometheus metrics (``PROMETHEUS_MULTIPROC_DIR``).
    prometheus_multiproc_dir: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``), then apply ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if "TRITON_URL" in env:
            values["triton_url"] = env["TRITON_URL"].removeprefix("http://")
        if "SCORE_MODEL" in env:
            values["default_model"] = env["SCORE_MODEL"]
        if "SCORE_PROCESSORS" in env:
            values["processors"] = _split(env["SCORE_PROCESSORS"])
        if "SCORE_MODEL_REPOSITORY" in env:
            values["model_repository"] = env["SCORE_MODEL_REPOSITORY"]
        if "SCORE_CODE_DIR" in env:
            values["code_directory"] = env["SCORE_CODE_DIR"]
        if env.get("AZUREML_ENTRY_SCRIPT"):
            values["entry_script"] = resolve_entry_script(
                env["AZUREML_ENTRY_SCRIPT"], env.get("AML_APP_ROOT", "")
            )
        if "AML_CORS_ORIGINS" in env:
            values["cors_origins"] = _split(env["AML_CORS_ORIGINS"])
        if "PROMETHEUS_MULTIPROC_DIR" in env:
            values["prometheus_multiproc_dir"] = env["PROMETHEUS_MULTIPROC_DIR"]
        if "SCORE_MODELS" in env:
            values["models"] = _split(env["SCORE_MODELS"])
        numeric = {
            "SCORING_TIMEOUT_MS": ("scoring_timeout_ms", int),
            "SCORE_TRITON_WAIT_S": ("triton_wait_s", float),
            "SCORE_TRITON_CONCURRENCY": ("triton_concurrency", int),
            "SCORE_MAX_BODY_BYTES": ("max_body_bytes", int),
        }
        for variable, (name, kind) in numeric.items():
            if env.get(variable, "").strip():
                try:
                    values[name] = kind(env[variable])
                except ValueError:
                    raise ValueError(
                        f"{variable}={env[variable]!r} is not a valid {kind.__name__}"
                    ) from None
        known = {f.name for f in fields(cls)}
        for key in overrides:
            if key not in known:
                raise TypeError(f"unknown setting {key!r}")
        return replace(cls(**values), **overrides)
