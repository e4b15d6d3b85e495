"""Videos tests make themselves with PyAV (no downloaded media): small, short, deterministic."""

from __future__ import annotations

import io
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
from PIL import Image

# (container format, codec, extension)
MP4 = ("mp4", "libx264", "mp4")
WEBM = ("webm", "libvpx-vp9", "webm")


def benign_frame(width: int = 64, height: int = 48, t: float = 0.0) -> Image.Image:
    """A calm blue-green gradient that drifts slowly: nothing like the scene."""
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    shift = 0.05 * np.sin(t)
    red = np.full((height, width), 30.0)
    green = 120 + 80 * ((x + shift) % 1.0) + 0 * y
    blue = 150 + 80 * y + 0 * x
    return Image.fromarray(np.stack([red + 0 * x, green, blue], axis=-1).clip(0, 255).astype(np.uint8))


def scene_frame(width: int = 64, height: int = 48) -> Image.Image:
    """The distinctive 'violating' scene: a red and black checkerboard, with a stable PDQ hash and CLIP embedding."""
    rng = np.random.default_rng(7)
    blocks = rng.integers(0, 2, size=(6, 8))
    board = np.kron(blocks, np.ones((height // 6 + 1, width // 8 + 1)))[:height, :width]
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = np.where(board > 0, 230, 20)
    pixels[..., 1] = 10
    pixels[..., 2] = np.where(board > 0, 10, 40)
    return Image.fromarray(pixels)


def make_video(
    seconds: float,
    fps: int = 10,
    kind: tuple[str, str, str] = MP4,
    frame_at: Callable[[float], Image.Image] | None = None,
    size: tuple[int, int] = (64, 48),
    gop: int | None = None,
    rotate: int | None = None,
    audio: bool = False,
) -> bytes:
    """Encode `seconds` of video; `frame_at(t)` draws the frame shown at t seconds (default: benign)."""
    fmt, codec, _ = kind
    draw = frame_at or (lambda t: benign_frame(size[0], size[1], t))
    out = io.BytesIO()
    with av.open(out, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"preset": "veryfast"}
            if gop is not None:  # keyframes exactly every `gop` frames
                stream.options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
        if codec.startswith("libvpx"):
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        if rotate is not None:
            stream.set_display_rotation(rotate)
        audio_stream = container.add_stream("aac", rate=8000) if audio else None
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_image(draw(i / fps).resize(size))
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            _write_silence(container, audio_stream, seconds)
    return out.getvalue()


def make_audio_only(seconds: float = 1.0) -> bytes:
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        _write_silence(container, container.add_stream("aac", rate=8000), seconds)
    return out.getvalue()


def _write_silence(container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    samples = 1024
    for i in range(max(1, round(seconds * 8000 / samples))):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        frame.pts = i * samples
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def scene_between(start_s: float, end_s: float, size: tuple[int, int] = (64, 48)) -> Callable[[float], Image.Image]:
    """Benign frames, and the scene from `start_s` (inclusive) to `end_s` (exclusive)."""
    scene = scene_frame(*size)
    return lambda t: scene if start_s <= t + 1e-9 < end_s else benign_frame(size[0], size[1], t)
