"""Read a model's ``config.pbtxt`` without a server, as the JSON Triton serves for it.

Triton answers ``/v2/models/<m>/config`` with its model configuration as JSON; this module
turns the ``config.pbtxt`` of a model folder into the same JSON form, so that
:meth:`triton_score.model.info.ModelInfo.from_config` can build the :class:`ModelInfo` a
processor will receive, offline (in a unit test, in ``score check``).

The protobuf text format is parsed with Triton's own ``ModelConfig`` message when
``tritonclient``'s gRPC package and ``protobuf`` are installed (the ``[local]`` extra): a
misspelt field is then an error naming it, as Triton would report it. Without them, a small
parser reads the same syntax and keeps every field it finds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.pbtxt"

#: Fields of ``ModelConfig`` (and its messages) that repeat: lists in the JSON form.
_REPEATED = {
    "input",
    "output",
    "dims",
    "shape",
    "instance_group",
    "gpus",
    "preferred_batch_size",
    "batch_input",
    "batch_output",
    "target_name",
    "source_input",
    "control_input",
    "control",
    "state",
    "initial_state",
    "int32_false_true",
    "fp32_false_true",
    "bool_false_true",
    "model_transaction_policy",
    "version",
    "versions",
    "ensemble_scheduling",
    "step",
}
#: ``map<string, ...>`` fields, written in text format as repeated ``{key: ... value: ...}``.
_MAPS = {"parameters", "input_map", "output_map", "cc_model_filenames", "metric_tags"}
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<punct>[{}\[\]:,;<>])
      | (?P<word>[^\s{}\[\]:,;<>"'#]+)
    )""",
    re.VERBOSE,
)


class ModelConfigError(ValueError):
    """A ``config.pbtxt`` that cannot be read; the message says where."""


def read_model_config(path: str | Path) -> dict[str, Any]:
    """The JSON form of a model's config, from its folder or its ``config.pbtxt``.

    A config without ``name`` gets the folder's name, as Triton gives it.
    """
    path = Path(path)
    file = path / CONFIG_FILE if path.is_dir() else path
    if not file.is_file():
        raise ModelConfigError(f"{file} does not exist")
    config = parse_model_config(file.read_text(), origin=str(file))
    config.setdefault("name", file.parent.name)
    return config


def parse_model_config(text: str, origin: str = CONFIG_FILE) -> dict[str, Any]:
    """``config.pbtxt`` text -> the JSON form of Triton's ``/v2/models/<m>/config``."""
    try:
        from google.protobuf import json_format, text_format
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError):  # tritonclient.grpc raises RuntimeError without grpcio
        return _normalise(_Parser(text, origin).message(top=True))
    try:
        message = text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelConfigError(f"{origin}: {exc}") from None
    parsed: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return parsed


class _Parser:
    """Protobuf text format: ``field: value``, ``field { ... }``, ``field [ ... ]``, comments."""

    def __init__(self, text: str, origin: str) -> None:
        self.origin = origin
        self.tokens: list[tuple[str, str, int]] = []
        position = 0
        while text[position:].strip():
            found = _TOKEN.match(text, position)
            if found is None:
                stray = text[position:].lstrip()[0]
                line = text.count("\n", 0, position + text[position:].index(stray)) + 1
                raise self._error(f"unexpected character {stray!r}", line)
            kind = found.lastgroup or ""
            if kind != "comment":
                line = text.count("\n", 0, found.start(kind)) + 1
                self.tokens.append((kind, found.group(kind), line))
            position = found.end()
        self.index = 0

    def _error(self, message: str, line: int | None = None) -> ModelConfigError:
        if line is None:
            line = self.tokens[min(self.index, len(self.tokens) - 1)][2] if self.tokens else 1
        return ModelConfigError(f"{self.origin}:{line}: {message}")

    def _peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _next(self) -> tuple[str, str, int]:
        token = self._peek()
        if token is None:
            raise self._error("unexpected end of file")
        self.index += 1
        return token

    def message(self, top: bool = False) -> dict[str, list[Any]]:
        fields: dict[str, list[Any]] = {}
        while True:
            token = self._peek()
            if token is None:
                if top:
                    return fields
                raise self._error("missing '}'")
            if token[1] in ("}", ">") and not top:
                self.index += 1
                return fields
            kind, name, _ = self._next()
            if kind != "word":
                raise self._error(f"expected a field name, got {name!r}")
            values = fields.setdefault(name, [])
            following = self._peek()
            if following is not None and following[1] == ":":
                self.index += 1
                following = self._peek()
            if following is not None and following[1] == "[":
                self.index += 1
                while True:
                    if self._peek() is not None and self._peek()[1] == "]":  # type: ignore[index]
                        self.index += 1
                        break
                    values.append(self._value())
                    separator = self._next()[1]
                    if separator == "]":
                        break
                    if separator != ",":
                        raise self._error(f"expected ',' or ']' in the list of {name!r}")
            else:
                values.append(self._value())
            if self._peek() is not None and self._peek()[1] in (",", ";"):  # type: ignore[index]
                self.index += 1

    def _value(self) -> Any:
        kind, text, _ = self._next()
        if text in ("{", "<"):
            return self.message()
        if kind == "string":
            return bytes(text[1:-1], "utf-8").decode("unicode_escape")
        if kind != "word":
            raise self._error(f"unexpected {text!r}")
        if re.fullmatch(r"[-+]?\d+", text):
            return int(text)
        if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?[fF]?", text):
            return float(text.rstrip("fF"))
        if text in ("true", "True"):
            return True
        if text in ("false", "False"):
            return False
        return text  # an enum value (TYPE_FP32, KIND_CPU)


def _normalise(fields: Mapping[str, list[Any]]) -> dict[str, Any]:
    """The parser's ``{field: [values]}`` -> JSON: lists for repeated fields, maps as dicts."""
    out: dict[str, Any] = {}
    for name, values in fields.items():
        converted = [_normalise(v) if isinstance(v, Mapping) else v for v in values]
        if name in _MAPS:
            out[name] = {str(entry.get("key", "")): entry.get("value") for entry in converted}
        elif name in _REPEATED:
            out[name] = converted
        else:
            out[name] = converted[-1] if converted else None
    return out
