"""Settings -> what runs: model specs, device, scorer, explainer, escalation tier, pipeline.

The one place that turns configuration into objects. `moderation serve`,
`explain-serve` and the offline commands (policy test, calibrate, diff, compare,
bench) all build through here, so they run what the server would run. Nothing
here knows gRPC.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from moderation.clip import ClipModelSpec, ClipScorer, load_encoder
from moderation.config import Device, ExplainerMode, Settings
from moderation.imaging import DecodeLimits
from moderation.metrics import ModerationMetrics

if TYPE_CHECKING:  # transformers, xgrammar and torch load lazily
    from moderation.escalation.explainer import Explainer
    from moderation.escalation.loading import ExplainerSpec
    from moderation.escalation.tier import EscalationTier
    from moderation.pipeline import ModerationPipeline
    from moderation.reload import PolicyReloader
    from moderation.store import EmbeddingStore

log = logging.getLogger(__name__)


class ConfigurationError(RuntimeError):
    """Settings that cannot run: the message says which setting to change."""


def resolve_device(device: Device) -> str:
    import torch

    if device is Device.AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device is Device.CUDA and not torch.cuda.is_available():
        raise ConfigurationError("device is 'cuda' but torch sees no CUDA device; set MODERATION_DEVICE=cpu or auto")
    return device.value


def clip_spec(settings: Settings, device: str | None = None) -> ClipModelSpec:
    """The CLIP model these settings name, on `device` (default: resolved from the settings)."""
    return ClipModelSpec(
        model=settings.clip_model,
        weights=settings.clip_weights,
        cache_dir=settings.weights_cache,
        device=device or resolve_device(settings.device),
        allow_downloads=settings.allow_downloads,
        backend=settings.clip_backend,
        precision=settings.clip_precision.value,
    )


def load_scorer(spec: ClipModelSpec) -> ClipScorer:
    """Load the encoder behind `spec`. Raises WeightsUnavailable with one actionable line."""
    if spec.random:
        import torch

        # Meaningless weights, but the same ones on every run: offline output and CI are reproducible.
        torch.manual_seed(0)
    return ClipScorer(load_encoder(spec))


def decode_limits(settings: Settings, image_size: int | None) -> DecodeLimits:
    """The server's decode limits; `image_size` sets the JPEG draft scale (None: full decode)."""
    return DecodeLimits(
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        draft_size=image_size if settings.jpeg_draft else None,
        sample_frames=settings.sample_frames,
        max_frames=settings.max_frames,
        max_animation_pixels=settings.max_animation_pixels,
    )


def explainer_spec(settings: Settings, device: str) -> ExplainerSpec:
    from moderation.escalation.loading import ExplainerSpec

    try:
        return ExplainerSpec(
            model=settings.explainer_model,
            weights=settings.explainer_weights,
            device=device,
            allow_downloads=settings.allow_downloads,
            cache_dir=settings.weights_cache,
            precision=settings.explainer_precision.value,
            quantize=settings.explainer_quantize,
        )
    except ValueError as error:  # e.g. int8 quantization asked for on CUDA
        raise ConfigurationError(str(error)) from None


def load_explainer(settings: Settings, device: str) -> Explainer:
    """Load and warm up the SmolVLM2 explainer the settings name; slow."""
    from moderation.escalation.explainer import Explainer

    spec = explainer_spec(settings, device)
    explainer = Explainer.load(spec)
    explainer.warmup()
    info = explainer.info
    log.info("explainer %s loaded on %s (%s)", spec.model_id, info.device, "int8" if info.quantized else info.dtype)
    return explainer


def build_escalation_tier(settings: Settings, metrics: ModerationMetrics, device: str) -> EscalationTier | None:
    from moderation.escalation.backends import InProcessExplainer, RemoteExplainer
    from moderation.escalation.tier import EscalationTier

    if settings.explainer_mode is ExplainerMode.OFF:
        return None
    if settings.explainer_mode is ExplainerMode.REMOTE:
        backend = RemoteExplainer(settings.explainer_target)
    else:
        backend = InProcessExplainer(load_explainer(settings, device), settings.explainer_max_new_tokens)
    return EscalationTier(
        backend,
        metrics,
        max_concurrent=settings.explainer_max_concurrent,
        max_waiting=settings.explainer_max_waiting,
        timeout_s=settings.explainer_timeout_s,
        budget_per_minute=settings.explainer_budget_per_minute,
        failure_threshold=settings.explainer_failure_threshold,
        cooldown_s=settings.explainer_cooldown_s,
    )


def build_store(settings: Settings) -> EmbeddingStore | None:
    from moderation.store import EmbeddingStore

    if settings.embedding_store is None:
        return None
    return EmbeddingStore(settings.embedding_store, retention=timedelta(days=settings.embedding_retention_days))


def build_pipeline(settings: Settings, metrics: ModerationMetrics) -> tuple[ModerationPipeline, PolicyReloader]:
    """Load the CLIP model, every policy and the escalation tier; slow, runs in a worker thread."""
    from moderation.pipeline import ModerationPipeline
    from moderation.policy.registry import PolicyRegistry
    from moderation.reload import PolicyReloader

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    spec = clip_spec(settings)
    scorer = load_scorer(spec)
    registry = PolicyRegistry(scorer.index_policy, scorer.model_id, random_weights=scorer.random_weights)
    reloader = PolicyReloader(registry, settings.policies, metrics, scorer.model_id)
    summary = reloader.load_now()
    metrics.model_info.labels(scorer.model_id, str(scorer.random_weights).lower()).set(1)
    log.info(
        "serving policies %s with model %s (%s backend, %s) (default: %s)",
        ", ".join(summary.served), scorer.model_id, scorer.encoder.backend, spec.device, registry.default_id,
    )  # fmt: skip
    pipeline = ModerationPipeline(
        scorer,
        registry,
        decode_limits(settings, scorer.image_size),
        metrics,
        decode_workers=settings.decode_workers,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_batch_wait_ms,
        max_queue=settings.max_queue,
        store=build_store(settings),
        escalation=build_escalation_tier(settings, metrics, spec.device),
    )
    return pipeline, reloader
