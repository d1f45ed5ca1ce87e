"""Build the OpenAPI 3 document (``/swagger.json``) from the served models and processors.

Models served by the default codec get a request schema derived from their metadata (one
nested array per input, of the right depth and element type). A processor documents its own
request by setting ``request_schema`` (a JSON schema, which also validates requests) and
optionally ``request_example``, and its response with ``response_schema``; non-JSON bodies
with ``request_content_types`` / ``response_content_types`` (documented as binary strings).
"""

from __future__ import annotations

from typing import Any

from triton_score import __version__
from triton_score.codecs.request import is_json_media_type
from triton_score.codecs.response import OCTET_STREAM
from triton_score.errors import ScoringError
from triton_score.model.info import ModelInfo, TensorSpec
from triton_score.processors.schema import request_media_types, response_media_types

_ELEMENT = {"BOOL": "boolean", "BYTES": "string"}

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "code"],
    "properties": {
        "error": {"type": "string"},
        "code": {"type": "string"},
        "request_id": {"type": "string"},
        "input": {"type": "string"},
        "field": {"type": "string"},
    },
}
BINARY = {"type": "string", "format": "binary"}


def _element(spec: TensorSpec, *, output: bool) -> dict[str, Any]:
    if spec.datatype in _ELEMENT:
        return {"type": _ELEMENT[spec.datatype]}
    if spec.datatype.startswith(("INT", "UINT")):
        return {"type": "integer"}
    if output:
        # A model may compute NaN or inf, which JSON cannot carry: they arrive as null.
        return {"type": "number", "nullable": True}
    return {"type": "number"}


def tensor_schema(model: ModelInfo, spec: TensorSpec, *, output: bool = False) -> dict[str, Any]:
    schema = _element(spec, output=output)
    for axis, dim in reversed(list(enumerate(spec.shape))):
        schema = {"type": "array", "items": schema}
        if dim >= 0:
            schema["minItems"] = schema["maxItems"] = dim
        elif axis == 0 and model.batching:
            schema["minItems"], schema["maxItems"] = 1, model.max_batch_size
    schema["description"] = f"{spec.datatype}, shape {spec.describe_shape()}"
    return schema


def output_schema(model: ModelInfo, spec: TensorSpec) -> dict[str, Any]:
    """The tensor, or with ``class_count`` the classification result: per instance, a list
    of ``"score:index:label"`` strings."""
    tensor = tensor_schema(model, spec, output=True)
    if spec.is_bytes:
        return tensor
    classification: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
    if model.batching:
        classification = {"type": "array", "items": classification}
    classification["description"] = 'with class_count: "score:index:label" per class'
    return {"anyOf": [tensor, classification]}


def default_request_schema(model: ModelInfo) -> dict[str, Any]:
    required = [i.name for i in model.inputs if not i.optional]
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "inputs": {
                "type": "object",
                "required": required,
                "properties": {i.name: tensor_schema(model, i) for i in model.inputs},
                "additionalProperties": False,
            },
            "outputs": {
                "type": "array",
                "items": {
                    "oneOf": [
                        {"type": "string", "enum": [o.name for o in model.outputs]},
                        {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string"},
                                "class_count": {"type": "integer", "minimum": 0},
                            },
                        },
                    ]
                },
            },
        },
    }


def default_response_schema(model: ModelInfo) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "outputs": {
                "type": "object",
                "properties": {o.name: output_schema(model, o) for o in model.outputs},
            },
        },
    }


def _operation(model: ModelInfo, implementation: Any, summary: str) -> dict[str, Any]:
    request_schema = getattr(implementation, "request_schema", None) or (
        default_request_schema(model)
        if getattr(implementation, "preprocess", None) is None
        else {"description": "defined by the model's processor"}
    )
    response_schema = getattr(implementation, "response_schema", None) or (
        default_response_schema(model)
        if getattr(implementation, "postprocess", None) is None
        else {"description": "defined by the model's processor"}
    )
    media: dict[str, Any] = {"schema": request_schema}
    example = getattr(implementation, "request_example", None)
    if example is not None:
        media["example"] = example
    request_content = {
        kind: media if is_json_media_type(kind) else {"schema": BINARY}
        for kind in request_media_types(implementation)
    }
    response_content = {
        kind: {"schema": response_schema if is_json_media_type(kind) else BINARY}
        for kind in response_media_types(implementation)
    }
    # The default codec's binary forms, where it decodes or encodes and no content types are
    # declared: v2 binary tensors or one raw tensor in, binary outputs out when asked
    # (triton_score.codecs.binary).
    if not any(getattr(implementation, a, None) for a in ("preprocess", "request_content_types")):
        request_content.setdefault(OCTET_STREAM, {"schema": BINARY})
    if not any(getattr(implementation, a, None) for a in ("postprocess", "response_content_types")):
        response_content.setdefault(OCTET_STREAM, {"schema": BINARY})
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    refusals = {}
    if getattr(implementation, "request_content_types", None) is not None:
        refusals["415"] = {"description": "content type not accepted", "content": error}
    return {
        "summary": summary,
        "operationId": f"score_{model.name}".replace("-", "_"),
        "requestBody": {"required": True, "content": request_content},
        "responses": {
            "200": {"description": "scored", "content": response_content},
            "400": {
                "description": "invalid request (names the field or the input)",
                "content": error,
            },
            **refusals,
            "404": {"description": "unknown model", "content": error},
            "413": {
                "description": "body above SCORE_MAX_BODY_BYTES, the processor's "
                "max_body_bytes or the model's largest valid request (limit_bytes says which), "
                "or content the processor refuses to decode for its size",
                "content": error,
            },
            "500": {"description": "processor failure (see log)", "content": error},
            "503": {"description": "Triton unavailable; retry", "content": error},
            "504": {"description": "scoring timed out", "content": error},
        },
    }


def build_openapi(rt: Any) -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/": {"get": {"summary": "Liveness", "responses": {"200": {"description": "Healthy"}}}},
        "/v2/health/ready": {
            "get": {
                "summary": "Readiness: models loaded and Triton ready",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
    }
    scorer = rt.scorer
    if scorer is not None:
        try:
            models = scorer.ensure_loaded()
        except ScoringError:
            models = {}
        for name, model in models.items():
            implementation = scorer.processors.for_model(name).implementation
            paths[f"/score/{name}"] = {
                "post": _operation(model, implementation, f"Score with model {name}")
            }
        try:
            default = scorer.model(None)
        except ScoringError:
            default = None
        if default is not None:
            operation = _operation(
                default,
                scorer.processors.for_model(default.name).implementation,
                f"Score with the default model ({default.name})",
            )
            operation["operationId"] = "score"
            paths["/score"] = {"post": operation}
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    if rt.entry_script is not None:
        # As azmlinfsrv documents a script: ServiceInput/ServiceOutput from @input_schema and
        # @output_schema (inference-schema's OpenAPI 3.0 form), else open objects.
        schemas["ServiceInput"], schemas["ServiceOutput"] = rt.entry_script.schemas()
        paths["/score"] = {"post": _entry_script_operation()}
    document: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "triton-score", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if rt.settings.auth_enabled:  # SCORE_API_KEYS: a bearer key everywhere but the probes
        document["components"]["securitySchemes"] = {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "an API key"}
        }
        document["security"] = [{"apiKey": []}]
        for path in ("/", "/v2/health/ready"):
            paths[path]["get"]["security"] = []
    return document


def _entry_script_operation() -> dict[str, Any]:
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {
        "summary": "Score with the AzureML entry script's run()",
        "operationId": "score",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ServiceInput"}}
            },
        },
        "responses": {
            "200": {
                "description": "what run() returned",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ServiceOutput"}}
                },
            },
            "400": {"description": "the request does not fit run()", "content": error},
            "415": {"description": "run() takes JSON: send application/json", "content": error},
            "500": {"description": "run() failed (see the log)", "content": error},
        },
    }
