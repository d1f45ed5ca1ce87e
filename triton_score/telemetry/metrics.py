"""Prometheus metrics for whoever reads ``/metrics`` at 3 a.m.

Every metric lives in a registry owned by the app (no module-level globals), so several apps
can coexist in one process (tests). Under Gunicorn, ``score serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` before any worker imports ``prometheus_client``; ``/metrics``
then aggregates every worker's files with a fresh ``MultiProcessCollector`` per scrape, and
the in-flight gauge sums live workers only.

Names:

- ``score_requests_total{model,code}``: scoring requests by HTTP status code;
- ``score_request_duration_seconds{model}``: end-to-end latency inside the server;
- ``score_stage_duration_seconds{model,stage}``: ``preprocess`` (incl. validation),
  ``infer`` and ``postprocess``. ``infer`` is the Triton round trip *as the worker sees it*:
  when a worker's CPU is saturated it includes the wait for the worker to resume the request
  after Triton answered. Compare with Triton's own ``nv_inference_request_duration_us``
  before blaming Triton: a large gap means add workers, not GPUs;
- ``score_requests_in_flight``: requests being scored now;
- ``score_requests_shed_total{model}``: scoring requests answered 503 at once because their
  worker already had ``SCORE_MAX_IN_FLIGHT`` in flight (also in ``score_requests_total`` with
  ``code="503"``). Steadily above zero: add workers or replicas;
- ``score_triton_errors_total{model,kind}``: failures attributed to Triton
  (``unavailable``, ``timeout``, ``error``) — Triton's own failure counter misses
  requests it rejected with a 4xx;
- ``score_coalesced_requests{model}``: requests per Triton call made for a coalescing lane
  (``SCORE_COALESCE``): its ``_count`` is the calls, its ``_sum`` the requests they carried;
  a mean near 1 under load means nothing was joined;
- ``score_auth_failures_total{group,reason}``: requests refused for want of a valid API key
  (``reason``: ``missing``, ``malformed``, ``invalid``; ``group``: ``score``, ``v2``,
  ``metrics``, ``docs``, ``other``). Refused requests never reach ``score_requests_total``;
- ``score_shm_tensors_total{outcome}``: input tensors of at least ``SCORE_SHM_MIN_BYTES``,
  by how they reached Triton: ``shm`` (the worker's shared memory region), ``full`` (no room
  left: sent by HTTP), ``unavailable`` (the region could not be created or registered: by
  HTTP). Absent when shared memory is off or Triton is remote;
- ``score_captured_total{model}``, ``score_capture_dropped_total{model}``: requests written
  by the data capture (``SCORE_CAPTURE``), and captures dropped because the worker's writer
  was behind (its queue full) or could not write. Dropping is by design (a request never
  waits for the disk); steadily above zero: a lower rate or a larger ``SCORE_CAPTURE_QUEUE``.

- streams (a decoupled model through ``/score``, the OpenAI front's ``stream: true``), per
  model: ``score_streams_in_flight{model}``, ``score_streams_total{model,outcome}``
  (``completed``, ``cancelled``: the client went away, ``failed``),
  ``score_stream_first_response_seconds{model}`` (time to first token, from the request's
  start), ``score_stream_inter_response_seconds{model}`` (between two responses: inter-token
  latency), ``score_stream_responses_total{model}`` (events sent) and
  ``score_llm_output_tokens_total{model}`` (the OpenAI front's completion tokens).

Triton's own metrics (``nv_inference_*``) are at ``/metrics/triton``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from triton_score.serve.worker import gevent_patched
from triton_score.settings import ProcessSettings

#: Latency buckets from 1 ms to 30 s: CPU models answer in ms, big GPU models in seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: Requests per coalesced call: 1 (nothing joined) up to a large ``max_batch_size``.
COALESCED_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class Metrics:
    """The runtime's metrics, registered in a registry of their own."""

    def __init__(self, multiproc_dir: str = "") -> None:
        self.multiproc_dir = multiproc_dir
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "score_requests",
            "Scoring requests by model and HTTP status code.",
            ["model", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "score_request_duration_seconds",
            "Time to answer a scoring request, inside the server.",
            ["model"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "score_stage_duration_seconds",
            "Time spent per pipeline stage (preprocess, infer, postprocess).",
            ["model", "stage"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "score_requests_in_flight",
            "Scoring requests being processed now.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.abandoned_calls = Gauge(
            "score_triton_abandoned_calls",
            "Calls to Triton that outlived their request's SCORING_TIMEOUT_MS and still run "
            "(each holds a connection until Triton answers or the network timeout ends it).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.connections_free = Gauge(
            "score_triton_connections_free",
            "Connections to Triton no call holds, by pool (score: /score and processors; "
            "v2: the /v2 forwarder), sampled every second. 0 for long: calls queue for one.",
            ["pool"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.shed = Counter(
            "score_requests_shed",
            "Scoring requests refused with 503 because the worker had SCORE_MAX_IN_FLIGHT.",
            ["model"],
            registry=self.registry,
        )
        self.triton_errors = Counter(
            "score_triton_errors",
            "Scoring requests that failed because of Triton (unavailable, timeout, error).",
            ["model", "kind"],
            registry=self.registry,
        )
        self.coalesced = Histogram(
            "score_coalesced_requests",
            "Scoring requests per Triton call made by a worker's coalescing (SCORE_COALESCE).",
            ["model"],
            buckets=COALESCED_BUCKETS,
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "score_auth_failures",
            "Requests refused for want of a valid API key, by route group and reason.",
            ["group", "reason"],
            registry=self.registry,
        )

        self.shm_tensors = Counter(
            "score_shm_tensors",
            "Large input tensors by how they reached Triton (shm, full, unavailable).",
            ["outcome"],
            registry=self.registry,
        )

        self.captured = Counter(
            "score_captured",
            "Scoring requests written by the data capture (SCORE_CAPTURE).",
            ["model"],
            registry=self.registry,
        )
        self.capture_dropped = Counter(
            "score_capture_dropped",
            "Captures dropped: the capture writer's queue was full, or it could not write.",
            ["model"],
            registry=self.registry,
        )

        self.streams_in_flight = Gauge(
            "score_streams_in_flight",
            "Streamed answers being sent now.",
            ["model"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.streams = Counter(
            "score_streams",
            "Streamed answers by how they ended (completed, cancelled by the client, failed).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.stream_first = Histogram(
            "score_stream_first_response_seconds",
            "Time from a streamed request's start to its first response (time to first token).",
            ["model"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.stream_gap = Histogram(
            "score_stream_inter_response_seconds",
            "Time between two responses of a stream (inter-token latency).",
            ["model"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.stream_responses = Counter(
            "score_stream_responses",
            "Responses (events) sent in streams.",
            ["model"],
            registry=self.registry,
        )
        self.llm_tokens = Counter(
            "score_llm_output_tokens",
            "Completion tokens the OpenAI front returned.",
            ["model"],
            registry=self.registry,
        )

    def stream(self, model: str, started: float) -> StreamMeter:
        """The meter of one stream of ``model`` that began at ``started``
        (``time.perf_counter()``)."""
        return StreamMeter(self, model, started)

    def capture_written(self, model: str) -> None:
        self.child(self.captured, model).inc()

    def capture_drop(self, model: str) -> None:
        self.child(self.capture_dropped, model).inc()

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: labels() validates and locks on every call, and a
        request records four or five labelled values (the label sets are few: models x
        codes x stages)."""
        key = (metric._name, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def shm_tensor(self, outcome: str) -> None:
        self.shm_tensors.labels(outcome).inc()

    def abandoned_call(self, change: int) -> None:
        self.abandoned_calls.inc(change)

    def sample_connections(self, pools: Mapping[str, Callable[[], int | None]]) -> None:
        """Set :attr:`connections_free` from each pool's count (``None``: left out)."""
        for pool, free in pools.items():
            value = free()
            if value is not None:
                self.connections_free.labels(pool).set(value)

    def auth_failed(self, group: str, reason: str) -> None:
        self.auth_failures.labels(group, reason).inc()

    def observe_coalesced(self, model: str, requests: int) -> None:
        self.coalesced.labels(model).observe(requests)

    def render(self) -> tuple[bytes, str]:
        """The exposition text: all workers' metrics under Gunicorn, else this process's."""
        if self.multiproc_dir:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiproc_dir)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


#: How often a worker samples its connection pools into ``score_triton_connections_free``.
CONNECTIONS_SAMPLE_S = 1.0


class StreamMeter:
    """One stream's metrics: in flight from its making, :meth:`response` per response sent,
    :meth:`end` once."""

    def __init__(self, metrics: Metrics, model: str, started: float) -> None:
        self.metrics = metrics
        self.model = model
        self.started = started
        self.last = 0.0
        metrics.child(metrics.streams_in_flight, model).inc()

    def response(self) -> None:
        metrics, now = self.metrics, time.perf_counter()
        if self.last:
            metrics.child(metrics.stream_gap, self.model).observe(now - self.last)
        else:
            metrics.child(metrics.stream_first, self.model).observe(now - self.started)
        self.last = now
        metrics.child(metrics.stream_responses, self.model).inc()

    def end(self, outcome: str) -> None:
        """``completed``, ``cancelled`` (the client went away) or ``failed``; once."""
        metrics = self.metrics
        metrics.child(metrics.streams_in_flight, self.model).dec()
        metrics.child(metrics.streams, self.model, outcome).inc()


def start_connection_sampler(
    metrics: Metrics, pools: Mapping[str, Callable[[], int | None]]
) -> object | None:
    """Under gevent workers, a greenlet that samples ``pools`` every
    :data:`CONNECTIONS_SAMPLE_S`; elsewhere (tests, sync servers) nothing: ``None``.

    Sampled rather than counted on each call because it then costs the request path nothing.
    """
    if not gevent_patched():
        return None
    import gevent

    def sample() -> None:
        while True:
            try:
                metrics.sample_connections(pools)
            except Exception:  # a metric must never end the loop, nor the worker
                logging.getLogger(__name__).exception("sampling connection pools failed")
            gevent.sleep(CONNECTIONS_SAMPLE_S)

    return gevent.spawn(sample)


def pin_process_identity() -> None:
    """In a Gunicorn worker, right after its fork and before any metric exists: the values of
    this process's metrics go to files named by its pid, found once.

    ``prometheus_client``'s multiprocess values ask ``os.getpid()`` on every update, to notice
    a fork that happened after they were made (about 13 system calls a request here, 7 % of
    a worker's CPU in a profile at c=8). A worker forks no process that keeps using them
    (``subprocess`` execs), so its pid is read once. What ``/metrics`` shows is unchanged:
    the same files, the same values.
    """
    if not ProcessSettings.from_env().prometheus_multiproc_dir:
        return
    from prometheus_client import values

    pid = os.getpid()
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: pid)
