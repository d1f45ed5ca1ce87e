"""The lean Triton hop (triton_score.triton.hop): the v2 binary wire, built and parsed by hand.

Checked two ways: against tritonclient's own serialisation and ``InferResult`` parsing (so
both sides of the wire agree with NVIDIA's client byte for byte), and against a real Triton
that echoes every datatype back, BYTES, FP16 and BOOL included.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from triton_score.codecs.v2 import decode_response, tensor_bytes
from triton_score.errors import ModelNotFound, ScoringTimeout, TritonError, TritonUnavailable
from triton_score.local import LocalTriton
from triton_score.local.processes import free_port
from triton_score.model.info import ModelInfo, TensorSpec
from triton_score.triton import hop
from triton_score.triton.gateway import TritonGateway
from triton_score.triton.hop import encode_request
from triton_score.triton.pool import FairSemaphore

RNG = np.random.default_rng(8)

#: One batch of 3 rows for each of the echo model's inputs.
SAMPLES: dict[str, tuple[str, np.ndarray]] = {
    "f32": ("FP32", RNG.random((3, 3), dtype=np.float32)),
    "f16": ("FP16", RNG.random((3, 2)).astype(np.float16)),
    "flag": ("BOOL", np.array([[True, False], [False, False], [True, True]])),
    "i64": ("INT64", np.array([[-(2**40)], [0], [7]], dtype=np.int64)),
    "u8": ("UINT8", np.array([[0, 255], [1, 2], [3, 4]], dtype=np.uint8)),
    "text": ("BYTES", np.array([[b"caf\xc3\xa9"], [b""], [b"\x00\xffbinary"]], dtype=object)),
}
EXTRA = {
    "INT8": np.array([-128, 127], dtype=np.int8),
    "INT16": np.array([-3, 3], dtype=np.int16),
    "INT32": np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "UINT32": np.array([0, 2**32 - 1], dtype=np.uint32),
    "UINT64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "FP64": np.array([np.pi, -0.0]),
    "BF16": np.array([1.5, -2.0], dtype=np.float32),  # exactly representable in bfloat16
}
ALL = {datatype: array for datatype, array in SAMPLES.values()} | EXTRA

ECHO = ModelInfo(
    "echo",
    max_batch_size=16,
    inputs=tuple(TensorSpec(n, d, (-1, *a.shape[1:])) for n, (d, a) in SAMPLES.items()),
    outputs=tuple(TensorSpec(n + "_out", d, (-1, *a.shape[1:])) for n, (d, a) in SAMPLES.items()),
)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.dtype == object
        assert [bytes(x) for x in got.reshape(-1)] == [bytes(x) for x in want.reshape(-1)]
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


# -- against tritonclient -------------------------------------------------------------------
@pytest.mark.parametrize("datatype", sorted(ALL))
def test_tensor_bytes_are_tritonclients(datatype: str) -> None:
    array = ALL[datatype]
    theirs = httpclient.InferInput("x", list(array.shape), datatype)
    theirs.set_data_from_numpy(array, binary_data=True)
    assert tensor_bytes(array, datatype) == theirs._get_binary_data()


def test_request_header_says_what_tritonclient_says() -> None:
    inputs = {name: array for name, (_, array) in SAMPLES.items()}
    body, length = encode_request(
        ECHO, inputs, {"f32_out": 0, "f16_out": 2}, request_id="r-1", timeout_us=1500
    )
    header = orjson.loads(body[:length])
    infer_inputs = []
    for name, (datatype, array) in SAMPLES.items():
        infer_input = httpclient.InferInput(name, list(array.shape), datatype)
        infer_input.set_data_from_numpy(array, binary_data=True)
        infer_inputs.append(infer_input)
    outputs = [
        httpclient.InferRequestedOutput("f32_out", binary_data=True),
        httpclient.InferRequestedOutput("f16_out", binary_data=True, class_count=2),
    ]
    theirs, their_length = httpclient.InferenceServerClient.generate_request_body(
        infer_inputs, outputs=outputs, request_id="r-1", timeout=1500
    )
    their_header = orjson.loads(theirs[:their_length])
    assert header["inputs"] == their_header["inputs"]
    assert header["outputs"] == their_header["outputs"]
    assert header["id"] == their_header["id"] == "r-1"
    assert header["parameters"]["timeout"] == their_header["parameters"]["timeout"] == 1500
    assert body[length:] == theirs[their_length:]


def response_body(arrays: dict[str, tuple[str, np.ndarray]]) -> tuple[bytes, int]:
    """A Triton answer carrying ``arrays`` as binary outputs."""
    outputs, blobs = [], []
    for name, (datatype, array) in arrays.items():
        blob = tensor_bytes(array, datatype)
        blobs.append(blob)
        outputs.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
        )
    header = orjson.dumps({"model_name": "m", "model_version": "1", "outputs": outputs})
    return header + b"".join(blobs), len(header)


def test_decode_response_reads_what_inferresult_reads() -> None:
    arrays = {f"out_{d}": (d, a) for d, a in ALL.items()}
    body, length = response_body(arrays)
    ours = decode_response(body, length)
    theirs = httpclient.InferResult.from_response_body(body, header_length=length)
    assert list(ours) == list(arrays)
    for name, (_, array) in arrays.items():
        assert_same(ours[name], theirs.as_numpy(name))
        assert_same(ours[name], array)


def test_numeric_outputs_are_views_over_the_body() -> None:
    body, length = response_body({"y": ("FP32", np.arange(6, dtype=np.float32).reshape(2, 3))})
    y = decode_response(body, length)["y"]
    assert not y.flags.owndata and not y.flags.writeable  # no copy out of the answer


def test_decode_response_refuses_a_truncated_answer() -> None:
    body, length = response_body({"y": ("FP32", np.arange(6, dtype=np.float32))})
    with pytest.raises(ValueError, match="runs past"):
        decode_response(body[:-4], length)


def test_json_outputs_still_decode() -> None:
    body = orjson.dumps(
        {"outputs": [{"name": "y", "datatype": "INT32", "shape": [2], "data": [1, 2]}]}
    )
    np.testing.assert_array_equal(decode_response(body, None)["y"], np.array([1, 2]))


def answer(outputs: list, tail: bytes = b"") -> tuple[bytes, int]:
    """A Triton answer with hand-written output entries (a buggy or hostile Triton's)."""
    header = orjson.dumps({"model_name": "m", "model_version": "1", "outputs": outputs})
    return header + tail, len(header)


def y(shape: object, datatype: str = "FP32", size: object = 4) -> dict:
    return {
        "name": "y",
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": size},
    }


TAIL = np.arange(8, dtype=np.float32).tobytes()
#: Answers that do not hold together, each with what the error says. Before these checks, a
#: negative shape with a matching negative size read to the body's end, a negative header
#: length read the JSON from the body's end, and BF16 sizes were not checked.
BAD_ANSWERS = {
    "negative dim and size": (answer([y([-1], size=-4)], TAIL), "shape"),
    "negative size": (answer([y([1], size=-4)], TAIL), "binary_data_size"),
    "float dim": (answer([y([1.0])], TAIL[:4]), "shape"),
    "bool dim": (answer([y([True])], TAIL[:4]), "shape"),
    "string size": (answer([y([1], size="4")], TAIL[:4]), "binary_data_size"),
    "bool size": (answer([y([1], size=True)], TAIL[:4]), "binary_data_size"),
    "bf16 size too big": (answer([y([2], "BF16", size=8)], TAIL[:8]), "8 bytes for shape"),
    "bf16 size too small": (answer([y([4], "BF16", size=4)], TAIL[:4]), "4 bytes for shape"),
    "bytes count past its size": (answer([y([10**7, 1], "BYTES", size=0)]), "cannot hold"),
}


@pytest.mark.parametrize(("body", "fragment"), BAD_ANSWERS.values(), ids=list(BAD_ANSWERS))
def test_decode_response_refuses_what_does_not_hold_together(
    body: tuple[bytes, int], fragment: str
) -> None:
    import tracemalloc

    data, length = body
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=fragment):
            decode_response(data, length)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # a claimed count is refused before an array is made


@pytest.mark.parametrize("length", [-5, -1, 10**6, 2.0])
def test_decode_response_refuses_a_header_length_outside_the_body(length: object) -> None:
    data, _ = answer([y([1])], TAIL[:4])
    with pytest.raises(ValueError, match="header length"):
        decode_response(data, length)  # type: ignore[arg-type]


def test_bf16_outputs_still_decode() -> None:
    values = np.array([1.5, -2.0, 0.0], dtype=np.float32)
    data, length = answer([y([3], "BF16", size=6)], tensor_bytes(values, "BF16"))
    np.testing.assert_array_equal(decode_response(data, length)["y"], values)


def serve_answers(body: bytes, header_length: str) -> object:
    """A stand-in Triton (a gevent server) that answers every request with ``body``."""
    import gevent.server

    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n{hop.HEADER_LENGTH}: {header_length}\r\n\r\n"
    ).encode()

    def handle(socket, address):  # type: ignore[no-untyped-def]
        request = b""
        while b"\r\n\r\n" not in request:
            request += socket.recv(65536)
        head_end = request.index(b"\r\n\r\n") + 4
        length = int(request.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(request) < head_end + length:
            request += socket.recv(65536)
        socket.sendall(head + body)

    server = gevent.server.StreamServer(("127.0.0.1", 0), handle)
    server.start()
    return server


_PARAMETERS_LIST = {"name": "y", "datatype": "FP32", "shape": [1], "parameters": [4]}
_UNHASHABLE = {"name": "y", "datatype": [1], "shape": [1], "data": [1]}
#: Answers with a field of the wrong type; the header length is the JSON's unless given.
MALFORMED: dict[str, tuple[bytes, str | None]] = {
    "header not an object": (b"[1, 2]", None),
    "outputs not a list": (b'{"outputs": 7}', None),
    "output not an object": (b'{"outputs": [[1]]}', None),
    "parameters not an object": (orjson.dumps({"outputs": [_PARAMETERS_LIST]}) + b"\0" * 4, "-4"),
    "datatype unhashable": (orjson.dumps({"outputs": [_UNHASHABLE]}), None),
    "negative header length": (b'{"outputs": []}', "-3"),
    "header length not a number": (b'{"outputs": []}', "x"),
}


@pytest.mark.parametrize(("body", "length"), MALFORMED.values(), ids=list(MALFORMED))
def test_a_malformed_answer_is_tritons_error_not_ours(body: bytes, length: str | None) -> None:
    """What Triton should never send is "Triton's answer could not be parsed" (a 500 the
    gateway logs as Triton's failure), never an exception that escapes as an internal error."""
    from tritonclient.utils import InferenceServerException

    if length == "-4":  # the JSON, without the 4 bytes of tensor data after it
        length = str(len(body) - 4)
    server = serve_answers(body, length if length is not None else str(len(body)))
    client = hop.Hop(f"127.0.0.1:{server.server_port}", concurrency=1, timeout_s=5)  # type: ignore[attr-defined]
    try:
        with pytest.raises(InferenceServerException) as failed:
            client.infer("m", b"{}", 2, None, {"y": 0})
        assert failed.value.status() == "500"
        assert "Triton's answer could not be parsed" in failed.value.message()
    finally:
        client.close()
        server.stop()  # type: ignore[attr-defined]


# -- against a real Triton ------------------------------------------------------------------
@pytest.fixture()
def gateway(echo_triton: LocalTriton) -> TritonGateway:
    return TritonGateway(echo_triton.url, concurrency=4, timeout_s=10)


def test_connections_are_handed_out_first_come_first_served(gateway: TritonGateway) -> None:
    assert isinstance(gateway._hop._client._connection_pool._semaphore, FairSemaphore)


def test_real_triton_echoes_every_datatype(gateway: TritonGateway) -> None:
    model = gateway.model_info("echo")
    inputs = {name: array for name, (_, array) in SAMPLES.items()}
    got = gateway.infer(model, inputs, request_id="echo-1")
    assert sorted(got) == sorted(n + "_out" for n in SAMPLES)
    for name, array in inputs.items():
        assert_same(got[name + "_out"], array)


def test_real_triton_classification_comes_back_as_bytes(gateway: TritonGateway) -> None:
    model = gateway.model_info("echo")
    inputs = {name: array for name, (_, array) in SAMPLES.items()}
    inputs["f32"] = np.array([[0.1, 0.9, 0.5]] * 3, dtype=np.float32)
    got = gateway.infer(model, inputs, {"f32_out": 2})["f32_out"]
    assert got.shape == (3, 2) and got.dtype == object
    assert [x.split(b":")[1] for x in got[0]] == [b"1", b"2"]  # score:index, best first


def test_real_triton_errors_keep_their_meaning(echo_triton: LocalTriton) -> None:
    gateway = TritonGateway(echo_triton.url, concurrency=2, timeout_s=10)
    model = gateway.model_info("echo")
    inputs = {name: array for name, (_, array) in SAMPLES.items()}
    with pytest.raises(TritonError) as refused:  # the model's INVALID_ARG
        gateway.infer(model, {**inputs, "f32": -inputs["f32"]})
    assert refused.value.status_code == 400
    assert "negative" in refused.value.message
    with pytest.raises(ModelNotFound):
        gateway.infer(ModelInfo("no_such_model", inputs=model.inputs), inputs)
    nowhere = TritonGateway(f"127.0.0.1:{free_port()}", concurrency=1, timeout_s=2)
    with pytest.raises(TritonUnavailable):
        nowhere.infer(model, inputs)


def test_a_silent_triton_is_a_timeout() -> None:
    import gevent.server

    def listen_only(socket, address):  # type: ignore[no-untyped-def]
        socket.recv(65536)
        gevent.sleep(5)

    server = gevent.server.StreamServer(("127.0.0.1", 0), listen_only)
    server.start()
    try:
        silent = TritonGateway(f"127.0.0.1:{server.server_port}", concurrency=1, timeout_s=0.3)
        with pytest.raises(ScoringTimeout):
            silent.infer(ECHO, {name: array for name, (_, array) in SAMPLES.items()})
    finally:
        server.stop()


def test_a_large_body_is_sent_in_parts_with_the_same_bytes() -> None:
    """From LARGE_BODY_BYTES on, the tensors are not joined into one more copy: the parts are
    views of the arrays themselves, and together they are the joined body's bytes."""
    big = np.arange(hop.LARGE_BODY_BYTES // 4 + 10, dtype=np.float32).reshape(1, -1)
    model = ModelInfo("big", max_batch_size=1, inputs=(TensorSpec("x", "FP32", (-1, -1)),))
    body, header_length = encode_request(model, {"x": big}, {"y": 0})
    assert isinstance(body, hop.BodyParts)
    parts = [body.read(8192) for _ in range(3)]
    assert parts[2] == b""  # header, then the tensor, whole
    assert np.shares_memory(np.frombuffer(parts[1], dtype=np.float32), big)
    assert len(body) == header_length + big.nbytes
    assert bytes(parts[0]) + bytes(parts[1]) == bytes(body)
    header = orjson.loads(bytes(parts[0]))
    assert header["inputs"][0]["parameters"]["binary_data_size"] == big.nbytes
    body.seek(0)  # what gevent's sendfile does when it is done: a retry sends it all again
    assert body.read(8192) == parts[0]


def test_real_triton_reads_a_body_sent_in_parts(
    gateway: TritonGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every datatype through the parts path (BYTES included), on a kept-alive connection."""
    monkeypatch.setattr(hop, "LARGE_BODY_BYTES", 0)
    model = gateway.model_info("echo")
    inputs = {name: array for name, (_, array) in SAMPLES.items()}
    for attempt in range(3):
        got = gateway.infer(model, inputs, request_id=f"parts-{attempt}")
        for name, array in inputs.items():
            assert_same(got[name + "_out"], array)
