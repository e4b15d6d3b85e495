"""open_clip's evaluation transform in PIL and numpy (no torch, no torchvision).

open_clip builds, for inference (open_clip/transform.py, image_transform_v2, is_train=False):
    'shortest' (square size S): Resize(S) on the shorter side, CenterCrop(S), RGB, ToTensor, Normalize
    'squash':                   Resize((S, S)), RGB, ToTensor, Normalize
torchvision's Resize on a PIL image is PIL's `Image.resize` with the same filter (its
`antialias` flag only applies to tensors), its shorter-side size is int(S * long / short),
and CenterCrop's offsets are int(round((side - S) / 2)); so the same PIL calls give the
same bytes, and ToTensor + Normalize are the same float32 arithmetic. tests/unit/
test_model_folder.py holds the result to 1e-6 of open_clip's transform (in practice 0).
'longest' (pad to a square) and non-square sizes are refused at export.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

RESIZE_MODES = ("shortest", "squash")
INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True, slots=True)
class PreprocessParams:
    """What preprocess.json in a model folder holds."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize mode {self.resize_mode!r} is not supported without torch; supported: {', '.join(RESIZE_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not supported; supported: {', '.join(INTERPOLATIONS)}")

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessParams:
        return cls(
            size=int(data["size"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            interpolation=str(data.get("interpolation", "bicubic")),
            resize_mode=str(data.get("resize_mode", "shortest")),
        )

    def to_dict(self) -> dict:
        return asdict(self)


class ImagePreprocessor:
    """PIL image -> [3, S, S] float32, normalised: open_clip's eval transform."""

    def __init__(self, params: PreprocessParams):
        self.params = params
        self._filter = INTERPOLATIONS[params.interpolation]
        self._mean = np.asarray(params.mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(params.std, dtype=np.float32).reshape(3, 1, 1)

    def resized(self, image: Image.Image) -> Image.Image:
        size = self.params.size
        if self.params.resize_mode == "squash":
            return image.resize((size, size), self._filter)
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size, int(size * long / short)
        image = image.resize((new_short, new_long) if width <= height else (new_long, new_short), self._filter)
        width, height = image.size
        top = int(round((height - size) / 2.0))
        left = int(round((width - size) / 2.0))
        return image.crop((left, top, left + size, top + size))

    def __call__(self, image: Image.Image) -> np.ndarray:
        rgb = self.resized(image).convert("RGB")
        pixels = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
        return (pixels - self._mean) / self._std

    def batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([self(image) for image in images])
