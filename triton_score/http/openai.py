"""``/v1``: an OpenAI-compatible front over a remote Triton (docs/llm.md).

``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions``, streaming
(Server-Sent Events: ``data: {chunk}`` ... ``data: [DONE]``) and not, in OpenAI's shapes.
Per model, :mod:`triton_score.llm` gives the tokenizer (``usage``), the chat template (the
prompt) and the adapter (the Triton inputs); Triton's ``generate_stream`` does the work.

What is refused, with OpenAI's error shape (``{"error": {"message", "type", "param",
"code"}}``) and a 400 naming the field: ``n`` above 1, tools and functions, logprobs,
``logit_bias``, penalties, ``response_format`` other than text, ``echo``, ``best_of``,
``suffix``, token-id prompts, non-text message parts, and fields OpenAI does not have.

API keys (``SCORE_API_KEYS``) are required here as everywhere: OpenAI clients send theirs as
``Authorization: Bearer <key>``, which is what the gateway reads (route group ``v1``, which
``SCORE_AUTH_EXEMPT`` cannot open).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request

from triton_score.errors import ScoringError
from triton_score.http.exchange import current
from triton_score.http.responses import runtime
from triton_score.llm.adapters import AdapterError, Generation
from triton_score.llm.models import LanguageModel, LanguageModels
from triton_score.llm.stops import StopScanner
from triton_score.llm.text import ModelTextError
from triton_score.llm.upstream import GenerateStream, UpstreamError, upstream_for
from triton_score.repository.locations import find_model_repository
from triton_score.telemetry.metrics import StreamMeter

blueprint = Blueprint("openai", __name__)

EXTENSION = "triton_score.llm"
MAX_STOP_SEQUENCES = 4
#: Fields accepted and ignored (they change nothing a client can see here).
IGNORED = frozenset({"user", "store", "metadata", "service_tier", "parallel_tool_calls"})
COMMON = frozenset(
    {"model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options", "n"}
)
COMPLETION_FIELDS = COMMON | {"prompt", "echo", "best_of", "suffix", "logprobs"}
CHAT_FIELDS = COMMON | {
    "messages",
    "max_completion_tokens",
    "response_format",
    "logprobs",
    "top_logprobs",
}
#: Refused when present at all (unless null / their "off" value, see _refuse_unsupported).
UNSUPPORTED = {
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "function_call": None,
    "logit_bias": None,
    "top_logprobs": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "echo": False,
    "best_of": 1,
    "suffix": None,
    "logprobs": None,
    "n": 1,
}
ROLES = frozenset({"system", "developer", "user", "assistant"})


class OpenAIError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int = 400,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.kind, self.code = (
            message,
            param,
            status,
            kind,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> Response:
        return Response(orjson.dumps(self.body()), self.status, content_type="application/json")


def language_models() -> LanguageModels:
    """This app's language models (made on first use: the catalog exists by then)."""
    found = current_app.extensions.get(EXTENSION)
    if found is None:
        from triton_score.http.routes import V2_MODELS

        settings = runtime().settings
        folder: Path | None
        if settings.llm_folder:
            folder = Path(settings.llm_folder)
        else:
            try:
                folder = find_model_repository(settings.model_repository or None)
            except FileNotFoundError:
                folder = None
        catalog = current_app.extensions[V2_MODELS]
        found = LanguageModels(catalog.get, folder, dict(settings.llm_adapters))
        current_app.extensions[EXTENSION] = found
    return found  # type: ignore[no-any-return]


@blueprint.get("/v1/models")
def list_models() -> Response:
    created = int(time.time())
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "triton"}
        for name in language_models().names()
    ]
    return _json({"object": "list", "data": data})


@blueprint.post("/v1/completions")
def completions() -> Response:
    return _serve(chat=False)


@blueprint.post("/v1/chat/completions")
def chat_completions() -> Response:
    return _serve(chat=True)


@dataclass
class Outcome:
    """How a generation ended, known once its pieces are all sent."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass(frozen=True)
class Call:
    """One checked request: the model, what to generate, and how to answer."""

    model: LanguageModel
    generation: Generation
    chat: bool
    stream: bool
    include_usage: bool


def _serve(chat: bool) -> Response:
    try:
        call = _read_call(chat)
        settings = runtime().settings
        upstream = upstream_for(settings)
        outcome = Outcome(prompt_tokens=call.model.text.count(call.generation.prompt))
        pieces = _pieces(call, upstream, outcome)
        first = next(pieces, None)  # Triton's refusals become an answer, not a broken stream
        seen = current()
        started = seen.started if seen is not None else time.perf_counter()
        if seen is not None:  # the access line's time to the first token
            seen.record_stage("first_token", time.perf_counter() - started)
    except OpenAIError as exc:
        return exc.response()
    except UpstreamError as exc:
        status = exc.status if 400 <= exc.status < 500 else 502
        kind = "invalid_request_error" if status < 500 else "api_error"
        return OpenAIError(f"the model refused: {exc.message}", status=status, kind=kind).response()
    except ScoringError as exc:
        return OpenAIError(exc.message, status=exc.status_code, kind="api_error").response()
    ident = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
    shape = _Shape(ident, int(time.time()), call.model.name, chat)
    metrics = runtime().metrics
    if call.stream:
        body = _sse(
            shape, call, first, pieces, outcome, lambda: metrics.stream(call.model.name, started)
        )
        response = Response(body, 200, content_type="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        return response
    try:
        text = (first or "") + "".join(pieces)
    except UpstreamError as exc:
        return OpenAIError(
            f"the model failed: {exc.message}", status=502, kind="api_error"
        ).response()
    metrics.child(metrics.llm_tokens, call.model.name).inc(outcome.completion_tokens)
    return _json(shape.whole(text, outcome))


def _pieces(call: Call, upstream: GenerateStream, outcome: Outcome) -> Generator[str]:
    """The completion's text as it comes: stop sequences cut, counts kept in ``outcome``."""
    generation = call.generation
    scanner = StopScanner(generation.stop)
    events = upstream.events(call.model.info, call.model.adapter.body(generation))
    produced: list[str] = []
    try:
        for event in events:
            produced.append(call.model.adapter.text(event))
            ready = scanner.add(produced[-1])
            if ready:
                yield ready
            if scanner.stopped:
                break
        rest = scanner.flush()
        if rest:
            yield rest
    finally:
        events.close()  # a stop sequence, or the client gone: Triton's request is cancelled
        # (over gRPC; over HTTP only its connection closes)
        kept = "".join(produced)
        outcome.completion_tokens = call.model.text.count(kept)
        if scanner.stopped:
            outcome.finish_reason = "stop"
        elif outcome.completion_tokens >= generation.max_tokens:
            outcome.finish_reason = "length"


@dataclass(frozen=True)
class _Shape:
    """OpenAI's response and chunk objects for one answer."""

    ident: str
    created: int
    model: str
    chat: bool

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.ident, "object": kind, "created": self.created, "model": self.model}

    def whole(self, text: str, outcome: Outcome) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": outcome.finish_reason,
            }
            head = self._head("chat.completion")
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": outcome.finish_reason,
            }
            head = self._head("text_completion")
        return {**head, "choices": [choice], "usage": outcome.usage()}

    def chunk(self, delta: dict[str, Any] | str, finish: str | None) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish,
            }
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}


def _sse(
    shape: _Shape,
    call: Call,
    first: str | None,
    pieces: Generator[str],
    outcome: Outcome,
    metered: Callable[[], StreamMeter],
) -> Iterator[bytes]:
    """The SSE body: OpenAI's chunks as the pieces come, the finish, the usage, ``[DONE]``;
    each piece a response of the stream's meter (made when the body is first read: a body
    never read, its client gone first, leaves no stream in flight)."""
    meter = metered()

    def event(payload: Mapping[str, Any]) -> bytes:
        if call.include_usage and "usage" not in payload:
            payload = {**payload, "usage": None}
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def text(piece: str) -> bytes:
        meter.response()
        return event(shape.chunk({"content": piece} if shape.chat else piece, None))

    ended = "cancelled"  # unless it gets to the end
    try:
        if shape.chat:
            yield event(shape.chunk({"role": "assistant", "content": ""}, None))
        if first:
            yield text(first)
        for piece in pieces:
            yield text(piece)
        yield event(shape.chunk({} if shape.chat else "", outcome.finish_reason))
        if call.include_usage:
            last = {**shape.chunk({}, None), "choices": [], "usage": outcome.usage()}
            yield event(last)
        ended = "completed"
    except UpstreamError as exc:  # mid-stream: an error event, then the stream ends cleanly
        ended = "failed"
        error = OpenAIError(f"the model failed: {exc.message}", status=502, kind="api_error")
        yield b"data: " + orjson.dumps(error.body()) + b"\n\n"
    finally:
        pieces.close()
        meter.end(ended)
        metrics = meter.metrics
        metrics.child(metrics.llm_tokens, call.model.name).inc(outcome.completion_tokens)
    yield b"data: [DONE]\n\n"


def _json(payload: Mapping[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, content_type="application/json")


# -- reading a request ----------------------------------------------------------------------
def _read_call(chat: bool) -> Call:
    try:
        payload = orjson.loads(request.get_data(cache=False))
    except orjson.JSONDecodeError:
        raise OpenAIError("the request body is not JSON") from None
    if not isinstance(payload, dict):
        raise OpenAIError("the request body must be a JSON object")
    _refuse_unsupported(payload, CHAT_FIELDS if chat else COMPLETION_FIELDS)
    name = payload.get("model")
    if not isinstance(name, str) or not name:
        raise OpenAIError("model is required: the name of a model Triton serves", param="model")
    seen = current()
    if seen is not None:
        seen.model = name  # the access line names the model
    try:
        model = language_models().get(name)
    except (ModelTextError, AdapterError) as exc:
        raise OpenAIError(str(exc), param="model", code="model_not_supported") from None
    except ScoringError as exc:
        if exc.status_code == 404:
            raise OpenAIError(
                f"model {name!r} does not exist", param="model", status=404, code="model_not_found"
            ) from None
        raise
    if chat:
        if not model.text.has_chat:
            raise OpenAIError(
                f"model {name} has no chat template: use /v1/completions", param="model"
            )
        try:
            prompt = model.text.chat_prompt(_messages(payload.get("messages")))
        except ModelTextError as exc:
            raise OpenAIError(str(exc), param="messages") from None
        max_tokens = _optional_int(payload, "max_completion_tokens") or _optional_int(
            payload, "max_tokens"
        )
        default = runtime().settings.llm_max_tokens
    else:
        prompt = _prompt(payload.get("prompt"))
        max_tokens = _optional_int(payload, "max_tokens")
        default = 16  # OpenAI's default for completions
    stream = payload.get("stream") or False
    if not isinstance(stream, bool):
        raise OpenAIError("stream must be true or false", param="stream")
    options = payload.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise OpenAIError('stream_options must be {"include_usage": bool}', param="stream_options")
    generation = Generation(
        prompt=prompt,
        max_tokens=max_tokens or default,
        temperature=_optional_number(payload, "temperature", 0.0, 2.0),
        top_p=_optional_number(payload, "top_p", 0.0, 1.0, open_low=True),
        seed=_optional_int(payload, "seed", minimum=None),
        stop=_stops(payload.get("stop")),
    )
    return Call(model, generation, chat, stream, bool(options.get("include_usage")) and stream)


def _refuse_unsupported(payload: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for key, value in payload.items():
        if key in IGNORED:
            continue
        off = value is None or value is False or value == UNSUPPORTED.get(key)
        if key in UNSUPPORTED and not off:
            raise OpenAIError(f"{key} is not supported by this server", param=key)
        if key not in allowed and key not in UNSUPPORTED:
            raise OpenAIError(f"unknown field {key!r}", param=key)
    response_format = payload.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise OpenAIError(
            'only response_format {"type": "text"} is supported', param="response_format"
        )


def _optional_int(payload: Mapping[str, Any], key: str, minimum: int | None = 1) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    wrong = not isinstance(value, int) or isinstance(value, bool)
    if wrong or (minimum is not None and value < minimum):
        floor = f" of at least {minimum}" if minimum is not None else ""
        raise OpenAIError(f"{key} must be an integer{floor}", param=key)
    return value


def _optional_number(
    payload: Mapping[str, Any], key: str, low: float, high: float, *, open_low: bool = False
) -> float | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise OpenAIError(f"{key} must be a number", param=key)
    if value > high or value < low or (open_low and value == low):
        bound = "above" if open_low else "at least"
        raise OpenAIError(f"{key} must be {bound} {low} and at most {high}", param=key)
    return float(value)


def _stops(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or not all(isinstance(s, str) and s for s in stops)
        or len(stops) > MAX_STOP_SEQUENCES
    ):
        raise OpenAIError(
            f"stop must be a non-empty string or a list of at most {MAX_STOP_SEQUENCES}",
            param="stop",
        )
    return tuple(stops)


def _prompt(value: object) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if not isinstance(value, str):
        raise OpenAIError(
            "prompt must be a string (one; token ids are not supported)", param="prompt"
        )
    return value


def _messages(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise OpenAIError("messages must be a non-empty list", param="messages")
    messages = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise OpenAIError(f"{where} must be an object", param=where)
        role = message.get("role")
        if role not in ROLES:
            raise OpenAIError(
                f"{where}.role must be one of {', '.join(sorted(ROLES))}", param=f"{where}.role"
            )
        if message.get("tool_calls") or message.get("function_call"):
            raise OpenAIError("tool calls are not supported", param=f"{where}.tool_calls")
        content = message.get("content")
        if isinstance(content, list):  # parts: text only
            texts = []
            for part in content:
                is_text = isinstance(part, dict) and part.get("type") == "text"
                if not is_text or not isinstance(part.get("text"), str):
                    raise OpenAIError(
                        "only text content parts are supported", param=f"{where}.content"
                    )
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise OpenAIError(f"{where}.content must be a string", param=f"{where}.content")
        messages.append({"role": str(role), "content": content})
    return messages
