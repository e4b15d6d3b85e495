"""Find and build an open_clip model from where its architecture and weights live.

Architecture and weights are kept apart, as in open_clip itself:
    model    'ViT-B-32'            a built-in open_clip config
             'hf-hub:org/repo'     config and weights from the Hugging Face Hub
             'local-dir:/path'     a folder with open_clip_config.json (+ weights)
    weights  'laion2b_s34b_b79k'   a pretrained tag of the built-in config
             '/path/model.bin'     a local checkpoint file
             'random'              random initialisation: same FLOPs, meaningless scores
For 'hf-hub:' and 'local-dir:' models the weights come with the model, so the
weights setting only matters when it is 'random'.

Every download goes through `resolve_sources`, which asks huggingface_hub for
cached files only when downloads are off (`local_files_only`), so nothing here
changes process-wide state; open_clip is then handed local paths.

Backends (moderation/signals/clip/backends/) call `build_open_clip`; nobody else does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moderation.ops.config import RANDOM_WEIGHTS

if TYPE_CHECKING:  # torch loads with a backend that needs it, never with the spec (an exported folder serves without it)
    import torch

log = logging.getLogger(__name__)

SCHEMA_PREFIXES = ("hf-hub:", "local-dir:")
# The files of an open_clip model repository on the hub (config, weights, tokenizer).
HUB_MODEL_FILES = ["*.json", "*.txt", "*.model", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # torch dtype names


class WeightsUnavailable(RuntimeError):
    """The configured weights cannot be found locally or fetched. One line, says what to change."""


@dataclass(frozen=True, slots=True)
class ClipModelSpec:
    """Which CLIP model to run, where its weights are, and how to run it."""

    model: str = "ViT-B-32"
    weights: str = "laion2b_s34b_b79k"
    cache_dir: Path | None = None
    device: str = "cpu"
    allow_downloads: bool = True
    backend: str = "torch"
    # Where backends that convert the model (onnxruntime) keep the result; None: ~/.cache/moderation/clip-export.
    export_dir: Path | None = None
    # 'auto': fp16 on CUDA (half the memory traffic), fp32 on the CPU (bf16 measured
    # 5x slower for the vision tower on this project's CPU).
    precision: str = "auto"
    # An exported model folder (`moderation export`): backend 'onnx-folder' serves it without torch.
    model_dir: Path | None = None

    @property
    def random(self) -> bool:
        return self.weights == RANDOM_WEIGHTS

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        if self.precision == "auto":
            return torch.float16 if self.device.startswith("cuda") else torch.float32
        return getattr(torch, PRECISIONS[self.precision])

    @property
    def model_id(self) -> str:
        """The name responses and metrics carry, e.g. 'ViT-B-32/laion2b_s34b_b79k'."""
        if self.random:
            return f"{self.model}/random"
        if self.model.startswith(SCHEMA_PREFIXES):
            return self.model
        return f"{self.model}/{Path(self.weights).name if looks_like_path(self.weights) else self.weights}"


@dataclass(frozen=True, slots=True)
class OpenClipModel:
    """An open_clip model with its image transform and tokenizer, in eval mode on its device."""

    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: int


def build_open_clip(spec: ClipModelSpec) -> OpenClipModel:
    """Build the architecture, load the weights (or not: 'random'), cast to the spec's precision."""
    import open_clip

    if spec.random:
        log.warning(
            "CLIP model %s runs with RANDOM WEIGHTS: its scores and decisions mean nothing. "
            "Use this only for smoke tests and benchmarks.",
            spec.model,
        )
    try:
        model_name, pretrained, preprocess_overrides = resolve_sources(spec)
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name,
            pretrained=pretrained,
            load_weights=not spec.random,
            # Random weights must not quietly download a text tower's base weights.
            pretrained_text=not spec.random,
            device=spec.device,
            precision=_open_clip_precision(spec.torch_dtype),
            cache_dir=str(spec.cache_dir) if spec.cache_dir else None,
            **preprocess_overrides,
        )
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=str(spec.cache_dir) if spec.cache_dir else None)
    except WeightsUnavailable:
        raise
    except Exception as err:  # open_clip and the hub signal missing weights with several exception types
        raise WeightsUnavailable(_unavailable_message(spec, err)) from err
    model.eval()
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, tuple | list) else int(image_size)
    return OpenClipModel(model=model, preprocess=preprocess, tokenizer=tokenizer, image_size=image_size)


def _open_clip_precision(dtype: torch.dtype) -> str:
    import torch

    # open_clip's fp16/bf16 keep LayerNorms in fp32 and cast the rest (its GPU inference default).
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def resolve_sources(spec: ClipModelSpec) -> tuple[str, str | None, dict[str, Any]]:
    """(model name for open_clip, local checkpoint or None, preprocess overrides of a pretrained tag)."""
    if spec.random or spec.model.startswith("local-dir:"):
        return spec.model, None, {}
    from huggingface_hub import hf_hub_download, snapshot_download

    cache_dir = str(spec.cache_dir) if spec.cache_dir else None
    offline = not spec.allow_downloads
    if spec.model.startswith("hf-hub:"):
        repo = spec.model.removeprefix("hf-hub:")
        folder = snapshot_download(repo, cache_dir=cache_dir, local_files_only=offline, allow_patterns=HUB_MODEL_FILES)
        return f"local-dir:{folder}", None, {}
    if looks_like_path(spec.weights):
        if not Path(spec.weights).is_file():
            raise WeightsUnavailable(_unavailable_message(spec, FileNotFoundError(f"no checkpoint file at {spec.weights}")))
        return spec.model, spec.weights, {}
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.model, spec.weights)
    if not cfg:
        tags = ", ".join(t for m, t in open_clip.list_pretrained() if m == spec.model) or "none"
        raise WeightsUnavailable(_unavailable_message(spec, ValueError(f"unknown pretrained tag; tags of {spec.model}: {tags}")))
    overrides: dict[str, Any] = {
        key: cfg[source] for key, source in (
            ("image_mean", "mean"), ("image_std", "std"), ("image_interpolation", "interpolation"), ("image_resize_mode", "resize_mode")
        ) if cfg.get(source)
    }
    if cfg.get("quick_gelu"):
        overrides["force_quick_gelu"] = True
    if cfg.get("hf_hub"):
        repo, candidates = hub_file_candidates(cfg["hf_hub"])
        last_error: Exception | None = None
        for candidate in candidates:
            try:
                return spec.model, hf_hub_download(repo, candidate, cache_dir=cache_dir, local_files_only=offline), overrides
            except Exception as err:  # noqa: BLE001 - try the next file name, report the last failure
                last_error = err
        raise WeightsUnavailable(_unavailable_message(spec, last_error or FileNotFoundError(repo)))
    if offline:
        raise WeightsUnavailable(_unavailable_message(spec, FileNotFoundError("these weights are only published as a URL download")))
    return spec.model, open_clip.download_pretrained(cfg, cache_dir=cache_dir), overrides


def hub_file_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """(repository, file names to try in order) of an open_clip pretrained config's `hf_hub` entry.

    open_clip writes 'org/repo/' (its default file names) or 'org/repo/file.bin'.
    """
    repo, filename = (hf_hub.rstrip("/"), "") if hf_hub.endswith("/") else os.path.split(hf_hub)
    return repo, [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]


def looks_like_path(value: str) -> bool:
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
