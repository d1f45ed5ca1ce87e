"""A processor's declared request: content types and a JSON schema, checked before preprocess.

A processor declares its request once, as class attributes, and the declaration is used three
times — to refuse bad requests, to document them in ``/swagger.json``, and for the example::

    request_schema = {"type": "object", "required": ["text"], ...}   # a JSON schema
    request_example = {"text": "..."}
    request_content_types = ("image/jpeg", "image/png")              # default: JSON only
    response_schema = {...}
    response_content_types = ("text/csv",)                           # default: JSON only

``request_schema`` is compiled once per worker, when the processor is loaded; a JSON request
that does not match it is a 400 naming the field (``{"error": "field 'image': ...", "code":
"invalid_request", "field": "image"}``) before ``preprocess`` runs. With
``request_content_types``, a request stating another content type is a 415; one that states
none (:data:`UNSTATED_MEDIA_TYPES`) is let through, and so is ``text/plain`` when the
declaration includes JSON (AzureML's clients send JSON as text/plain).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from triton_score.codecs.request import (
    SNIFFED_MEDIA_TYPES,
    UNSTATED_MEDIA_TYPES,
    Request,
    is_json_media_type,
)
from triton_score.errors import InvalidRequest, UnsupportedMediaType

JSON_CONTENT_TYPES = ("application/json",)
_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}
MAX_MESSAGE = 200


def content_types(owner: Any, attribute: str) -> tuple[str, ...] | None:
    """The media types ``owner`` declares in ``attribute``, checked; ``None`` if it declares
    none. :raises ValueError: a declaration that is not a list of ``type/subtype`` strings."""
    declared = getattr(owner, attribute, None)
    if declared is None:
        return None
    if isinstance(declared, str):
        declared = (declared,)
    if not isinstance(declared, Sequence) or not declared:
        raise ValueError(f"{attribute} must be a non-empty tuple of media types")
    checked = []
    for media_type in declared:
        if not isinstance(media_type, str) or media_type.count("/") != 1 or ";" in media_type:
            raise ValueError(f"{attribute}: {media_type!r} is not a media type such as 'image/png'")
        checked.append(media_type.strip().lower())
    return tuple(checked)


def media_type_matches(media_type: str, patterns: Sequence[str]) -> bool:
    """Does ``media_type`` match one of ``patterns`` (``image/png``, ``image/*``, ``*/*``)?"""
    kind, _, _ = media_type.partition("/")
    for pattern in patterns:
        if pattern in ("*/*", media_type):
            return True
        if pattern.endswith("/*") and pattern[:-2] == kind:
            return True
    return False


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def field_path(parts: Sequence[Any]) -> str:
    """``["items", 2, "name"]`` -> ``items[2].name``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def describe(error: Any) -> tuple[list[Any], str]:
    """The field path and a short message for a ``jsonschema`` error, without echoing the
    client's (possibly huge) values back."""
    path = list(error.absolute_path)
    keyword, expected, value = error.validator, error.validator_value, error.instance
    if keyword == "required" and isinstance(value, dict):
        missing = next((name for name in expected if name not in value), None)
        if missing is not None:
            return [*path, missing], "is required"
    if keyword == "type":
        wanted = " or ".join(expected) if isinstance(expected, list) else str(expected)
        return path, f"expected {wanted}, got {_json_type(value)}"
    if keyword in ("minItems", "maxItems") and isinstance(value, list):
        bound = "at least" if keyword == "minItems" else "at most"
        return path, f"expected {bound} {expected} items, got {len(value)}"
    if keyword in ("minLength", "maxLength") and isinstance(value, str):
        bound = "at least" if keyword == "minLength" else "at most"
        return path, f"expected {bound} {expected} characters, got {len(value)}"
    comparisons = {
        "minimum": ">=",
        "maximum": "<=",
        "exclusiveMinimum": ">",
        "exclusiveMaximum": "<",
    }
    if keyword in comparisons:
        return path, f"must be {comparisons[keyword]} {expected}"
    if keyword == "enum":
        return path, _short(f"must be one of {list(expected)}")
    return path, _short(str(error.message))


class RequestContract:
    """What a processor declares about its request, compiled once.

    :raises ValueError: (at construction) an invalid schema, content types, or an example
        that does not match the schema.
    """

    def __init__(self, owner: Any) -> None:
        self.content_types = content_types(owner, "request_content_types")
        self.response_content_types = content_types(owner, "response_content_types")
        self.schema = getattr(owner, "request_schema", None)
        self.example = getattr(owner, "request_example", None)
        #: Types let through without matching the declaration: text/plain only where JSON is
        #: accepted, since JSON is what it carries then (an image processor refuses it).
        self._let_through = SNIFFED_MEDIA_TYPES if self.accepts_json else UNSTATED_MEDIA_TYPES
        self._validator: Any = None
        if self.schema is not None:
            if not isinstance(self.schema, dict):
                raise ValueError("request_schema must be a JSON schema (a dict)")
            from jsonschema import exceptions, validators  # only when used

            kind = validators.validator_for(self.schema, default=validators.Draft202012Validator)
            try:
                kind.check_schema(self.schema)
            except exceptions.SchemaError as exc:
                where = field_path(list(exc.absolute_path)) or "the schema"
                raise ValueError(
                    f"request_schema is not a valid JSON schema ({where}: {_short(exc.message)})"
                ) from None
            self._validator = kind(self.schema)
            if self.example is not None and self.accepts_json:
                try:
                    self.validate(self.example)
                except InvalidRequest as exc:
                    raise ValueError(
                        f"request_example does not match request_schema: {exc.message}"
                    ) from None

    @property
    def accepts_json(self) -> bool:
        return self.content_types is None or any(
            is_json_media_type(t) or t in ("*/*", "application/*") for t in self.content_types
        )

    @property
    def active(self) -> bool:
        """Whether there is anything to check per request."""
        return self._validator is not None or self.content_types is not None

    def validate(self, document: Any) -> None:
        """Raise :class:`InvalidRequest` naming the field when ``document`` breaks the schema."""
        if self._validator is None:
            return
        from jsonschema.exceptions import best_match  # imported at load

        error = best_match(self._validator.iter_errors(document))
        if error is not None:
            path, message = describe(error)
            raise InvalidRequest(field_path(path), message)

    def check(self, request: Request) -> None:
        """Refuse a request of the wrong content type (415) or shape (400)."""
        media_type = request.content_type
        if (
            self.content_types is not None
            and media_type not in self._let_through
            and not media_type_matches(media_type, self.content_types)
        ):
            raise UnsupportedMediaType(
                f"content type {media_type!r} is not accepted; send one of "
                f"{list(self.content_types)}",
                details={"accepted": list(self.content_types)},
            )
        if request.is_json and self._validator is not None:
            self.validate(request.json)


def request_media_types(owner: Any) -> tuple[str, ...]:
    """The request content types to document (JSON unless the processor says otherwise)."""
    return content_types(owner, "request_content_types") or JSON_CONTENT_TYPES


def response_media_types(owner: Any) -> tuple[str, ...]:
    return content_types(owner, "response_content_types") or JSON_CONTENT_TYPES
