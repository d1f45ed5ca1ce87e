"""The lean Triton hop (triton_score.hop): the v2 binary wire, built and parsed by hand.

Checked two ways: against tritonclient's own serialisation and ``InferResult`` parsing (so
both sides of the wire agree with NVIDIA's client byte for byte), and against a real Triton
that echoes every datatype back, BYTES, FP16 and BOOL included.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from triton_score import hop
from triton_score.errors import ModelNotFound, ScoringTimeout, TritonError, TritonUnavailable
from triton_score.hop import decode_response, encode_request, tensor_bytes
from triton_score.local import LocalTriton
from triton_score.local.processes import free_port
from triton_score.metadata import ModelInfo, TensorSpec
from triton_score.script_clients import FairSemaphore
from triton_score.triton import TritonGateway

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
    import gevent.server  # noqa: PLC0415

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
