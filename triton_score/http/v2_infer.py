"""What a client may ask Triton for through ``/v2/models/<m>[/versions/<v>]/infer``.

The forwarder puts a public port in front of Triton's own HTTP API, which was written for
trusted callers: it lets a request point an input or output at *any* registered shared
memory region (another client's tensors, in this server's regions), it dies on the
classification extension of a BYTES output (Triton 2.51: SIGFPE, every tenant down), it
answers malformed tensors with a 500, and a request may raise its own ``priority`` or lift
its ``timeout`` past the limits this server keeps. So an infer request is parsed and checked
here, against the model's metadata, before a byte of it is sent; the body then goes to
Triton as the client wrote it.

What passes, and why:

- **Request parameters** (:data:`REQUEST_PARAMETERS`): the ``sequence_*`` controls that
  stateful models need, and ``binary_data_output`` (a format choice). Refused: ``priority``
  and ``timeout`` (a client could jump the queue of every other tenant's requests or hold a
  model instance past ``SCORING_TIMEOUT_MS``), the ``shared_memory_*`` family, and any other
  name (Triton hands unknown parameters to the backend; a processor is the place for them).
- **Input parameters** (:data:`INPUT_PARAMETERS`): ``binary_data_size`` only.
- **Output parameters** (:data:`OUTPUT_PARAMETERS`): ``binary_data`` and ``classification``,
  the latter on numeric outputs only.
- **Tensors**: every input is decoded and validated exactly as ``/score``'s default codec
  does (name, datatype, shape, batch size, element count, value ranges, BYTES length
  prefixes), so a bad tensor is a 400 that names it, never Triton's 500.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from triton_score.codecs import tensors
from triton_score.codecs.binary import HEADER_LENGTH
from triton_score.codecs.request import decode_request, header
from triton_score.errors import BadRequest, InvalidInput, ScoringError
from triton_score.model.info import ModelInfo
from triton_score.model.validation import validate_inputs, validate_outputs

#: Request-level ``parameters`` a client may set (see the module's docstring).
REQUEST_PARAMETERS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "binary_data_output"}
)
#: Parameters an entry of ``inputs`` may carry.
INPUT_PARAMETERS = frozenset({"binary_data_size"})
#: Parameters an entry of ``outputs`` may carry.
OUTPUT_PARAMETERS = frozenset({"binary_data", "classification"})
#: Keys of the request object Triton reads.
REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})


class ParameterRefused(ScoringError):
    """A parameter clients may not set through this server: 403 for ``shared_memory_*``
    (another client's memory), 400 for the rest."""

    code = "parameter_not_accepted"

    def __init__(self, message: str, *, parameter: str) -> None:
        super().__init__(message, details={"parameter": parameter})
        self.status_code = 403 if parameter.startswith("shared_memory") else 400


def _parameters(where: str, entry: Mapping[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    parameters = entry.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise BadRequest(f'"parameters" of {where} must be an object')
    refused = sorted(str(key) for key in parameters if key not in allowed)
    if refused:
        raise ParameterRefused(
            f"parameter {refused[0]!r} of {where} is not accepted through this server "
            f"(accepted: {', '.join(sorted(allowed))})",
            parameter=refused[0],
        )
    return dict(parameters)


def check_infer_request(model: ModelInfo, body: bytes, headers: Mapping[str, str]) -> None:
    """Refuse an infer request a client must not send, before it reaches Triton.

    :raises BadRequest: a 400 naming what is wrong.
    :raises ParameterRefused: a parameter clients may not set (403 for ``shared_memory_*``).
    """
    # Triton reads the body as JSON whatever its Content-Type, unless it is the binary form.
    request = decode_request(body, "application/json", headers)
    payload = request.json
    if not isinstance(payload, Mapping):
        raise BadRequest('an inference request is a JSON object with "inputs"')
    unknown = sorted(str(key) for key in payload if key not in REQUEST_KEYS)
    if unknown:
        raise BadRequest(f"unknown key {unknown[0]!r} in the inference request")
    if "id" in payload and not isinstance(payload["id"], str):
        raise BadRequest('"id" must be a string')
    # Parameters first, for every tensor: a refusal must not depend on what else is wrong.
    _parameters("the request", payload, REQUEST_PARAMETERS)
    entries = payload.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise BadRequest('"inputs" must be a non-empty list of tensors')
    if not all(isinstance(entry, Mapping) for entry in entries):
        raise BadRequest('each entry of "inputs" must be an object')
    outputs = payload.get("outputs")
    if outputs is not None and not (
        isinstance(outputs, list)
        and all(isinstance(o, Mapping) and isinstance(o.get("name"), str) for o in outputs)
    ):
        raise BadRequest('"outputs" must be a list of objects, each with a "name"')
    input_parameters = [
        _parameters(f"input {str(entry.get('name', ''))!r}", entry, INPUT_PARAMETERS)
        for entry in entries
    ]
    wanted: dict[str, Any] = {}
    for entry in outputs or ():
        name = entry["name"]
        parameters = _parameters(f"output {name!r}", entry, OUTPUT_PARAMETERS)
        if not isinstance(parameters.get("binary_data", False), bool):
            raise BadRequest(f"output {name!r}: binary_data must be true or false")
        wanted[name] = parameters.get("classification", 0)
    # Then the outputs (names; no classification of a BYTES output), then the tensors.
    if outputs is not None:
        validate_outputs(model, wanted)
    binary = bool(header(request.headers, HEADER_LENGTH))
    for entry, parameters in zip(entries, input_parameters):
        name = str(entry.get("name", ""))
        spec = model.input(name)
        if spec is not None and spec.numpy_dtype is None:
            raise InvalidInput(
                name,
                f"datatype {spec.datatype} is not checked by this server; send it to "
                "Triton directly",
            )
        for key in ("datatype", "shape"):
            if key not in entry:
                raise InvalidInput(name, f'needs "{key}"')
        if "binary_data_size" in parameters:
            if not binary:
                raise InvalidInput(name, f"binary_data_size needs the {HEADER_LENGTH} header")
            if "data" in entry:
                raise InvalidInput(name, 'has both "data" and binary_data_size')
        elif "data" not in entry:
            raise InvalidInput(name, 'needs "data" (or binary_data_size)')
    validate_inputs(model, tensors.decode_inputs(request, model))


class ModelCatalog:
    """The metadata an infer request is checked against, per model and version.

    The scorer's own models come first (no call); any other model Triton serves (one outside
    ``SCORE_MODELS``, a named version, entry-script mode) is fetched once and kept for
    ``ttl_s`` seconds, so a model Triton reloads is checked against its new metadata soon.

    :param known: the models the scorer serves now (``{}`` when there is no scorer).
    :param fetch: ``(name, version) -> ModelInfo`` from Triton; raises ``ModelNotFound``.
    """

    def __init__(
        self,
        known: Callable[[], Mapping[str, ModelInfo]],
        fetch: Callable[[str, str], ModelInfo],
        *,
        ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._known = known
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, ModelInfo]] = {}

    def get(self, name: str, version: str = "") -> ModelInfo:
        served = self._known().get(name)
        if served is not None and version in ("", served.version):
            return served
        key = (name, version)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self._ttl_s:
            return cached[1]
        info = self._fetch(name, version)
        if len(self._cache) >= 256:  # names come from clients: keep the cache bounded
            self._cache.clear()
        self._cache[key] = (now, info)
        return info
