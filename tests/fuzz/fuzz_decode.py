"""atheris fuzz target: request parsing and the image decode path must never raise
anything but ImageRejected, whatever the bytes.

    python -m tests.fuzz.fuzz_decode CORPUS_DIR -max_total_time=60
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from google.protobuf.message import DecodeError

    from moderation.core.decode import DecodeLimits, ImageRejected, decode_frames
    from moderation.v1 import moderation_pb2 as pb

# Small limits keep each input cheap, so the fuzzer explores more of them.
LIMITS = DecodeLimits(max_bytes=1 << 20, max_pixels=4_000_000, draft_size=64, sample_frames=4, max_frames=200, max_animation_pixels=20_000_000)


def test_one_input(data: bytes) -> None:
    image = data
    if data[:1] == b"\x12":  # looks like a serialized ModerateRequest (field 2, bytes)
        try:
            image = pb.ModerateRequest.FromString(data).image
        except DecodeError:
            image = data
    try:
        decoded = decode_frames(image, LIMITS)
    except ImageRejected:
        return
    assert decoded.frames and all(frame.mode == "RGB" for frame in decoded.frames)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
