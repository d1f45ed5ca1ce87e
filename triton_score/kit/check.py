"""``score check``: what would fail at start-up or on the first request, found before either.

Two checks, each a table:

1. **The model repository**, as Triton's onnxruntime backend loads it: every ONNX file's
   inputs and outputs (names, datatypes, dims) against its ``config.pbtxt``
   (:mod:`triton_score.local.onnx_check`), and the label files the config names.
2. **The processors**, against the models Triton serves: every processor's model exists;
   its ``request_example`` goes through ``preprocess``, every tensor ``preprocess`` produces
   is checked against the model's metadata (names, datatypes, shapes, batch size), then
   through Triton and ``postprocess``, as a request would.

:func:`check_tensors` is the tensor check on its own, for tests (``triton_score.kit.testing``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from triton_score.codecs.request import Request, decode_request
from triton_score.errors import BadRequest, ScoringError
from triton_score.model.info import ModelInfo
from triton_score.model.validation import validate_input, validate_outputs
from triton_score.processors import MODELS_ATTRIBUTE, Processor, ProcessorRegistry

if TYPE_CHECKING:
    from triton_score.triton.gateway import TritonGateway

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "-"


@dataclass
class Row:
    """One line of a table: a model, what was checked, and what came of it."""

    model: str
    subject: str
    status: str = OK
    summary: str = ""
    example: str = ""
    details: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status == FAIL


@dataclass
class Report:
    repository: list[Row] = field(default_factory=list)
    processors: list[Row] = field(default_factory=list)
    #: Problems that are no model's (processors that cannot be imported, no Triton).
    errors: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        found = list(self.errors)
        for row in (*self.repository, *self.processors):
            if row.failed:
                found.extend(f"{row.model}: {d}" for d in row.details or [row.summary])
        return found

    @property
    def warnings(self) -> list[str]:
        return [
            f"{row.model}: {d}"
            for row in (*self.repository, *self.processors)
            if row.status == WARN
            for d in row.details or [row.summary]
        ]


# -- tensors ---------------------------------------------------------------------------------
def check_tensors(model: ModelInfo, tensors: object) -> tuple[list[str], list[str]]:
    """Check what ``preprocess`` returned against ``model``, every problem at once.

    :return: ``(problems, notes)``: problems are what the server would refuse with a 400
        (an input the model does not have, a missing one, a datatype that cannot be
        converted safely, a shape or batch size that does not fit); notes are conversions
        the server makes on every request (``float64`` to ``FP32``).
    """
    if not isinstance(tensors, Mapping):
        return [
            f"preprocess returned {type(tensors).__name__}, not a mapping of input name to array"
        ], []
    problems, notes = [], []
    inputs = [spec.name for spec in model.inputs]
    for name in tensors:
        if model.input(str(name)) is None:
            problems.append(
                f"preprocess produced {name!r}, which is not an input of model "
                f"{model.name!r}; its inputs are {inputs}"
            )
    for spec in model.inputs:
        if spec.name not in tensors:
            if not spec.optional:
                problems.append(
                    f"preprocess did not produce input {spec.name!r} "
                    f"({spec.datatype} {spec.describe_shape()})"
                )
            continue
        value = tensors[spec.name]
        try:
            array = validate_input(model, spec, value)
        except BadRequest as exc:
            problems.append(exc.message)
            continue
        except (TypeError, ValueError) as exc:
            problems.append(f"input {spec.name!r}: not an array ({exc})")
            continue
        given = value.dtype if isinstance(value, np.ndarray) else None
        if given is not None and given != array.dtype and not spec.is_bytes:
            notes.append(
                f"input {spec.name!r}: {given.name} converted to {spec.datatype} on every "
                f"request (return {array.dtype.name} to save the copy)"
            )
    return problems, notes


def describe_tensors(tensors: Mapping[str, Any]) -> str:
    """``image FP32-able float32 [1, 8, 8]`` for each array, comma-separated."""
    parts = []
    for name, value in tensors.items():
        array = np.asarray(value) if not isinstance(value, np.ndarray) else value
        parts.append(f"{name} {array.dtype.name} {list(array.shape)}")
    return ", ".join(parts)


def example_request(implementation: Any, example: Any = None) -> Request | None:
    """The processor's ``request_example`` (or ``example``) as the request a client would
    send, or ``None`` when there is none.

    A dict or list is sent as JSON; ``bytes`` as the body, of the first declared
    ``request_content_types`` (else ``application/octet-stream``); a string as text.
    """
    if example is None:
        example = getattr(implementation, "request_example", None)
    if example is None:
        return None
    declared = getattr(implementation, "request_content_types", None) or ()
    declared = (declared,) if isinstance(declared, str) else tuple(declared)
    concrete = [t for t in declared if "*" not in t]
    if isinstance(example, bytes | bytearray):
        body, content_type = bytes(example), (concrete or ["application/octet-stream"])[0]
    elif isinstance(example, str):
        body, content_type = example.encode(), (concrete or ["text/plain"])[0]
    else:
        body, content_type = orjson.dumps(example), "application/json"
    return decode_request(body, content_type, {}, "score-check")


# -- one processor, no server (the fixtures of triton_score.kit.testing) ------------------------
def load_processor(spec: str | os.PathLike[str], model: str) -> Any:
    """An instance of the processor of ``model`` that ``spec`` (a ``.py`` file, a module or
    ``module:Class``) defines, as the server creates it (its ``load`` not called yet).

    :raises LookupError: ``spec`` has no processor for ``model``."""
    from triton_score.processors.loading import load_processors

    registry = load_processors([str(spec)], use_entry_points=False)
    if model not in registry.models():
        raise LookupError(f"{spec} has no processor for model {model!r} ({registry.models()})")
    return registry.for_model(model).implementation


def preprocess_example(processor: Any, model: ModelInfo, example: Any = None) -> dict[str, Any]:
    """Run ``processor`` on its ``request_example`` (or ``example``) as the server would:
    ``load(model)``, the declared request checks, ``preprocess``; then check every tensor
    against ``model``.

    :return: what ``preprocess`` returned.
    :raises AssertionError: naming every problem (an input the model does not have, a missing
        one, a datatype or shape that does not fit).
    """
    request = example_request(processor, example)
    if request is None:
        raise AssertionError(f"{type(processor).__qualname__} has no request_example")
    wrapped = Processor(processor, type(processor).__qualname__)
    wrapped.load(model)
    wrapped.check_request(request)
    tensors = wrapped.preprocess(request, model)
    problems, _ = check_tensors(model, tensors)
    if problems:
        raise AssertionError(
            f"{type(processor).__qualname__}.preprocess does not fit model {model.name!r}:\n  "
            + "\n  ".join(problems)
        )
    return dict(tensors)


# -- processors ------------------------------------------------------------------------------
def _where(source: str) -> str:
    """A processor's source as the user would write it (relative to the working folder)."""
    if source.endswith(".py"):
        try:
            return os.path.relpath(source)
        except ValueError:
            return source
    return source


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_processor(
    processor: Processor,
    model: ModelInfo,
    gateway: TritonGateway | None = None,
) -> Row:
    """Run one processor's ``request_example`` as a request would go, and say how it went.

    :param gateway: when given, the tensors also go through Triton and ``postprocess``.
    """
    row = Row(model.name, f"{processor.name} ({_where(processor.source)})")
    implementation = processor.implementation
    try:
        processor.load(model)
    except Exception as exc:  # noqa: BLE001 - a processor's bug, reported as such
        return _failed(row, f"load(model) raised {_one_line(exc)}")
    request = example_request(implementation)
    if request is None:
        row.example, row.status = "none", WARN
        row.summary = "preprocess not checked: the processor has no request_example"
        return row
    row.example = "yes"
    try:
        processor.check_request(request)
        tensors = processor.preprocess(request, model)
    except ScoringError as exc:
        return _failed(row, f"refuses its own request_example: {exc.message}")
    except Exception as exc:  # noqa: BLE001
        return _failed(row, f"preprocess raised {_one_line(exc)} on its request_example")
    if processor.has_predict:
        row.summary = "preprocess ran; predict() checks each of its own Triton calls"
        return row
    problems, notes = check_tensors(model, tensors)
    if problems:
        row.status, row.summary, row.details = FAIL, f"{len(problems)} problem(s)", problems
        return row
    assert isinstance(tensors, Mapping)
    produced = describe_tensors(tensors)
    try:
        wanted = validate_outputs(model, processor.outputs(request, model))
    except ScoringError as exc:
        return _failed(row, f"outputs: {exc.message}")
    except Exception as exc:  # noqa: BLE001
        return _failed(row, f"outputs(request, model) raised {_one_line(exc)}")
    row.summary = produced
    if notes:
        row.status, row.details = WARN, notes
    if gateway is None:
        return row
    checked = {
        spec.name: validate_input(model, spec, tensors[spec.name])
        for spec in model.inputs
        if spec.name in tensors
    }
    try:
        outputs = gateway.infer(model, checked, wanted, request_id="score-check")
    except ScoringError as exc:
        return _failed(row, f"Triton refused the example's tensors ({produced}): {exc.message}")
    try:
        processor.postprocess(outputs, request, model)
    except Exception as exc:  # noqa: BLE001
        return _failed(row, f"postprocess raised {_one_line(exc)} on the example's outputs")
    row.summary = f"{produced} -> Triton -> postprocess"
    return row


def _failed(row: Row, problem: str) -> Row:
    row.status, row.summary, row.details = FAIL, problem, [problem]
    return row


def check_processors(
    registry: ProcessorRegistry,
    models: Mapping[str, ModelInfo],
    gateway: TritonGateway | None = None,
    not_loaded: Collection[str] = (),
) -> list[Row]:
    """One row per model that has a processor or is served; see :func:`check_processor`.

    A model Triton does not serve whose processor serves another one (``@processor("a", "b")``
    with only ``a`` in the repository) gets no row: that is by design, not a problem, and a
    row about it on every run would only be noise. A processor none of whose models is served
    fails (a misspelt model name?).

    :param not_loaded: models deliberately not loaded (the repository check refused them).
    """
    rows = []
    served = sorted(models)
    for name in sorted(set(registry.models()) | set(models)):
        if name not in models:
            processor = registry.for_model(name) if name in registry.models() else None
            subject = f"{processor.name} ({_where(processor.source)})" if processor else "-"
            if name in not_loaded:
                rows.append(
                    Row(name, subject, SKIP, "not checked: the model's repository check failed")
                )
                continue
            names = (
                getattr(type(processor.implementation), MODELS_ATTRIBUTE, ()) if processor else ()
            )
            if any(m in models for m in names):
                continue  # its processor serves another model: nothing to report
            problem = (
                f"Triton serves no model {name!r}; it serves {served} (a model name misspelt in "
                "@processor(...)? a model folder missing from the repository?)"
            )
            rows.append(Row(name, subject, FAIL, problem, details=[problem]))
            continue
        try:
            processor = registry.for_model(name)
        except Exception as exc:  # noqa: BLE001 - the class could not be constructed
            problem = f"the processor could not be created: {_one_line(exc)}"
            rows.append(Row(name, "?", FAIL, problem, details=[problem]))
            continue
        if processor.implementation is None:
            rows.append(Row(name, "default codec", SKIP, "no processor: the default codec"))
            continue
        rows.append(check_processor(processor, models[name], gateway))
    return rows


# -- the model repository --------------------------------------------------------------------
def check_repository(repository: Path) -> list[Row]:
    """One row per model folder: ONNX files against their config, label files present."""
    from triton_score.local.onnx_check import check_model
    from triton_score.local.onnx_wrapper import (
        ModelRepositoryError,
        RepositoryModel,
        parse_config,
    )

    rows = []
    for folder in sorted(p for p in repository.iterdir() if p.is_dir()):
        if folder.name.startswith("."):
            continue  # Triton skips hidden folders too
        config_file = folder / "config.pbtxt"
        try:
            config = (
                parse_config(config_file.read_text(), f"model {folder.name!r}")
                if config_file.is_file()
                else None
            )
        except ModelRepositoryError as exc:
            rows.append(Row(folder.name, "config.pbtxt", FAIL, "unreadable", "", [str(exc)]))
            continue
        model = RepositoryModel(folder.name, folder, config)
        problems: list[str] = []
        warnings: list[str] = []
        if model.is_onnx:
            subject = f"{model.onnx_filename} vs " + (
                "config.pbtxt" if config is not None else "its auto-completed config"
            )
            prefix = f"model {model.name!r}, "
            problems = [p.removeprefix(prefix) for p in check_model(model)]
        else:
            backend = (config.backend or config.platform) if config is not None else ""
            subject = f"{backend or 'unknown'} backend: not an ONNX model"
        if config is not None:
            problems += _label_problems(model, warnings)
        if problems:
            rows.append(Row(model.name, subject, FAIL, f"{len(problems)} problem(s)", "", problems))
        elif warnings:
            rows.append(Row(model.name, subject, WARN, warnings[0], "", warnings))
        else:
            rows.append(Row(model.name, subject, OK, "matches" if model.is_onnx else ""))
    return rows


def _label_problems(model: Any, warnings: list[str]) -> list[str]:
    """Label files the config names must exist; one label per class, else a warning."""
    problems = []
    for output in model.config.output:
        if not output.label_filename:
            continue
        path = model.path / output.label_filename
        if not path.is_file():
            problems.append(
                f"output {output.name!r}: label file {output.label_filename!r} is missing "
                f"from the model folder (Triton will not load the model)"
            )
            continue
        labels = [line for line in path.read_text(errors="replace").splitlines() if line]
        dims = [int(d) for d in output.dims]
        classes = int(np.prod(dims)) if dims and all(d > 0 for d in dims) else None
        if classes is not None and len(labels) != classes:
            warnings.append(
                f"output {output.name!r}: {output.label_filename} has {len(labels)} labels "
                f"for {classes} classes (one label per line, in class order)"
            )
    return problems


# -- the table -------------------------------------------------------------------------------
def render(report: Report, header: str, say: Callable[[str], None] = print) -> None:
    """Print the tables, then every problem in full (each line names its model)."""
    say(header)
    if report.repository:
        say("")
        say("model repository (as Triton's onnxruntime backend loads it)")
        _table(
            say,
            ["model", "checked", "result"],
            [[r.model, r.subject, _result(r)] for r in report.repository],
        )
    if report.processors:
        say("")
        say(
            "processors (request_example -> preprocess -> tensors vs Triton's metadata -> "
            "Triton -> postprocess)"
        )
        _table(
            say,
            ["model", "processor", "example", "result"],
            [[r.model, r.subject, r.example or "-", _result(r)] for r in report.processors],
        )
    warnings = report.warnings
    if warnings:
        say("")
        say(f"{len(warnings)} warning(s):")
        for warning in warnings:
            say(f"  - {warning}")
    problems = report.problems
    say("")
    if problems:
        say(f"{len(problems)} problem(s):")
        for problem in problems:
            say(f"  - {problem}")
    else:
        say("score check: no problems found")


def _result(row: Row) -> str:
    if row.status == OK:
        return f"ok: {row.summary}" if row.summary else "ok"
    if row.status == SKIP:
        return f"- {row.summary}"
    return f"{row.status}: {row.summary}"


def _table(say: Callable[[str], None], header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for line in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(line, widths, strict=False)]
        say("  " + "  ".join([*cells, str(line[-1])]))
