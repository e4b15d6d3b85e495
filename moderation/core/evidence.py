"""What signals hand to the decision: evidence about an image, one kind per way a signal can speak.

Two kinds, combined by `moderation.core.decision.decide`:
  CategoryScores  scores in [0, 1] for some categories (CLIP zero-shot today; example-trained
                  probes next). A category's score is the highest any signal gives it, and
                  the policy's thresholds turn it into a band and an action.
  ForcedAction    a signal that knows, not estimates: a match against a bank of known content
                  forces BLOCK or REVIEW on a category, citing a clause. It can raise a
                  category's action, never lower it, and nothing later (the explainer) lowers
                  it below what was forced.
No torch, no I/O: evidence is plain data, built by signals (moderation/signals/).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from moderation.policy.schema import Action


@dataclass(frozen=True, slots=True)
class CategoryScores:
    """One signal's scores, and per category the frame that produced it (0 for still images)."""

    signal: str
    scores: Mapping[str, float]
    deciding_frames: Mapping[str, int] = field(default_factory=dict)
    # Per category, every sampled frame's score in frame order, where the signal scores frames
    # one by one (a video's timeline and segments are built from it); empty otherwise.
    frame_scores: Mapping[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KnownContentMatch:
    """One bank entry the image matched, as the response reports it (BankMatch in the proto)."""

    bank: str
    content_id: str
    signal_type: str  # pdq, md5, sha256, embedding
    distance: float  # PDQ bits (<= threshold), embedding cosine (>= threshold), 0 for exact hashes
    threshold: float
    frame_index: int  # the animation frame that matched; 0 for still images and exact hashes


@dataclass(frozen=True, slots=True)
class ForcedAction:
    """A signal's verdict on one category that no score can weaken (a bank match)."""

    signal: str
    category_id: str
    action: Action  # BLOCK or REVIEW
    clause_id: str
    reason: str  # a sentence for the decision's reasons, e.g. which bank entry matched
    frame_index: int = 0
    matches: tuple[KnownContentMatch, ...] = ()  # what forced it, when a bank did

    def __post_init__(self) -> None:
        if self.action is Action.ALLOW:
            raise ValueError(f"signal {self.signal!r} forced ALLOW on {self.category_id!r}: forced evidence may only raise an action")


Evidence = CategoryScores | ForcedAction
