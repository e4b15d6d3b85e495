"""CLIP tier: model specs and loading, the image-text encoder seam, zero-shot policy scoring."""

from moderation.signals.clip.encoder import ImageTextEncoder, UnknownBackend, load_encoder
from moderation.signals.clip.loading import ClipModelSpec, WeightsUnavailable
from moderation.signals.clip.scorer import ClipScorer, FrameScores, PolicyTextIndex

__all__ = [
    "ClipModelSpec",
    "ClipScorer",
    "FrameScores",
    "ImageTextEncoder",
    "PolicyTextIndex",
    "UnknownBackend",
    "WeightsUnavailable",
    "load_encoder",
]
