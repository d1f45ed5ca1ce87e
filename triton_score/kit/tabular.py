"""``score new --template tabular``: a processor of records with named fields, and its test.

The processor takes JSON ``{"records": [{field: number, ...}, ...]}`` (any key order) or
``text/csv`` with a header row (any column order), makes one row of the model's input per
record, the columns in the order of its ``FEATURES`` list, and answers ``{"predictions":
[...]}``, one per record. A missing or non-numeric field is a 400 naming the field and the
record (JSON) or line (CSV). Records beyond the model's ``max_batch_size`` are the runtime's
to split (:mod:`triton_score.triton.batches`), so the processor never counts them.

Two layouts of model fit, both of floating-point inputs:

- one input ``[batch, N]``: the features are its columns. Triton does not know their names,
  so ``FEATURES`` is ``f0``..``fN-1``, for the author to rename;
- one input ``[batch, 1]`` (or ``[batch]``) per feature: ``FEATURES`` is the inputs' names.

The test written beside it checks behaviour (a prediction per record, JSON and CSV alike, a
400 naming a missing or non-numeric field), never the model's raw output names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from triton_score.model.info import ModelInfo, TensorSpec

_FLOATS = {"FP16": "np.float16", "FP32": "np.float32", "FP64": "np.float64"}


@dataclass(frozen=True)
class Layout:
    """How records become the model's inputs."""

    features: tuple[str, ...]
    #: The one input ``[batch, N]`` the features are the columns of; empty: one input each.
    matrix: str
    #: The numpy dtype of the inputs (``np.float32``).
    dtype: str
    #: Whether each per-feature input has a dimension of 1 after the batch (``[batch, 1]``).
    column: bool

    @property
    def placeholders(self) -> bool:
        """Whether the feature names are ``f0``.. (the model does not name its columns)."""
        return bool(self.matrix)


def layout(model: ModelInfo) -> Layout:
    """The tabular layout of ``model``.

    :raises ValueError: the model's inputs are not one float ``[batch, N]`` tensor, nor one
        float ``[batch, 1]`` tensor per feature (the message says why).
    """
    inputs = [t for t in model.inputs if not t.optional]
    if not inputs:
        raise ValueError(f"model {model.name!r} has no required input")
    other = next((t for t in inputs if t.datatype not in _FLOATS), None)
    if other is not None:
        raise ValueError(
            f"the tabular template fills floating-point inputs; input {other.name!r} of model "
            f"{model.name!r} is {other.datatype}: use --template instance"
        )
    rows = [_row_shape(model, t) for t in inputs]
    dtypes = {_FLOATS[t.datatype] for t in inputs}
    if len(inputs) == 1 and len(rows[0]) == 1 and rows[0][0] > 1:
        width = rows[0][0]
        names = tuple(f"f{i}" for i in range(width))
        return Layout(names, inputs[0].name, dtypes.pop(), column=False)
    if all(row in ((), (1,)) for row in rows) and len(dtypes) == 1 and len(set(rows)) == 1:
        return Layout(tuple(t.name for t in inputs), "", dtypes.pop(), column=rows[0] == (1,))
    described = ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in inputs)
    raise ValueError(
        f"the tabular template needs one input [batch, N] (the features its columns) or one "
        f"input [batch, 1] per feature, all of one float type; model {model.name!r} has "
        f"{described}: use --template instance"
    )


def _row_shape(model: ModelInfo, spec: TensorSpec) -> tuple[int, ...]:
    """One record's shape in ``spec``: its shape after the batch (or rows) dimension."""
    if not model.batching and (not spec.shape or spec.shape[0] != -1):
        raise ValueError(
            f"model {model.name!r} has max_batch_size 0 and input {spec.name!r} has no "
            f"dimension of rows ({list(spec.shape)}): the tabular template needs -1 first"
        )
    return tuple(spec.shape[1:])


def _features_block(model: ModelInfo, chosen: Layout) -> str:
    from triton_score.kit.scaffold import literal

    names = literal(list(chosen.features), 0, len("FEATURES = "))
    if chosen.placeholders:
        last = len(chosen.features) - 1
        comment = f"""\
# The fields of a record, in the order of the columns of the model's input {chosen.matrix!r}
# (the order it was trained with). Triton does not know their names: replace f0..f{last}
# with the names your clients send (the CSV header's)."""
    else:
        comment = """\
# The fields of a record, read from the model's metadata: each is the model's input of the
# same name, so a field renamed here needs the input renamed too."""
    return f"{comment}\nFEATURES = {names}"


def _inputs_source(chosen: Layout) -> str:
    if chosen.matrix:
        return f"return {{{chosen.matrix!r}: table.astype({chosen.dtype})}}".replace("'", '"')
    column = "[column]" if chosen.column else "column"
    return (
        "# One input per feature, named after it.\n"
        f"table = table.astype({chosen.dtype})\n"
        f"return {{name: table[:, {column}] for column, name in enumerate(FEATURES)}}"
    )


def _postprocess_source(model: ModelInfo) -> str:
    from triton_score.kit.scaffold import _inline

    lines = []
    for t in model.outputs:
        shape = "[" + ", ".join(str(d) for d in t.shape) + "]"
        each = "one value" if tuple(t.shape[1:]) in ((), (1,)) else "a list"
        lines.append(f"# {t.name}: {t.datatype} {shape}: {each} per record")
    if len(model.outputs) == 1:
        only = _inline(model.outputs[0].name)
        lines.append(f'return {{"predictions": per_record(outputs[{only}])}}')
    else:
        lines.append("answers = {name: per_record(outputs[name]) for name in self.outputs}")
        lines.append(
            'return {"predictions": [dict(zip(answers, each)) for each in zip(*answers.values())]}'
        )
    return "\n".join(lines)


def render_processor(model: ModelInfo, name: str, command: str) -> str:
    """The tabular processor module for ``model``.

    :raises ValueError: the model does not fit (see :func:`layout`).
    """
    from triton_score.kit.scaffold import (
        _indent,
        _inline,
        _metadata_lines,
        class_name,
        literal,
        module_name,
    )

    chosen = layout(model)
    metadata = _indent("\n".join(_metadata_lines(model)), "    ")
    outputs = literal({t.name: 0 for t in model.outputs}, 1, len("outputs = "))
    edit = (
        "Edit FEATURES below first: the model does not name its columns."
        if chosen.placeholders
        else "FEATURES below are the model's inputs."
    )
    return f'''"""Processor of model {model.name!r}: yours to edit.

Written by: {command}

The model, as Triton described it when this file was written:

{metadata}

Request: records of named fields (FEATURES), one row of the model's input each, as JSON

    {{"records": [{{"{chosen.features[0]}": 1.5, ...}}, ...]}}

(any key order; other keys are ignored) or as text/csv with a header row (any column order).
A request may hold more records than the model's max_batch_size: the runtime splits them
into Triton calls and joins the answers.
Answer: {{"predictions": [...]}}, one per record, in order. A missing or non-numeric field is a
400 naming the field and the record (JSON, from 0) or the line (CSV, from 1).
{edit}
docs/processors.md ("Records and CSV") has the rules, and the test beside this processor
(tests/test_{module_name(name)}_processor.py) checks them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from typing import Any, NoReturn

import numpy as np

from triton_score import BadRequest, ModelInfo, Request, processor

{_features_block(model, chosen)}


@processor({_inline(model.name)})
class {class_name(name)}:
    # JSON or CSV; a request that states another content type is a 415.
    request_content_types = ("application/json", "text/csv")
    # One record of zeros: /swagger.json shows it, `score check` and the tests send it.
    request_example = {{"records": [dict.fromkeys(FEATURES, 0.0)]}}
    # The outputs to ask Triton for, raw (0: no top classes).
    outputs = {outputs}
    # max_rows = 1000  # at most this many records a request (else a 413; default SCORE_MAX_ROWS)

    def preprocess(self, request: Request, model: ModelInfo) -> dict[str, np.ndarray]:
        """The records -> the model's input: one row each, the columns in FEATURES' order."""
        if request.content_type == "text/csv":
            table = csv_table(request.body)
        else:
            table = json_table(request.json)
{_indent(_inputs_source(chosen), "        ")}

    def postprocess(
        self, outputs: dict[str, np.ndarray], request: Request, model: ModelInfo
    ) -> dict[str, Any]:
        """The model's outputs -> one prediction per record, in the records' order."""
{_indent(_postprocess_source(model), "        ")}


def json_table(body: Any) -> np.ndarray:
    """{{"records": [{{field: number, ...}}, ...]}} -> float64 [records, len(FEATURES)]."""
    records = body.get("records") if isinstance(body, dict) else None
    if not isinstance(records, list) or not records:
        raise BadRequest(
            'send {{"records": [{{field: number, ...}}, ...]}} as JSON, or text/csv with a '
            f"header row; the fields are {{FEATURES}}",
            details={{"field": "records"}},
        )
    table = np.empty((len(records), len(FEATURES)))
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise BadRequest(f"record {{index}} is not an object", details={{"record": index}})
        for column, field in enumerate(FEATURES):
            if field not in record:
                refuse(field, {{"record": index}}, "is missing")
            table[index, column] = number(record[field], field, {{"record": index}})
    return table


def csv_table(body: bytes) -> np.ndarray:
    """text/csv: a header row naming the fields (any order; other columns are ignored), then
    a record per row -> float64 [rows, len(FEATURES)]."""
    try:
        text = body.decode("utf-8-sig")  # -sig: without the BOM spreadsheets write
    except UnicodeDecodeError as error:
        raise BadRequest(f"the CSV is not UTF-8 text (byte {{error.start}})") from None
    reader = csv.reader(io.StringIO(text))
    try:
        header = [name.strip() for name in next(reader, [])]
        for field in FEATURES:
            if field not in header:
                refuse(field, {{"line": 1}}, f"is missing from the CSV header {{header[:20]}}")
        columns = [(field, header.index(field)) for field in FEATURES]
        rows = []
        for cells in reader:
            if cells:  # not a blank line
                cells += [""] * (len(header) - len(cells))  # a short row: the rest are empty
                where = {{"line": reader.line_num}}
                rows.append([number(cells[i], field, where) for field, i in columns])
    except csv.Error as error:
        raise BadRequest(f"line {{reader.line_num}}: the CSV cannot be read: {{error}}") from None
    if not rows:
        raise BadRequest("the CSV has no records after its header row", details={{"line": 2}})
    return np.array(rows)


def number(value: Any, field: str, where: dict[str, int]) -> float:
    """A field's value (a number, or text that reads as one) as a finite float, else a 400."""
    read = math.nan
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        with contextlib.suppress(ValueError, OverflowError):
            read = float(value)
    if math.isfinite(read):
        return read
    if value is None or (isinstance(value, str) and not value.strip()):
        refuse(field, where, "has no value")
    refuse(field, where, f"is not a number: {{str(value)[:40]!r}}")


def refuse(field: str, where: dict[str, int], problem: str) -> NoReturn:
    """A 400 naming the field and where it is: the record (JSON) or the line (CSV)."""
    place = ", ".join(f"{{key}} {{value}}" for key, value in where.items())
    details = {{"field": field, **where}}
    raise BadRequest(f"{{place}}: field {{field!r}} {{problem}}", details=details)


def per_record(values: np.ndarray) -> list[Any]:
    """One entry per record: a single value each for an output of [batch, 1] (a regressor's)
    or [batch], a list each for a wider one; BYTES as text."""
    if values.dtype == object:
        values = np.char.decode(values.astype(np.bytes_), "utf-8")
    if values.ndim == 1 or values.shape[1:] == (1,):
        return values.reshape(-1).tolist()
    return values.tolist()
'''


def render_test(
    model: ModelInfo, name: str, processor: Path, test: Path, repository: Path, command: str
) -> str:
    """The pytest file of the tabular processor: its tensors fit the model (offline), a
    prediction per record from JSON and CSV alike, a 400 naming a missing or non-numeric
    field (through the real Triton)."""
    from triton_score.kit.scaffold import _has_config, _inline, test_preamble

    chosen = layout(model)
    inputs = sorted([chosen.matrix] if chosen.matrix else chosen.features)
    has_config = _has_config(model)
    offline = f'''

def test_preprocess_fits_the_model_config(triton_score_model_info, triton_score_preprocess):
    """Offline: the request_example's tensors fit the model's config.pbtxt."""
    tensors = triton_score_preprocess(PROCESSOR, triton_score_model_info(MODEL))
    assert sorted(tensors) == {_inline(inputs)}
'''
    about = (
        "The first test needs no server: it reads the model's config.pbtxt. The others start "
        if has_config
        else "The tests start "
    ) + (
        "a local Triton on the model repository (once per test session: a few seconds) and "
        f"post records to /score/{model.name}, as JSON and as CSV, as a client would."
    )
    preamble = test_preamble(
        model, name, processor, test, repository, command, about, "import csv\nimport io\n"
    )
    return f'''{preamble}\
{offline if has_config else ""}

@pytest.fixture
def records(triton_score_processor) -> list[dict]:
    """Three records: the request_example's first, three times (put real ones here)."""
    example = triton_score_processor(PROCESSOR, MODEL).request_example
    return [dict(example["records"][0]) for _ in range(3)]


def as_csv(records: list[dict]) -> str:
    """Records as a client's CSV: a header row, then a row per record."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    return text.getvalue()


def test_a_prediction_per_record_from_json_and_csv(triton_score_client, records):
    """Through the real Triton: one prediction per record, the same from JSON and CSV."""
    client = triton_score_client(PROCESSOR)
    response = client.post(f"/score/{{MODEL}}", json={{"records": records}})
    assert response.status_code == 200, response.get_json()
    predictions = response.get_json()["predictions"]
    assert len(predictions) == len(records)
    response = client.post(f"/score/{{MODEL}}", data=as_csv(records), content_type="text/csv")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["predictions"] == predictions


def test_a_missing_or_non_numeric_field_is_a_400_naming_it(triton_score_client, records):
    """A record without a field, or a CSV cell that is no number: a 400 naming the field
    and the record (JSON, from 0) or the line (CSV, from 1)."""
    client = triton_score_client(PROCESSOR)
    field = next(iter(records[0]))
    del records[1][field]
    response = client.post(f"/score/{{MODEL}}", json={{"records": records}})
    assert response.status_code == 400
    assert (response.get_json()["field"], response.get_json()["record"]) == (field, 1)
    records[1][field] = "n/a"
    response = client.post(f"/score/{{MODEL}}", data=as_csv(records), content_type="text/csv")
    assert response.status_code == 400
    assert (response.get_json()["field"], response.get_json()["line"]) == (field, 3)
'''
