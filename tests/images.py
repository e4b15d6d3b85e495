"""Real sample pictures (scikit-image ships them) encoded the way callers send them."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(array_or_image: np.ndarray | Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def astronaut_jpeg() -> bytes:
    import skimage.data

    return encode(skimage.data.astronaut(), "JPEG", quality=90)


def coffee_png() -> bytes:
    import skimage.data

    return encode(skimage.data.coffee(), "PNG")


def camera_grayscale_png() -> bytes:
    import skimage.data

    return encode(skimage.data.camera(), "PNG")
