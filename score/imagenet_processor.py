"""Processor of the ``imagenet_lite0`` example model: a photo in, the top-k ImageNet classes out.

The request is the image itself or base64 in JSON::

    curl -s 'localhost:5001/score/imagenet_lite0?top_k=3' -H 'content-type: image/jpeg' \\
      --data-binary @photo.jpg
    curl -s localhost:5001/score/imagenet_lite0 -H 'content-type: application/json' \\
      -d '{"image": "'"$(base64 -w0 photo.jpg)"'", "top_k": 3}'

and the answer ``[{"label": "daisy", "index": 985, "score": 0.87}, ...]``, best first: Triton
computes the top-k itself (its classification extension, ``class_count``), so only k
``score:index:label`` strings travel back.

Untrusted images are checked before they are decoded: the body is at most
:attr:`ImageNetClassifier.max_body_bytes` (the runtime refuses a larger ``Content-Length``
before reading it), Pillow's lazy ``Image.open`` reads only the header, the format must be one
of :data:`FORMATS` and the pixel count at most :attr:`ImageNetClassifier.max_pixels`
(decompression bombs: a small file that declares a huge image) — 400 for what is not a
readable image, 413 for what is too large.

The preprocessing (:func:`preprocess_imagenet_image`) lives here, in the code directory, not
beside the model: AzureML uploads the code directory and the model separately, and the
model's own tests (``tests/unit/test_imagenet_model.py``) import it from this file. It needs numpy
and Pillow only (the ``imagenet`` extra); without Pillow this file still loads, so the other
models are served, and ``imagenet_lite0`` answers a 500 saying what to install.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import os
import warnings
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from triton_score import BadRequest, ModelInfo, Request, ScoringError, processor

if TYPE_CHECKING:
    from PIL import Image as PILImage

log = logging.getLogger(__name__)

# -- the model's input: resize, centre crop, normalise -----------------------------------------

RESIZE_SHORT_SIDE = 256
CROP_SIZE = 224
PIXEL_MEAN = 127.0
PIXEL_SCALE = 128.0
#: What is decoded; anything else (EPS, which runs Ghostscript, PSD, TIFF...) is refused unread.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")


def _pillow() -> Any:
    """The ``PIL`` modules, imported on first use (see the module's docstring)."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ScoringError(
            "imagenet_lite0 needs Pillow on the server: pip install -e '.[imagenet]'"
        ) from None
    return Image, ImageOps


def _draft_size(width: int, height: int) -> tuple[int, int]:
    """The smallest size that still resizes to a short side of :data:`RESIZE_SHORT_SIDE`."""
    scale = RESIZE_SHORT_SIDE / min(width, height)
    return math.ceil(width * scale), math.ceil(height * scale)


def load_rgb_image(source: bytes | str | os.PathLike[str] | BinaryIO | PILImage.Image):
    """Decode encoded image bytes, a path, a binary file or a (lazily opened) PIL image as
    upright RGB.

    A JPEG far larger than the model needs is decoded at a reduced scale (Pillow's ``draft``:
    1/2, 1/4 or 1/8, in the DCT, never below the resize target), which saves most of the time
    and memory of decoding a phone photo.
    """
    Image, ImageOps = _pillow()
    if isinstance(source, Image.Image):
        image = source
    else:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    if image.format == "JPEG" and min(image.size) > RESIZE_SHORT_SIDE:
        image.draft("RGB", _draft_size(*image.size))  # no effect once an image is loaded
    image.load()
    return ImageOps.exif_transpose(image).convert("RGB")


def preprocess_imagenet_image(
    source: bytes | str | os.PathLike[str] | BinaryIO | PILImage.Image,
) -> np.ndarray:
    """The ``imagenet_lite0`` input for one photo: FP32 ``[3, 224, 224]``.

    The recipe the EfficientNet-Lite weights score best with: the EXIF orientation applied,
    RGB, the short side resized to 256 (bilinear), the centre 224x224 crop, each channel as
    ``(pixel - 127) / 128``, channels first (NCHW). Stack several along a new first axis for
    a batch.

    :raises PIL.UnidentifiedImageError: when the bytes are not an image Pillow can decode.
    """
    Image, _ = _pillow()
    image = load_rgb_image(source)
    width, height = image.size
    scale = RESIZE_SHORT_SIDE / min(width, height)
    size = (max(CROP_SIZE, round(width * scale)), max(CROP_SIZE, round(height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left = (size[0] - CROP_SIZE) // 2
    top = (size[1] - CROP_SIZE) // 2
    image = image.crop((left, top, left + CROP_SIZE, top + CROP_SIZE))
    pixels = np.asarray(image, dtype=np.float32)  # [224, 224, 3]
    return np.ascontiguousarray(((pixels - PIXEL_MEAN) / PIXEL_SCALE).transpose(2, 0, 1))


# -- untrusted bytes -> an image that is safe to decode ----------------------------------------


class ImageTooLarge(ScoringError):
    """The image declares more pixels than the processor decodes (413)."""

    status_code = 413
    code = "image_too_large"


def open_untrusted_image(data: bytes, max_pixels: int) -> PILImage.Image:
    """Open ``data`` lazily (the header only) and refuse it before any pixel is decoded.

    :raises BadRequest: not an image of :data:`FORMATS` (400).
    :raises ImageTooLarge: more than ``max_pixels`` pixels (413).
    """
    Image, _ = _pillow()
    formats = ", ".join(FORMATS)
    try:
        with warnings.catch_warnings():
            # Pillow warns above Image.MAX_IMAGE_PIXELS and raises above twice that: both
            # are bombs here, whatever that global setting says.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(
            f"the image declares too many pixels; at most {max_pixels} are decoded",
            details={"limit_pixels": max_pixels, "reason": str(exc)},
        ) from None
    except Exception as exc:  # Pillow's plugins raise many kinds on hostile input
        if isinstance(exc, MemoryError):
            raise
        raise BadRequest(f"the body is not an image of a supported format ({formats})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height} pixels; at most {max_pixels} "
            "are decoded",
            details={"limit_pixels": max_pixels, "width": width, "height": height},
        )
    return image


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64, with or without padding, line breaks or a data: prefix."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    compact = "".join(text.split()).replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest('"image" is not valid base64') from None


# -- the processor -----------------------------------------------------------------------------

TOP_K_DEFAULT = 5
OUTPUT = "probabilities"
#: A tiny valid PNG (8x8, white), so that the documented example can be sent as it is.
EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mP8//8/"
    "AzbAxIADDE4JAFbUAw3/dxQWAAAAAElFTkSuQmCC"
)


@processor("imagenet_lite0")
class ImageNetClassifier:
    """A photo -> ``[{"label", "index", "score"}]``, the ``top_k`` (default 5) best classes.

    Request: the image bytes (``image/jpeg``, ``image/png``, any ``image/*``,
    ``application/octet-stream``) with ``?top_k=``, or JSON ``{"image": "<base64>", "top_k": 3}``.
    """

    #: Largest request body: a photo of 15 MB as base64 JSON (the runtime answers a 413).
    max_body_bytes = 20 * 1024 * 1024
    #: Largest image decoded (width x height): 50 megapixels, a full-resolution phone photo.
    max_pixels = 50_000_000
    #: Decode and resize in a thread (``SCORE_OFFLOAD``): milliseconds of Pillow and numpy per
    #: photo, which release the GIL, so the worker's other requests go on meanwhile.
    offload = True

    request_schema = {
        "type": "object",
        "required": ["image"],
        "description": "Or send the image itself as the body (Content-Type image/jpeg, "
        "image/png, image/webp, image/gif, image/bmp or application/octet-stream), with "
        "?top_k= in the URL.",
        "properties": {
            "image": {"type": "string", "description": "the image file, base64-encoded"},
            "top_k": {
                "type": "integer",
                "minimum": 1,
                "maximum": 1000,
                "default": TOP_K_DEFAULT,
                "description": "how many classes to return (also ?top_k=)",
            },
        },
    }
    request_example = {"image": EXAMPLE_PNG, "top_k": 3}
    response_schema = {
        "type": "array",
        "description": "the top_k classes, most probable first",
        "items": {
            "type": "object",
            "required": ["label", "index", "score"],
            "properties": {
                "label": {"type": "string", "description": "ImageNet class name"},
                "index": {"type": "integer", "description": "class index, 0..999"},
                "score": {"type": "number", "description": "softmax probability"},
            },
        },
    }

    def load(self, model: ModelInfo) -> None:
        try:
            _pillow()
        except ScoringError as exc:
            log.warning("%s: requests will fail until it is installed", exc.message)

    @staticmethod
    def _classes(model: ModelInfo) -> int:
        spec = model.output(OUTPUT)
        return spec.shape[-1] if spec is not None and spec.shape[-1] > 0 else 1000

    def top_k(self, request: Request, model: ModelInfo) -> int:
        """``?top_k=`` or the JSON field ``top_k`` (the same value if both), else 5."""
        classes = self._classes(model)
        given: dict[str, Any] = {}
        if "top_k" in request.query:
            given["?top_k="] = request.query["top_k"]
        if isinstance(request.json, dict) and "top_k" in request.json:
            given['"top_k"'] = request.json["top_k"]
        values = set()
        for where, value in given.items():
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= classes:
                raise BadRequest(f"{where} must be an integer from 1 to {classes}")
            values.add(value)
        if len(values) > 1:
            raise BadRequest('?top_k= and "top_k" disagree: give it once')
        return values.pop() if values else TOP_K_DEFAULT

    def preprocess(self, request: Request, model: ModelInfo) -> dict[str, np.ndarray]:
        self.top_k(request, model)  # a bad top_k is a 400 before any decoding
        if request.is_json:
            payload = request.json
            if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
                raise BadRequest(
                    "send the image as the body (Content-Type image/jpeg, image/png or "
                    'application/octet-stream), or JSON {"image": "<base64>", "top_k": 5}'
                )
            data = decode_base64(payload["image"])
        else:
            data = request.body
        image = open_untrusted_image(data, self.max_pixels)
        try:
            pixels = preprocess_imagenet_image(image)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt data, found while decoding
            raise BadRequest(f"the image could not be decoded: {exc}") from None
        finally:
            image.close()
        return {"image": pixels[np.newaxis]}

    def outputs(self, request: Request, model: ModelInfo) -> dict[str, int]:
        """Triton's classification extension: only the top k, as "score:index:label"."""
        return {OUTPUT: self.top_k(request, model)}

    def postprocess(
        self, outputs: dict[str, np.ndarray], request: Request, model: ModelInfo
    ) -> list[dict[str, Any]]:
        top = []
        for entry in outputs[OUTPUT].reshape(-1):
            score, index, label = entry.decode().split(":", 2)
            top.append({"label": label, "index": int(index), "score": float(score)})
        return top
