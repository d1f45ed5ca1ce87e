"""``/swagger.json`` as azmlinfsrv serves it: Swagger 2.0 by default, OpenAPI 3 on request.

azmlinfsrv answers ``GET /swagger.json`` with a Swagger 2.0 document (``"swagger": "2.0"``,
``definitions``, body parameters), and with OpenAPI 3 for ``?version=3`` (or ``3.0``);
AzureML's tooling and generated clients read the default one. We build one document, our
OpenAPI 3 (:func:`triton_score.http.openapi.build_openapi`: every model's request and
response schema, the error shape, the API key scheme), and :func:`to_swagger2` writes it
down to Swagger 2.0 for the default. The OpenAPI 3 document is served as it is for
``?version=3`` and at ``/openapi.json``.

Swagger 2.0 has no ``anyOf``/``oneOf``, ``nullable`` or bearer scheme: a schema with
alternatives keeps them as ``x-anyOf`` / ``x-oneOf`` (a schema with no ``type`` accepts
anything, which is true of the alternatives together), ``nullable`` becomes
``x-nullable``, and the bearer key becomes an ``Authorization`` header key, as azmlinfsrv
documents its own.
"""

from __future__ import annotations

from typing import Any

from triton_score.codecs.request import is_json_media_type

#: ``?version=`` values: Swagger 2.0 (the default, as azmlinfsrv), and our OpenAPI 3.
SWAGGER2_VERSIONS = frozenset({"2", "2.0"})
OPENAPI3_VERSIONS = frozenset({"3", "3.0"})
_REF = "#/components/schemas/"


def to_swagger2(openapi: dict[str, Any]) -> dict[str, Any]:
    """The Swagger 2.0 form of our OpenAPI 3 document ``openapi``."""
    document: dict[str, Any] = {
        "swagger": "2.0",
        "info": dict(openapi["info"]),
        "paths": {
            path: {method: _operation(op) for method, op in item.items()}
            for path, item in openapi["paths"].items()
        },
        "definitions": {
            name: _schema(schema)
            for name, schema in openapi.get("components", {}).get("schemas", {}).items()
        },
    }
    if "securitySchemes" in openapi.get("components", {}):
        document["securityDefinitions"] = {
            name: {
                "type": "apiKey",
                "name": "Authorization",
                "in": "header",
                "description": "Bearer <key>",
            }
            for name in openapi["components"]["securitySchemes"]
        }
    if "security" in openapi:
        document["security"] = openapi["security"]
    return document


def _operation(operation: dict[str, Any]) -> dict[str, Any]:
    converted: dict[str, Any] = {
        key: operation[key]
        for key in ("summary", "description", "operationId", "security")
        if key in operation
    }
    body = operation.get("requestBody")
    if body is not None:
        content = body.get("content", {})
        converted["consumes"] = list(content)
        converted["parameters"] = [
            {
                "name": "body",
                "in": "body",
                "required": bool(body.get("required")),
                "schema": _schema(_preferred(content)),
            }
        ]
    produces: list[str] = []
    responses: dict[str, Any] = {}
    for status, response in operation.get("responses", {}).items():
        content = response.get("content", {})
        answer: dict[str, Any] = {"description": response.get("description", "")}
        if content:
            answer["schema"] = _schema(_preferred(content))
            produces += [kind for kind in content if kind not in produces]
        responses[status] = answer
    converted["responses"] = responses
    if produces:
        converted["produces"] = produces
    return converted


def _preferred(content: dict[str, Any]) -> dict[str, Any]:
    """The schema of the JSON media type if there is one, else of the first."""
    for kind, media in content.items():
        if is_json_media_type(kind):
            return dict(media.get("schema", {}))
    first: dict[str, Any] = next(iter(content.values()), {})
    return dict(first.get("schema", {}))


def _schema(schema: Any) -> Any:
    """A JSON schema of OpenAPI 3 as Swagger 2.0's Schema Object (recursively)."""
    if isinstance(schema, list):
        return [_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and value.startswith(_REF):
            converted[key] = "#/definitions/" + value.removeprefix(_REF)
        elif key == "nullable":
            converted["x-nullable"] = value
        elif key in ("anyOf", "oneOf"):
            converted[f"x-{key}"] = _schema(value)
        elif key in ("properties", "patternProperties") and isinstance(value, dict):
            converted[key] = {name: _schema(each) for name, each in value.items()}
        elif key == "example" or key == "enum":
            converted[key] = value  # data, not schemas
        else:
            converted[key] = _schema(value)
    return converted
