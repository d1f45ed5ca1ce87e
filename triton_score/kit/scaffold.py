"""``score new``: a processor module and its pytest file, written from a model's metadata.

The processor takes the model's inputs by name as JSON, one instance each (the batch
dimension is added), validates them with a ``request_schema`` derived from the shapes, and
answers every output by name (the top classes, with their labels, for an output with a label
file). Its ``request_example`` is all zeros (``"text"`` for strings), so the test written
beside it passes out of the box: once offline against the model's ``config.pbtxt``, once
through the real Triton. Both files are the user's to edit.
"""

from __future__ import annotations

import json
import keyword
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triton_score.model.info import ModelInfo, TensorSpec

#: The line length of the code written (ruff's, in this project).
LINE_LENGTH = 100
#: The top classes answered for an output with a label file.
TOP_CLASSES = 3
_NUMPY = {
    "BOOL": "np.bool_",
    "INT8": "np.int8",
    "INT16": "np.int16",
    "INT32": "np.int32",
    "INT64": "np.int64",
    "UINT8": "np.uint8",
    "UINT16": "np.uint16",
    "UINT32": "np.uint32",
    "UINT64": "np.uint64",
    "FP16": "np.float16",
    "FP32": "np.float32",
    "FP64": "np.float64",
    "BYTES": "object",
}


class ScaffoldError(ValueError):
    """The files cannot be written (a bad name, a file that exists)."""


#: ``score new --template``: what the processor takes. ``instance``: the model's inputs by
#: name, one instance a request; ``tabular``: records of named fields, as JSON or CSV.
TEMPLATES = ("instance", "tabular")


@dataclass(frozen=True)
class Scaffold:
    """What ``score new`` writes, and what the author is to do next (if anything)."""

    processor: Path
    test: Path
    todo: str = ""


def literal(value: Any, level: int = 0, prefix: int = 0) -> str:
    """Python source for a JSON-like value, as ``ruff format`` would keep it: inline when the
    line fits (indentation ``level``, ``prefix`` characters before the value, a comma after),
    else one item per line, each with a trailing comma."""
    inline = _inline(value)
    fits = 4 * level + prefix + len(inline) + 1 <= LINE_LENGTH
    if fits or not isinstance(value, dict | list) or not value:
        return inline
    pad = "    " * level
    if isinstance(value, dict):
        items = [
            f"{pad}    {_inline(k)}: {literal(v, level + 1, len(_inline(k)) + 2)},"
            for k, v in value.items()
        ]
        return "{\n" + "\n".join(items) + f"\n{pad}}}"
    items = [f"{pad}    {literal(v, level + 1)}," for v in value]
    return "[\n" + "\n".join(items) + f"\n{pad}]"


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_inline(k)}: {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # double quotes, as ruff format writes them
    return repr(value)


def class_name(name: str) -> str:
    """``iris`` -> ``Iris``, ``my-model_v2`` -> ``MyModelV2``."""
    words = [w for w in re.split(r"[^0-9A-Za-z]+", name) if w]
    text = "".join(w[:1].upper() + w[1:] for w in words) or "Model"
    return f"Model{text}" if text[0].isdigit() else text


def module_name(name: str) -> str:
    """``my-model`` -> ``my_model`` (a valid Python module name)."""
    text = re.sub(r"\W+", "_", name).strip("_").lower() or "model"
    if text[0].isdigit() or keyword.iskeyword(text):
        text = f"model_{text}"
    return text


def _instance_shape(model: ModelInfo, spec: TensorSpec) -> list[int]:
    """One instance's shape: the tensor's shape without the batch dimension."""
    return list(spec.shape[1:] if model.batching else spec.shape)


def _example_shape(shape: list[int]) -> list[int]:
    return [d if d > 0 else 1 for d in shape]


def _leaf(datatype: str) -> Any:
    if datatype == "BYTES":
        return "text"
    if datatype == "BOOL":
        return False
    if datatype.startswith(("INT", "UINT")):
        return 0
    return 0.0


def _nested(shape: list[int], leaf: Any) -> Any:
    if not shape:
        return leaf
    return [_nested(shape[1:], leaf) for _ in range(shape[0])]


def _count(shape: list[int]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def example_source(model: ModelInfo, spec: TensorSpec, room: int) -> str:
    """Python source of one input's example value: a literal when it takes at most ``room``
    characters, else an expression (``np.zeros((3, 224, 224), dtype=np.float32).tolist()``)."""
    shape = _example_shape(_instance_shape(model, spec))
    leaf = _leaf(spec.datatype)
    if _count(shape) <= 256:
        text = _inline(_nested(shape, leaf))
        if len(text) <= room:
            return text
    dims = "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
    if spec.datatype == "BYTES":
        return f'np.full({dims}, "text").tolist()'
    dtype = "bool" if spec.datatype == "BOOL" else _NUMPY.get(spec.datatype, "np.float32")
    return f"np.zeros({dims}, dtype={dtype}).tolist()"


def _json_type(datatype: str) -> str:
    if datatype == "BYTES":
        return "string"
    if datatype == "BOOL":
        return "boolean"
    if datatype.startswith(("INT", "UINT")):
        return "integer"
    return "number"


def field_schema(model: ModelInfo, spec: TensorSpec) -> dict[str, Any]:
    """The JSON schema of one input's field: nested arrays of the instance's shape."""
    shape = _instance_shape(model, spec)
    schema: dict[str, Any] = {"type": _json_type(spec.datatype)}
    for size in reversed(shape):
        array: dict[str, Any] = {"type": "array", "items": schema}
        if size > 0:
            array["minItems"] = array["maxItems"] = size
        schema = array
    one = "one instance; the batch dimension is added" if model.batching else "the whole tensor"
    described = "[" + ", ".join(str(d) if d > 0 else "any" for d in shape) + "]"
    return {"description": f"{spec.datatype} {described}: {one}", **schema}


def _classes(model: ModelInfo, spec: TensorSpec) -> int | None:
    """How many classes an output has, when the classification extension applies to it."""
    if not spec.label_filename or spec.is_bytes:
        return None
    shape = _instance_shape(model, spec)
    if len(shape) != 1 or shape[0] <= 0:
        return None
    return shape[0]


def _metadata_lines(model: ModelInfo) -> list[str]:
    width = max((len(t.name) for t in (*model.inputs, *model.outputs)), default=4)
    lines = []
    if model.batching:
        lines.append(
            f"max_batch_size {model.max_batch_size}: the first dimension of every tensor "
            "is the batch (-1)"
        )
    else:
        lines.append("max_batch_size 0: no batch dimension; -1 is a dimension of any size")
    for side, tensors in (("input ", model.inputs), ("output", model.outputs)):
        for tensor in tensors:
            extra = f"   labels: {tensor.label_filename}" if tensor.label_filename else ""
            optional = "   optional" if tensor.optional else ""
            shape = "[" + ", ".join(str(d) for d in tensor.shape) + "]"
            lines.append(
                f"{side}  {tensor.name.ljust(width)}  {tensor.datatype:<6} {shape}{extra}{optional}"
            )
    return lines


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())


def render_processor(model: ModelInfo, name: str, command: str) -> str:
    """The processor module for ``model``."""
    cls = class_name(name)
    required = [t for t in model.inputs if not t.optional]
    schema = {
        "type": "object",
        "required": [t.name for t in required],
        "properties": {t.name: field_schema(model, t) for t in model.inputs},
    }
    values = {t.name: example_source(model, t, LINE_LENGTH - 12 - len(t.name)) for t in required}
    example = "{" + ", ".join(f"{_inline(k)}: {v}" for k, v in values.items()) + "}"
    if len("    request_example = ") + len(example) > LINE_LENGTH:
        lines = "".join(f"        {_inline(k)}: {v},\n" for k, v in values.items())
        example = "{\n" + lines + "    }"
    classified = {t.name: _classes(model, t) for t in model.outputs}
    chosen = {t.name: min(TOP_CLASSES, classified[t.name] or 0) for t in model.outputs}
    first = "[0]" if model.batching else ""
    preprocess_lines = []
    for t in model.inputs:
        shape = "[" + ", ".join(str(d) for d in t.shape) + "]"
        key = _inline(t.name)
        conversion = f"np.asarray(body[{key}], dtype={_NUMPY.get(t.datatype, 'np.float32')})"
        if model.batching:
            comment = f"# {t.name}: {t.datatype} {shape}: one instance, the batch dimension added"
            conversion += "[np.newaxis]"
        else:
            comment = f"# {t.name}: {t.datatype} {shape}"
        if t.optional:
            preprocess_lines.append(f"{comment} (optional)")
            preprocess_lines.append(f"if {key} in body:")
            preprocess_lines.append(f"    inputs[{key}] = {conversion}")
        else:
            preprocess_lines.append(comment)
            preprocess_lines.append(f"inputs[{key}] = {conversion}")
    postprocess_lines = []
    for t in model.outputs:
        count = classified[t.name]
        shape = "[" + ", ".join(str(d) for d in t.shape) + "]"
        if count:
            top = min(TOP_CLASSES, count)
            postprocess_lines.append(
                f"# {t.name}: {t.datatype} {shape}, labels from {t.label_filename}: "
                f"the top {top} of {count} classes"
            )
            key = _inline(t.name)
            postprocess_lines.append(
                f"{key}: [top_class(entry) for entry in outputs[{key}]{first}],"
            )
        else:
            postprocess_lines.append(f"# {t.name}: {t.datatype} {shape}")
            postprocess_lines.append(
                f"{_inline(t.name)}: outputs[{_inline(t.name)}]{first}.tolist(),"
            )
    helper = (
        '''


def top_class(entry: bytes) -> dict[str, Any]:
    """One class of Triton's classification extension ("score:index:label")."""
    score, index, label = entry.decode().split(":", 2)
    return {"label": label, "index": int(index), "score": float(score)}
'''
        if any(classified.values())
        else "\n"
    )
    metadata = _indent("\n".join(_metadata_lines(model)), "    ")
    instance = "one instance of each input" if model.batching else "each input"
    answer = (
        "every output by name (for an output with a label file, its top classes)"
        if any(classified.values())
        else "every output by name"
    )
    return f'''"""Processor of model {model.name!r}: yours to edit.

Written by: {command}

The model, as Triton described it when this file was written:

{metadata}

Request: {instance}, by name, as JSON (see request_example).
Answer: {answer}.
Change both to what your clients should send and get: docs/processors.md has the rules, and
the test beside this processor (tests/test_{module_name(name)}_processor.py) checks them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from triton_score import BadRequest, ModelInfo, Request, processor


@processor({_inline(model.name)})
class {cls}:
    # The outputs to ask Triton for, each with a class_count: the top N classes as
    # "score:index:label" (Triton's classification extension), or 0 for the raw tensor.
    outputs = {literal(chosen, 1, 10)}

    # Every JSON request must match this schema (else a 400 naming the field); /swagger.json
    # documents it, with request_example (which `score check` and the tests also send).
    request_schema = {literal(schema, 1, 17)}
    request_example = {example}

    def preprocess(self, request: Request, model: ModelInfo) -> dict[str, np.ndarray]:
        """The request -> the model's inputs, as numpy arrays of its datatypes."""
        body = request.json
        if not isinstance(body, dict):
            raise BadRequest(f"send a JSON object such as {{self.request_example}}")
        inputs = {{}}
{_indent(chr(10).join(preprocess_lines), "        ")}
        return inputs

    def postprocess(
        self, outputs: dict[str, np.ndarray], request: Request, model: ModelInfo
    ) -> dict[str, Any]:
        """The model's outputs -> the answer (anything JSON-able)."""
        return {{
{_indent(chr(10).join(postprocess_lines), "            ")}
        }}{helper}'''


def render_test(
    model: ModelInfo, name: str, processor: Path, test: Path, repository: Path, command: str
) -> str:
    """The pytest file that tests the processor, offline and through the real Triton: that
    its request_example is answered, and that a request without a required field is a 400
    naming it (never the raw output names, which the processor's answer is free to drop)."""
    has_config = _has_config(model)
    inputs = sorted(t.name for t in model.inputs if not t.optional)
    offline = f'''

def test_preprocess_fits_the_model_config(triton_score_model_info, triton_score_preprocess):
    """Offline: the request_example's tensors fit the model's config.pbtxt."""
    tensors = triton_score_preprocess(PROCESSOR, triton_score_model_info(MODEL))
    assert sorted(tensors) == {_inline(inputs)}
'''
    missing = '''

def test_a_missing_field_is_a_400(triton_score_client, triton_score_processor):
    """Through the real Triton: the request_example without its first field is refused."""
    example = dict(triton_score_processor(PROCESSOR, MODEL).request_example)
    field = next(iter(example))
    del example[field]
    response = triton_score_client(PROCESSOR).post(f"/score/{MODEL}", json=example)
    assert response.status_code == 400, response.get_json()
    assert field in response.get_json()["error"]
'''
    about = (
        "The first test needs no server: it reads the model's config.pbtxt. The others start "
        if has_config
        else "The tests start "
    ) + (
        "a local Triton on the model repository (once per test session: a few seconds) and "
        f"post requests to /score/{model.name}, as a client would."
    )
    return f'''{test_preamble(model, name, processor, test, repository, command, about)}\
{offline if has_config else ""}

def test_example_request_is_scored(triton_score_client, triton_score_processor):
    """Through the real Triton: the request_example is answered."""
    example = triton_score_processor(PROCESSOR, MODEL).request_example
    response = triton_score_client(PROCESSOR).post(f"/score/{{MODEL}}", json=example)
    assert response.status_code == 200, response.get_json()
    assert response.get_data()
{missing if inputs else ""}'''


def _has_config(model: ModelInfo) -> bool:
    return model.directory is not None and (model.directory / "config.pbtxt").is_file()


def test_preamble(
    model: ModelInfo,
    name: str,
    processor: Path,
    test: Path,
    repository: Path,
    command: str,
    about: str,
    imports: str = "",
) -> str:
    """A generated test file's start: its docstring, imports, PROCESSOR, MODEL and the
    ``triton_score_repository`` fixture; ``imports``: standard-library modules it needs."""
    here = test.parent.resolve()

    def relative(path: Path) -> str:
        text = os.path.relpath(path.resolve(), here)
        return " / ".join(_inline(part) for part in Path(text).parts)

    return f'''"""Tests of the processor of model {model.name!r}: yours to edit.

Written by: {command}
Run with:   python -m pytest {os.path.relpath(test)}

{textwrap.fill(about, width=92)}
"""

from __future__ import annotations

{imports}from pathlib import Path

import pytest

pytest_plugins = ["triton_score.testing"]

HERE = Path(__file__).resolve().parent
PROCESSOR = HERE / {relative(processor)}
MODEL = {_inline(model.name)}


@pytest.fixture(scope="session")
def triton_score_repository() -> Path:
    """The model repository the local Triton serves."""
    return (HERE / {relative(repository)}).resolve()
'''


def write_scaffold(
    model: ModelInfo,
    name: str,
    *,
    code_directory: Path,
    tests_directory: Path,
    repository: Path,
    command: str,
    force: bool = False,
    template: str = "instance",
) -> Scaffold:
    """Write ``<code_directory>/<name>_processor.py`` and its test,
    ``<tests_directory>/test_<name>_processor.py``, from ``template`` (one of
    :data:`TEMPLATES`).

    :raises ScaffoldError: a file exists already (and not ``force``), an unknown template, or
        a model the template does not fit.
    """
    module = module_name(name)
    paths = Scaffold(
        processor=code_directory / f"{module}_processor.py",
        test=tests_directory / f"test_{module}_processor.py",
    )
    existing = [p for p in (paths.processor, paths.test) if p.exists()]
    if existing and not force:
        raise ScaffoldError(
            f"{existing[0]} exists already: choose another name, or --force to overwrite it"
        )
    todo = ""
    if template == "instance":
        processor = render_processor(model, name, command)
        test = render_test(model, name, paths.processor, paths.test, repository, command)
    elif template == "tabular":
        from triton_score.kit import tabular

        try:
            processor = tabular.render_processor(model, name, command)
        except ValueError as exc:
            raise ScaffoldError(str(exc)) from None
        test = tabular.render_test(model, name, paths.processor, paths.test, repository, command)
        if tabular.layout(model).placeholders:
            todo = f"name the columns of the model's input: FEATURES in {paths.processor}"
    else:
        raise ScaffoldError(f"no template {template!r}; the templates are {list(TEMPLATES)}")
    code_directory.mkdir(parents=True, exist_ok=True)
    tests_directory.mkdir(parents=True, exist_ok=True)
    paths.processor.write_text(processor)
    paths.test.write_text(test)
    return Scaffold(paths.processor, paths.test, todo)
