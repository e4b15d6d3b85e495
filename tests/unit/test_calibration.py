"""Calibration on synthetic score distributions whose right thresholds are known."""

from __future__ import annotations

import numpy as np
import pytest

from moderation.offline.calibration import (
    CalibrationTargets,
    calibrate_category,
    operating_point,
    precision_recall_curve,
    threshold_between,
)

N = 6000  # per class: fine enough that analytic thresholds hold to about 1e-3


def evenly(low: float, high: float, n: int = N) -> np.ndarray:
    """n scores spread evenly over [low, high): a uniform distribution without sampling noise."""
    return low + (high - low) * (np.arange(n) + 0.5) / n


def labelled(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([positives, negatives])
    return scores, np.concatenate([np.ones(len(positives), bool), np.zeros(len(negatives), bool)])


# Positives uniform on [0.4, 1.0), negatives uniform on [0, 0.6): in the overlap both
# classes have the same density, so for 0.4 <= t <= 0.6
#   recall(t)    = (1 - t) / 0.6
#   precision(t) = (1 - t) / ((1 - t) + (0.6 - t))
OVERLAPPING = labelled(evenly(0.4, 1.0), evenly(0.0, 0.6))


def test_separable_classes_get_a_threshold_in_the_gap_with_perfect_precision_and_recall() -> None:
    scores, positive = labelled(evenly(0.6, 1.0), evenly(0.0, 0.4))
    targets = CalibrationTargets(precision=1.0, recall=1.0, allow_collapse=True)
    result = calibrate_category("c", scores, positive, targets, 0.3, 0.7)
    highest_negative, lowest_positive = scores[~positive].max(), scores[positive].min()
    assert highest_negative < result.proposed.block <= lowest_positive
    assert result.proposed.review == result.proposed.block  # recall 1.0 is already met at the block threshold
    assert result.proposed.block == 0.6  # the lowest positive score rounded down to one decimal, still in the gap
    assert (result.proposed.precision_at_block, result.proposed.recall_at_block) == (1.0, 1.0)
    assert result.notes == () and result.changed
    assert result.collapsed and "block threshold alone keeps recall >= 1" in result.why["review"]
    (warning,) = result.warnings
    assert "REVIEW band EMPTIED (review 0.3 -> 0.6 = block 0.6)" in warning and "--allow-collapse" in warning


def test_a_proposal_that_empties_the_review_band_keeps_the_current_review_threshold() -> None:
    scores, positive = labelled(evenly(0.6, 1.0), evenly(0.0, 0.4))
    result = calibrate_category("c", scores, positive, CalibrationTargets(precision=1.0, recall=1.0), 0.3, 0.7)
    assert (result.proposed.review, result.proposed.block) == (0.3, 0.6)
    assert result.collapse_refused and not result.collapsed
    (warning,) = result.warnings
    assert "would EMPTY the REVIEW band (review 0.3 -> 0.6 = block 0.6)" in warning and "review threshold kept at 0.3" in warning
    assert result.why["review"].startswith("kept: the proposed 0.6 (= block) would empty the REVIEW band")

    # A proposed block at or below the current review threshold leaves no band to keep: both stay.
    both = calibrate_category("c", scores, positive, CalibrationTargets(precision=1.0, recall=1.0), 0.65, 0.7)
    assert (both.proposed.review, both.proposed.block) == (0.65, 0.7) and not both.changed
    assert "both thresholds kept (0.65, 0.7)" in both.warnings[0]


def test_a_budget_no_threshold_below_block_meets_is_explained_and_does_not_empty_the_band() -> None:
    # 44 images, all scoring under the current review threshold: one image is 2.3% of the set,
    # so a 2% budget admits no observed threshold below block (the case of issue 13).
    rng = np.random.default_rng(5)
    scores = rng.uniform(0.1, 0.3, 44)
    positive = scores <= np.sort(scores)[9]  # the 10 lowest: no threshold reaches the precision target, block stays
    result = calibrate_category("c", scores, positive, CalibrationTargets(precision=0.95, max_review_rate=0.02), 0.35, 0.75)
    assert (result.proposed.review, result.proposed.block) == (0.35, 0.75)
    assert result.collapse_refused and result.proposed.review_load == 0.0
    assert "admits no threshold below block (the smallest review load one gives is 2.3% of the 44 labelled images)" in result.warnings[0]
    taken = calibrate_category("c", scores, positive, CalibrationTargets(precision=0.95, max_review_rate=0.02, allow_collapse=True), 0.35, 0.75)
    assert taken.proposed.review == taken.proposed.block == 0.75 and taken.collapsed


def test_review_load_over_budget_or_rising_without_one_is_warned() -> None:
    scores, positive = OVERLAPPING
    rising = calibrate_category("c", scores, positive, CalibrationTargets(precision=0.99, recall=0.95), 0.55, 0.6)
    assert rising.proposed.review_load > rising.current.review_load + 0.05
    assert any("review load rises from" in w and "--max-review-rate" in w for w in rising.warnings)
    held = calibrate_category("c", scores, positive, CalibrationTargets(precision=0.8, max_review_rate=0.1), 0.3, 0.7)
    assert held.warnings == ()
    assert held.proposed.precision_at_review == pytest.approx(float(positive[scores >= held.proposed.review].mean()))


def test_overlapping_classes_match_the_analytic_thresholds() -> None:
    scores, positive = OVERLAPPING
    result = calibrate_category("c", scores, positive, CalibrationTargets(precision=0.8, recall=0.9), 0.3, 0.7)
    # precision(t) = 0.8  <=>  1 - t = 0.8 (1.6 - 2 t)  <=>  t = 0.28 / 0.6
    assert result.proposed.block == pytest.approx(0.28 / 0.6, abs=1e-3)
    # recall(t) = 0.9  <=>  t = 1 - 0.54
    assert result.proposed.review == pytest.approx(0.46, abs=1e-3)
    assert result.proposed.precision_at_block >= 0.8
    assert result.proposed.recall_at_review >= 0.9
    # The block threshold is the lowest that meets the target: one observed score lower misses it.
    curve = precision_recall_curve(scores, positive)
    index = int(np.searchsorted(curve.thresholds, result.proposed.block))
    assert curve.precision[index - 1] < 0.8 <= curve.precision[index]


def test_review_budget_alone_uses_the_whole_budget() -> None:
    scores, positive = OVERLAPPING
    result = calibrate_category("c", scores, positive, CalibrationTargets(precision=0.8, max_review_rate=0.1), 0.3, 0.7)
    # Both classes have density 1/0.6 of their N in the overlap, half of all images each:
    # load(t) = (block - t) / 0.6, so a 10% budget gives t = block - 0.06.
    assert result.proposed.review == pytest.approx(result.proposed.block - 0.06, abs=1e-3)
    assert result.proposed.review_load <= 0.1
    assert result.proposed.review_load == pytest.approx(0.1, abs=1e-3)


def test_review_budget_raises_the_recall_threshold_only_when_it_binds() -> None:
    scores, positive = OVERLAPPING
    loose = calibrate_category("c", scores, positive, CalibrationTargets(precision=0.8, recall=0.9, max_review_rate=0.1), 0.3, 0.7)
    assert loose.proposed.review == pytest.approx(0.46, abs=1e-3) and loose.notes == ()

    tight = calibrate_category("c", scores, positive, CalibrationTargets(precision=0.8, recall=0.9, max_review_rate=0.003), 0.3, 0.7)
    assert tight.proposed.review == pytest.approx(tight.proposed.block - 0.0018, abs=1e-3)
    assert tight.proposed.review_load <= 0.003
    (note,) = tight.notes
    assert "the review budget holds recall at" in note and "below the 0.90 target" in note


def test_on_block_review_counts_blocked_images_in_the_review_load() -> None:
    scores, positive = OVERLAPPING
    # At the block threshold (about 0.467) 55.6% of images score above it; all of them go to review.
    result = calibrate_category("c", scores, positive, CalibrationTargets(precision=0.8, max_review_rate=0.6), 0.3, 0.7, block_sends_to_review=True)
    assert result.proposed.block_load == 0.0
    assert result.proposed.review_load == pytest.approx(float((scores >= result.proposed.review).mean()))
    assert 0.59 < result.proposed.review_load <= 0.6

    targets = CalibrationTargets(precision=0.8, max_review_rate=0.5, allow_collapse=True)
    over = calibrate_category("c", scores, positive, targets, 0.3, 0.7, block_sends_to_review=True)
    assert over.proposed.review == over.proposed.block
    assert "block threshold alone sends more than 50.0%" in over.notes[0]
    assert any("over the 50.0% budget (on_block is REVIEW" in w for w in over.warnings)


def test_unreachable_precision_keeps_the_current_block_threshold() -> None:
    # Every negative outscores every positive: precision never exceeds 0.5.
    scores, positive = labelled(evenly(0.0, 0.4, 100), evenly(0.6, 1.0, 100))
    result = calibrate_category("c", scores, positive, CalibrationTargets(precision=0.9, recall=0.5), 0.3, 0.7)
    assert result.proposed.block == 0.7
    assert "no threshold reaches precision 0.90: block threshold kept at 0.7" in result.notes[0]
    assert result.proposed.review == pytest.approx(0.2, abs=0.01)  # half the positives are at or above it


@pytest.mark.parametrize(("positives", "note"), [(0, "no labelled positives"), (50, "no labelled negatives")])
def test_missing_class_keeps_thresholds(positives: int, note: str) -> None:
    scores = evenly(0.0, 1.0, 50)
    result = calibrate_category("c", scores, np.full(50, positives > 0), CalibrationTargets(), 0.3, 0.7)
    assert (result.proposed.review, result.proposed.block) == (0.3, 0.7) and not result.changed
    assert result.notes[0].startswith(note)


def test_default_review_target_is_recall_090() -> None:
    scores, positive = OVERLAPPING
    assert CalibrationTargets().review_recall == 0.9
    assert CalibrationTargets(max_review_rate=0.1).review_recall is None
    result = calibrate_category("c", scores, positive, CalibrationTargets(precision=0.8), 0.3, 0.7)
    assert result.proposed.review == pytest.approx(0.46, abs=1e-3)


def test_written_thresholds_flag_exactly_what_the_observed_score_flags() -> None:
    rng = np.random.default_rng(7)
    scores = rng.random(500).astype(np.float32).astype(np.float64)  # model scores are float32
    positive = rng.random(500) < scores  # higher scores are more often positive
    result = calibrate_category("c", scores, positive, CalibrationTargets(precision=0.8, recall=0.7), 0.3, 0.7)
    curve = precision_recall_curve(scores, positive)
    for written in (result.proposed.review, result.proposed.block):
        observed = curve.thresholds[curve.thresholds >= written][0]
        assert np.array_equal(scores >= written, scores >= observed)
        assert len(repr(written)) <= len(repr(float(observed)))


def test_threshold_between_prefers_short_decimals() -> None:
    assert threshold_between(0.41, 0.4567) == 0.45
    assert threshold_between(0.4561, 0.45678) == 0.4567
    assert threshold_between(0.4561, 0.4567) == 0.4567
    assert threshold_between(None, 0.29) == 0.2
    assert threshold_between(0.28, 0.29) == 0.29
    assert threshold_between(0.3, 0.3000000001) == 0.3000000001


def test_operating_point_counts() -> None:
    scores = np.array([0.1, 0.4, 0.5, 0.8, 0.9])
    positive = np.array([False, False, True, True, False])
    point = operating_point(scores, positive, review=0.4, block=0.8, block_sends_to_review=False)
    assert point.precision_at_block == 0.5 and point.recall_at_block == 0.5 and point.recall_at_review == 1.0
    assert point.precision_at_review == pytest.approx(2 / 4)
    assert point.review_load == pytest.approx(2 / 5) and point.block_load == pytest.approx(2 / 5)


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="precision must be in"):
        CalibrationTargets(precision=0.0)
    with pytest.raises(ValueError, match="max_review_rate must be in"):
        CalibrationTargets(max_review_rate=1.5)
    with pytest.raises(ValueError, match="scores must be numbers in"):
        precision_recall_curve(np.array([0.2, 1.2]), np.array([True, False]))


# Separable classes: precision 1.0 and recall 1.0 are both met at 0.6, so the proposal is
# review = block = 0.6 (an empty REVIEW band).
SEPARABLE = labelled(evenly(0.6, 1.0, 200), evenly(0.0, 0.4, 200))
PERFECT = CalibrationTargets(precision=1.0, recall=1.0)


def test_an_already_empty_band_is_not_a_collapse_to_refuse() -> None:
    """docs/policies.md: the guard applies to a category 'whose current review < block'; at review == block it does not."""
    scores, positive = SEPARABLE
    result = calibrate_category("c", scores, positive, PERFECT, 0.5, 0.5)
    assert (result.proposed.review, result.proposed.block) == (0.6, 0.6)
    assert result.collapsed and not result.collapse_refused
    assert result.warnings == ()
    assert result.notes == ("the REVIEW band stays empty (review >= block), as in the current version",)


def test_a_proposed_block_equal_to_the_current_review_keeps_both_thresholds() -> None:
    """docs/policies.md: the current block is kept too 'when the proposed block is not above that review threshold'."""
    scores, positive = SEPARABLE
    result = calibrate_category("c", scores, positive, PERFECT, 0.6, 0.7)  # proposed block 0.6 == current review
    assert (result.proposed.review, result.proposed.block) == (0.6, 0.7)
    assert result.proposed.review < result.proposed.block and result.collapse_refused and not result.collapsed
    assert "both thresholds kept (0.6, 0.7)" in result.warnings[0]
    assert result.why["block"] == "kept: the proposed 0.6 would leave no REVIEW band below it (--allow-collapse takes it)"


def test_a_proposed_block_just_above_the_current_review_keeps_only_the_review_threshold() -> None:
    scores, positive = SEPARABLE
    result = calibrate_category("c", scores, positive, PERFECT, 0.59, 0.7)
    assert (result.proposed.review, result.proposed.block) == (0.59, 0.6)
    assert "review threshold kept at 0.59" in result.warnings[0] and "block" in result.why


def test_precision_exactly_at_the_target_sets_block() -> None:
    # 19 positives and 1 negative at 0.7, 10 negatives at 0.2: precision at 0.7 is 19/20 = 0.95.
    scores, positive = labelled(np.full(19, 0.7), np.array([0.7] + [0.2] * 10))
    met = calibrate_category("c", scores, positive, CalibrationTargets(precision=0.95, recall=1.0), 0.1, 0.9)
    assert met.proposed.block == 0.7 and met.proposed.precision_at_block == 0.95
    assert met.why["block"] == "lowest threshold with precision >= 0.95 (precision 0.950, recall 1.00 at it)"
    missed = calibrate_category("c", scores, positive, CalibrationTargets(precision=0.951, recall=1.0), 0.1, 0.9)
    assert missed.proposed.block == 0.9
    assert missed.notes[0] == "no threshold reaches precision 0.95: block threshold kept at 0.9"


# Positives 0.5, 0.6, 0.7, 0.8; negatives 0.1 and 0.75. Precision reaches 1 only at 0.8: block 0.8.
LADDER = labelled(np.array([0.5, 0.6, 0.7, 0.8]), np.array([0.1, 0.75]))


@pytest.mark.parametrize(
    ("recall", "review", "kept"),
    # The ceil(R x 4)-th highest positive score: R = 0.5 keeps 2 (0.7), just over 0.5 needs 3 (0.6), 0.75 needs 3, just over needs 4.
    [(0.25, 0.8, 1), (0.26, 0.7, 2), (0.5, 0.7, 2), (0.51, 0.6, 3), (0.75, 0.6, 3), (0.76, 0.5, 4), (1.0, 0.5, 4), (1e-12, 0.8, 1)],
)
def test_review_for_a_recall_target_is_the_ceil_r_times_positives_th_highest_positive(recall: float, review: float, kept: int) -> None:
    scores, positive = LADDER
    result = calibrate_category("c", scores, positive, CalibrationTargets(precision=1.0, recall=recall, allow_collapse=True), 0.05, 0.95)
    assert result.proposed.block == 0.8
    assert result.proposed.review == review
    assert result.proposed.recall_at_review == kept / 4
    if review == 0.8:
        assert result.why["review"] == f"= block: the block threshold alone keeps recall >= {recall:g}"
    else:
        assert result.why["review"] == f"highest threshold keeping recall >= {recall:g} ({kept} of 4 positives at or above it)"


@pytest.mark.parametrize(
    ("budget", "review", "load"),
    # Review loads below block 0.8 (6 images): at 0.75 -> 1/6, at 0.7 -> 2/6, at 0.6 -> 3/6.
    [(2 / 6, 0.7, 2 / 6), (2 / 6 - 0.001, 0.75, 1 / 6), (3 / 6, 0.6, 3 / 6), (1 / 6, 0.75, 1 / 6)],
)
def test_a_review_load_exactly_at_the_budget_is_within_it(budget: float, review: float, load: float) -> None:
    scores, positive = LADDER
    result = calibrate_category("c", scores, positive, CalibrationTargets(precision=1.0, max_review_rate=budget), 0.05, 0.95)
    assert (result.proposed.review, result.proposed.block) == (review, 0.8)
    assert result.proposed.review_load == pytest.approx(load)
    assert not any("over the" in w for w in result.warnings)


def test_out_of_range_targets_name_the_allowed_interval() -> None:
    with pytest.raises(ValueError, match=r"^precision must be in \(0, 1\], got 0.0$"):
        CalibrationTargets(precision=0.0)
    with pytest.raises(ValueError, match=r"^recall must be in \(0, 1\], got 1.5$"):
        CalibrationTargets(recall=1.5)
    with pytest.raises(ValueError, match=r"^max_review_rate must be in \[0, 1\], got -0.1$"):
        CalibrationTargets(max_review_rate=-0.1)
    assert CalibrationTargets(max_review_rate=0.0).max_review_rate == 0.0 and CalibrationTargets(precision=1.0).precision == 1.0


@pytest.mark.parametrize(("scores", "labels"), [(np.array([0.1, 0.2, 0.3, 0.4]), np.array([True, False, True])), (np.array([0.1, 0.2, 0.3]), np.array([True, False, True, False])), (np.array(0.5), np.array(True)), (np.full((2, 2), 0.5), np.ones((2, 2), bool))])
def test_scores_and_labels_must_be_one_dimensional_and_of_equal_length(scores: np.ndarray, labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="must be 1-D of equal length"):
        precision_recall_curve(scores, labels)


def test_operating_points_are_immutable() -> None:
    import dataclasses

    point = operating_point(*LADDER, 0.5, 0.8, block_sends_to_review=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.review = 0.1  # type: ignore[misc]


def test_the_lowest_observed_score_as_a_threshold_is_rounded_too() -> None:
    # Recall 1.0 needs the lowest positive, which is also the lowest score of all: nothing below it.
    scores, positive = labelled(np.array([0.123456, 0.9]), np.array([0.5]))
    result = calibrate_category("c", scores, positive, CalibrationTargets(precision=1.0, recall=1.0), 0.05, 0.95)
    assert (result.proposed.review, result.proposed.block) == (0.1, 0.9)


# LADDER with two negatives at 0.75: block stays 0.8 (precision 1 only there), and the least
# review load a threshold below block gives is 2 of 7 images (the two at 0.75).
LADDER_TIE = labelled(np.array([0.5, 0.6, 0.7, 0.8]), np.array([0.1, 0.75, 0.75]))


def test_a_budget_that_empties_the_band_under_a_recall_target_keeps_the_thresholds_and_says_why() -> None:
    scores, positive = LADDER_TIE
    targets = CalibrationTargets(precision=1.0, recall=1.0, max_review_rate=0.1)
    result = calibrate_category("c", scores, positive, targets, 0.65, 0.95)
    assert (result.proposed.review, result.proposed.block) == (0.65, 0.8) and result.collapse_refused
    warning, over_budget = result.warnings
    assert over_budget == "review load 42.9% of labelled images is over the 10.0% budget"
    assert "the 10.0% review budget admits no threshold below block (the smallest review load one gives is 28.6% of the 7 labelled images)" in warning
    assert "review threshold kept at 0.65" in warning
    assert result.notes == ("the kept thresholds holds recall at 0.50, below the 1.00 target",)

    taken = calibrate_category("c", scores, positive, CalibrationTargets(precision=1.0, recall=1.0, max_review_rate=0.1, allow_collapse=True), 0.65, 0.95)
    assert taken.proposed.review == taken.proposed.block == 0.8 and taken.collapsed
    assert taken.notes == ("the review budget holds recall at 0.25, below the 1.00 target",)


def test_on_block_review_over_budget_at_block_alone_says_how_much_block_sends() -> None:
    scores, positive = LADDER
    targets = CalibrationTargets(precision=1.0, max_review_rate=0.1, allow_collapse=True)
    result = calibrate_category("c", scores, positive, targets, 0.05, 0.95, block_sends_to_review=True)
    assert result.proposed.review == result.proposed.block == 0.8
    assert result.why["review"] == (
        "= block: on_block is REVIEW and the block threshold alone sends 16.7% of labelled images to review, over the 10.0% budget"
    )
    assert result.proposed.review_load == pytest.approx(1 / 6) and result.proposed.block_load == 0.0


def test_targets_accept_the_closed_ends_of_their_intervals_and_are_immutable() -> None:
    import dataclasses

    targets = CalibrationTargets(precision=1.0, recall=1.0, max_review_rate=1.0)
    assert (targets.precision, targets.recall, targets.max_review_rate) == (1.0, 1.0, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        targets.precision = 0.5  # type: ignore[misc]


def test_scores_of_exactly_zero_and_one_are_valid() -> None:
    curve = precision_recall_curve(np.array([0.0, 1.0]), np.array([False, True]))
    assert list(curve.thresholds) == [0.0, 1.0] and list(curve.precision) == [0.5, 1.0]


@pytest.mark.parametrize(("current", "collapsed"), [((0.3, 0.7), False), ((0.5, 0.5), True)])
def test_a_category_without_positives_keeps_its_thresholds_with_a_reason_for_each(current: tuple[float, float], collapsed: bool) -> None:
    scores = evenly(0.0, 1.0, 10)
    result = calibrate_category("c", scores, np.zeros(10, bool), CalibrationTargets(), *current)
    assert result.why == {"review": "kept: no labelled positives", "block": "kept: no labelled positives"}
    assert result.collapsed is collapsed and result.collapse_refused is False and result.warnings == ()
    assert (result.positives, result.negatives) == (0, 10)


def test_the_second_lowest_score_as_a_threshold_stays_above_the_lowest() -> None:
    # Sorted scores 0.12 (negative), 0.15, 0.5 (negative), 0.9: recall 1.0 needs 0.15, and 0.1 would flag 0.12 too.
    scores, positive = labelled(np.array([0.15, 0.9]), np.array([0.12, 0.5]))
    result = calibrate_category("c", scores, positive, CalibrationTargets(precision=1.0, recall=1.0), 0.05, 0.95)
    assert (result.proposed.review, result.proposed.block) == (0.15, 0.9)


def test_a_recall_threshold_already_at_block_is_within_the_budget_and_says_so() -> None:
    scores, positive = LADDER  # recall 0.25 is met at block 0.8 alone
    targets = CalibrationTargets(precision=1.0, recall=0.25, max_review_rate=0.1, allow_collapse=True)
    result = calibrate_category("c", scores, positive, targets, 0.05, 0.95)
    assert result.proposed.review == result.proposed.block == 0.8
    assert result.why["review"] == "= block: the block threshold alone keeps recall >= 0.25; its review load is within the 10.0% budget"


def test_precision_recall_curves_are_immutable() -> None:
    import dataclasses

    curve = precision_recall_curve(*LADDER)
    with pytest.raises(dataclasses.FrozenInstanceError):
        curve.precision = curve.recall  # type: ignore[misc]


def test_a_budget_threshold_equal_to_the_recall_threshold_keeps_the_recall_reason() -> None:
    scores, positive = LADDER  # recall 0.5 -> 0.7; a 2/6 budget -> 0.7 as well
    result = calibrate_category("c", scores, positive, CalibrationTargets(precision=1.0, recall=0.5, max_review_rate=2 / 6), 0.05, 0.95)
    assert result.proposed.review == 0.7
    assert result.why["review"] == "highest threshold keeping recall >= 0.5 (2 of 4 positives at or above it); its review load is within the 33.3% budget"


# 20 images: positives 0.6 and 0.9, negatives 0.7 and 17 x 0.1. Proposed (recall 1.0): review 0.6,
# block 0.9, sending 0.6 and 0.7 to REVIEW: a review load of 2/20 = 10%.
TWENTY = labelled(np.array([0.6, 0.9]), np.array([0.7] + [0.1] * 17))


def test_a_review_load_rising_by_exactly_five_points_is_not_warned_and_by_more_is() -> None:
    """docs/policies.md: without a budget, a warning when a category's review load rises 'by more than 5 points'."""
    scores, positive = TWENTY
    targets = CalibrationTargets(precision=1.0, recall=1.0)
    five = calibrate_category("c", scores, positive, targets, 0.65, 0.8)  # current band [0.65, 0.8): one image, 5%
    assert (five.proposed.review, five.proposed.block) == (0.6, 0.9)
    assert (five.current.review_load, five.proposed.review_load) == (0.05, 0.1)
    assert five.warnings == ()
    ten = calibrate_category("c", scores, positive, targets, 0.75, 0.8)  # current band empty of images: 0%
    assert ten.warnings == ("review load rises from 0.0% to 10.0% of labelled images; pass --max-review-rate to bound it",)


def test_on_block_review_counts_images_above_block_in_the_smallest_load_below_block() -> None:
    # Positives 0.5 0.6 0.7 0.8 0.95, negatives 0.1 0.75 0.75: block 0.8, and two images (0.8, 0.95) at or above it,
    # all sent to REVIEW (on_block REVIEW). The least any threshold below block sends: 0.75 x2 + those two = 4 of 8.
    scores, positive = labelled(np.array([0.5, 0.6, 0.7, 0.8, 0.95]), np.array([0.1, 0.75, 0.75]))
    targets = CalibrationTargets(precision=1.0, max_review_rate=0.3, allow_collapse=True)
    result = calibrate_category("c", scores, positive, targets, 0.05, 0.99, block_sends_to_review=True)
    assert result.proposed.review == result.proposed.block == 0.8
    assert result.why["review"] == (
        "= block: the 30.0% review budget admits no threshold below block (the smallest review load one gives is 50.0% of the 8 labelled images)"
    )


def test_negative_targets_and_scores_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^precision must be in \(0, 1\], got -0.1$"):
        CalibrationTargets(precision=-0.1)
    with pytest.raises(ValueError, match="scores must be numbers in"):
        precision_recall_curve(np.array([-0.1, 0.5]), np.array([True, False]))


def test_a_proposal_that_lowers_the_thresholds_is_a_change() -> None:
    scores, positive = LADDER
    result = calibrate_category("c", scores, positive, CalibrationTargets(precision=1.0, recall=1.0), 0.9, 0.95)
    assert (result.proposed.review, result.proposed.block) == (0.5, 0.8) and result.changed


def test_an_empty_labelled_set_has_no_review_load() -> None:
    point = operating_point(np.array([]), np.array([], bool), 0.3, 0.7, block_sends_to_review=True)
    assert (point.review_load, point.block_load, point.precision_at_block, point.recall_at_review) == (0.0, 0.0, None, None)


# Positives 0.5 0.6 0.7 0.8 0.95, negatives 0.1 0.75 0.75: block 0.8 with two images (0.8, 0.95) at or above it.
ABOVE_BLOCK = labelled(np.array([0.5, 0.6, 0.7, 0.8, 0.95]), np.array([0.1, 0.75, 0.75]))


def test_a_recall_threshold_above_block_is_capped_at_block() -> None:
    scores, positive = ABOVE_BLOCK  # recall 0.2 keeps 1 of 5: the highest positive, 0.95, above block 0.8
    result = calibrate_category("c", scores, positive, CalibrationTargets(precision=1.0, recall=0.2, allow_collapse=True), 0.05, 0.99)
    assert result.proposed.review == result.proposed.block == 0.8
    assert result.why["review"] == "= block: the block threshold alone keeps recall >= 0.2"


def test_on_block_review_block_alone_over_budget_counts_every_image_at_or_above_block() -> None:
    scores, positive = ABOVE_BLOCK
    targets = CalibrationTargets(precision=1.0, max_review_rate=0.1, allow_collapse=True)
    result = calibrate_category("c", scores, positive, targets, 0.05, 0.99, block_sends_to_review=True)
    assert "the block threshold alone sends 25.0% of labelled images to review, over the 10.0% budget" in result.why["review"]


def test_on_block_review_block_alone_exactly_at_the_budget_is_within_it() -> None:
    scores, positive = LADDER  # block 0.8 alone sends 1 of 6 images to review
    targets = CalibrationTargets(precision=1.0, max_review_rate=1 / 6, allow_collapse=True)
    result = calibrate_category("c", scores, positive, targets, 0.05, 0.95, block_sends_to_review=True)
    assert not any("alone sends more than" in n for n in result.notes)
    assert result.why["review"].startswith("= block: the 16.7% review budget admits no threshold below block")
    assert result.proposed.review_load == pytest.approx(1 / 6) and not any("over the" in w for w in result.warnings)


def test_threshold_between_uses_as_many_decimals_as_needed() -> None:
    assert threshold_between(0.12345678901, 0.123456789012345) == 0.123456789012
    assert threshold_between(None, 0.987) == 0.9 and threshold_between(0.94, 0.987) == 0.98


def test_category_calibrations_are_immutable() -> None:
    import dataclasses

    result = calibrate_category("c", *LADDER, CalibrationTargets(precision=1.0, recall=1.0), 0.05, 0.95)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.proposed = result.current  # type: ignore[misc]
