"""explain-serve decodes the frame it is asked to judge, within the scorer's decode limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from moderation.core.decode import DecodeLimits, ImageRejected
from moderation.serving.explainer_app import decode_frame
from tests import images


def animation(count: int = 4, size: int = 32) -> bytes:
    """Frames of distinct flat colours, so each decoded frame says which one it is."""
    frames = [Image.new("RGB", (size, size), (60 * i, 255 - 60 * i, 100)) for i in range(count)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return buffer.getvalue()


def test_each_frame_is_the_one_asked_for() -> None:
    data = animation()
    reference = Image.open(io.BytesIO(data))
    for index in range(4):
        reference.seek(index)
        assert np.array_equal(np.asarray(decode_frame(data, DecodeLimits(), index)), np.asarray(reference.convert("RGB")))


@pytest.mark.parametrize(
    ("data", "index", "says"),
    [
        (animation(), 4, "frame_index 4 is not a frame of this image: it is an animation of 4 frames (0 to 3)"),
        (animation(), -1, "frame_index -1 is not a frame of this image"),
        (images.coffee_png(), 1, "frame_index 1 is not a frame of this image: it is a still image (frame 0 only)"),
    ],
)
def test_frames_the_image_lacks_are_refused_with_a_sentence(data: bytes, index: int, says: str) -> None:
    with pytest.raises(ImageRejected, match=says.replace("(", r"\(").replace(")", r"\)")):
        decode_frame(data, DecodeLimits(), index)


def test_reaching_a_late_frame_counts_against_the_animation_pixel_budget() -> None:
    # Frame 3 of 32x32 frames costs 4 x 1024 decoded pixels; the budget allows two frames' worth.
    limits = DecodeLimits(max_animation_pixels=2 * 32 * 32)
    assert decode_frame(animation(), limits, 1).size == (32, 32)
    with pytest.raises(ImageRejected, match="would decode 4,096 pixels; the limit is 2,048"):
        decode_frame(animation(), limits, 3)


def test_reaching_a_frame_charges_the_canvas_the_frames_really_grow_to() -> None:
    """The scorer's per-frame canvas budget (issue 18) holds on explain-serve's path to one frame too."""
    limits = DecodeLimits(max_pixels=40_000_000, max_animation_pixels=100_000_000)
    with pytest.raises(ImageRejected, match=r"6300x6300.*max_animation_pixels"):
        decode_frame(images.canvas_growing_gif(frames=20, offset=6299), limits, 10)
