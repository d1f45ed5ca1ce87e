"""``/v2/models/<m>[/versions/<v>]/generate`` and ``generate_stream``: Triton's generate
extension through the scoring port, streamed as it is produced.

Language models on Triton (the vLLM and TensorRT-LLM backends, ``tiny_lm``) answer through
the generate extension: a flat JSON object whose keys are the model's input names
(``{"text_input": "...", "stream": true}``), plus ``parameters``. ``generate_stream``
answers with Server-Sent Events, one ``data: {...}`` event per response of a decoupled model.

Checks, as for infer (:mod:`triton_score.http.v2_infer`), before a byte is sent: the model
must exist (404), each key must name one of its inputs, each value must have the JSON type
of the input's datatype (Triton would answer some of these with a 500), and ``parameters``
are held to the same list as infer's (no ``priority``, ``timeout`` or ``shared_memory_*``).

Streaming: each stream gets its own connection to Triton, and every chunk Triton sends
(``read1``: what has arrived, never waiting for more) is handed to the WSGI server at once,
which writes it to the client at once (Gunicorn's gevent workers write each chunk of a
streamed body as it is yielded): nothing buffers an event. A stream holds a greenlet and a
socket, not a worker. When the client goes away, the WSGI server closes the body's iterator
and the connection to Triton is closed: Triton 2.51 then cancels the request (measured by
``tests/serve/test_openai_front.py``, though its documentation promises that for gRPC only).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

import orjson
from flask import Blueprint, Response, current_app, request

from triton_score.errors import BadRequest, InvalidInput, ScoringError
from triton_score.http.exchange import current
from triton_score.http.responses import error_response, runtime
from triton_score.http.v2_infer import REQUEST_PARAMETERS, ModelCatalog, ParameterRefused
from triton_score.model.info import ModelInfo
from triton_score.triton.generate import TritonStream

blueprint = Blueprint("generate", __name__)

#: Keys of a generate request that are not inputs.
GENERATE_KEYS = frozenset({"id", "parameters"})
#: The most a read from Triton returns at once (an event is far smaller).
_NUMERIC = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_FLOATS = {"FP16", "FP32", "FP64", "BF16"}


def _fits(datatype: str, value: object) -> bool:
    """Does one JSON value have the type Triton reads for ``datatype``?"""
    if datatype == "BYTES":
        return isinstance(value, str)
    if datatype == "BOOL":
        return isinstance(value, bool)
    if datatype in _NUMERIC:
        return isinstance(value, int) and not isinstance(value, bool)
    if datatype in _FLOATS:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return False


def check_generate_request(model: ModelInfo, body: bytes) -> None:
    """Refuse a generate request a client must not send, before it reaches Triton.

    :raises BadRequest: a 400 naming what is wrong.
    :raises ParameterRefused: a parameter clients may not set (403 for ``shared_memory_*``).
    """
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("a generate request is a JSON object") from None
    if not isinstance(payload, Mapping):
        raise BadRequest("a generate request is a JSON object of the model's inputs")
    parameters = payload.get("parameters", {})
    if not isinstance(parameters, Mapping):
        raise BadRequest('"parameters" must be an object')
    refused = sorted(str(key) for key in parameters if key not in REQUEST_PARAMETERS)
    if refused:
        raise ParameterRefused(
            f"parameter {refused[0]!r} is not accepted through this server "
            f"(accepted: {', '.join(sorted(REQUEST_PARAMETERS))})",
            parameter=refused[0],
        )
    if "id" in payload and not isinstance(payload["id"], str):
        raise BadRequest('"id" must be a string')
    for name, value in payload.items():
        if name in GENERATE_KEYS:
            continue
        spec = model.input(name)
        if spec is None:
            inputs = ", ".join(i.name for i in model.inputs)
            raise BadRequest(f"{name!r} is not an input of model {model.name} (inputs: {inputs})")
        values = value if isinstance(value, list) else [value]
        if not values or not all(_fits(spec.datatype, v) for v in values):
            raise InvalidInput(name, f"must be a {spec.datatype} value or a flat list of them")


def _model(model: str, version: str) -> ModelInfo:
    from triton_score.http.routes import V2_MODELS

    catalog: ModelCatalog = current_app.extensions[V2_MODELS]
    return catalog.get(model, version)


@blueprint.post("/v2/models/<model>/<any(generate, generate_stream):kind>")
@blueprint.post("/v2/models/<model>/versions/<version>/<any(generate, generate_stream):kind>")
def generate(model: str, kind: str, version: str = "") -> Response:
    """Check a generate request, send it to Triton, and pass its answer on as it comes."""
    rt = runtime()
    try:
        info = _model(model, version)
        seen = current()
        if seen is not None:  # the access line names the model
            seen.model = info.name
        body = request.get_data(cache=False)  # bounded by MAX_CONTENT_LENGTH (413 above it)
        check_generate_request(info, body)
        path = f"/v2/models/{quote(model, safe='')}"
        if version:
            path += f"/versions/{quote(version, safe='')}"
        upstream = TritonStream.open(
            rt.settings.triton_url,
            f"{path}/{kind}",
            body,
            timeout_s=rt.settings.scoring_timeout_ms / 1000,
        )
    except ScoringError as exc:
        return error_response(exc)
    if upstream.status != 200 or kind == "generate":
        content = upstream.read_all()
        return Response(content, status=upstream.status, content_type=upstream.content_type)
    response = Response(upstream.chunks(), status=200, content_type=upstream.content_type)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # no proxy in between may hold events back
    return response
