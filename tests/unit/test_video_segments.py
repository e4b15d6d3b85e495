"""Timed segments from per-frame evidence (moderation/video/segments.py): pure, with hand-made evidence."""

from __future__ import annotations

import pytest

from moderation.core.evidence import CategoryScores, ForcedAction, KnownContentMatch
from moderation.policy.schema import Action, Band
from moderation.video.segments import segments, timeline
from tests.policies import TWO_CATEGORIES  # violence: review 0.3, block 0.6; weapons: review 0.4, block 0.8 -> REVIEW

TIMES = tuple(range(0, 10_000, 1000))
INDICES = tuple(range(10))


def scores(violence: list[float], weapons: list[float] | None = None, signal: str = "clip") -> CategoryScores:
    weapons = weapons or [0.0] * len(violence)
    by_frame = {"violence": tuple(violence), "weapons": tuple(weapons)}
    return CategoryScores(signal, {k: max(v) for k, v in by_frame.items()}, {}, by_frame)


def test_consecutive_frames_over_the_review_threshold_make_one_segment_per_run() -> None:
    evidence = [scores([0.1, 0.1, 0.35, 0.7, 0.5, 0.1, 0.1, 0.31, 0.1, 0.1])]
    found = segments(evidence, TWO_CATEGORIES, INDICES, TIMES, 10_000)
    assert [(s.category_id, s.start_ms, s.end_ms) for s in found] == [("violence", 2000, 5000), ("violence", 7000, 8000)]
    first, second = found
    assert (first.band, first.action, first.peak_score, first.peak_ms, first.clause_id) == (Band.ABOVE, Action.BLOCK, 0.7, 3000, "V-2")
    assert (second.band, second.action, second.peak_ms) == (Band.BORDERLINE, Action.REVIEW, 7000)


def test_a_segment_running_to_the_last_frame_ends_with_the_video_and_categories_are_separate() -> None:
    evidence = [scores([0.0] * 8 + [0.9, 0.9], weapons=[0.0, 0.85, 0.85] + [0.0] * 7)]
    found = segments(evidence, TWO_CATEGORIES, INDICES, TIMES, 9_600)
    assert [(s.category_id, s.start_ms, s.end_ms, s.action) for s in found] == [
        ("weapons", 1000, 3000, Action.REVIEW),  # on_block: REVIEW
        ("violence", 8000, 9600, Action.BLOCK),
    ]


def test_all_frames_under_every_threshold_give_no_segment() -> None:
    assert segments([scores([0.29] * 10, [0.39] * 10)], TWO_CATEGORIES, INDICES, TIMES, 10_000) == []


def test_the_highest_signal_counts_per_frame() -> None:
    evidence = [scores([0.1] * 10), scores([0.0] * 4 + [0.65] + [0.0] * 5, signal="probe")]
    assert timeline(evidence, TWO_CATEGORIES, 10)["violence"][3:6] == (0.1, 0.65, 0.1)
    [only] = segments(evidence, TWO_CATEGORIES, INDICES, TIMES, 10_000)
    assert (only.start_ms, only.end_ms, only.peak_score) == (4000, 5000, 0.65)


def _bank(frame: int, signal_type: str = "pdq", action: Action = Action.BLOCK) -> ForcedAction:
    match = KnownContentMatch("known", "scene", signal_type, 10, 31, frame)
    return ForcedAction("banks", "weapons", action, "W-1", "matched", frame, (match,))


def test_bank_matched_frames_make_a_segment_whose_action_they_force() -> None:
    evidence = [scores([0.0] * 10), _bank(4), _bank(5)]
    [found] = segments(evidence, TWO_CATEGORIES, INDICES, TIMES, 10_000)
    assert (found.category_id, found.start_ms, found.end_ms, found.action, found.forced_by) == ("weapons", 4000, 6000, Action.BLOCK, "banks")
    assert found.band is Band.BELOW  # the score's band: the bank, not the score, put it here


def test_an_exact_match_of_the_file_covers_the_whole_video() -> None:
    [found] = segments([scores([0.0] * 10), _bank(0, "sha256")], TWO_CATEGORIES, INDICES, TIMES, 10_000)
    assert (found.start_ms, found.end_ms) == (0, 10_000)


def test_frame_scores_must_cover_every_sampled_frame() -> None:
    with pytest.raises(ValueError, match="scored 3 frames"):
        timeline([scores([0.1, 0.2, 0.3])], TWO_CATEGORIES, 10)
