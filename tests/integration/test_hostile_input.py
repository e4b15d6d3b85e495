"""Hostile and odd inputs against the real server: a clear status each, the server stays up, logs stay clean."""

from __future__ import annotations

import base64
import io
import urllib.request

import grpc
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests import images
from tests.integration.server import RunningServer

pytestmark = pytest.mark.integration
OK = grpc.StatusCode.OK
BAD = grpc.StatusCode.INVALID_ARGUMENT


def save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8
    return save(Image.fromarray(np.zeros((30, 60, 3), np.uint8)), "JPEG", exif=exif.tobytes())


def animated_webp(frames: int) -> bytes:
    sequence = [Image.new("RGB", (32, 32), (i * 8 % 256, 0, 0)) for i in range(frames)]
    return save(sequence[0], "WEBP", save_all=True, append_images=sequence[1:], duration=30)


def png_header_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming huge dimensions, then a tiny IDAT."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


CASES = {
    "empty": (b"", BAD, "the image field is empty"),
    "not an image": (b"hello, I am text", BAD, "not an image in an accepted format"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', BAD, "not an image in an accepted format"),
    "heic (unsupported)": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, BAD, "not an image in an accepted format"),
    "truncated jpeg": (images.astronaut_jpeg()[:4000], BAD, "truncated or corrupt"),
    "truncated png": (images.coffee_png()[:4000], BAD, "truncated or corrupt"),
    "decompression bomb": (save(Image.new("1", (20000, 20000)), "PNG"), BAD, "pixels; the limit is"),
    "header claims 100000x100000": (png_header_claiming(100000, 100000), BAD, "declares 10,000,000,000 pixels; the limit is"),
    "cmyk jpeg": (save(Image.new("CMYK", (64, 64), (0, 128, 128, 0)), "JPEG"), OK, ""),
    "16-bit png": (save(Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16), "PNG"), OK, ""),
    "palette with alpha": (save(Image.new("RGBA", (64, 64), (255, 0, 0, 128)).convert("P"), "PNG", transparency=0), OK, ""),
    "grayscale": (images.camera_grayscale_png(), OK, ""),
    "exif rotated": (exif_rotated_jpeg(), OK, ""),
    "animated webp, 40 frames": (animated_webp(40), OK, ""),
    "bmp": (save(Image.new("RGB", (40, 30), (1, 2, 3)), "BMP"), OK, ""),
    "tiff": (save(Image.new("RGB", (40, 30), (1, 2, 3)), "TIFF"), OK, ""),
    # Issue 18: a 1x1 logical screen, then a pixel at (6299, 6299): Pillow grows the canvas to
    # ~40 M pixels a frame. Charged per decoded frame, it stops at max_animation_pixels.
    "gif canvas growing past its header": (images.canvas_growing_gif(frames=200, offset=6299), BAD, "(setting max_animation_pixels)"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_and_odd_inputs(stub: pb_grpc.ModerationServiceStub, name: str) -> None:
    data, code, sentence = CASES[name]
    if code == OK:
        response = stub.Moderate(pb.ModerateRequest(image=data), timeout=60)
        assert len(response.categories) == 6 and response.action != pb.ACTION_UNSPECIFIED
    else:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Moderate(pb.ModerateRequest(image=data), timeout=60)
        assert caught.value.code() == code
        assert sentence in caught.value.details()
    # The server is still up and serving after every case.
    assert stub.Moderate(pb.ModerateRequest(image=images.astronaut_jpeg()), timeout=60).categories


def test_errors_are_counted_by_code(server: RunningServer, stub: pb_grpc.ModerationServiceStub) -> None:
    with pytest.raises(grpc.RpcError):
        stub.Moderate(pb.ModerateRequest(image=b"junk"), timeout=30)
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    family = next(f for f in text_string_to_metric_families(text) if f.name == "moderation_requests")
    codes = {s.labels["code"] for s in family.samples if s.value > 0}
    assert {"OK", "INVALID_ARGUMENT"} <= codes


def test_logs_never_contain_image_bytes(server: RunningServer, stub: pb_grpc.ModerationServiceStub) -> None:
    # Send distinctive payloads, good and bad, then scan everything the server logged.
    marker = b"IMAGE-BYTES-MUST-NOT-BE-LOGGED-" * 4
    payloads = [images.astronaut_jpeg() + marker, marker, b"\x89PNG\r\n\x1a\n" + marker]
    for payload in payloads:
        try:
            stub.Moderate(pb.ModerateRequest(image=payload, metadata={"note": marker.decode()}), timeout=30)
        except grpc.RpcError:
            pass
    log = server.log_text()
    assert log.count('"logger": "moderation.audit"') > 0, "the audit log is written"
    for payload in payloads:
        assert marker.decode() not in log
        for window in (payload[:48], payload[-48:]):
            assert base64.b64encode(window).decode()[:40] not in log
            assert window.hex()[:40] not in log
    assert base64.b64encode(images.astronaut_jpeg()[100:160]).decode()[4:40] not in log
