"""The scoring pipeline: decode -> preprocess -> validate -> infer -> postprocess -> encode.

:class:`Scorer` owns one worker's view of the world: the Triton gateway, each model's
:class:`~triton_score.metadata.ModelInfo` (read once, cached) and the processors. The web layer
hands it a decoded :class:`~triton_score.codecs.Request`; it returns what the client gets, or
raises a :class:`~triton_score.errors.ScoringError`.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from triton_score.codecs.request import REQUEST_ID, Request, decode_request, header
from triton_score.errors import (
    BadRequest,
    BodyTooLarge,
    ModelNotFound,
    ProcessorError,
    ScoringError,
)
from triton_score.metadata import ModelInfo
from triton_score.processors import Processor, ProcessorRegistry
from triton_score.settings import Settings
from triton_score.triton import TritonGateway
from triton_score.validation import validate_inputs, validate_outputs

log = logging.getLogger(__name__)

#: Called with (stage, model, seconds) after each stage; the metrics module listens.
StageObserver = Callable[[str, str, float], None]


@dataclass
class Scorer:
    """Scores requests for the models one Triton serves."""

    settings: Settings
    gateway: TritonGateway
    processors: ProcessorRegistry
    observe: StageObserver = field(default=lambda stage, model, seconds: None)
    models: dict[str, ModelInfo] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

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
            models = self.gateway.load_models(self.settings.models)
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
        models = self.ensure_loaded()
        if name:
            if name not in models:
                raise ModelNotFound(f"unknown model {name!r}; served models: {sorted(models)}")
            return models[name]
        default = self.settings.default_model
        if default:
            if default not in models:
                raise ModelNotFound(f"SCORE_MODEL is {default!r}, which Triton does not serve")
            return models[default]
        if len(models) == 1:
            return next(iter(models.values()))
        raise BadRequest(
            f"several models are served ({sorted(models)}): POST to /score/<model>, "
            "or set SCORE_MODEL to choose the one /score uses"
        )

    def body_limit(self, model_name: str | None) -> tuple[int, str]:
        """The largest request body the model accepts, and which setting says so.

        ``min(SCORE_MAX_BODY_BYTES, the processor's max_body_bytes)``. A model that cannot be
        resolved (unknown, Triton down) gets ``SCORE_MAX_BODY_BYTES``: its error is the
        scoring's to report, in the usual order.
        """
        try:
            model = self.model(model_name)
        except ScoringError:
            return self.settings.max_body_bytes, "SCORE_MAX_BODY_BYTES"
        return self._body_limit(model, self.processors.for_model(model.name))

    def _body_limit(self, model: ModelInfo, processor: Processor) -> tuple[int, str]:
        own = processor.max_body_bytes
        if own is not None and own < self.settings.max_body_bytes:
            return own, f"max_body_bytes of the {model.name} processor"
        return self.settings.max_body_bytes, "SCORE_MAX_BODY_BYTES"

    def score(self, request: Request, model_name: str | None = None) -> Any:
        """Score one decoded request; returns what the postprocessor returns."""
        model = self.model(model_name)
        processor = self.processors.for_model(model.name)
        # /score refused larger bodies before reading them; this holds for the other callers
        # (the entry script's run(), tests) too.
        limit, source = self._body_limit(model, processor)
        if len(request.body) > limit:
            raise BodyTooLarge(limit, len(request.body), source=source)

        started = time.perf_counter()
        raw_inputs = self._call(processor, "preprocess", processor.preprocess, request, model)
        _expect(processor, "preprocess", raw_inputs, Mapping, "a mapping of input name to array")
        inputs = validate_inputs(model, raw_inputs)
        chosen = self._call(processor, "outputs", processor.outputs, request, model)
        if chosen is not None:
            _expect(processor, "outputs", chosen, Mapping, "a mapping of output to class_count")
        wanted = validate_outputs(model, chosen)
        self.observe("preprocess", model.name, time.perf_counter() - started)

        started = time.perf_counter()
        outputs = self.gateway.infer(model, inputs, wanted, request_id=request.id)
        self.observe("infer", model.name, time.perf_counter() - started)

        started = time.perf_counter()
        result = self._call(
            processor, "postprocess", processor.postprocess, outputs, request, model
        )
        _expect(processor, "postprocess", result, object, "a JSON-able value or bytes")
        self.observe("postprocess", model.name, time.perf_counter() - started)
        return result

    def run(self, raw: str | bytes, headers: Mapping[str, str] | None = None) -> Any:
        """AzureML's ``run(raw_data)``: score ``raw`` on the default model.

        ``headers`` (when the server passes them) supply the content type and request id.
        """
        body = raw.encode("utf-8") if isinstance(raw, str) else raw
        headers = headers or {}
        content_type = header(headers, "content-type")
        return self.score(decode_request(body, content_type, headers, header(headers, REQUEST_ID)))

    @staticmethod
    def _call(processor: Processor, stage: str, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except ScoringError:
            raise
        except Exception as exc:
            request = next((a for a in args if isinstance(a, Request)), None)
            request_id = request.id if request else ""
            log.exception("%s of %s failed (request %s)", stage, processor.name, request_id)
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
