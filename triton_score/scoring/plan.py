"""A model's plan: what every request for it needs, resolved once.

Before a request's body is read, the route needs the model, its processor and the largest
body it may send; the stages need the model and the processor again. A :class:`ModelPlan`
holds all three, built when the model's metadata is read (and again when it is refreshed),
so a request makes one dictionary lookup instead of resolving the model four times.
"""

from __future__ import annotations

from dataclasses import dataclass

from triton_score.codecs.tensors import largest_request_bytes
from triton_score.model.info import ModelInfo
from triton_score.processors import Processor
from triton_score.settings import Settings

#: The body limit of a model whose processor decodes the request itself (a ``preprocess``)
#: and says nothing (no ``max_body_bytes``): the default codec's models are bounded by
#: their metadata, a processor's by this, so that a digits or QA request cannot be 100 MiB
#: of JSON parsed in the worker. A processor's own ``max_body_bytes`` replaces it (up to
#: ``SCORE_MAX_BODY_BYTES``).
PROCESSOR_BODY_BYTES = 16 * 1024 * 1024

#: A body limit and what sets it (a setting, the processor, the model), for the 413.
Limit = tuple[int, str]


@dataclass(frozen=True)
class ModelPlan:
    """One served model, ready for requests."""

    model: ModelInfo
    processor: Processor
    #: The largest body of a request in any form but a raw tensor, and who says so.
    limit: Limit
    #: The same for a raw ``application/octet-stream`` tensor, whose largest size is exact.
    raw_limit: Limit
    #: The most rows a request may send (``SCORE_MAX_ROWS``, or the processor's
    #: ``max_rows``), and who says so; rows past ``max_batch_size`` are split into calls.
    rows: Limit

    @property
    def name(self) -> str:
        return self.model.name

    def body_limit(self, *, raw: bool = False) -> Limit:
        return self.raw_limit if raw else self.limit


def plan_model(settings: Settings, model: ModelInfo, processor: Processor) -> ModelPlan:
    """The plan of ``model`` served through ``processor`` under ``settings``."""
    rows = rows_limit(settings, model, processor)
    return ModelPlan(
        model,
        processor,
        body_limit(settings, model, processor, raw=False, rows=rows[0]),
        body_limit(settings, model, processor, raw=True, rows=rows[0]),
        rows,
    )


def rows_limit(settings: Settings, model: ModelInfo, processor: Processor) -> Limit:
    """The most rows one request for ``model`` may send: ``SCORE_MAX_ROWS``, or the
    processor's ``max_rows`` when it is lower."""
    limit = (settings.max_rows, "SCORE_MAX_ROWS")
    own = processor.max_rows
    if own is not None and own < limit[0]:
        limit = (own, f"max_rows of the {model.name} processor")
    return limit


def body_limit(
    settings: Settings,
    model: ModelInfo,
    processor: Processor,
    *,
    raw: bool = False,
    rows: int | None = None,
) -> Limit:
    """The largest request body the model accepts, and which limit says so.

    The smallest of ``SCORE_MAX_BODY_BYTES``, the processor's ``max_body_bytes`` (or
    :data:`PROCESSOR_BODY_BYTES` for a processor that decodes requests itself) and, when
    the default codec decodes the request, the largest valid request the model's metadata
    allows (:func:`~triton_score.codecs.tensors.largest_request_bytes`).

    :param raw: the request is a raw ``application/octet-stream`` tensor
        (:func:`~triton_score.codecs.tensors.is_raw_tensor`).
    :param rows: the most rows a request may send (default: the model's ``max_batch_size``).
    """
    limits = [(settings.max_body_bytes, "SCORE_MAX_BODY_BYTES")]
    own = processor.max_body_bytes
    if own is not None:
        limits.append((own, f"max_body_bytes of the {model.name} processor"))
    elif processor.has_preprocess:
        limits.append(
            (
                PROCESSOR_BODY_BYTES,
                f"the default for a processor (give the {model.name} processor "
                "max_body_bytes for more)",
            )
        )
    if not processor.has_preprocess:  # the default codec reads the tensors: bound them
        largest = largest_request_bytes(model, raw=raw, rows=rows)
        if largest is not None:
            limits.append((largest, f"the largest valid request for model {model.name}"))
    # min() keeps the first of equals: the setting, then the processor's, then the model's.
    return min(limits, key=lambda limit: limit[0])
