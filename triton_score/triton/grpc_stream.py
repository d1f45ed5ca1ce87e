"""Triton's gRPC stream (``ModelStreamInfer``), for decoupled models: the documented way to cancel.

Triton's documentation names gRPC (and its C API) as the way to cancel a request; Triton 2.51
also cancels a ``generate_stream`` whose HTTP connection closes (measured in
``tests/serve/test_openai_front.py``), but older releases and other frontends need not. So
streams to decoupled models can go over gRPC (``SCORE_TRITON_GRPC_URL``):
:meth:`GrpcGenerate.events` sends one request as the generate extension would (a JSON body's
keys that name inputs become tensors, the others request parameters), yields each response
as the generate extension's JSON would look, and when the caller stops reading (the client
went away, a stop sequence) cancels the call, and Triton the request.

**Under gevent.** gRPC's own threads must cooperate with the worker's event loop:
``grpc.experimental.gevent.init_gevent()`` is called once per process before its first
channel (after Gunicorn's fork; the master never opens one). Measured on 2 cores: 64
concurrent streams of ``tiny_lm`` through one worker, the event loop ticking on time
throughout (a 10 ms ticker saw 96 of 100 ticks in a second), first response after ~55 ms.
Each wait for the next response is bounded by ``idle_s`` (a ``gevent.Timeout`` there, the
call's deadline elsewhere).

The request is built from the raw protobuf messages (``tritonclient.grpc``'s ``service_pb2``),
not ``tritonclient``'s stream API: that one reads responses in a thread of its own and hands
them to a callback, one more hop per token, and needs one client (channel) per stream. Here
one channel per process carries every stream (HTTP/2 multiplexes them).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator, Mapping
from typing import Any

import numpy as np
import orjson

from triton_score.codecs.v2 import WIRE_DTYPES, decode_bytes, tensor_bytes
from triton_score.errors import TritonUnavailable
from triton_score.model.info import NUMPY_DTYPES, ModelInfo
from triton_score.serve.worker import gevent_patched
from triton_score.triton.generate import StreamError

_lock = threading.Lock()
_channels: dict[tuple[int, str], Any] = {}
_gevent_ready = False


def _stub(url: str) -> Any:
    """This process's stub for ``url`` (one channel per process and address)."""
    global _gevent_ready
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    key = (os.getpid(), url)
    with _lock:
        channel = _channels.get(key)
        if channel is None:
            if gevent_patched() and not _gevent_ready:
                import grpc.experimental.gevent as grpc_gevent

                grpc_gevent.init_gevent()
                _gevent_ready = True
            channel = grpc.insecure_channel(
                url,
                options=[
                    ("grpc.max_send_message_length", 64 * 1024 * 1024),
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ],
            )
            _channels[key] = channel
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _tensor_value(value: Any, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A JSON value of the generate extension as a tensor of the model's shape (``-1``
    dimensions filled from the value)."""
    if datatype == "BYTES":
        items = value if isinstance(value, list) else [value]
        array = np.empty(len(items), dtype=object)
        array[:] = [
            v if isinstance(v, bytes | str) else orjson.dumps(v).decode("utf-8") for v in items
        ]
    else:
        numpy_type = NUMPY_DTYPES.get(datatype)
        if numpy_type is None or datatype not in WIRE_DTYPES:
            raise StreamError(f"input datatype {datatype} is not supported here", 400)
        try:
            array = np.asarray(value, dtype=numpy_type).reshape(-1)
        except (TypeError, ValueError):
            raise StreamError(f"{value!r} is not {datatype}", 400) from None
    known = [d for d in shape if d > 0]
    count = int(np.prod(known)) if known else 1
    dims = [d if d > 0 else 1 for d in shape] or [1]
    if count and array.size != count and shape.count(-1) == 1:
        dims[shape.index(-1)] = array.size // count if array.size % count == 0 else array.size
    if int(np.prod(dims)) != array.size:
        raise StreamError(f"{array.size} values do not fit shape {list(shape)}", 400)
    return array.reshape(dims)


def _parameter(target: Any, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = value if isinstance(value, str) else orjson.dumps(value).decode()


def build_request(model: ModelInfo, body: Mapping[str, Any], request_id: str = "") -> Any:
    """A ``ModelInferRequest`` from a generate-extension JSON body for ``model``: the keys
    that name inputs become tensors (:func:`build_tensor_request`), the others parameters."""
    specs = {spec.name: spec for spec in model.inputs}
    extra = dict(body.get("parameters") or {}) if isinstance(body.get("parameters"), dict) else {}
    inputs = {}
    for key, value in body.items():
        spec = specs.get(key)
        if spec is None:
            if key != "parameters":
                extra[key] = value
            continue
        shape = spec.shape[1:] if model.batching else spec.shape
        array = _tensor_value(value, spec.datatype, shape)
        inputs[key] = array.reshape(1, *array.shape) if model.batching else array
    request = build_tensor_request(model, inputs, request_id)
    for key, value in extra.items():
        _parameter(request.parameters[key], value)
    return request


def build_tensor_request(
    model: ModelInfo, inputs: Mapping[str, np.ndarray], request_id: str = ""
) -> Any:
    """A ``ModelInferRequest`` of validated input tensors (``/score``'s stream)."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model.name, id=request_id)
    if model.pinned:
        request.model_version = model.version
    datatypes = {spec.name: spec.datatype for spec in model.inputs}
    for name, array in inputs.items():
        datatype = datatypes[name]
        entry = request.inputs.add()
        entry.name, entry.datatype = name, datatype
        entry.shape.extend(int(d) for d in np.shape(array))
        request.raw_input_contents.append(tensor_bytes(np.asarray(array), datatype))
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request


def response_tensors(response: Any) -> dict[str, np.ndarray]:
    """A ``ModelInferResponse``'s outputs as arrays (BYTES: object arrays of ``bytes``)."""
    found: dict[str, np.ndarray] = {}
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=False):
        shape = [int(d) for d in output.shape]
        count = int(np.prod(shape)) if shape else 1
        if output.datatype == "BYTES":
            found[output.name] = decode_bytes(raw, 0, len(raw), count).reshape(shape)
            continue
        dtype = WIRE_DTYPES.get(output.datatype)
        if dtype is not None:
            found[output.name] = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
    return found


def response_json(response: Any) -> dict[str, Any]:
    """A ``ModelInferResponse`` as the generate extension's JSON event would be: each output
    (:func:`response_tensors`) a value when it has one element, else a flat list; strings
    decoded."""
    event: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    for name, array in response_tensors(response).items():
        values = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            for v in array.reshape(-1).tolist()
        ]
        event[name] = values[0] if len(values) == 1 else values
    return event


class GrpcGenerate:
    """Streams to one Triton's gRPC endpoint, ``host:port``."""

    def __init__(self, url: str, *, idle_s: float) -> None:
        self.url = url.removeprefix("grpc://").removeprefix("http://")
        self.idle_s = idle_s

    def events(
        self, model: ModelInfo, body: Mapping[str, Any], request_id: str = ""
    ) -> Generator[dict[str, Any]]:
        """Each response of the model to ``body``, as it arrives; closing the generator
        cancels Triton's request.

        :raises StreamError: Triton refused or failed the request.
        :raises TritonUnavailable: Triton cannot be reached.
        """
        responses = self.responses(build_request(model, body, request_id))
        try:
            for response in responses:
                yield response_json(response)
        finally:
            responses.close()

    def tensors(
        self,
        model: ModelInfo,
        inputs: Mapping[str, np.ndarray],
        request_id: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> Generator[dict[str, np.ndarray]]:
        """:meth:`events` for input tensors, each response's outputs as arrays.

        :param headers: sent as the call's metadata: a ``traceparent`` puts Triton's spans in
            the caller's trace.
        """
        responses = self.responses(build_tensor_request(model, inputs, request_id), headers)
        try:
            for response in responses:
                yield response_tensors(response)
        finally:
            responses.close()

    def responses(self, request: Any, headers: Mapping[str, str] | None = None) -> Generator[Any]:
        """Each ``ModelInferResponse`` with outputs to ``request``, until the final one."""
        import grpc

        metadata = tuple((key.lower(), value) for key, value in (headers or {}).items())
        call = _stub(self.url).ModelStreamInfer(iter((request,)), metadata=metadata or None)
        timeout = _Idle(self.idle_s)
        try:
            while True:
                try:
                    with timeout:
                        answer = next(call)
                except StopIteration:
                    return
                except grpc.RpcError as exc:
                    raise _error(exc) from None
                if answer.error_message:
                    raise StreamError(answer.error_message, 400)
                response = answer.infer_response
                if response.outputs:
                    yield response
                final = response.parameters.get("triton_final_response")
                if final is not None and final.bool_param:
                    return
        finally:
            call.cancel()  # a no-op once finished; else Triton cancels the request


class _Idle:
    """``with`` around one wait for a response: at most ``seconds`` under gevent."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timeout: Any = None

    def __enter__(self) -> None:
        if gevent_patched() and self.seconds > 0:
            import gevent

            self._timeout = gevent.Timeout(self.seconds, _IdleTimeout())
            self._timeout.start()

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if self._timeout is not None:
            self._timeout.close()
            self._timeout = None
        if isinstance(error, _IdleTimeout):
            raise StreamError(f"Triton sent nothing for {self.seconds:g} s", status=504) from None


class _IdleTimeout(Exception):
    pass


def _error(exc: Any) -> Exception:
    import grpc

    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return TritonUnavailable(f"Triton's gRPC endpoint is unreachable: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return StreamError(f"Triton did not answer in time: {details}", 504)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
        return StreamError(str(details), 400)
    return StreamError(f"Triton failed the stream: {details}", 502)
