"""The scoring pipeline: decode -> preprocess -> validate -> infer -> postprocess -> encode.

:class:`Scorer` owns one worker's view of the world: the Triton gateway, each model's
:class:`~triton_score.metadata.ModelInfo` (read once, cached, swapped by :meth:`Scorer.refresh`
when Triton reloads a model) with its :class:`~triton_score.scoring.plan.ModelPlan`, and the
processors; and it owns the stages. The route hands :meth:`Scorer.handle` the body and gets
the encoded answer back; AzureML's ``run()`` calls :meth:`Scorer.run`, which stops before
encoding because AzureML's server encodes what ``run()`` returns. Either raises a
:class:`~triton_score.errors.ScoringError` for what the client gets as an error.

With a processor's ``predict()``, "validate -> infer" becomes the processor's own calls
through a :class:`~triton_score.calls.Triton` handle, each validated the same way.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from triton_score.calls import Triton
from triton_score.coalesce import Coalescer
from triton_score.codecs.request import REQUEST_ID, Request, decode_request, header
from triton_score.codecs.response import Encoded, render
from triton_score.codecs.tensors import is_raw_tensor
from triton_score.errors import (
    BadRequest,
    BodyTooLarge,
    ModelNotFound,
    ProcessorError,
    ScoringError,
)
from triton_score.locations import is_local_address
from triton_score.metadata import ModelInfo
from triton_score.offload import Offloader
from triton_score.processors import Processor, ProcessorRegistry
from triton_score.scoring.plan import Limit, ModelPlan, plan_model
from triton_score.scoring.telemetry import RequestTelemetry
from triton_score.settings import Settings
from triton_score.tracing import NO_TRACING, Tracing, log_ids
from triton_score.triton import TritonGateway
from triton_score.validation import validate_inputs, validate_outputs

#: Bodies from this size on are decoded in the offload pool (:meth:`Scorer.decode`): orjson
#: reads ~1 GB/s, so below it the worker's loop is held for about a millisecond at most, less
#: than the hop to a thread and back costs under load.
OFFLOAD_DECODE_BYTES = 1024 * 1024
log = logging.getLogger(__name__)


@dataclass
class Scorer:
    """Scores requests for the models one Triton serves."""

    settings: Settings
    gateway: TritonGateway
    processors: ProcessorRegistry
    #: Spans for requests and their stages; off by default. Each request's
    #: :class:`RequestTelemetry` opens them (and the metrics are its too).
    tracing: Tracing = NO_TRACING
    #: Joins concurrent requests into one Triton call (``SCORE_COALESCE``); ``None``: each
    #: request is its own call. :func:`triton_score.runtime.build_runtime` sets it.
    coalescer: Coalescer | None = None
    models: dict[str, ModelInfo] = field(default_factory=dict)
    #: Models a ``predict()`` called that are not served at ``/score`` (``SCORE_MODELS``).
    helpers: dict[str, ModelInfo] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _missing: set[str] = field(default_factory=set, repr=False)
    #: Each model's plan, and the ``models`` dict they were made from: when refresh() (or a
    #: test) puts a new dict in place, the plans are made again on the next request.
    _plans: dict[str, ModelPlan] = field(default_factory=dict, repr=False)
    _plans_for: dict[str, ModelInfo] | None = field(default=None, repr=False)
    #: Runs CPU-heavy processor stages in threads (``SCORE_OFFLOAD``); see :meth:`_call`.
    offloader: Offloader = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.offloader = Offloader(self.settings.offload, self.settings.offload_threads)

    # -- start-up --------------------------------------------------------------------------
    def init(self) -> bool:
        """Wait (bounded) for Triton, then read every model's metadata and load processors.

        :return: whether the models are loaded. When Triton is not ready in time, the
            worker still starts (liveness must answer) and loads on the first request.
        """
        if not self.gateway.wait_ready(self.settings.triton_wait_s):
            log.warning(
                "Triton at %s not ready after %.0f s; models load when it is",
                self.settings.triton_url,
                self.settings.triton_wait_s,
            )
            return False
        self.ensure_loaded()
        return True

    def ensure_loaded(self) -> dict[str, ModelInfo]:
        if self.models:
            return self.models
        with self._lock:
            if self.models:
                return self.models
            models = {
                name: self._located(info)
                for name, info in self.gateway.load_models(self.settings.models).items()
            }
            missing = [m for m in self.processors.models() if m not in models]
            if missing:
                log.info("processors for models Triton does not serve (unused): %s", missing)
            for model in models.values():
                processor = self.processors.for_model(model.name)
                processor.load(model)
                log.info(
                    "model %s v%s: %d inputs, %d outputs, max_batch_size %d, processor: %s",
                    model.name,
                    model.version,
                    len(model.inputs),
                    len(model.outputs),
                    model.max_batch_size,
                    processor.name,
                )
            self.processors.freeze()
            self.models = models
        return self.models

    @property
    def loaded(self) -> bool:
        return bool(self.models)

    def _repository(self) -> Path | None:
        """The model repository Triton serves, when it is on this machine and known."""
        if not self.settings.model_repository:
            return None
        if not is_local_address(self.settings.triton_host):
            return None
        repository = Path(self.settings.model_repository)
        return repository.resolve() if repository.is_dir() else None

    def _located(self, model: ModelInfo) -> ModelInfo:
        """``model`` with its folder in the (original) model repository, when there is one."""
        repository = self._repository()
        folder = repository / model.name if repository is not None else None
        return replace(model, directory=folder if folder and folder.is_dir() else None)

    def lookup(self, name: str) -> ModelInfo:
        """Any model Triton serves, for ``predict()``: a served one, else read once and kept.

        A model Triton does not have is the deployment's error, not the client's: a 500.
        """
        found = self.ensure_loaded().get(name) or self.helpers.get(name)
        if found is not None:
            return found
        try:
            found = self._located(self.gateway.model_info(name))
        except ModelNotFound:
            log.error("a processor called model %r, which Triton does not serve", name)
            raise ProcessorError(
                f"a processor called model {name!r}, which Triton does not serve"
            ) from None
        self.helpers = {**self.helpers, name: found}
        return found

    def is_ready(self) -> bool:
        """Ready to score: models loaded and Triton answering ready."""
        if not self.gateway.is_ready():
            return False
        try:
            self.ensure_loaded()
        except ScoringError:
            return False
        return True

    # -- scoring ---------------------------------------------------------------------------
    def plan(self, name: str | None) -> ModelPlan:
        """The plan of model ``name``, or of the default model when ``name`` is empty: one
        lookup per request (the plans are made when the models are read)."""
        models = self.ensure_loaded()
        if self._plans_for is not models:
            self._plans = {
                model.name: plan_model(self.settings, model, self.processors.for_model(model.name))
                for model in models.values()
            }
            self._plans_for = models
        plans = self._plans
        if name:
            found = plans.get(name)
            if found is None:
                raise ModelNotFound(f"unknown model {name!r}; served models: {sorted(plans)}")
            return found
        default = self.settings.default_model
        if default:
            if default not in plans:
                raise ModelNotFound(f"SCORE_MODEL is {default!r}, which Triton does not serve")
            return plans[default]
        if len(plans) == 1:
            return next(iter(plans.values()))
        raise BadRequest(
            f"several models are served ({sorted(plans)}): POST to /score/<model>, "
            "or set SCORE_MODEL to choose the one /score uses"
        )

    def model(self, name: str | None) -> ModelInfo:
        """The model ``name``, or the default model when ``name`` is empty."""
        return self.plan(name).model

    def body_limit(self, model_name: str | None, *, raw: bool = False) -> Limit:
        """The largest request body the model accepts, and which limit says so
        (:func:`~triton_score.scoring.plan.body_limit`). A model that cannot be resolved
        (unknown, Triton down) gets ``SCORE_MAX_BODY_BYTES``: its error is the scoring's to
        report, in the usual order."""
        try:
            return self.plan(model_name).body_limit(raw=raw)
        except ScoringError:
            return self.settings.max_body_bytes, "SCORE_MAX_BODY_BYTES"

    def decode(
        self,
        body: bytes,
        content_type: str,
        headers: dict[str, str],
        request_id: str,
        *,
        query: Mapping[str, str] | None = None,
    ) -> Request:
        """The body as a :class:`Request` (:func:`decode_request`); a body of
        :data:`OFFLOAD_DECODE_BYTES` or more is parsed in the offload pool, where there is
        one, so that a large JSON body does not stall the worker's other requests and probes
        while orjson reads it."""
        if len(body) >= OFFLOAD_DECODE_BYTES and self.offloader.active:
            return self.offloader.run(  # type: ignore[no-any-return]
                decode_request, body, content_type, headers, request_id, query
            )
        return decode_request(body, content_type, headers, request_id, query=query)

    def handle(
        self,
        plan: ModelPlan,
        body: bytes,
        content_type: str,
        headers: dict[str, str],
        telemetry: RequestTelemetry,
        *,
        query: Mapping[str, str] | None = None,
    ) -> Encoded:
        """All six stages for one request to ``plan``'s model: the body in, the answer out.

        The caller read ``body`` within ``plan.body_limit(...)``; ``telemetry`` observes the
        stages and is the caller's to :meth:`~RequestTelemetry.finish`.
        """
        with telemetry.stage("decode"):
            request = self.decode(body, content_type, headers, telemetry.request_id, query=query)
        result = self._stages(plan, request, telemetry)
        with telemetry.stage("encode"):
            return render(result)  # a processor's Response keeps its status and headers

    def score(
        self,
        request: Request,
        model: ModelPlan | str | None = None,
        telemetry: RequestTelemetry | None = None,
    ) -> Any:
        """The middle four stages for one decoded request; returns what the postprocessor
        returns (not yet encoded). ``model``: a plan, a model's name, or the default model."""
        plan = model if isinstance(model, ModelPlan) else self.plan(model)
        if telemetry is None:  # used on its own: spans when tracing, no metrics
            telemetry = RequestTelemetry(None, self.tracing, request_id=request.id)
        # The route refuses larger bodies before it reads them (handle() does not check
        # again); AzureML's run() and other callers are held to the same limit here.
        limit, source = plan.body_limit(raw=is_raw_tensor(request.content_type, request.headers))
        if len(request.body) > limit:
            raise BodyTooLarge(limit, len(request.body), source=source)
        return self._stages(plan, request, telemetry)

    def _stages(self, plan: ModelPlan, request: Request, telemetry: RequestTelemetry) -> Any:
        """Preprocess, validate, infer, postprocess: the middle of :meth:`handle`."""
        telemetry.model = plan.name
        processor = plan.processor
        model_info = plan.model
        with telemetry.stage("preprocess"):
            processor.check_request(request)
            raw_inputs = self._call(
                processor, "preprocess", processor.preprocess, request, model_info
            )
            _expect(
                processor, "preprocess", raw_inputs, Mapping, "a mapping of input name to array"
            )
        if processor.has_predict:
            inputs, wanted = dict(raw_inputs), None  # predict() validates each of its calls
        else:
            with telemetry.stage("validate"):
                inputs = validate_inputs(model_info, raw_inputs)
                chosen = self._call(processor, "outputs", processor.outputs, request, model_info)
                if chosen is not None:
                    what = "a mapping of output to class_count"
                    _expect(processor, "outputs", chosen, Mapping, what)
                wanted = validate_outputs(model_info, chosen)

        with telemetry.stage("infer"):
            if processor.has_predict:
                triton = Triton(self._inference, self.lookup, request.id, self.tracing)
                outputs = self._call(
                    processor, "predict", processor.predict, inputs, request, model_info, triton
                )
                what = "a mapping of output name to array"
                _expect(processor, "predict", outputs, Mapping, what)
            else:
                outputs = self._inference.infer(
                    model_info,
                    inputs,
                    wanted,
                    request_id=request.id,
                    headers=self.tracing.headers(),
                )

        with telemetry.stage("postprocess"):
            result = self._call(
                processor, "postprocess", processor.postprocess, outputs, request, model_info
            )
            _expect(processor, "postprocess", result, object, "a JSON-able value or bytes")
        return result

    @property
    def _inference(self) -> TritonGateway | Coalescer:
        """Where inference calls go: through the coalescer when there is one."""
        return self.coalescer if self.coalescer is not None else self.gateway

    # -- fresh metadata --------------------------------------------------------------------
    def refresh(self, gateway: TritonGateway) -> list[str]:
        """Read every model's metadata and config again (through ``gateway``, the refresher's
        own client); where Triton reloaded a model with a new config or version, run the
        processor's ``load(model)`` again and swap the :class:`ModelInfo` in, atomically.

        :return: the names of the models that changed (new ones included).
        """
        if not self.models:
            return []  # not loaded yet: the first request or readiness probe loads them
        current, helpers = self.models, self.helpers
        names = set(current)
        if not self.settings.models:
            names |= set(gateway.ready_model_names())  # every ready model is served
        fresh_models, fresh_helpers = dict(current), dict(helpers)
        changed = []
        for name in sorted(names | set(helpers)):
            try:
                fresh = self._located(gateway.model_info(name))
            except ScoringError as exc:
                if name not in self._missing:
                    log.warning("model %s: metadata not readable now (%s)", name, exc.message)
                    self._missing.add(name)
                continue
            self._missing.discard(name)
            old = current.get(name) or helpers.get(name)
            if fresh == old:
                continue
            processor = self.processors.for_model(name)
            try:
                processor.load(fresh)
                loaded = f"processor {processor.name} loaded again"
            except Exception:  # one bad load() must not stop the refresher
                log.exception("model %s: load() of processor %s failed", name, processor.name)
                loaded = f"load() of processor {processor.name} FAILED (see above)"
            (fresh_helpers if name in helpers else fresh_models)[name] = fresh
            log.info("model %s: %s; %s", name, describe_change(old, fresh), loaded)
            changed.append(name)
        if changed:
            with self._lock:  # two assignments, each atomic: requests see old or new
                self.models, self.helpers = fresh_models, fresh_helpers
        return changed

    def run(self, raw: str | bytes, headers: Mapping[str, str] | None = None) -> Any:
        """AzureML's ``run(raw_data)``: score ``raw`` on the default model; the stages of
        :meth:`handle` but the last, since AzureML's server encodes what ``run()`` returns.

        ``headers`` (when the server passes them) supply the content type and request id.
        """
        body = raw.encode("utf-8") if isinstance(raw, str) else raw
        headers = dict(headers or {})
        request_id = header(headers, REQUEST_ID)
        telemetry = RequestTelemetry(None, self.tracing, request_id=request_id)
        plan = self.plan(None)
        with telemetry.stage("decode"):
            request = self.decode(body, header(headers, "content-type"), headers, request_id)
        return self.score(request, plan, telemetry)

    def _call(
        self, processor: Processor, stage: str, function: Callable[..., Any], *args: Any
    ) -> Any:
        """``function(*args)``, a stage of ``processor``: in the offload pool when the settings
        and the processor say so (never ``predict``), else inline. Either way a
        :class:`ScoringError` passes through, and anything else is the processor's 500."""
        try:
            if self.offloader.wanted(processor, stage):
                return self.offloader.run(function, *args)
            return function(*args)
        except ScoringError:
            raise
        except Exception as exc:
            request = next((a for a in args if isinstance(a, Request)), None)
            request_id = request.id if request else ""
            ids = log_ids(request_id, self.tracing.trace_id())
            log.exception("%s of %s failed (%s)", stage, processor.name, ids)
            raise ProcessorError(
                f"{stage} failed in processor {processor.name}; see the server log for "
                f"request id {request_id}",
                details={"request_id": request_id},
            ) from exc


def _expect(processor: Processor, stage: str, value: Any, kind: type, what: str) -> None:
    """A hook that returns the wrong kind of value is the processor's bug: a 500 naming it,
    never a client error. Coroutines (an ``async def`` hook slipped through) included."""
    if inspect.isawaitable(value) or not isinstance(value, kind):
        if inspect.iscoroutine(value):
            value.close()  # no "never awaited" warning on top of the error
        log.error(
            "%s of processor %s returned %s; it must return %s",
            stage,
            processor.name,
            type(value).__name__,
            what,
        )
        raise ProcessorError(
            f"processor {processor.name} is broken: its {stage}() returned "
            f"{type(value).__name__}, not {what}; see the server log"
        )


def describe_change(old: ModelInfo | None, new: ModelInfo) -> str:
    """What changed between two readings of a model, in a few words for the log."""
    if old is None:
        return f"now served (version {new.version})"
    changes = []
    if old.version != new.version:
        changes.append(f"version {old.version} -> {new.version}")
    if old.max_batch_size != new.max_batch_size:
        changes.append(f"max_batch_size {old.max_batch_size} -> {new.max_batch_size}")
    if (old.inputs, old.outputs) != (new.inputs, new.outputs):
        changes.append("inputs/outputs changed")
    if old.parameters != new.parameters:
        changes.append("parameters changed")
    what = ", ".join(changes) or "config changed"
    return f"Triton reloaded it ({what})"
