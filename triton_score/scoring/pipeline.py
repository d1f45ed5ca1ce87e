"""The scoring pipeline: decode -> preprocess -> validate -> infer -> postprocess -> encode.

:class:`Scorer` owns one worker's view of the world: the Triton gateway, each model's
:class:`~triton_score.model.info.ModelInfo` (read once, cached, swapped by :meth:`Scorer.refresh`
when Triton reloads a model) with its :class:`~triton_score.scoring.plan.ModelPlan`, and the
processors; and it owns the stages. The route hands :meth:`Scorer.handle` the body and gets
the encoded answer back; AzureML's ``run()`` calls :meth:`Scorer.run`, which stops before
encoding because AzureML's server encodes what ``run()`` returns. Either raises a
:class:`~triton_score.errors.ScoringError` for what the client gets as an error.

With a processor's ``predict()``, "validate -> infer" becomes the processor's own calls
through a :class:`~triton_score.triton.handle.Triton` handle, each validated the same way.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any

from triton_score.codecs.request import REQUEST_ID, Request, decode_request, header
from triton_score.codecs.response import Encoded, render
from triton_score.codecs.tensors import is_raw_tensor
from triton_score.errors import (
    BodyTooLarge,
    ProcessorError,
    ScoringError,
    TritonError,
)
from triton_score.model.info import ModelInfo
from triton_score.model.validation import validate_inputs, validate_outputs
from triton_score.processors import Processor, ProcessorRegistry
from triton_score.scoring.catalog import Catalog
from triton_score.scoring.offload import Offloader
from triton_score.scoring.plan import Limit, ModelPlan
from triton_score.scoring.telemetry import RequestTelemetry
from triton_score.settings import Settings
from triton_score.telemetry.capture import Capture, Captured
from triton_score.telemetry.tracing import NO_TRACING, Tracing, log_ids
from triton_score.triton.batches import Batches
from triton_score.triton.coalesce import Coalescer
from triton_score.triton.gateway import TritonGateway
from triton_score.triton.handle import Triton
from triton_score.triton.streams import StreamError, Streams

#: Bodies from this size on are decoded in the offload pool (:meth:`Scorer.decode`): orjson
#: reads ~1 GB/s, so below it the worker's loop is held for about a millisecond at most, less
#: than the hop to a thread and back costs under load.
OFFLOAD_DECODE_BYTES = 1024 * 1024
log = logging.getLogger(__name__)


class Scorer:
    """Scores requests for the models one Triton serves.

    :param models: the served models, when known already (tests); else read from Triton.
    :param coalescer: joins concurrent requests into one Triton call (``SCORE_COALESCE``);
        ``None``: each request is its own call. :func:`triton_score.runtime.build_runtime`
        sets it.
    :param tracing: spans for requests and their stages; off by default. Each request's
        :class:`RequestTelemetry` opens them (and the metrics are its too).
    :param capture: records a sample of the requests (``SCORE_CAPTURE``,
        :mod:`triton_score.telemetry.capture`); ``None`` (the default): nothing, at no cost.
    """

    def __init__(
        self,
        settings: Settings,
        gateway: TritonGateway,
        processors: ProcessorRegistry,
        *,
        tracing: Tracing = NO_TRACING,
        coalescer: Coalescer | None = None,
        models: dict[str, ModelInfo] | None = None,
        capture: Capture | None = None,
    ) -> None:
        self.settings = settings
        self.capture = capture
        self.gateway = gateway
        self.processors = processors
        self.tracing = tracing
        self.coalescer = coalescer
        #: Where inference calls go (:attr:`_inference`), made again when the gateway or the
        #: coalescer is replaced.
        self._batches = Batches(coalescer if coalescer is not None else gateway)
        #: The served models, their metadata and plans (:mod:`triton_score.scoring.catalog`).
        self.catalog = Catalog(settings, gateway, processors, models=dict(models or {}))
        #: Runs CPU-heavy processor stages in threads (``SCORE_OFFLOAD``); see :meth:`_call`.
        self.offloader = Offloader(settings.offload, settings.offload_threads)
        #: Where a decoupled model's streams go (:meth:`stream`).
        self.streams = Streams(
            settings.triton_url, settings.triton_grpc_url, settings.stream_idle_s
        )

    # -- the catalog's, for the callers of a scorer -------------------------------------------
    @property
    def models(self) -> dict[str, ModelInfo]:
        return self.catalog.models

    @models.setter
    def models(self, models: dict[str, ModelInfo]) -> None:
        self.catalog.models = models

    @property
    def helpers(self) -> dict[str, ModelInfo]:
        return self.catalog.helpers

    @property
    def loaded(self) -> bool:
        return self.catalog.loaded

    def ensure_loaded(self) -> dict[str, ModelInfo]:
        return self.catalog.ensure_loaded()

    def lookup(self, name: str) -> ModelInfo:
        return self.catalog.lookup(name)

    def plan(self, name: str | None) -> ModelPlan:
        """The plan of model ``name``, or of the default model when ``name`` is empty."""
        return self.catalog.plan(name)

    def refresh(self, gateway: TritonGateway) -> list[str]:
        return self.catalog.refresh(gateway)

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
        capture = self.capture  # the one check a request pays when capture is off
        if capture is not None and capture.sampled(plan.name):
            return self._captured(capture, plan, request, telemetry, encode=True)
        result = self._stages(plan, request, telemetry)
        with telemetry.stage("encode"):
            return render(result)  # a processor's Response keeps its status and headers

    def _captured(
        self,
        capture: Capture,
        plan: ModelPlan,
        request: Request,
        telemetry: RequestTelemetry,
        *,
        encode: bool,
    ) -> Any:
        """The stages for a request that ``capture`` records (:meth:`recorded`); then the
        capture is queued, never waited for."""
        entry = self.recorded(plan, request, telemetry, encode=encode)
        capture.submit(entry)
        return entry.answer

    def recorded(
        self,
        plan: ModelPlan,
        request: Request,
        telemetry: RequestTelemetry,
        *,
        encode: bool = True,
    ) -> Captured:
        """The stages for one decoded request, which also hand back the tensors they sent
        to Triton and got from it: what a capture records, and what ``score replay``
        compares. ``encode``: render the answer, as :meth:`handle` does."""
        tensors: list[Mapping[str, Any]] = []
        answer = self._stages(plan, request, telemetry, tensors)
        if encode:
            with telemetry.stage("encode"):
                answer = render(answer)
        inputs, outputs = tensors
        return Captured(
            plan.name,
            plan.model.version,
            request,
            inputs,
            outputs,
            answer,
            telemetry.trace_id,
            dict(telemetry.timings),
            telemetry.elapsed(),
            time.time(),
        )

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
        capture = self.capture
        if capture is not None and capture.sampled(plan.name):
            return self._captured(capture, plan, request, telemetry, encode=False)
        return self._stages(plan, request, telemetry)

    def _stages(
        self,
        plan: ModelPlan,
        request: Request,
        telemetry: RequestTelemetry,
        tensors: list[Mapping[str, Any]] | None = None,
    ) -> Any:
        """Preprocess, validate, infer, postprocess: the middle of :meth:`handle`.

        :param tensors: when given (a captured request), the inputs sent to Triton and the
            outputs it answered are appended to it, in that order.
        """
        telemetry.model = plan.name
        processor = plan.processor
        model_info = plan.model
        raw_inputs = self._preprocess(processor, request, model_info, telemetry)
        if processor.has_predict:
            inputs, wanted = dict(raw_inputs), None  # predict() validates each of its calls
        else:
            with telemetry.stage("validate"):
                inputs = validate_inputs(model_info, raw_inputs, rows=plan.rows)
                chosen = self._call(processor, "outputs", processor.outputs, request, model_info)
                if chosen is not None:
                    what = "a mapping of output to class_count"
                    _expect(processor, "outputs", chosen, Mapping, what)
                wanted = validate_outputs(model_info, chosen)

        with telemetry.stage("infer"):
            if processor.has_predict:
                triton = Triton(
                    self._inference, self.lookup, request.id, self.tracing, rows=plan.rows
                )
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
        if tensors is not None:
            tensors += (inputs, outputs)
        return result

    def handle_stream(
        self,
        plan: ModelPlan,
        body: bytes,
        content_type: str,
        headers: dict[str, str],
        telemetry: RequestTelemetry,
        *,
        query: Mapping[str, str] | None = None,
    ) -> Iterator[Any]:
        """:meth:`handle` for a decoupled model: decode, then :meth:`stream`."""
        with telemetry.stage("decode"):
            request = self.decode(body, content_type, headers, telemetry.request_id, query=query)
        return self.stream(plan, request, telemetry)

    def stream(
        self, plan: ModelPlan, request: Request, telemetry: RequestTelemetry
    ) -> Iterator[Any]:
        """The stages for a *decoupled* model (one request, many responses: a language
        model's tokens): preprocess and validate once, then ``postprocess`` once per response
        of the model, each value it returns (``None``: nothing) one item of the stream.

        The request reaches Triton before this returns, and its first value is ready, so a
        refusal (Triton's or the processor's) raises here, before an answer has begun;
        later failures raise from the iterator. Closing the iterator ends Triton's request.
        """
        telemetry.model = plan.name
        processor = plan.processor
        model_info = plan.model
        if processor.has_predict:
            raise ProcessorError(
                f"processor {processor.name} has predict(), which cannot stream: model "
                f"{plan.name} is decoupled; use preprocess() and postprocess()"
            )
        raw_inputs = self._preprocess(processor, request, model_info, telemetry)
        with telemetry.stage("validate"):
            inputs = validate_inputs(model_info, raw_inputs, rows=plan.rows)
        values = self._streamed(processor, plan, request, inputs, telemetry)
        first = next(values, _END)  # the request's refusals, before an answer begins
        return _prepend(first, values)

    def _streamed(
        self,
        processor: Processor,
        plan: ModelPlan,
        request: Request,
        inputs: Mapping[str, Any],
        telemetry: RequestTelemetry,
    ) -> Generator[Any]:
        # The request's span is current here: Triton's spans of the stream go under it.
        responses = self.streams.tensors(plan.model, inputs, request.id, self.tracing.headers())
        waited = 0.0
        try:
            while True:
                started = time.perf_counter()
                try:
                    outputs = next(responses, None)
                except StreamError as exc:
                    status = exc.status if 400 <= exc.status < 500 else 500
                    log.error("stream of model %s failed: %s", plan.name, exc.message)
                    raise TritonError(
                        exc.message if status < 500 else f"model {plan.name}'s stream failed",
                        status,
                    ) from None
                finally:
                    waited += time.perf_counter() - started
                if outputs is None:
                    return
                with telemetry.stage("postprocess"):
                    value = self._call(
                        processor,
                        "postprocess",
                        processor.postprocess,
                        outputs,
                        request,
                        plan.model,
                    )
                if value is not None:
                    yield value
        finally:
            responses.close()
            telemetry.add("infer", waited)

    def _preprocess(
        self,
        processor: Processor,
        request: Request,
        model_info: ModelInfo,
        telemetry: RequestTelemetry,
    ) -> Mapping[str, Any]:
        """The preprocess stage: the request's media type checked, ``preprocess`` called,
        what it returned checked to be a mapping."""
        with telemetry.stage("preprocess"):
            processor.check_request(request)
            raw_inputs = self._call(
                processor, "preprocess", processor.preprocess, request, model_info
            )
            _expect(
                processor, "preprocess", raw_inputs, Mapping, "a mapping of input name to array"
            )
        return raw_inputs

    @property
    def _inference(self) -> Batches:
        """Where inference calls go: split into calls of ``max_batch_size`` rows when larger
        (:mod:`triton_score.triton.batches`), through the coalescer when there is one."""
        target = self.coalescer if self.coalescer is not None else self.gateway
        if self._batches.gateway is not target:
            self._batches = Batches(target)
        return self._batches

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


_END = object()


def _prepend(first: Any, rest: Generator[Any]) -> Generator[Any]:
    """``first`` (unless the stream had nothing: :data:`_END`), then ``rest``; closing
    this closes ``rest``."""
    try:
        if first is not _END:
            yield first
            yield from rest
    finally:
        rest.close()


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
