"""Triton's own tracing, for ``score serve``: the ``tritonserver`` flags that send its spans
where ours go, and the start-up check that ``SCORE_TRACING`` can work as set.

Only the supervisor (:mod:`triton_score.serve.supervisor`) starts ``tritonserver``, so this
lives beside it; the request path's spans are :mod:`triton_score.telemetry.tracing`.
"""

from __future__ import annotations

from collections.abc import Mapping

from triton_score.settings import tracing_mode


def otlp_traces_url(environ: Mapping[str, str]) -> str:
    """Where the OTLP/HTTP exporter sends spans, as the ``OTEL_*`` variables say."""
    url = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if url:
        return url
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or "http://localhost:4318"
    return base.rstrip("/") + "/v1/traces"


def triton_trace_args(environ: Mapping[str, str]) -> list[str]:
    """``tritonserver`` flags that send Triton's spans where ours go, for ``score serve``.

    OpenTelemetry mode, timestamps, and only the requests that bring a ``traceparent``
    (``rate=0``: Triton then traces exactly the requests the scorer sampled), exported to
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else ``OTEL_EXPORTER_OTLP_ENDPOINT`` +
    ``/v1/traces``. ``OTEL_BSP_SCHEDULE_DELAY`` is passed on too. Triton exports OTLP/HTTP
    only: nothing (``[]``) when our exporters are not OTLP/HTTP.
    """
    exporters = [
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if name.strip()
    ]
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if "none" in exporters or not {"otlp", "otlp_proto_http"} & set(exporters):
        return []
    if "otlp_proto_http" not in exporters and protocol != "http/protobuf":
        return []
    settings = [
        "mode=opentelemetry",
        "level=TIMESTAMPS",
        "rate=0",
        "count=-1",
        f"opentelemetry,url={otlp_traces_url(environ)}",
    ]
    delay = environ.get("OTEL_BSP_SCHEDULE_DELAY", "").strip()
    if delay.isdigit():
        settings.append(f"opentelemetry,bsp_schedule_delay={delay}")
    return [f"--trace-config={setting}" for setting in settings]


def check_tracing(environ: Mapping[str, str]) -> str:
    """Why ``SCORE_TRACING`` cannot work as set (one line), or ``""``; for ``score serve``,
    before any worker fails to boot on it."""
    try:
        mode = tracing_mode(environ.get("SCORE_TRACING", ""))
        if not mode:
            return ""
        from triton_score.telemetry.otel import exporter_names, find_exporter

        for name in exporter_names(environ):
            find_exporter(name)
    except ImportError as exc:
        return (
            f"SCORE_TRACING=otel needs the OpenTelemetry SDK ({exc.name} is missing): "
            "pip install 'triton-score[tracing]'"
        )
    except ValueError as exc:
        return str(exc)
    return ""
