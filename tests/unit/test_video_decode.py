"""Sampled video decoding (moderation/video/decode.py) on clips made here with PyAV: what is sampled, what is refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from moderation.video.decode import VideoLimits, VideoRejected, decode_video, naive_decode
from tests.videos import MP4, WEBM, make_audio_only, make_video, scene_between

LIMITS = VideoLimits()


def _red(image) -> bool:
    return np.asarray(image)[..., 0].mean() > 90


@pytest.fixture(scope="module")
def scene_mp4() -> bytes:
    return make_video(25, fps=10, kind=MP4, frame_at=scene_between(10, 15))


@pytest.mark.parametrize("kind", [MP4, WEBM], ids=["mp4", "webm"])
def test_frames_are_sampled_each_second_and_equal_a_full_decode(kind, scene_mp4) -> None:
    data = scene_mp4 if kind is MP4 else make_video(25, fps=10, kind=kind, frame_at=scene_between(10, 15))
    video = decode_video(data, LIMITS)
    assert video.times_ms == tuple(range(0, 25_000, 1000))
    assert [t for t, frame in zip(video.times_ms, video.image.frames) if _red(frame)] == [10_000, 11_000, 12_000, 13_000, 14_000]
    # The frames sampled are exactly the frames a decode of every frame shows at those times.
    for sampled, full in zip(video.image.frames, naive_decode(data), strict=True):
        assert np.array_equal(np.asarray(sampled), np.asarray(full))
    assert video.info.duration_ms == 25_000 and video.info.width == 64 and video.info.height == 48
    assert video.image.frame_indices == tuple(range(25)) and video.image.total_frames == 250


def test_keyframe_groups_without_a_sample_are_not_decoded() -> None:
    """With a keyframe every 2 s and a sample every 4 s, half the groups are never decoded, and inside a group
    decoding stops at the sampled frame: far fewer frames decoded than the video has."""
    data = make_video(20, fps=10, kind=MP4, gop=20)
    video = decode_video(data, LIMITS, sample_fps=0.25)
    assert video.times_ms == (0, 4000, 8000, 12000, 16000)
    # Each sample is its group's keyframe: decoding stops there, after the few packets the decoder holds back.
    assert video.info.frames_decoded <= 5 * 3
    every = decode_video(make_video(20, fps=10, kind=MP4, gop=1), LIMITS, sample_fps=1.0)
    assert every.info.frames_decoded == 20


def test_the_sample_rate_is_lowered_to_fit_max_frames(scene_mp4) -> None:
    video = decode_video(scene_mp4, replace(LIMITS, max_frames=5))
    assert len(video.image.frames) == 5 and video.info.sample_fps == pytest.approx(0.2)
    assert video.times_ms == (0, 5000, 10000, 15000, 20000)


def test_rotation_metadata_turns_frames_upright() -> None:
    def left_red(t):
        from PIL import Image

        pixels = np.zeros((48, 64, 3), np.uint8)
        pixels[:, :32, 0] = 255
        return Image.fromarray(pixels)

    video = decode_video(make_video(1, fps=5, kind=MP4, frame_at=left_red, rotate=90), LIMITS)
    frame = np.asarray(video.image.frames[0])
    assert video.info.rotation == 90 and frame.shape[:2] == (64, 48)
    assert frame[:20, :, 0].mean() < 20 and frame[-20:, :, 0].mean() > 230  # the red left half is now at the bottom


@pytest.mark.parametrize(
    ("limits", "sample_fps", "setting"),
    [
        (replace(LIMITS, max_bytes=2048), 0.0, "max_video_bytes"),
        (replace(LIMITS, max_duration_s=10), 0.0, "max_video_duration_s"),
        (replace(LIMITS, max_fps=5), 0.0, "max_video_fps"),
        (replace(LIMITS, max_pixels=64 * 47), 0.0, "max_video_pixels"),
        (replace(LIMITS, codecs=("vp9",)), 0.0, "video_codecs"),
        (LIMITS, 30.0, "max_video_sample_fps"),
        (replace(LIMITS, max_decode_s=1e-6), 0.0, "max_video_decode_s"),
    ],
    ids=["bytes", "duration", "fps", "pixels", "codec", "sample-rate", "wall-time"],
)
def test_each_bound_is_refused_naming_its_setting(scene_mp4, limits, sample_fps, setting) -> None:
    with pytest.raises(VideoRejected, match=setting):
        decode_video(scene_mp4, limits, sample_fps=sample_fps)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "empty"),
        (b"\x00" * 64 + b"garbage that is no video", "not a video in an accepted container"),
        (b"GIF89a" + b"\x00" * 100, "not a video in an accepted container"),
    ],
    ids=["empty", "garbage", "image"],
)
def test_non_videos_are_refused(data, says) -> None:
    with pytest.raises(VideoRejected, match=says):
        decode_video(data, LIMITS)


def test_audio_only_truncated_and_corrupt_files_are_refused_or_decoded_safely(scene_mp4) -> None:
    with pytest.raises(VideoRejected, match="no video stream"):
        decode_video(make_audio_only(), LIMITS)
    with pytest.raises(VideoRejected, match="truncated or corrupt"):
        decode_video(scene_mp4[: len(scene_mp4) // 3], LIMITS)  # MP4 keeps its index at the end
    webm = make_video(4, fps=10, kind=WEBM)
    cut = decode_video(webm[: len(webm) // 2], LIMITS)  # WebM streams: the first half still plays
    assert 1 <= len(cut.image.frames) <= 4
    corrupt = bytearray(scene_mp4)
    rng = np.random.default_rng(3)
    for offset in rng.integers(200, len(corrupt) - 2000, size=40):
        corrupt[offset] ^= 0xFF
    try:
        video = decode_video(bytes(corrupt), LIMITS)
    except VideoRejected as error:
        assert "corrupt" in str(error) or "setting" in str(error)
    else:
        assert all(frame.size == (64, 48) for frame in video.image.frames)


def test_earlier_fuzzer_findings_are_refused_with_a_sentence() -> None:
    from tests.conftest import ROOT

    for found in sorted((ROOT / "tests" / "fixtures" / "fuzz-video").iterdir()):
        with pytest.raises(VideoRejected):
            decode_video(found.read_bytes(), LIMITS)


def test_variable_frame_rate_is_sampled_by_presentation_time() -> None:
    """Frames 33 ms to 250 ms apart: each sample is the first frame shown at or after its second."""
    import io
    import random
    from fractions import Fraction

    import av

    draw = scene_between(3, 5)
    times, t, steps = [], 0, random.Random(1)
    while t < 8000:
        times.append(t)
        t += steps.choice([33, 40, 100, 250])
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for ms in times:
            frame = av.VideoFrame.from_image(draw(ms / 1000))
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    video = decode_video(out.getvalue(), LIMITS)
    shown = [next(ms for ms in times if ms >= second * 1000) for second in range(8)]
    assert list(video.times_ms) == shown
    assert [ms for ms, frame in zip(video.times_ms, video.image.frames) if _red(frame)] == [ms for ms in shown if 3000 <= ms < 5000]


def test_a_header_claiming_ten_hours_gets_the_real_duration_and_1000_fps_is_refused() -> None:
    """The issue's hostile headers, at the default limits: MP4 duration fields patched to claim 10 hours are
    not believed (FFmpeg and the packet pass measure 3 s); a real 1,000 fps stream is refused."""
    import struct

    data = bytearray(make_video(3, fps=10))
    for box in (b"mvhd", b"mdhd"):
        at = data.index(box)
        timescale = struct.unpack(">I", data[at + 16 : at + 20])[0]
        data[at + 20 : at + 24] = struct.pack(">I", min(timescale * 36_000, 2**32 - 1))
    video = decode_video(bytes(data), LIMITS)
    assert video.info.duration_ms == 3000 and video.times_ms == (0, 1000, 2000)
    with pytest.raises(VideoRejected, match=r"1,000\.0 frames per second; the limit is 120 \(setting max_video_fps\)"):
        decode_video(make_video(1, fps=1000, size=(16, 16)), LIMITS)


@pytest.mark.parametrize(
    "data",
    [
        b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
        b"ffconcat version 1.0\nfile /etc/passwd\n",
        b"<?xml version='1.0'?><MPD xmlns='urn:mpeg:dash:schema:mpd:2011'><Period><AdaptationSet>"
        b"<Representation><BaseURL>file:///etc/passwd</BaseURL></Representation></AdaptationSet></Period></MPD>",
    ],
    ids=["hls-playlist", "concat-list", "dash-manifest"],
)
def test_containers_that_open_other_files_are_never_demuxed(data: bytes) -> None:
    """Playlists and manifests make FFmpeg open what they name: refused before any demuxer reads them."""
    with pytest.raises(VideoRejected, match="not a video in an accepted container"):
        decode_video(data, LIMITS)


def test_a_container_inside_a_container_is_read_as_the_outer_one_only() -> None:
    """A WebM appended to (or hidden after) an MP4: the MP4 demuxer reads its own boxes; the WebM's frames never count."""
    outer = make_video(2, fps=5, kind=MP4)
    inner = make_video(6, fps=5, kind=WEBM, frame_at=scene_between(0, 6))
    video = decode_video(outer + inner, LIMITS)
    assert video.info.duration_ms == pytest.approx(2000, abs=500)
    assert len(video.image.frames) <= 3 and not any(_red(frame) for frame in video.image.frames)
    with pytest.raises(VideoRejected):
        decode_video(inner[:4] + outer, LIMITS)  # a WebM's magic number in front of an MP4: neither container parses
