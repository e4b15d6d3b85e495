"""CLIP tier: model specs and loading, the image-text encoder seam, zero-shot policy scoring."""

from moderation.clip.encoder import ImageTextEncoder, UnknownBackend, load_encoder
from moderation.clip.loading import ClipModelSpec, WeightsUnavailable
from moderation.clip.scorer import ClipScorer, FrameScores, PolicyTextIndex

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
