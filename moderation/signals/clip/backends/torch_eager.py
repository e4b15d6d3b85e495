"""Eager PyTorch: the reference backend, and the only one on CUDA (fp16 or bf16)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from moderation.signals.clip.loading import ClipModelSpec, OpenClipModel, build_open_clip

# Texts per encode_text call: bounds memory when a policy has many prompts.
TEXT_BATCH = 64


class TorchEncoder:
    backend = "torch"

    def __init__(self, spec: ClipModelSpec, clip: OpenClipModel):
        self.name = spec.model_id
        self.random_weights = spec.random
        self.image_size = clip.image_size
        self.device = torch.device(spec.device)
        self.dtype = spec.torch_dtype
        self._model = clip.model
        self._preprocess = clip.preprocess
        self._tokenizer = clip.tokenizer
        self.logit_scale = float(clip.model.logit_scale.detach().float().exp())

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._preprocess(image)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        # The input takes the tower's dtype (open_clip's fp16 keeps some parameters in
        # fp32, so no parameter's dtype is a safe guess); results leave as CPU float32.
        features = self._model.encode_image(pixels.to(self.device, self.dtype, non_blocking=True))
        return F.normalize(features.float(), dim=-1).cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), TEXT_BATCH):
            tokens = self._tokenizer(list(texts[start : start + TEXT_BATCH])).to(self.device)
            chunks.append(F.normalize(self._model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(chunks)


def load(spec: ClipModelSpec) -> TorchEncoder:
    return TorchEncoder(spec, build_open_clip(spec))
