"""Regenerate the sample images the default policy's golden cases use.

They are scikit-image's bundled public-domain / CC0 pictures, shrunk to 256 px on
the longer side so the repository stays small. Run from the repository root:

    .venv/bin/python scripts/make_policy_samples.py
"""

from __future__ import annotations

from pathlib import Path

import skimage.data
from PIL import Image

SAMPLES = Path("policies/tests/samples")
LONGER_SIDE = 256

# name -> (scikit-image loader, file format)
PICTURES = {
    "astronaut.jpg": (skimage.data.astronaut, "JPEG"),  # portrait of a smiling person
    "coffee.jpg": (skimage.data.coffee, "JPEG"),  # a cup of coffee on a saucer
    "chelsea.jpg": (skimage.data.chelsea, "JPEG"),  # a cat
    "page.png": (skimage.data.page, "PNG"),  # a scanned page of text, greyscale
}


def main() -> None:
    SAMPLES.mkdir(parents=True, exist_ok=True)
    for name, (load, fmt) in PICTURES.items():
        image = Image.fromarray(load())
        image.thumbnail((LONGER_SIDE, LONGER_SIDE), Image.Resampling.LANCZOS)
        params = {"quality": 75, "optimize": True} if fmt == "JPEG" else {"optimize": True}
        image.save(SAMPLES / name, format=fmt, **params)
        print(f"{SAMPLES / name}: {image.size[0]}x{image.size[1]}, {(SAMPLES / name).stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
