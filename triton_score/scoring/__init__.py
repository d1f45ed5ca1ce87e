"""The request path, owned once: decode -> preprocess -> validate -> infer -> postprocess ->
encode.

==================  =====================================================================
``catalog.py``      :class:`Catalog`: the served models, their metadata read once and
                    kept fresh, and their plans
``plan.py``         :class:`ModelPlan`: what a request for one model needs (the model, its
                    processor, its body limits), resolved once when the model loads
``pipeline.py``     :class:`Scorer`: the six stages, for the ``/score`` route
                    (:meth:`Scorer.handle`) and AzureML's ``run()`` (:meth:`Scorer.run`)
``telemetry.py``    :class:`RequestTelemetry`: the one observer of a request; it times,
                    traces and records each stage, and the request's metrics at its end
==================  =====================================================================

The web layer (:mod:`triton_score.http`) does HTTP only: it sheds, reads the body within
the plan's limit, calls :meth:`Scorer.handle` and sends what it returns. The codecs
(:mod:`triton_score.codecs`) turn bytes into tensors and back; the way to Triton is
:class:`~triton_score.triton.gateway.TritonGateway` (through the coalescer).
"""

from triton_score.scoring.pipeline import Scorer
from triton_score.scoring.plan import ModelPlan
from triton_score.scoring.telemetry import RequestTelemetry

__all__ = ["ModelPlan", "RequestTelemetry", "Scorer"]
