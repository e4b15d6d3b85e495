"""CLIP zero-shot as a signal: the image's frame embeddings scored against the policy's prompts.

Per category the most severe sampled frame counts (an animation is judged by its worst
frame), and the evidence names that frame; it also carries every frame's score (a video's timeline). The text side is the served policy's compiled
PolicyTextIndex, computed once per policy version. Its bounds are the micro-batcher's
(max_batch, max_queue), which the serving shell owns, and decode's sample_frames.
"""

from __future__ import annotations

from collections.abc import Sequence

from moderation.core.evidence import CategoryScores, Evidence
from moderation.core.signal import SampledFrames, SignalResources
from moderation.policy.registry import ServedPolicy
from moderation.signals.clip.scorer import ClipScorer, PolicyTextIndex, most_severe_frame


class ClipZeroShotSignal:
    name = "clip"

    def __init__(self, scorer: ClipScorer):
        self._scorer = scorer

    def evidence(self, frames: SampledFrames, served: ServedPolicy[PolicyTextIndex]) -> Sequence[Evidence]:
        per_frame = self._scorer.score(frames.embeddings, served.compiled)
        scored = most_severe_frame(per_frame, tuple(frames.decoded.frame_indices))
        # Every frame's score too: a video's timeline and segments need them, not only the worst frame.
        by_frame = {category_id: tuple(row[category_id] for row in per_frame) for category_id in scored.scores}
        return (CategoryScores(self.name, scored.scores, scored.deciding, by_frame),)


def build(resources: SignalResources) -> ClipZeroShotSignal:
    return ClipZeroShotSignal(resources.encoder)
