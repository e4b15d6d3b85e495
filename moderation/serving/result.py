"""What the serving shell answers for one request: the final decision, how it was reached, and timings.

The servicer converts it to protobuf (convert.py) and records it (recorder.py); the
listeners (listeners/) get the same object after the response is on its way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from moderation.core.decision import Decision
from moderation.core.judge import Judgement
from moderation.escalation.tier import EscalationOutcome
from moderation.video.segments import VideoAnswer


@dataclass(frozen=True, slots=True)
class StageTimings:
    decode_ms: float = 0.0
    embed_ms: float = 0.0
    decide_ms: float = 0.0
    escalation_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class FrameSample:
    """Which frames were scored, and per category the frame that set its score."""

    indices: tuple[int, ...] = (0,)
    total: int = 1
    deciding: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModerationResult:
    request_id: str
    decision: Decision  # final: after escalation
    model_id: str
    timings: StageTimings
    escalation: EscalationOutcome
    judgement: Judgement  # under the active policy, before escalation: evidence, frames, embeddings
    shadows: tuple[Judgement, ...] = ()  # the same frames judged under each shadow policy
    thumbnail: bytes | None = None  # a small JPEG of the representative frame, for flagged cases when thumbnails are on
    decided_at: float = field(default_factory=time.time)  # wall clock, for stored records
    # Who asked (token name, mTLS subject or 'anonymous'): a case is the caller's request id,
    # so another caller reusing the id can neither replace nor read it (issue 18, item 3).
    caller: str = "anonymous"
    # ModerateVideo: the sampled frames' times, the timeline and the segments (None for images).
    video: VideoAnswer | None = None

    def without_pixels(self) -> ModerationResult:
        """This result without its decoded frames: what listeners get, so a full listener queue holds
        embeddings and decisions (kilobytes per result), never images of up to max_image_pixels, nor the
        signals' prepared state (the bank snapshot a request read: a queue must not keep old indexes alive)."""

        def stripped(judgement: Judgement) -> Judgement:
            frames = judgement.frames
            return replace(judgement, frames=replace(frames, decoded=replace(frames.decoded, frames=()), prepared={}))

        return replace(self, judgement=stripped(self.judgement), shadows=tuple(stripped(s) for s in self.shadows))

    @property
    def frames(self) -> FrameSample:
        decoded = self.judgement.frames.decoded
        return FrameSample(decoded.frame_indices, decoded.total_frames, self.judgement.deciding)
