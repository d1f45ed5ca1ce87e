"""How an entry script's ``run()`` receives a request: the three ways azmlinfsrv has.

One parser is chosen when the script is loaded (:func:`choose_input_parser`) and turns each
HTTP request into ``run()``'s keyword arguments:

==========================  =================================================================
``run(data)``               :class:`JsonStringInput`: the body as a string (POST), or the query
                            arguments as a JSON string (GET)
``@input_schema`` on run    :class:`ObjectInput`: the JSON body's fields (or the query
                            arguments), one keyword argument per parameter of ``run``; the
                            decorators convert them (numpy, pandas, standard types)
``@rawhttp`` on run         :class:`RawRequestInput`: the Flask request itself, any method
==========================  =================================================================

``request_headers``, when ``run`` declares it, is added by the caller. The rules azmlinfsrv
enforces on ``run``'s signature are checked here too, each with its own message.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

import orjson
from flask import Request

from triton_score.errors import BadRequest, HTTPFailure
from triton_score.processors.loading import ProcessorLoadError

#: The parameter azmlinfsrv fills with the request headers when ``run`` declares it.
REQUEST_HEADERS = "request_headers"
#: Methods ``/score`` serves for an entry script; only ``@rawhttp`` scripts see them all.
READ_METHODS = frozenset({"GET", "POST"})
ALL_METHODS = frozenset({"GET", "HEAD", "POST", "OPTIONS"})


#: What a request gets for JSON nested deeper than the parsers go (orjson stops at 1024
#: levels; Python's json raises RecursionError near its recursion limit).
TOO_DEEP = "the JSON is nested too deeply"


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value
    except RecursionError:
        raise BadRequest(f"a query value is not usable: {TOO_DEEP}") from None


def query_values(request: Request) -> dict[str, Any]:
    """Query arguments as azmlinfsrv reads them: each value parsed as JSON when it is JSON,
    a repeated argument as a list (``?a=1&b=[1,2]&c=x&c=y`` -> ``{"a": 1, "b": [1, 2],
    "c": ["x", "y"]}``)."""
    values: dict[str, Any] = {}
    for key in request.args:
        found = [_json_or_text(v) for v in request.args.getlist(key)]
        values[key] = found[0] if len(found) == 1 else found
    return values


class InputParser:
    """Turns a request into ``run()``'s keyword arguments."""

    #: The HTTP methods handed to :meth:`__call__`; ``/score`` answers the others itself.
    methods: frozenset[str] = READ_METHODS

    def __call__(self, request: Request) -> dict[str, Any]:
        raise NotImplementedError


class JsonStringInput(InputParser):
    """``run(data)``: the body decoded as UTF-8, as it came (JSON or not, possibly empty)."""

    def __init__(self, parameter: str) -> None:
        self.parameter = parameter

    def __call__(self, request: Request) -> dict[str, Any]:
        if request.method == "GET":
            return {self.parameter: json.dumps(query_values(request))}
        body = request.get_data(cache=False)
        try:
            return {self.parameter: body.decode("utf-8")}
        except UnicodeDecodeError as exc:
            raise BadRequest(f"the body is not valid UTF-8 (byte {exc.start})") from None


class ObjectInput(InputParser):
    """``@input_schema``: a JSON object's fields as keyword arguments; a field that is
    missing takes the parameter's default, and without one the request is a 400."""

    def __init__(self, parameters: list[inspect.Parameter]) -> None:
        self.parameters = [(p.name, p.default) for p in parameters]

    def __call__(self, request: Request) -> dict[str, Any]:
        if request.method == "GET":
            return self._arguments(query_values(request))
        if not request.is_json:
            raise HTTPFailure(
                "this run() takes a JSON object: send Content-Type: application/json",
                415,
                "unsupported_media_type",
            )
        body = request.get_data(cache=False)
        if not body.strip():
            raise BadRequest("the body is empty; send a JSON object with run()'s arguments")
        try:
            values = orjson.loads(body)
        except orjson.JSONDecodeError:
            try:  # what orjson refuses and Python's json reads: NaN, huge integers
                values = json.loads(body)
            except ValueError as exc:
                raise BadRequest(f"the body is not valid JSON: {exc}") from None
            except RecursionError:
                raise BadRequest(f"the body is not usable: {TOO_DEEP}") from None
        if not isinstance(values, dict):
            raise BadRequest("the body must be a JSON object with run()'s arguments")
        return self._arguments(values)

    def _arguments(self, values: dict[str, Any]) -> dict[str, Any]:
        arguments = {}
        for name, default in self.parameters:
            value = values.get(name, default)
            if value is inspect.Parameter.empty:
                raise BadRequest(
                    f"no value for run()'s parameter {name!r}", details={"input": name}
                )
            arguments[name] = value
        return arguments


class RawRequestInput(InputParser):
    """``@rawhttp``: the request object itself, whatever the method."""

    methods = ALL_METHODS

    def __init__(self, parameter: str) -> None:
        self.parameter = parameter

    def __call__(self, request: Request) -> dict[str, Any]:
        return {self.parameter: request}


def choose_input_parser(
    run: Callable[..., Any], *, raw_http: bool, schema_decorated: bool, where: str
) -> tuple[InputParser, bool]:
    """The parser for ``run`` and whether it takes ``request_headers``.

    :param where: names the script in error messages.
    :raises ProcessorLoadError: a signature azmlinfsrv refuses, or both @rawhttp and
        @input_schema.
    """
    try:
        parameters = list(inspect.signature(run).parameters.values())
    except (TypeError, ValueError) as exc:
        raise ProcessorLoadError(f"{where}: cannot read run()'s signature: {exc}") from None
    for parameter in parameters:
        if parameter.kind is parameter.VAR_POSITIONAL:
            problem = f"*{parameter.name}"
        elif parameter.kind is parameter.VAR_KEYWORD:
            problem = f"**{parameter.name}"
        elif parameter.kind is parameter.POSITIONAL_ONLY:
            problem = f"the positional-only parameter {parameter.name!r}"
        else:
            continue
        raise ProcessorLoadError(
            f"{where}: run() cannot take *args, **kwargs or positional-only parameters "
            f"(it has {problem}): the server passes run()'s arguments by name"
        )
    wants_headers = any(p.name == REQUEST_HEADERS for p in parameters)
    inputs = [p for p in parameters if p.name != REQUEST_HEADERS]
    if not inputs:
        raise ProcessorLoadError(
            f"{where}: run() needs a parameter for the request"
            + (" besides request_headers" if wants_headers else "")
            + ", e.g. run(data)"
        )
    if raw_http and schema_decorated:
        raise ProcessorLoadError(
            f"{where}: run() cannot be decorated with both @rawhttp and @input_schema "
            "(one receives the HTTP request, the other the JSON body's fields)"
        )
    if raw_http:
        return RawRequestInput(inputs[0].name), wants_headers
    if schema_decorated:
        return ObjectInput(inputs), wants_headers
    return JsonStringInput(inputs[0].name), wants_headers
