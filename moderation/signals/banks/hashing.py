"""Content hashes of an image and their text forms: PDQ (perceptual), MD5 and SHA-256 (exact).

PDQ follows Meta's reference hasher (ThreatExchange pdq/cpp/io/pdqio.cpp) step for step,
so a hash computed here agrees bit for bit with one a partner computed with the reference
CLI on the same pixels: an image larger than 512 on either side is first resized to
512x512 by CImg's nearest neighbour (source pixel floor(i * size / 512), not PIL's
pixel-centre rule, which moves a couple of bits), then the RGB bytes go to the reference
C++ (the `pdqhash` package binds it). A different JPEG decoder, or PIL's draft mode, still
moves a few bits; the match threshold (31 of 256) absorbs that.

The server hashes what it decoded with `pdq_hash_frame` instead: a frame over 512 on its
longer side is first reduced with a box filter to 512 (aspect kept), which averages what
the nearest-neighbour resize samples. Measured on Meta's 8 bridge photos decoded as the
server decodes them (JPEG draft at >= 256 px): 2 to 10 bits from the published hashes,
against 4 to 12 with the reference's resize and 4 to 12 without any (tests in
tests/unit/test_bank_hashing.py). Banked images and uploads are hashed the same way.

Text forms are HMA's and ThreatExchange's: lowercase hexadecimal, PDQ 64 characters
(bit 0 of the reference's vector is the high bit of the first byte), MD5 32, SHA-256 64.
Parse errors are ValueErrors whose message is one sentence a user can act on: the server
will send it back as INVALID_ARGUMENT.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass

import numpy as np
import pdqhash
from PIL import Image

PDQ_BITS = 256
PDQ_BYTES = PDQ_BITS // 8
# The reference CLI's intermediate size: the Jarosz filter is too slow on full-size photos.
PDQ_DOWNSAMPLE = 512

_HEX_DIGITS = frozenset(string.hexdigits)


@dataclass(frozen=True, slots=True)
class PdqHash:
    """A PDQ hash (256 bits, hex order) and its quality, 0 (flat, meaningless) to 100."""

    bits: bytes
    quality: int

    def __post_init__(self) -> None:
        if len(self.bits) != PDQ_BYTES:
            raise ValueError(f"a PDQ hash is {PDQ_BYTES} bytes; got {len(self.bits)}")

    def hex(self) -> str:
        return self.bits.hex()


def pdq_hash(image: Image.Image) -> PdqHash:
    """The PDQ hash of `image`'s pixels, as the reference CLI computes it for the same pixels."""
    # The reference reads the first three channels and ignores alpha; convert("RGB") does
    # the same for RGBA and expands grey and palette images to the luma the reference uses.
    pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    height, width = pixels.shape[:2]
    if height > PDQ_DOWNSAMPLE or width > PDQ_DOWNSAMPLE:
        rows = np.arange(PDQ_DOWNSAMPLE) * height // PDQ_DOWNSAMPLE
        cols = np.arange(PDQ_DOWNSAMPLE) * width // PDQ_DOWNSAMPLE
        pixels = pixels.take(rows, axis=0).take(cols, axis=1)  # a quarter of the time of pixels[rows[:, None], cols]
    vector, quality = pdqhash.compute(np.ascontiguousarray(pixels, dtype=np.uint8))
    return PdqHash(np.packbits(vector.astype(np.uint8)).tobytes(), int(quality))


def pdq_hash_frame(image: Image.Image) -> PdqHash:
    """The PDQ hash of a decoded frame as the server matches it: box-reduced to 512 on its longer side, then hashed."""
    width, height = image.size
    scale = PDQ_DOWNSAMPLE / max(width, height)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BOX)
    pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    vector, quality = pdqhash.compute(np.ascontiguousarray(pixels, dtype=np.uint8))
    return PdqHash(np.packbits(vector.astype(np.uint8)).tobytes(), int(quality))


def md5_hex(data: bytes) -> str:
    """The MD5 of the uploaded bytes, as banks of known files list it (32 lowercase hex digits)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of the uploaded bytes (64 lowercase hex digits)."""
    return hashlib.sha256(data).hexdigest()


def parse_pdq_hex(text: str) -> bytes:
    """The 32 bytes of a PDQ hash written as 64 hexadecimal characters."""
    return bytes.fromhex(_canonical_hex(text, "a PDQ hash", PDQ_BYTES * 2))


def format_pdq_hex(bits: bytes) -> str:
    """A PDQ hash's text form: 64 lowercase hexadecimal characters."""
    if len(bits) != PDQ_BYTES:
        raise ValueError(f"a PDQ hash is {PDQ_BYTES} bytes; got {len(bits)}")
    return bits.hex()


def parse_md5_hex(text: str) -> str:
    """An MD5 written as 32 hexadecimal characters, in its canonical lowercase form."""
    return _canonical_hex(text, "an MD5 hash", 32)


def parse_sha256_hex(text: str) -> str:
    """A SHA-256 written as 64 hexadecimal characters, in its canonical lowercase form."""
    return _canonical_hex(text, "a SHA-256 hash", 64)


def _canonical_hex(text: str, what: str, length: int) -> str:
    """`text` checked and lowercased; `what` names the hash with its article, for the message."""
    if not isinstance(text, str):
        raise ValueError(f"{what} is written as text of {length} hexadecimal characters; got {type(text).__name__}")
    # Surrounding blanks come with copied and pasted hashes and mean nothing.
    stripped = text.strip()
    bad = next((i for i, c in enumerate(stripped) if c not in _HEX_DIGITS), None)
    if bad is not None:
        raise ValueError(
            f"{what} is written in hexadecimal (0-9, a-f); character {bad + 1} of {stripped[:80]!r} is {stripped[bad]!r}"
        )
    if len(stripped) != length:
        raise ValueError(f"{what} is {length} hexadecimal characters; got {len(stripped)}")
    return stripped.lower()
