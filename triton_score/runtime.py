"""The one way a scoring runtime is built: :func:`build_runtime`.

The Flask app (``create_app``), the AzureML entry script (``triton_score.azureml.entry``), the tests
and the benchmarks all call it, so they find the same model repository, the same processors
and the same entry script from the same :class:`~triton_score.settings.Settings`::

    Settings ─► model repository, code directory ─► processors ─┐
                                                                 ├─► Scorer (native)
    AZUREML_ENTRY_SCRIPT ─► the template's score.py? ─ yes ─────┘
                                                     └ no ──► EntryScript (init()/run())
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from triton_score.azureml.clients import adapt_script_clients
from triton_score.azureml.host import EntryScript, is_native
from triton_score.processors import ProcessorRegistry
from triton_score.processors.loading import load_processors
from triton_score.repository.locations import find_code_directory, find_model_repository
from triton_score.scoring import Scorer
from triton_score.scoring.refresh import MetadataRefresher
from triton_score.settings import Settings
from triton_score.telemetry.capture import Capture
from triton_score.telemetry.metrics import Metrics
from triton_score.telemetry.tracing import NO_TRACING, Tracing, start_tracing
from triton_score.triton.coalesce import Coalescer
from triton_score.triton.deadline import Abandoned
from triton_score.triton.gateway import TritonGateway
from triton_score.triton.shm import shm_disabled_reason

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """One worker's scoring runtime: the Triton gateway, then a :class:`Scorer` (processors,
    every model) or a user's :class:`EntryScript` (its own ``init()``/``run()``)."""

    settings: Settings
    gateway: TritonGateway
    metrics: Metrics
    scorer: Scorer | None = None
    entry_script: EntryScript | None = None
    refresher: MetadataRefresher | None = None
    #: Spans for requests and their stages (``SCORE_TRACING``); off: :data:`NO_TRACING`.
    tracing: Tracing = NO_TRACING

    def init(self) -> None:
        """What a worker does at boot: wait for Triton and read metadata, or ``init()``;
        then keep the metadata fresh (``SCORE_METADATA_REFRESH_S``)."""
        if self.entry_script is not None:
            self.entry_script.init()
        elif self.scorer is not None:
            self.scorer.init()
            if self.settings.metadata_refresh_s > 0 and self.refresher is None:
                self.refresher = MetadataRefresher(
                    self.scorer, self.settings.metadata_refresh_s, self._refresher_gateway
                ).start()

    def _refresher_gateway(self) -> TritonGateway:
        """The refresher's own client (tritonclient.http is not thread-safe)."""
        return TritonGateway(self.settings.triton_url, concurrency=1, timeout_s=10.0)

    def is_ready(self) -> bool:
        if self.scorer is not None:
            return self.scorer.is_ready()
        return self.gateway.is_ready()

    def close(self) -> None:
        if self.refresher is not None:
            self.refresher.stop()
            self.refresher = None
        if self.scorer is not None and self.scorer.capture is not None:
            self.scorer.capture.close()
        self.gateway.close()
        self.tracing.shutdown()


def resolve_settings(settings: Settings) -> Settings:
    """Fill in the model repository and code directory the way ``score serve`` finds them.

    A model repository that cannot be found is left empty: Triton may be remote, and then
    processors come from the code directory, the specs and entry points only.
    """
    repository = settings.model_repository
    if not repository:
        try:
            repository = str(find_model_repository())
        except FileNotFoundError:
            repository = ""
    code = find_code_directory(settings.code_directory, settings.entry_script)
    return replace(
        settings,
        model_repository=repository,
        code_directory=str(code) if code is not None else "",
    )


def build_runtime(
    settings: Settings | None = None,
    *,
    as_entry_script: bool = False,
    registry: ProcessorRegistry | None = None,
) -> Runtime:
    """Build (not start) a runtime from ``settings`` (default: the environment).

    :param as_entry_script: the caller *is* the entry script (``triton_score.azureml.entry`` under
        azmlinfsrv): serve natively and never load ``AZUREML_ENTRY_SCRIPT`` again.
    :param registry: these processors instead of those the settings lead to (tests choose
        theirs: :mod:`triton_score.kit.testing`).
    """
    settings = resolve_settings(settings or Settings.from_env())
    metrics = Metrics(settings.prometheus_multiproc_dir)
    no_shm = shm_disabled_reason(settings.shm, settings.triton_url)
    if no_shm:
        log.info("system shared memory not used: %s", no_shm)
    gateway = TritonGateway(
        settings.triton_url,
        concurrency=settings.triton_concurrency,
        timeout_s=settings.scoring_timeout_ms / 1000,
        shm_bytes=0 if no_shm else settings.shm_bytes,
        shm_min_bytes=settings.shm_min_bytes,
        on_shm_tensor=metrics.shm_tensor,
        abandoned=Abandoned(metrics.abandoned_call),
    )
    runtime = Runtime(
        settings=settings, gateway=gateway, metrics=metrics, tracing=start_tracing(settings)
    )
    if settings.entry_script and not as_entry_script:
        # Before the script is imported: the Triton clients it creates share one gevent
        # worker's requests, so they get connections enough and queue fairly for them.
        adapt_script_clients(settings.triton_concurrency)
        script = EntryScript(settings.entry_script)
        if not is_native(script):
            log.info("serving AzureML entry script %s (its init() and run())", script.path)
            runtime.entry_script = script
            return runtime
        log.info("entry script %s is triton_score's own: serving natively", script.path)
    if registry is None:
        registry = load_processors(
            settings.processors,
            code_directory=settings.code_directory or None,
            model_repository=settings.model_repository or None,
        )
    capture = Capture.from_settings(
        settings, on_written=metrics.capture_written, on_dropped=metrics.capture_drop
    )
    runtime.scorer = Scorer(settings, gateway, registry, tracing=runtime.tracing, capture=capture)
    runtime.scorer.coalescer = Coalescer(
        gateway,
        mode=settings.coalesce,
        calls_per_key=settings.coalesce_calls,
        observe=metrics.observe_coalesced,
    )
    return runtime
