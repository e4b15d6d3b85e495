"""PDQ, MD5 and SHA-256 as banks compute and write them, checked against Meta's published hashes."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
from PIL import Image

from moderation.signals.banks.hashing import (
    PdqHash,
    format_pdq_hex,
    md5_hex,
    parse_md5_hex,
    parse_pdq_hex,
    parse_sha256_hex,
    pdq_hash,
    sha256_hex,
)

# A copy of ../shared/pdq-reference (see its README.md): the tests need no checkout beside this one.
REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "pdq-reference"


def distance(a: bytes, b: bytes) -> int:
    return bin(int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).count("1")


def published_md5_test_hashes() -> dict[str, str]:
    with (REFERENCE / "PDQMD5TestData.csv").open() as rows:
        return {Path(row["FilePath"]).name: row["Hash"] for row in csv.DictReader(rows)}


@pytest.mark.parametrize("name", ["c.png", "wee.jpg"])
def test_pdq_agrees_bit_for_bit_with_the_reference_hasher(name: str) -> None:
    # c.png (1432x812) goes through the reference's 512x512 resize; wee.jpg (34x42) does not.
    found = pdq_hash(Image.open(REFERENCE / "images" / name))
    assert found.hex() == published_md5_test_hashes()[name]
    assert found.quality == 100


def test_the_bridge_photo_in_its_eight_forms_is_near_the_published_hashes() -> None:
    """A different JPEG decoder than the reference CLI's moves a few bits (README.md of the fixtures)."""
    rows = [line.strip().split(",") for line in (REFERENCE / "bridge-hashes.csv").read_text().splitlines() if line.strip()]
    assert len(rows) == 8
    for published, name in rows:
        found = pdq_hash(Image.open(REFERENCE / "images" / name))
        assert found.quality >= 80, name
        # Meta's same-picture rule is 10 bits; measured 4 to 12 here (decoder), far inside the 31-bit match.
        assert distance(found.bits, parse_pdq_hex(published)) <= 12, name


def test_the_bridge_photo_hashed_as_the_server_hashes_it_is_within_meta_s_same_picture_rule() -> None:
    """Decoded under the server's limits (JPEG draft at >= 256 px) and hashed by pdq_hash_frame: <= 10 bits each."""
    from moderation.core.decode import decode_frames
    from moderation.ops.config import Settings
    from moderation.runtime import decode_limits
    from moderation.signals.banks.matcher import hash_content

    limits = decode_limits(Settings(), 224)  # ViT-B-32's input size: the draft floor of 256 applies
    rows = [line.strip().split(",") for line in (REFERENCE / "bridge-hashes.csv").read_text().splitlines() if line.strip()]
    for published, name in rows:
        data = (REFERENCE / "images" / name).read_bytes()
        [found] = hash_content(data, decode_frames(data, limits).frames).pdq
        assert found.quality >= 80, name
        assert distance(found.bits, parse_pdq_hex(published)) <= 10, name


def test_a_flat_image_has_quality_zero() -> None:
    found = pdq_hash(Image.open(REFERENCE / "images" / "small.jpg"))
    assert found.quality == 0
    assert found.hex() == published_md5_test_hashes()["small.jpg"]


def test_grey_and_transparent_images_hash_as_their_rgb_pixels() -> None:
    grey = Image.open(REFERENCE / "images" / "wee.jpg").convert("L")
    assert pdq_hash(grey) == pdq_hash(grey.convert("RGB"))
    rgba = Image.open(REFERENCE / "images" / "c.png")
    assert rgba.mode == "RGBA"
    # The reference reads the first three channels and ignores alpha.
    assert pdq_hash(rgba) == pdq_hash(rgba.convert("RGB"))


def test_exact_hashes_are_of_the_bytes() -> None:
    data = (REFERENCE / "images" / "wee.jpg").read_bytes()
    assert md5_hex(data) == hashlib.md5(data).hexdigest()
    assert sha256_hex(data) == hashlib.sha256(data).hexdigest()
    assert len(md5_hex(b"")) == 32 and len(sha256_hex(b"")) == 64


def test_text_forms_round_trip_and_are_canonical() -> None:
    text = "E4CC89D91C623842F8D1F1D9A398E78C9F199A3BF87925F2B7E11E0BF061B064"
    bits = parse_pdq_hex(f"  {text}\n")
    assert format_pdq_hex(bits) == text.lower()
    assert parse_md5_hex("D41D8CD98F00B204E9800998ECF8427E") == "d41d8cd98f00b204e9800998ecf8427e"
    assert parse_sha256_hex("A" * 64) == "a" * 64


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (parse_pdq_hex, "ab" * 31, "a PDQ hash is 64 hexadecimal characters; got 62"),
        (parse_pdq_hex, "ab" * 33, "a PDQ hash is 64 hexadecimal characters; got 66"),
        (parse_pdq_hex, "ab" * 31 + "zz", "a PDQ hash is written in hexadecimal (0-9, a-f); character 63"),
        (parse_pdq_hex, "", "a PDQ hash is 64 hexadecimal characters; got 0"),
        (parse_md5_hex, "0" * 31, "an MD5 hash is 32 hexadecimal characters; got 31"),
        (parse_md5_hex, "0x" + "0" * 30, "an MD5 hash is written in hexadecimal (0-9, a-f); character 2"),
        (parse_sha256_hex, "0" * 32, "a SHA-256 hash is 64 hexadecimal characters; got 32"),
        (parse_sha256_hex, "0" * 63 + "é", "a SHA-256 hash is written in hexadecimal (0-9, a-f); character 64"),
        (parse_sha256_hex, None, "a SHA-256 hash is written as text of 64 hexadecimal characters; got NoneType"),
    ],
)
def test_malformed_hex_is_refused_with_a_sentence_naming_the_fault(parse, text, message) -> None:  # noqa: ANN001
    with pytest.raises(ValueError) as raised:
        parse(text)
    assert str(raised.value).startswith(message)


def test_a_pdq_hash_is_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes; got 31"):
        PdqHash(b"\0" * 31, 100)
    with pytest.raises(ValueError, match="32 bytes; got 33"):
        format_pdq_hex(b"\0" * 33)
