"""Safe, sampled video decoding with PyAV: bounded bytes, duration, resolution, frame rate, frames and time.

The file is demuxed from memory in two passes. The first reads packet headers only
(no decoding): it finds the real duration, frame count and keyframes whatever the
header claims. The second decodes only what the sampled frames need: for each
keyframe group (GOP) holding a sampled time, it seeks to that keyframe and decodes
up to the last sampled frame of the group; frames after it are never decoded, and
frames no later frame refers to (non-reference B-frames) are skipped unless sampled.
GOPs without a sampled time are skipped entirely. An all-intra stream thus decodes
exactly the sampled frames; a stream with a keyframe every 10 s still decodes less
than every frame.

The container is sniffed from its first bytes and opened with that demuxer only, so
FFmpeg never probes formats that open other files or URLs (HLS, concat playlists).
Everything here runs in a worker thread; errors are `VideoRejected` (an ImageRejected,
so callers map it to INVALID_ARGUMENT) with a sentence naming the setting; never bytes.
"""

from __future__ import annotations

import io
import math
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
from PIL import Image

from moderation.core.decode import DecodedImage, DecodeStopped, ImageRejected
from moderation.video.segments import VideoInfo

# Containers accepted by default (their first bytes decide which demuxer opens them).
CONTAINERS = ("mp4", "mov", "webm", "matroska")
CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4")
# Longest side of a sampled frame kept (scaled by FFmpeg while converting to RGB): CLIP
# reads 224 px, thumbnails 256, PDQ 512: 0.8 MB a frame kept, where a 4K frame whole would be 25 MB.
FRAME_MAX_SIDE = 512
# How often (in packets or frames) the loops check the wall-time bound and the caller.
_CHECK_EVERY = 32
_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")
_EBML = b"\x1a\x45\xdf\xa3"


class VideoRejected(ImageRejected):
    """The bytes are not a video this service will decode, or one over a bound; the message says which."""


@dataclass(frozen=True, slots=True)
class VideoLimits:
    max_bytes: int = 50 * 1024 * 1024
    max_duration_s: float = 180.0
    max_pixels: int = 3840 * 2160
    max_fps: float = 120.0
    max_frames: int = 120  # sampled frames at most: the rate is lowered to fit
    default_sample_fps: float = 1.0
    max_sample_fps: float = 10.0
    containers: tuple[str, ...] = CONTAINERS
    codecs: tuple[str, ...] = CODECS
    max_decode_s: float = 60.0


@dataclass(frozen=True, slots=True)
class DecodedVideo:
    """The sampled frames (RGB, upright) as a DecodedImage whose frame indices are 0..n-1, and when each is shown."""

    image: DecodedImage
    times_ms: tuple[int, ...]
    info: VideoInfo


@dataclass(frozen=True, slots=True)
class _Packet:
    pts: int
    keyframe: bool


def sniff_container(data: bytes) -> str | None:
    """The demuxer for these bytes: 'mp4' (MP4, MOV) or 'matroska' (MKV, WebM); None for anything else."""
    if data[:4] == _EBML:
        return "matroska"
    if len(data) >= 8 and data[4:8] in _MP4_BOXES:
        return "mp4"
    return None


def decode_video(
    data: bytes,
    limits: VideoLimits,
    sample_fps: float = 0.0,
    should_stop: Callable[[], bool] | None = None,
) -> DecodedVideo:
    """Decode the frames sampled every 1/`sample_fps` s (0: the default rate) from the video in `data`."""
    started = time.monotonic()
    if not data:
        raise VideoRejected("the video is empty; send the file's bytes after the options message")
    if len(data) > limits.max_bytes:
        raise VideoRejected(f"the video is {len(data):,} bytes; the limit is {limits.max_bytes:,} bytes (setting max_video_bytes)")
    rate = sample_fps or limits.default_sample_fps
    if not math.isfinite(rate) or rate <= 0 or rate > limits.max_sample_fps:
        raise VideoRejected(
            f"sample_fps {sample_fps:g} is out of range; it must be above 0 and at most {limits.max_sample_fps:g} "
            "(setting max_video_sample_fps)"
        )
    demuxer = sniff_container(data)
    accepted = ", ".join(limits.containers)
    if demuxer is None:
        raise VideoRejected(f"the bytes are not a video in an accepted container ({accepted}) (setting video_containers)")
    try:
        container = av.open(io.BytesIO(data), mode="r", format=demuxer, metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError) as err:
        raise VideoRejected(f"the video's container could not be read: it is truncated or corrupt ({type(err).__name__})") from None
    try:
        return _decode(container, data, limits, rate, should_stop, started)
    except (VideoRejected, DecodeStopped):
        raise
    except Exception as err:  # noqa: BLE001
        # As for images (core/decode.py): FFmpeg through PyAV reports hostile data as FFmpegError,
        # OSError, ValueError, and odd streams surface as AttributeError or TypeError (the fuzzer finds
        # them); to the caller every one means the same thing.
        raise VideoRejected(f"the video data is truncated or corrupt ({type(err).__name__})") from None
    finally:
        container.close()


def _decode(
    container: av.container.InputContainer,
    data: bytes,
    limits: VideoLimits,
    rate: float,
    should_stop: Callable[[], bool] | None,
    started: float,
) -> DecodedVideo:
    names = set(container.format.name.split(","))
    if not names & set(limits.containers) and not (names & {"mov", "mp4"} and {"mp4", "mov"} & set(limits.containers)):
        raise VideoRejected(f"the container {container.format.name!r} is not accepted ({', '.join(limits.containers)}) (setting video_containers)")
    if not container.streams.video:
        what = "only audio" if container.streams.audio else "no streams"
        raise VideoRejected(f"the file has no video stream ({what}); send a video with at least one video track")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # a codec id FFmpeg has no decoder for (found by the fuzzer)
        raise VideoRejected(f"the video codec is unknown to the decoder; accepted: {', '.join(limits.codecs)} (setting video_codecs)")
    codec = stream.codec_context.name
    if codec not in limits.codecs:
        raise VideoRejected(f"the video codec {codec!r} is not accepted ({', '.join(limits.codecs)}) (setting video_codecs)")
    width, height = stream.codec_context.width, stream.codec_context.height
    _check_pixels(width, height, limits)
    declared = _declared_duration_s(container, stream)
    if declared is not None and declared > limits.max_duration_s:
        raise VideoRejected(
            f"the video declares {declared:,.1f} s; the limit is {limits.max_duration_s:g} s (setting max_video_duration_s)"
        )
    declared_fps = float(stream.average_rate or stream.guessed_rate or 0)
    if declared_fps > limits.max_fps:
        raise VideoRejected(f"the video declares {declared_fps:,.1f} frames per second; the limit is {limits.max_fps:g} (setting max_video_fps)")

    clock = _Clock(limits, started, should_stop)
    packets = _index(container, stream, limits, clock)
    if not packets:
        raise VideoRejected("the video stream has no frames")
    time_base = stream.time_base or Fraction(1, 1000)
    first, last = packets[0].pts, packets[-1].pts
    frame_s = 1.0 / declared_fps if declared_fps > 0 else 0.0
    duration_s = float((last - first) * time_base) + frame_s
    if duration_s > limits.max_duration_s:
        raise VideoRejected(f"the video runs {duration_s:,.1f} s; the limit is {limits.max_duration_s:g} s (setting max_video_duration_s)")
    if len(packets) > 1 and (len(packets) - 1) / max(duration_s - frame_s, 1e-9) > limits.max_fps * 1.01:
        real_fps = (len(packets) - 1) / max(duration_s - frame_s, 1e-9)
        raise VideoRejected(f"the video has {real_fps:,.1f} frames per second; the limit is {limits.max_fps:g} (setting max_video_fps)")

    # The sampled times: every 1/rate s from the first frame, at most max_frames (the rate is lowered to fit).
    count = max(1, math.ceil(duration_s * rate - 1e-6))  # every k/rate s before the end
    if count > limits.max_frames:
        count = limits.max_frames
        rate = count / duration_s
    pts_list = [p.pts for p in packets]
    wanted: list[int] = []
    for k in range(count):
        target = first + math.ceil(round(k / rate / time_base, 6))
        i = bisect_left(pts_list, target)
        if i < len(pts_list) and (not wanted or pts_list[i] != wanted[-1]):
            wanted.append(pts_list[i])
    frames, decoded_count, rotation = _decode_sampled(container, stream, packets, wanted, limits, clock)
    if not frames:
        raise VideoRejected("no sampled frame of the video could be decoded: it is truncated or corrupt")
    times = tuple(round(float((pts - first) * time_base) * 1000) for pts, _ in frames)
    images = tuple(image for _, image in frames)
    info = VideoInfo(
        container=container.format.name,
        codec=codec,
        width=width,
        height=height,
        duration_ms=round(duration_s * 1000),
        frame_rate=declared_fps or (len(packets) / duration_s if duration_s > 0 else 0.0),
        sample_fps=rate,
        frames_decoded=decoded_count,
        rotation=rotation,
    )
    return DecodedVideo(DecodedImage(images, tuple(range(len(images))), len(packets), times), times, info)


class _Clock:
    """The wall-time bound and the caller's stop, checked every few packets or frames."""

    def __init__(self, limits: VideoLimits, started: float, should_stop: Callable[[], bool] | None):
        self._limits = limits
        self._give_up = started + limits.max_decode_s
        self._should_stop = should_stop
        self._ticks = 0

    def tick(self) -> None:
        self._ticks += 1
        if self._ticks % _CHECK_EVERY:
            return
        if self._should_stop is not None and self._should_stop():
            raise DecodeStopped("stopped decoding the video: the request's deadline passed or it was cancelled")
        if time.monotonic() > self._give_up:
            raise VideoRejected(f"decoding the video took longer than {self._limits.max_decode_s:g} s (setting max_video_decode_s)")


def _declared_duration_s(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _check_pixels(width: int, height: int, limits: VideoLimits) -> None:
    if width < 1 or height < 1:
        raise VideoRejected(f"the video has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise VideoRejected(
            f"the video is {width}x{height} = {width * height:,} pixels a frame; the limit is {limits.max_pixels:,} (setting max_video_pixels)"
        )


def _index(container: av.container.InputContainer, stream: av.video.stream.VideoStream, limits: VideoLimits, clock: _Clock) -> list[_Packet]:
    """Every video packet's presentation time and key flag, in presentation order: headers only, nothing decoded."""
    # Enough for the longest video allowed at the highest rate allowed; beyond it the file lies about itself.
    most = math.ceil(limits.max_duration_s * limits.max_fps) + 1
    packets = []
    for packet in container.demux(stream):
        clock.tick()
        if packet.size == 0 or packet.pts is None:
            continue  # the flush packet at the end; packets without a time cannot be sampled
        packets.append(_Packet(packet.pts, packet.is_keyframe))
        if len(packets) > most:
            raise VideoRejected(
                f"the video has more than {most:,} frames (max_video_duration_s x max_video_fps = "
                f"{limits.max_duration_s:g} s x {limits.max_fps:g}); the limits are those settings"
            )
    packets.sort(key=lambda p: p.pts)
    return packets


def _decode_sampled(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    packets: Sequence[_Packet],
    wanted: Sequence[int],
    limits: VideoLimits,
    clock: _Clock,
) -> tuple[list[tuple[int, Image.Image]], int, int]:
    """Decode the frames at the `wanted` presentation times, one keyframe group at a time."""
    keyframes = [p.pts for p in packets if p.keyframe] or [packets[0].pts]
    groups: dict[int, list[int]] = {}
    for pts in wanted:
        key = keyframes[max(0, bisect_right(keyframes, pts) - 1)]
        groups.setdefault(key, []).append(pts)
    context = stream.codec_context
    context.options = {"max_pixels": str(limits.max_pixels)}
    found: list[tuple[int, Image.Image]] = []
    decoded = 0
    rotation = 0
    for key, targets in groups.items():
        container.seek(key, stream=stream, backward=True, any_frame=False)
        pending = list(targets)
        wanted_now = set(targets)
        done = False
        for packet in container.demux(stream):
            clock.tick()
            # Frames nothing refers to are decoded only when sampled (PyAV decodes in this thread,
            # so the setting applies to this very packet).
            context.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in wanted_now else "NONREF"
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                continue  # a corrupt packet: its frame is lost, later keyframes may still decode
            for frame in frames:
                decoded += 1
                clock.tick()
                if frame.pts is None or frame.pts < pending[0]:
                    continue
                _check_pixels(frame.width, frame.height, limits)
                rotation = int(getattr(frame, "rotation", 0) or 0)
                found.append((pending[0], _to_image(frame, rotation)))
                # A frame past several pending times (a gap in the stream) stands for all of them once.
                while pending and pending[0] <= frame.pts:
                    pending.pop(0)
                if not pending:
                    done = True
                    break
            if done:
                break
    found.sort(key=lambda item: item[0])
    return found, decoded, rotation


def _to_image(frame: av.VideoFrame, rotation: int) -> Image.Image:
    """RGB, no side over FRAME_MAX_SIDE (FFmpeg scales while converting), turned upright by the display matrix."""
    width, height = frame.width, frame.height
    scale = min(1.0, FRAME_MAX_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = frame.to_image(width=size[0], height=size[1], interpolation="AREA") if scale < 1.0 else frame.to_image()
    # FFmpeg's rotation is counter-clockwise degrees to display the frame upright; PIL rotates counter-clockwise too.
    turn = round(rotation / 90) % 4
    if turn:
        image = image.transpose({1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}[turn])
    return image.convert("RGB")


def naive_decode(data: bytes, sample_fps: float = 1.0) -> list[Image.Image]:
    """Every frame decoded and converted, one kept per 1/`sample_fps` s: the pipeline bench/video.py compares against."""
    kept: list[Image.Image] = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        next_s = 0.0
        for frame in container.decode(stream):
            image = frame.to_image()
            if frame.time is not None and frame.time + 1e-6 >= next_s:
                kept.append(image)
                next_s += 1.0 / sample_fps
    return kept
