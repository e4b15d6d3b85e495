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


def canvas_growing_gif(frames: int = 20, offset: int = 6299) -> bytes:
    """A GIF with a 1x1 logical screen whose second frame is one pixel at (offset, offset).

    Pillow grows the canvas to hold it, so every later frame decodes (offset+1)^2 pixels
    although the header promises one (issue 18: ~2 KB of GIF, ~40 M pixels a frame).
    Written by hand: no encoder writes a frame outside the logical screen.
    """
    import struct

    gif = bytearray(b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff")
    for index in range(frames):
        position = offset if index == 1 else 0
        gif += b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # graphic control: 0.1 s
        # One 1x1 frame: LZW minimum code size 2, codes clear(4), 0, end(5) in one sub-block.
        gif += b"\x2c" + struct.pack("<HHHHB", position, position, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return bytes(gif + b"\x3b")
