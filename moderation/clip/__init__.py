"""CLIP tier: open_clip model loading and zero-shot policy scoring."""

from moderation.clip.loading import ClipModelSpec, LoadedClip, WeightsUnavailable, load_clip
from moderation.clip.scorer import ClipScorer, PolicyTextIndex

__all__ = ["ClipModelSpec", "ClipScorer", "LoadedClip", "PolicyTextIndex", "WeightsUnavailable", "load_clip"]
