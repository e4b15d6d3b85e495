"""Load a SmolVLM2 explainer: real weights from the hub or a local folder, or random weights.

    model    'HuggingFaceTB/SmolVLM2-256M-Video-Instruct' (or 500M, 2.2B)  a Hugging Face id
             '/path/to/folder'                                             a local snapshot
    weights  'pretrained'  the model's own weights (and processor)
             'random'      the same architecture, randomly initialised: same FLOPs, meaningless text

Random weights cannot come with a downloaded config here, so the architectures are
shipped as data (architectures/*.json): the 256M model under its hub id, and a tiny
one for tests. A config JSON file, or a folder holding config.json, works too. The
processor is then built locally (local_processor.py).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    PreTrainedModel,
    ProcessorMixin,
    SmolVLMConfig,
)

from moderation.ops.config import RANDOM_WEIGHTS
from moderation.escalation.errors import ExplainerWeightsUnavailable  # noqa: F401 - re-exported: it was defined here
from moderation.escalation.availability import DEFAULT_EXPLAINER_MODEL, SHIPPED_ARCHITECTURES, TINY_TEST_MODEL  # noqa: F401 - re-exported
from moderation.escalation.local_processor import IMAGE, build_local_processor

log = logging.getLogger(__name__)

PRETRAINED_WEIGHTS = "pretrained"


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True, slots=True, kw_only=True)
class ExplainerSpec:
    model: str = DEFAULT_EXPLAINER_MODEL
    weights: str = PRETRAINED_WEIGHTS
    device: str = "cpu"
    allow_downloads: bool = True
    cache_dir: Path | None = None
    # Weights and inputs: 'auto' is bf16 on CUDA (SmolVLM2's own dtype) and float32 on
    # the CPU, where bf16 made the vision encoder five times slower on the CPUs this
    # was measured on. 'fp32', 'bf16' and 'fp16' force one.
    precision: str = "auto"
    # int8 dynamic quantization of the Linear layers (CPU, float32 only): about half the
    # latency, at some cost in fidelity to the float model.
    quantize: bool = False
    seed: int = 0  # random weights only

    def __post_init__(self) -> None:
        if self.weights not in (PRETRAINED_WEIGHTS, RANDOM_WEIGHTS):
            raise ValueError(
                f"explainer weights must be {PRETRAINED_WEIGHTS!r} or {RANDOM_WEIGHTS!r}, not {self.weights!r}"
            )
        if self.precision != "auto" and self.precision not in PRECISIONS:
            raise ValueError(f"explainer precision must be 'auto' or one of {sorted(PRECISIONS)}, not {self.precision!r}")
        if self.quantize and (not self.device.startswith("cpu") or self.torch_dtype != torch.float32):
            raise ValueError(
                f"int8 quantization of the explainer runs on the CPU in float32 only, not {self.device} "
                f"{str(self.torch_dtype).removeprefix('torch.')}; turn explainer_quantize off or set device and "
                "explainer_precision to cpu and fp32"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype of the weights and of the float inputs (pixels) fed to them."""
        if self.precision == "auto":
            return torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        return PRECISIONS[self.precision]

    @property
    def random(self) -> bool:
        return self.weights == RANDOM_WEIGHTS

    @property
    def model_id(self) -> str:
        """The name responses and metrics carry."""
        return f"{self.model}/random" if self.random else self.model


@dataclass(frozen=True, slots=True)
class LoadedExplainer:
    spec: ExplainerSpec
    model: PreTrainedModel
    processor: ProcessorMixin  # a SmolVLMProcessor: tokenizer + image processor

    @property
    def vocab_size(self) -> int:
        return self.model.config.text_config.vocab_size


def load_explainer(spec: ExplainerSpec) -> LoadedExplainer:
    if spec.random:
        log.warning(
            "Explainer %s runs with RANDOM WEIGHTS: its rationales and verdicts mean nothing. "
            "Use this only for smoke tests and benchmarks.",
            spec.model,
        )
        model, processor = _random_model(spec)
    else:
        model, processor = _pretrained_model(spec)
    model.to(device=spec.device, dtype=spec.torch_dtype).eval()
    if spec.quantize:
        model = _quantize_linear_layers(model)
    return LoadedExplainer(spec=spec, model=model, processor=processor)


def _pretrained_model(spec: ExplainerSpec) -> tuple[PreTrainedModel, ProcessorMixin]:
    cache_dir = str(spec.cache_dir) if spec.cache_dir else None
    # Downloads off: the cache only, failing at once instead of retrying an unreachable hub.
    local_only = not spec.allow_downloads
    try:
        processor = AutoProcessor.from_pretrained(spec.model, cache_dir=cache_dir, local_files_only=local_only)
        # Loaded in the spec's dtype (float32 on the CPU, bf16 on CUDA: see ExplainerSpec.precision).
        model = AutoModelForImageTextToText.from_pretrained(
            spec.model, cache_dir=cache_dir, dtype=spec.torch_dtype, local_files_only=local_only
        )
    except (OSError, ValueError) as err:  # hub and file errors are OSErrors; unknown repos ValueErrors
        raise ExplainerWeightsUnavailable(_unavailable_message(spec, err)) from err
    return model, processor


def _random_model(spec: ExplainerSpec) -> tuple[PreTrainedModel, ProcessorMixin]:
    config = _architecture_config(spec.model)
    vision = config.vision_config
    image_seq_len = (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2
    processor = build_local_processor(image_size=vision.image_size, image_seq_len=image_seq_len)
    tokenizer = processor.tokenizer
    if len(tokenizer) > config.text_config.vocab_size:
        raise ValueError(
            f"the local tokenizer has {len(tokenizer)} tokens, more than {spec.model}'s {config.text_config.vocab_size}"
        )
    # The shipped tokenizer is not the model's own, so the image placeholder id is ours.
    config.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)
    # Initialised in float32 whatever the precision, then cast by load_explainer: a
    # seed gives the same model in every dtype, up to rounding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    return model, processor


def _architecture_config(model: str) -> SmolVLMConfig:
    path = SHIPPED_ARCHITECTURES.get(model) or Path(model)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ExplainerWeightsUnavailable(
            f"no architecture config for {model!r} to build random weights from; set MODERATION_EXPLAINER_MODEL to "
            f"one of {sorted(SHIPPED_ARCHITECTURES)}, a config JSON file, or a folder with config.json"
        )
    config = json.loads(path.read_text(encoding="utf-8"))
    config.pop("_comment", None)
    return SmolVLMConfig(**config)


def _quantize_linear_layers(model: PreTrainedModel) -> PreTrainedModel:
    # Dynamic int8: weights stored int8, activations quantized per batch at run time.
    # Covers the text model, its LM head and the vision encoder; the patch embedding is
    # a convolution and stays float.
    with warnings.catch_warnings():
        # torch announces torch.ao.quantization's move to torchao on every call; it
        # still works on the torch versions pyproject.toml allows.
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def _unavailable_message(spec: ExplainerSpec, err: Exception) -> str:
    cause = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    where = f"cache {spec.cache_dir}" if spec.cache_dir else "the default cache"
    offline = "" if spec.allow_downloads else " with downloads disabled"
    return (
        f"cannot load explainer {spec.model!r} from {where}{offline} ({cause}); "
        "set MODERATION_EXPLAINER_MODEL to a local folder holding the model, or start with "
        "'--explainer-weights random' for meaningless random weights (smoke tests only)"
    )
