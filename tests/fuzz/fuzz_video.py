"""atheris fuzz target: the video demux and decode path must never raise anything but VideoRejected
(or DecodeStopped), whatever the bytes, and what it returns is RGB frames in time order.

    python -m tests.fuzz.fuzz_video CORPUS_DIR -max_total_time=30

atheris instruments the Python side only; FFmpeg's C runs uninstrumented on the mutated bytes,
so a crash or a hang there still ends the run (as a crash, or past -timeout).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from moderation.core.decode import DecodeStopped
    from moderation.video.decode import VideoLimits, VideoRejected, decode_video

# Small limits keep each input cheap, so the fuzzer explores more of them.
LIMITS = VideoLimits(max_bytes=256 * 1024, max_duration_s=10, max_pixels=320 * 240, max_fps=60, max_frames=8, max_decode_s=2)


def test_one_input(data: bytes) -> None:
    try:
        video = decode_video(data, LIMITS)
    except (VideoRejected, DecodeStopped):
        return
    assert video.image.frames and all(frame.mode == "RGB" for frame in video.image.frames)
    assert list(video.times_ms) == sorted(video.times_ms) and len(video.times_ms) == len(video.image.frames)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
