"""Turn a photo into the input tensor of the ``imagenet_lite0`` example model.

Needs only numpy and Pillow, so a processor can import it (or copy it) without the build
dependencies. ``preprocess_imagenet_image`` gives one ``[3, 224, 224]`` FP32 array; stack
several along a new first axis for a batch.

The recipe is the one the EfficientNet-Lite weights score best with: apply the EXIF
orientation, convert to RGB, resize the short side to 256 (bilinear), take the centre
224x224 crop, scale each channel as ``(pixel - 127) / 128`` and put channels first (NCHW).
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

RESIZE_SHORT_SIDE = 256
CROP_SIZE = 224
PIXEL_MEAN = 127.0
PIXEL_SCALE = 128.0

ImageSource = bytes | str | os.PathLike | BinaryIO | Image.Image


def load_rgb_image(source: ImageSource) -> Image.Image:
    """Open encoded image bytes, a path, a binary file or a PIL image as upright RGB."""
    if isinstance(source, Image.Image):
        image = source
    else:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        image.load()
    return ImageOps.exif_transpose(image).convert("RGB")


def preprocess_imagenet_image(source: ImageSource) -> np.ndarray:
    """The model input for one photo: FP32 ``[3, 224, 224]``, RGB, ``(pixel - 127) / 128``.

    :raises PIL.UnidentifiedImageError: when the bytes are not an image Pillow can decode.
    """
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
