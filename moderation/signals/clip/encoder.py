"""The CLIP tier's model seam: an image-text encoder, whatever runtime runs it.

Every caller scores through `ClipScorer` (moderation/signals/clip/scorer.py), which only
talks to this protocol; nobody reaches into a backend's model. Tensors cross the
seam as float32 on the CPU, so device, dtype and runtime stay inside the backend:
    preprocess(PIL image)            -> [3, S, S] float32 (the model's own transform)
(torch tensors from the torch backends; numpy arrays from an exported model folder, whose
encoder sets `uses_numpy`: moderation/signals/clip/arrays.py serves both kinds)
    encode_images([B, 3, S, S] f32)  -> [B, D] float32, CPU, L2-normalised
    encode_texts(list of N strings)  -> [N, D] float32, CPU, L2-normalised

The server stacks each batch into `host_batch_buffer(encoder, ...)`: plain memory, or
page-locked memory when the encoder runs on CUDA, so a backend's copy to the device
(`.to(device, non_blocking=True)`) does not block the model thread on the host.

`load_encoder(spec)` picks the backend named by `spec.backend` from
moderation/signals/clip/backends/BACKENDS; adding a runtime is one module there plus one
line in that table.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from PIL import Image

if TYPE_CHECKING:  # torch is imported by the torch backends, never by an exported model folder's
    import torch

    from moderation.signals.clip.loading import ClipModelSpec


@runtime_checkable
class ImageTextEncoder(Protocol):
    name: str  # what responses and metrics carry, e.g. 'ViT-B-32/laion2b_s34b_b79k'
    backend: str  # the BACKENDS key that built it
    random_weights: bool
    image_size: int  # S: preprocess output is [3, S, S]
    device: torch.device  # where the image tower runs
    dtype: torch.dtype  # the image tower's compute dtype
    logit_scale: float  # CLIP's learned temperature, exp()'d

    def preprocess(self, image: Image.Image) -> torch.Tensor: ...

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


class UnknownBackend(ValueError):
    pass


def host_batch_buffer(encoder: ImageTextEncoder, shape: tuple[int, ...], dtype: Any = None) -> Any:
    """An uninitialised CPU array to stack a batch of prepared pixels into: numpy for an encoder
    that takes numpy (`uses_numpy`, an exported model folder), else a torch tensor, page-locked
    for a CUDA encoder."""
    if getattr(encoder, "uses_numpy", False):
        import numpy as np

        return np.empty(shape, dtype=np.float32)
    import torch

    return torch.empty(shape, dtype=dtype or torch.float32, pin_memory=encoder.device.type == "cuda")


def load_encoder(spec: ClipModelSpec, backends: Mapping[str, str] | None = None) -> ImageTextEncoder:
    """Build the encoder `spec` describes with the backend it names.

    `backends` maps a backend name to 'module:function' (default: BACKENDS);
    the function takes the spec and returns an ImageTextEncoder. The module is
    imported only when chosen, so an optional runtime costs nothing unless used.
    """
    from moderation.signals.clip.backends import BACKENDS

    table = BACKENDS if backends is None else backends
    if spec.backend not in table:
        raise UnknownBackend(f"unknown CLIP backend {spec.backend!r}; choose one of: {', '.join(table)} (setting clip_backend)")
    module_name, _, function_name = table[spec.backend].partition(":")
    factory = getattr(importlib.import_module(module_name), function_name)
    encoder = factory(spec)
    if not isinstance(encoder, ImageTextEncoder):
        raise TypeError(f"backend {spec.backend!r} returned {type(encoder).__name__}, which is not an ImageTextEncoder")
    return encoder
