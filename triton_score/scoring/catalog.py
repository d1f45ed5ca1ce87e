"""The models a worker serves: their metadata, read once and kept fresh, and their plans.

A :class:`Catalog` reads every model's metadata and config from Triton when the worker first
needs them (:meth:`Catalog.ensure_loaded`), loads each model's processor, and makes each
model's :class:`~triton_score.scoring.plan.ModelPlan`. The metadata refresher
(:mod:`triton_score.scoring.refresh`) calls :meth:`Catalog.refresh`, which swaps in what Triton
reloaded, atomically: a request sees the old models or the new ones, never a mix.
Models that a processor's ``predict()`` calls without serving them are its ``helpers``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from triton_score.errors import BadRequest, ModelNotFound, ProcessorError, ScoringError
from triton_score.model.info import ModelInfo
from triton_score.processors import ProcessorRegistry
from triton_score.repository.locations import is_local_address
from triton_score.scoring.plan import ModelPlan, plan_model
from triton_score.settings import Settings
from triton_score.triton.gateway import TritonGateway

log = logging.getLogger(__name__)


@dataclass
class Catalog:
    """The served models of one worker, and their plans."""

    settings: Settings
    gateway: TritonGateway
    processors: ProcessorRegistry
    models: dict[str, ModelInfo] = field(default_factory=dict)
    #: Models a ``predict()`` called that are not served at ``/score`` (``SCORE_MODELS``).
    helpers: dict[str, ModelInfo] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _missing: set[str] = field(default_factory=set, repr=False)
    #: Each model's plan, and the ``models`` dict they were made from: when refresh() (or a
    #: test) puts a new dict in place, the plans are made again on the next request.
    _plans: dict[str, ModelPlan] = field(default_factory=dict, repr=False)
    _plans_for: dict[str, ModelInfo] | None = field(default=None, repr=False)

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
            if missing:  # by design often (a processor that names several models): no noise
                log.debug("processors for models Triton does not serve (unused): %s", missing)
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

    def pin(self, name: str, version: str) -> ModelInfo:
        """Serve model ``name`` at ``version`` from now on: its metadata at that version, and
        every inference names it (``score replay --version``: another version than the one
        Triton's policy serves by default).

        :raises ModelNotFound: Triton does not serve that model at that version.
        """
        models = self.ensure_loaded()
        if name not in models:
            raise ModelNotFound(f"unknown model {name!r}; served models: {sorted(models)}")
        found = self.gateway.model_info(name, version=version)
        pinned = replace(self._located(found), version=version, pinned=True)
        self.models = {**models, name: pinned}  # a new dict: the plans are made again
        return pinned

    # -- a request's model -----------------------------------------------------------------
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

    # -- fresh metadata ---------------------------------------------------------------------
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
