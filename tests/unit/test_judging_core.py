"""The judging core combines every signal's evidence: scores by their maximum, bank-like matches never weaker.

The second signal here is a real Signal implementation written for the test: a list of
known frames (by pixel digest) that forces an action, the shape a hash bank will have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from moderation.core.decision import apply_verdict, decide
from moderation.core.decode import DecodeLimits, ImageRejected
from moderation.core.evidence import CategoryScores, Evidence, ForcedAction
from moderation.core.judge import CoreMetrics, JudgingCore
from moderation.core.signal import SampledFrames, SignalResources
from moderation.policy.registry import ServedPolicy
from moderation.policy.schema import Action, Band
from moderation.signals.registry import SIGNALS, build_signals
from tests import images
from tests.policies import TWO_CATEGORIES as POLICY

DECISIVE = type(POLICY).model_validate(
    {**POLICY.model_dump(), "categories": [{**POLICY.categories[0].model_dump(), "explainer": "decisive"}, POLICY.categories[1].model_dump()]}
)


class KnownFramesSignal:
    """Forces `action` on `category_id` when a sampled frame's pixels are on the list."""

    name = "known-frames"

    def __init__(self, known: set[str], category_id: str, action: Action, clause_id: str):
        self.known, self.category_id, self.action, self.clause_id = known, category_id, action, clause_id

    def evidence(self, frames: SampledFrames, served: ServedPolicy) -> Sequence[Evidence]:
        for index, frame in zip(frames.decoded.frame_indices, frames.decoded.frames, strict=True):
            if digest(frame.tobytes()) in self.known:
                return (ForcedAction(self.name, self.category_id, self.action, self.clause_id, "the frame is on the known list.", index),)
        return ()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_scores_combine_by_their_maximum_and_the_deciding_frame_follows() -> None:
    from moderation.core.judge import deciding_frames

    evidence = [
        CategoryScores("clip", {"violence": 0.2, "weapons": 0.5}, {"violence": 0, "weapons": 4}),
        CategoryScores("probe", {"violence": 0.7}, {"violence": 9}),
    ]
    decision = decide(evidence, POLICY)
    assert [(c.category_id, c.score, c.band) for c in decision.categories] == [("violence", 0.7, Band.ABOVE), ("weapons", 0.5, Band.BORDERLINE)]
    assert decision.action is Action.BLOCK
    assert deciding_frames(evidence, decision) == {"violence": 9, "weapons": 4}
    assert decide({"violence": 0.7, "weapons": 0.5}, POLICY) == decision, "a mapping of scores is one score signal"


def test_forced_actions_raise_and_are_never_weaker_than_the_scores() -> None:
    scores = CategoryScores("clip", {"violence": 0.9, "weapons": 0.1})
    # A forced REVIEW cannot lower a category CLIP blocks.
    kept = decide([scores, ForcedAction("bank", "violence", Action.REVIEW, "BANK-1", "matched bank entry 7.")], POLICY)
    assert kept.action is Action.BLOCK and kept.categories[0].forced_by == "" and kept.categories[0].clause_id == "V-2"
    # A forced BLOCK raises a category CLIP allows, citing the match's clause and reason.
    raised = decide([scores, ForcedAction("bank", "weapons", Action.BLOCK, "BANK-2", "matched bank entry 9.")], POLICY)
    weapons = raised.categories[1]
    assert (weapons.action, weapons.band, weapons.clause_id, weapons.forced_by) == (Action.BLOCK, Band.BELOW, "BANK-2", "bank")
    assert "BANK-2" in raised.cited_clauses and raised.reasons[0] == "matched bank entry 9."
    # The most severe of several forced actions wins.
    both = decide(
        [scores, ForcedAction("a", "weapons", Action.REVIEW, "A", "a."), ForcedAction("b", "weapons", Action.BLOCK, "B", "b.")], POLICY
    )
    assert both.categories[1].forced_by == "b"
    with pytest.raises(ValueError, match="may only raise"):
        ForcedAction("bank", "weapons", Action.ALLOW, "X", "x.")
    with pytest.raises(ValueError, match="does not have"):
        decide([scores, ForcedAction("bank", "gambling", Action.BLOCK, "G", "g.")], POLICY)


def test_a_decisive_explainer_cannot_lower_a_forced_category() -> None:
    borderline = CategoryScores("clip", {"violence": 0.45, "weapons": 0.1})
    pinned = decide([borderline, ForcedAction("bank", "violence", Action.REVIEW, "BANK-1", "matched.")], DECISIVE)
    same, changed = apply_verdict(pinned, DECISIVE, "violence", violates=False, clause_id="V-2")
    assert not changed and same.action is Action.REVIEW
    raised, changed = apply_verdict(pinned, DECISIVE, "violence", violates=True, clause_id="V-2")
    assert changed and raised.action is Action.BLOCK, "raising stays allowed"
    unforced, changed = apply_verdict(decide([borderline], DECISIVE), DECISIVE, "violence", violates=False, clause_id="V-2")
    assert changed and unforced.action is Action.ALLOW


def test_the_core_runs_every_signal_and_decides_on_their_evidence(tiny_scorer, one_torch_thread) -> None:  # noqa: ANN001
    from moderation.core.decode import decode_frames

    served = ServedPolicy(POLICY, Path("p.yaml"), "", tiny_scorer.index_policy(POLICY))
    (clip,) = build_signals(SignalResources(encoder=tiny_scorer, settings=None), ["clip"])
    known = decode_frames(images.coffee_png(), DecodeLimits()).frames[0].tobytes()
    timed: list[str] = []
    core = JudgingCore(
        DecodeLimits(),
        tiny_scorer,
        [clip, KnownFramesSignal({digest(known)}, "weapons", Action.BLOCK, "W-1")],
        metrics=CoreMetrics(signal_seconds=lambda name, seconds: timed.append(name)),
    )
    matched, unknown, broken = core.judge_images([images.coffee_png(), images.astronaut_jpeg(), b"not an image"], served)
    assert isinstance(broken, ImageRejected)
    assert matched.decision.action is Action.BLOCK and matched.decision.categories[1].forced_by == "known-frames"
    assert [type(e).__name__ for e in matched.evidence] == ["CategoryScores", "ForcedAction"]
    # Without a match the decision is CLIP's alone.
    clip_only = JudgingCore(DecodeLimits(), tiny_scorer, [clip])
    (alone,) = clip_only.judge_images([images.astronaut_jpeg()], served)
    assert unknown.decision == alone.decision and not any(c.forced_by for c in unknown.decision.categories)
    assert timed.count("clip") == 2 and timed.count("known-frames") == 2, "each signal's time is reported under its own name"
    assert list(SIGNALS) == ["clip", "banks"]


class CountingPrepareSignal:
    """A PreparingSignal that records each request it prepared (per-request work such as the banks' hashes)."""

    name = "counting"

    def __init__(self) -> None:
        self.prepared: list[int] = []

    def prepare(self, data: bytes, decoded) -> int:  # noqa: ANN001
        self.prepared.append(len(decoded.frames))
        return len(self.prepared)

    def evidence(self, frames: SampledFrames, served: ServedPolicy) -> Sequence[Evidence]:
        return ()


def test_decode_runs_each_preparing_signal_once_unless_told_not_to(tiny_scorer) -> None:  # noqa: ANN001
    """BankService hashes every signal type itself: its decode must not hash the frames a second time."""
    counting = CountingPrepareSignal()
    core = JudgingCore(DecodeLimits(), tiny_scorer, [counting])
    sample = core.decode(images.coffee_png())
    assert counting.prepared == [1] and sample.prepared == {"counting": 1}
    bare = core.decode(images.coffee_png(), prepare_signals=False)
    assert counting.prepared == [1] and bare.prepared == {}
