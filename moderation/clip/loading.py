"""Load an open_clip model from where its architecture and weights live.

Architecture and weights are kept apart, as in open_clip itself:
    model    'ViT-B-32'            a built-in open_clip config
             'hf-hub:org/repo'     config and weights from the Hugging Face Hub
             'local-dir:/path'     a folder with open_clip_config.json (+ weights)
    weights  'laion2b_s34b_b79k'   a pretrained tag of the built-in config
             '/path/model.bin'     a local checkpoint file
             'random'              random initialisation: same FLOPs, meaningless scores
For 'hf-hub:' and 'local-dir:' models the weights come with the model, so the
weights setting only matters when it is 'random'.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moderation.config import RANDOM_WEIGHTS

log = logging.getLogger(__name__)

SCHEMA_PREFIXES = ("hf-hub:", "local-dir:")


class WeightsUnavailable(RuntimeError):
    """The configured weights cannot be found locally or fetched. One line, says what to change."""


@dataclass(frozen=True, slots=True)
class ClipModelSpec:
    model: str = "ViT-B-32"
    weights: str = "laion2b_s34b_b79k"
    cache_dir: Path | None = None
    device: str = "cpu"
    allow_downloads: bool = True

    @property
    def random(self) -> bool:
        return self.weights == RANDOM_WEIGHTS

    @property
    def model_id(self) -> str:
        """The name responses and metrics carry, e.g. 'ViT-B-32/laion2b_s34b_b79k'."""
        if self.random:
            return f"{self.model}/random"
        if self.model.startswith(SCHEMA_PREFIXES):
            return self.model
        return f"{self.model}/{Path(self.weights).name if _looks_like_path(self.weights) else self.weights}"


@dataclass(frozen=True, slots=True)
class LoadedClip:
    spec: ClipModelSpec
    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: int


def load_clip(spec: ClipModelSpec) -> LoadedClip:
    import open_clip

    if not spec.allow_downloads:
        # Read at call time by huggingface_hub: cache only, fail at once instead
        # of retrying an unreachable hub for about a minute.
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
    if spec.random:
        log.warning(
            "CLIP model %s runs with RANDOM WEIGHTS: its scores and decisions mean nothing. "
            "Use this only for smoke tests and benchmarks.",
            spec.model,
        )
    pretrained = None if spec.random or spec.model.startswith(SCHEMA_PREFIXES) else spec.weights
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model,
            pretrained=pretrained,
            load_weights=not spec.random,
            # Random weights must not quietly download a text tower's base weights.
            pretrained_text=not spec.random,
            device=spec.device,
            # fp16 halves memory traffic on GPUs; on CPUs fp32 is fastest (bf16
            # measured 5x slower for the vision tower on this project's CPU).
            precision="fp16" if spec.device.startswith("cuda") else "fp32",
            cache_dir=str(spec.cache_dir) if spec.cache_dir else None,
        )
        tokenizer = open_clip.get_tokenizer(spec.model, cache_dir=str(spec.cache_dir) if spec.cache_dir else None)
    except Exception as err:  # open_clip signals missing weights with several exception types
        raise WeightsUnavailable(_unavailable_message(spec, err)) from err
    model.eval()
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, tuple | list) else int(image_size)
    return LoadedClip(spec=spec, model=model, preprocess=preprocess, tokenizer=tokenizer, image_size=image_size)


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.endswith((".bin", ".pt", ".pth", ".safetensors"))


def _unavailable_message(spec: ClipModelSpec, err: Exception) -> str:
    cause = str(err).splitlines()[0] if str(err) else type(err).__name__
    cause = cause if len(cause) <= 160 else cause[:157] + "..."
    where = f"cache {spec.cache_dir}" if spec.cache_dir else "the default cache"
    return (
        f"cannot load CLIP model {spec.model!r} with weights {spec.weights!r} from {where} ({cause}); "
        "set MODERATION_CLIP_WEIGHTS (--weights) to a local checkpoint file, MODERATION_CLIP_MODEL (--model) to "
        "'local-dir:/path', or MODERATION_WEIGHTS_CACHE to a folder that holds them; "
        "'--weights random' starts with meaningless random weights for smoke tests"
    )
