"""Processors: the per-model pre- and post-processing data scientists write.

A processor is a class with up to three methods, registered for one or more models with the
:func:`processor` decorator::

    import numpy as np
    from triton_score import Request, ModelInfo, processor

    @processor("digits_onnx")
    class Digits:
        outputs = {"probabilities": 3}           # ask Triton for the top 3 classes

        def preprocess(self, request: Request, model: ModelInfo) -> dict[str, np.ndarray]:
            pixels = np.asarray(request.json["image"], dtype=np.float32)
            return {"image": pixels.reshape(1, 8, 8)}

        def postprocess(self, outputs, request, model):
            return {"top3": [s.decode() for s in outputs["probabilities"][0]]}

Rules (each checked when the module is loaded, not on the first request):

- ``preprocess(request, model)`` returns ``{input name: array}``; the arrays are validated
  against the model's metadata before Triton sees them. Missing: the default codec.
- ``postprocess(outputs, request, model)`` gets ``{output name: array}`` and returns what the
  client receives (anything JSON-able, numpy included, or ``bytes``). Missing: the default
  codec's JSON.
- ``outputs`` (attribute, or method ``outputs(request, model)``) maps the outputs to request
  to their ``class_count`` (0 = the raw tensor); ``None`` means every output, raw.
- ``load(model)`` runs once per worker at start-up (read vocabularies, label maps...), and
  again when Triton reloads the model with a new config or version.
- ``max_body_bytes`` (attribute, a positive int) sets the largest request body the model's
  ``/score`` route accepts, up to ``SCORE_MAX_BODY_BYTES``; without it a processor with a
  ``preprocess`` gets 16 MiB. A larger ``Content-Length`` is a 413 before the body is read.
- ``max_rows`` (attribute, a positive int) lowers ``SCORE_MAX_ROWS``, the most rows (batch
  dimension) one request may send to the model, for this model: more is a 413. Rows beyond
  the model's ``max_batch_size`` need nothing of the processor: they are split into several
  Triton calls and joined back in order (:mod:`triton_score.triton.batches`), for ``preprocess``'s
  tensors and ``triton.infer`` calls alike.
- ``offload = True`` (attribute) runs ``preprocess``, an ``outputs()`` method and
  ``postprocess`` in a thread pool under Gunicorn (``SCORE_OFFLOAD``, see
  :mod:`triton_score.scoring.offload`): for CPU-heavy stages (image decoding, tokenizing, large
  arrays), so they do not stall the worker's other requests. Never ``predict``.
- Raise :class:`triton_score.errors.BadRequest` for a bad request; anything else is a 500 whose
  traceback goes to the log, never to the client.

Optional, when you need more (``docs/processors.md``, "When you need more"):

- ``request.state``: a dict of the request's own, from ``preprocess`` to ``postprocess``;
- ``predict(inputs, request, model, triton)`` replaces the single Triton call: it gets what
  ``preprocess`` returned and calls any model with ``triton.infer(model, inputs, outputs)``
  (validated as usual), returning ``{output name: array}`` for ``postprocess``;
- ``postprocess`` may return a :class:`triton_score.Response` (status, headers, content type);
- ``request_schema`` (a JSON schema) validates JSON requests (a 400 naming the field) and
  documents them, with ``request_example``, ``request_content_types``, ``response_schema`` and
  ``response_content_types`` (see :mod:`triton_score.processors.schema`).

Where processors come from: :mod:`triton_score.processors.loading`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from triton_score.codecs import tensors
from triton_score.codecs.request import Request
from triton_score.model.info import ModelInfo
from triton_score.processors.schema import RequestContract
from triton_score.triton.handle import Triton

log = logging.getLogger(__name__)
T = TypeVar("T")
MODELS_ATTRIBUTE = "__score_models__"
_METHODS = {"preprocess": 2, "postprocess": 3, "load": 1, "predict": 4}
#: A processor defines at least one of these.
_STAGES = ("preprocess", "postprocess", "predict")


class ProcessorDefinitionError(TypeError):
    """A processor class is not written the way this module describes."""


def processor(*models: str) -> Callable[[T], T]:
    """Mark a class as the processor of ``models`` (model names as Triton knows them).

    The decorator only labels the class; :class:`ProcessorRegistry` collects labelled classes
    when it loads a module, so importing a module has no side effect on any server.
    """
    if not models or not all(isinstance(m, str) and m for m in models):
        raise ProcessorDefinitionError("@processor needs at least one model name")

    def mark(cls: T) -> T:
        if not inspect.isclass(cls):
            raise ProcessorDefinitionError("@processor decorates a class")
        check_processor_class(cls)
        setattr(cls, MODELS_ATTRIBUTE, tuple(models))
        return cls

    return mark


def check_processor_class(cls: type) -> None:
    """Reject a class whose methods cannot be called the documented way."""
    if not any(callable(getattr(cls, name, None)) for name in _STAGES):
        raise ProcessorDefinitionError(
            f"{cls.__qualname__} defines neither preprocess() nor postprocess() (nor predict())"
        )
    if getattr(cls, "predict", None) is not None and getattr(cls, "outputs", None) is not None:
        raise ProcessorDefinitionError(
            f"{cls.__qualname__} defines predict() and outputs: with predict(), name the "
            "outputs in each triton.infer(model, inputs, outputs) call instead"
        )
    for name in (*_METHODS, "outputs"):
        method = getattr(cls, name, None)
        if inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method):
            raise ProcessorDefinitionError(
                f"{cls.__qualname__}.{name}() is async; processor hooks must be plain "
                "functions (the worker is already concurrent: gevent runs many requests at once)"
            )
    for name, arity in _METHODS.items():
        method = getattr(cls, name, None)
        if method is None:
            continue
        try:
            inspect.signature(method).bind(None, *range(arity))
        except TypeError:
            raise ProcessorDefinitionError(
                f"{cls.__qualname__}.{name}() must accept {arity} argument(s) after self: "
                f"see triton_score.processors"
            ) from None
    limit = getattr(cls, "max_body_bytes", None)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ProcessorDefinitionError(
            f"{cls.__qualname__}.max_body_bytes must be a positive number of bytes, got {limit!r}"
        )
    rows = getattr(cls, "max_rows", None)
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise ProcessorDefinitionError(
            f"{cls.__qualname__}.max_rows must be a positive number of rows, got {rows!r}"
        )
    offload = getattr(cls, "offload", False)
    if not isinstance(offload, bool):
        raise ProcessorDefinitionError(
            f"{cls.__qualname__}.offload must be True or False, got {offload!r}"
        )
    try:
        inspect.signature(cls).bind()
    except TypeError:
        raise ProcessorDefinitionError(
            f"{cls.__qualname__} must be constructible without arguments"
        ) from None
    try:
        RequestContract(cls)
    except ValueError as exc:
        raise ProcessorDefinitionError(f"{cls.__qualname__}: {exc}") from None


class Processor:
    """A loaded processor for one model, with the default codec filling the gaps."""

    def __init__(self, implementation: Any | None, source: str = "default codec") -> None:
        self.implementation = implementation
        self.source = source
        #: The declared request (schema compiled once, here), or ``None`` if nothing to check.
        contract = RequestContract(implementation) if implementation is not None else None
        self.contract = contract if contract is not None and contract.active else None

    @property
    def name(self) -> str:
        if self.implementation is None:
            return "default codec"
        return type(self.implementation).__qualname__

    @property
    def max_body_bytes(self) -> int | None:
        """The processor's own limit on request bodies, if it declares one."""
        limit = getattr(self.implementation, "max_body_bytes", None)
        return int(limit) if limit is not None else None

    @property
    def max_rows(self) -> int | None:
        """The processor's own limit on rows per request, if it declares one."""
        rows = getattr(self.implementation, "max_rows", None)
        return int(rows) if rows is not None else None

    @property
    def offload(self) -> bool:
        """Whether the processor asks for its stages to run in a thread (``offload = True``)."""
        return bool(getattr(self.implementation, "offload", False))

    @property
    def computes_outputs(self) -> bool:
        """Whether :meth:`outputs` runs code of the processor's (an ``outputs()`` method)."""
        return callable(getattr(self.implementation, "outputs", None))

    def load(self, model: ModelInfo) -> None:
        hook = getattr(self.implementation, "load", None)
        if hook is not None:
            hook(model)

    def check_request(self, request: Request) -> None:
        """Refuse a request that breaks the declared content types or ``request_schema``."""
        if self.contract is not None:
            self.contract.check(request)

    @property
    def has_preprocess(self) -> bool:
        """Whether the processor reads the request itself (else the default codec does)."""
        return getattr(self.implementation, "preprocess", None) is not None

    @property
    def has_predict(self) -> bool:
        return getattr(self.implementation, "predict", None) is not None

    def predict(
        self, inputs: Mapping[str, Any], request: Request, model: ModelInfo, triton: Triton
    ) -> Mapping[str, Any]:
        hook = getattr(self.implementation, "predict", None)
        if hook is None:
            raise RuntimeError(f"{self.name} has no predict()")
        return hook(inputs, request, model, triton)  # type: ignore[no-any-return]

    def preprocess(self, request: Request, model: ModelInfo) -> Mapping[str, Any]:
        hook = getattr(self.implementation, "preprocess", None)
        if hook is None:
            return tensors.decode_inputs(request, model)
        return hook(request, model)

    def outputs(self, request: Request, model: ModelInfo) -> Mapping[str, int] | None:
        chosen = getattr(self.implementation, "outputs", None)
        if chosen is not None:
            return chosen(request, model) if callable(chosen) else chosen
        if getattr(self.implementation, "preprocess", None) is None:
            # The default codec decodes the request, so the request may name its outputs.
            return tensors.decode_outputs(request)
        return None  # a processor's request format is its own: every output, raw

    def postprocess(self, outputs: Mapping[str, Any], request: Request, model: ModelInfo) -> Any:
        hook = getattr(self.implementation, "postprocess", None)
        if hook is None:
            return tensors.encode_outputs(outputs, model, request)
        return hook(outputs, request, model)


class ProcessorRegistry:
    """Model name -> :class:`Processor`; frozen once the server starts serving.

    Sources are registered in order of precedence (see :mod:`triton_score.processors.loading`),
    each after a call to :meth:`next_source`. Within one source, two processors for one model
    are an error naming both, not a silent override; across sources the earlier one wins.
    """

    def __init__(self) -> None:
        self._classes: dict[str, tuple[type, str, int]] = {}
        self._instances: dict[str, Processor] = {}
        self._frozen = False
        self._source = 0

    def next_source(self) -> None:
        """What is registered from now on yields to what was registered before."""
        self._source += 1

    def register(self, cls: type, source: str = "", models: Iterable[str] | None = None) -> None:
        if self._frozen:
            raise RuntimeError("processors cannot be registered after the server started")
        check_processor_class(cls)
        names = tuple(models) if models is not None else getattr(cls, MODELS_ATTRIBUTE, ())
        if not names:
            raise ProcessorDefinitionError(
                f"{cls.__qualname__} names no model: use @processor(...)"
            )
        for model in names:
            if model in self._classes and self._classes[model][0] is not cls:
                other, where, rank = self._classes[model]
                if rank < self._source:
                    log.info(
                        "model %s: processor %s (%s) is used; %s (%s) comes later and is not",
                        model,
                        other.__qualname__,
                        where,
                        cls.__qualname__,
                        source,
                    )
                    continue
                raise ProcessorDefinitionError(
                    f"two processors for model {model!r}: {other.__qualname__} ({where}) "
                    f"and {cls.__qualname__} ({source})"
                )
            self._classes.setdefault(model, (cls, source, self._source))

    def register_module(self, module: Any, source: str = "") -> int:
        """Register every ``@processor`` class defined in ``module``; returns how many."""
        count = 0
        for value in vars(module).values():
            if inspect.isclass(value) and getattr(value, MODELS_ATTRIBUTE, None):
                if value.__module__ != module.__name__:
                    continue  # imported from elsewhere; registered where it is defined
                self.register(value, source or module.__name__)
                count += 1
        return count

    def models(self) -> list[str]:
        return sorted(self._classes)

    def freeze(self) -> None:
        self._frozen = True

    def for_model(self, model: str) -> Processor:
        """The processor of ``model`` (one instance per worker), or the default codec."""
        found = self._instances.get(model)
        if found is None:
            entry = self._classes.get(model)
            found = Processor(entry[0](), entry[1]) if entry else Processor(None)
            self._instances[model] = found
        return found
