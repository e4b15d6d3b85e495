"""Propose review and block thresholds for a category from labelled scores. numpy only.

For one category c, every labelled image is a positive (labelled c) or a negative
(labelled anything else, benign included). A threshold t flags the images whose
score is >= t, exactly as `decision.band_of` does. Over the distinct observed
scores as candidate thresholds:

  block   the lowest t with precision(t) >= P (and at least one positive flagged):
          the most recall that still meets the precision target. When no t reaches
          P the current block threshold is kept and a note says so.
  review  target recall R: the highest t with recall(t) >= R, i.e. the
          ceil(R * positives)-th highest positive score; never above block.
          Review budget X: the lowest t <= block whose review load is <= X, where
          the review load is the share of all labelled images the category sends to
          REVIEW: review <= score < block, plus score >= block when on_block is
          REVIEW. With both, the budget can only raise the recall threshold. With
          neither, R = 0.90.

A threshold t is written rounded down to the fewest decimal places that keep it
above the next lower observed score, so it flags exactly the images t flags while
reading like a hand-set value (0.4667 rather than 0.46671826).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal

import numpy as np

DEFAULT_RECALL = 0.90
DEFAULT_PRECISION = 0.95


@dataclass(frozen=True)
class CalibrationTargets:
    precision: float = DEFAULT_PRECISION  # block threshold
    recall: float | None = None  # review threshold; DEFAULT_RECALL when neither this nor a budget is given
    max_review_rate: float | None = None  # review budget, a share of all labelled images

    def __post_init__(self) -> None:
        for name, value, low_open in (("precision", self.precision, True), ("recall", self.recall, True), ("max_review_rate", self.max_review_rate, False)):
            if value is None:
                continue
            if not (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value}")

    @property
    def review_recall(self) -> float | None:
        if self.recall is None and self.max_review_rate is None:
            return DEFAULT_RECALL
        return self.recall


@dataclass(frozen=True)
class OperatingPoint:
    """What a pair of thresholds does to the labelled images of one category."""

    review: float
    block: float
    precision_at_block: float | None  # None when nothing scores at or above block
    recall_at_block: float | None  # None when there are no positives
    recall_at_review: float | None  # share of positives at or above review (reviewed or blocked)
    review_load: float  # share of all labelled images this category sends to REVIEW
    block_load: float  # share of all labelled images this category BLOCKs


@dataclass(frozen=True)
class CategoryCalibration:
    category_id: str
    positives: int
    negatives: int
    current: OperatingPoint
    proposed: OperatingPoint
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def changed(self) -> bool:
        return (self.proposed.review, self.proposed.block) != (self.current.review, self.current.block)


@dataclass(frozen=True)
class PrecisionRecallCurve:
    thresholds: np.ndarray  # distinct observed scores, ascending
    precision: np.ndarray
    recall: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray


def precision_recall_curve(scores: np.ndarray, positive: np.ndarray) -> PrecisionRecallCurve:
    """Precision and recall of `score >= t` at every distinct observed score t."""
    scores, positive = _checked(scores, positive)
    thresholds = np.unique(scores)
    positive_scores, negative_scores = np.sort(scores[positive]), np.sort(scores[~positive])
    true_positives = len(positive_scores) - np.searchsorted(positive_scores, thresholds, side="left")
    false_positives = len(negative_scores) - np.searchsorted(negative_scores, thresholds, side="left")
    flagged = true_positives + false_positives  # >= 1: the image scoring t is flagged
    precision = true_positives / flagged
    recall = true_positives / len(positive_scores) if len(positive_scores) else np.zeros_like(precision)
    return PrecisionRecallCurve(thresholds, precision, recall, true_positives, false_positives)


def operating_point(scores: np.ndarray, positive: np.ndarray, review: float, block: float, block_sends_to_review: bool) -> OperatingPoint:
    scores, positive = _checked(scores, positive)
    at_block, at_review = scores >= block, scores >= review
    positives = int(positive.sum())
    reviewed = (at_review & ~at_block) | (at_block if block_sends_to_review else np.zeros_like(at_block))
    return OperatingPoint(
        review=review,
        block=block,
        precision_at_block=float((at_block & positive).sum() / at_block.sum()) if at_block.any() else None,
        recall_at_block=float((at_block & positive).sum() / positives) if positives else None,
        recall_at_review=float((at_review & positive).sum() / positives) if positives else None,
        review_load=float(reviewed.mean()) if len(scores) else 0.0,
        block_load=float(at_block.mean()) if len(scores) and not block_sends_to_review else 0.0,
    )


def calibrate_category(
    category_id: str,
    scores: np.ndarray,
    positive: np.ndarray,
    targets: CalibrationTargets,
    current_review: float,
    current_block: float,
    block_sends_to_review: bool = False,
) -> CategoryCalibration:
    """Thresholds for one category by the rule in this module's docstring."""
    scores, positive = _checked(scores, positive)
    positives, negatives = int(positive.sum()), int((~positive).sum())
    current = operating_point(scores, positive, current_review, current_block, block_sends_to_review)
    if positives == 0 or negatives == 0:
        note = "no labelled positives: thresholds kept" if positives == 0 else "no labelled negatives: precision cannot be measured, thresholds kept"
        return CategoryCalibration(category_id, positives, negatives, current, current, (note,))

    curve = precision_recall_curve(scores, positive)
    notes: list[str] = []
    # A small tolerance so that e.g. 19/20 meets a 0.95 target despite float rounding.
    reaching = np.flatnonzero((curve.precision >= targets.precision - 1e-12) & (curve.true_positives >= 1))
    if len(reaching):
        block = _written(curve.thresholds, int(reaching[0]))
    else:
        block = current_block
        notes.append(f"no threshold reaches precision {targets.precision:.2f}: block threshold kept at {block}")

    recall = targets.review_recall
    review = block
    if recall is not None:
        # The k-th highest positive score keeps k positives at or above it.
        k = max(1, math.ceil(recall * positives - 1e-9))
        kth_highest = np.sort(scores[positive])[positives - k]
        review = min(_written(curve.thresholds, int(np.searchsorted(curve.thresholds, kth_highest))), block)
    if targets.max_review_rate is not None:
        within_budget = _lowest_review_within_budget(scores, curve.thresholds, block, targets.max_review_rate, block_sends_to_review)
        if within_budget is None:
            review = block
            notes.append(
                f"on_block is REVIEW and the block threshold alone sends more than {targets.max_review_rate:.1%} "
                "of images to review: review threshold set to the block threshold"
            )
        else:
            review = within_budget if recall is None else max(review, within_budget)
    proposed = operating_point(scores, positive, review, block, block_sends_to_review)
    if recall is not None and proposed.recall_at_review is not None and proposed.recall_at_review < recall - 1e-12:
        notes.append(f"the review budget holds recall at {proposed.recall_at_review:.2f}, below the {recall:.2f} target")
    return CategoryCalibration(category_id, positives, negatives, current, proposed, tuple(notes))


def threshold_between(below: float | None, at: float) -> float:
    """`at` rounded down to the fewest decimal places that keep it above `below`."""
    exact = Decimal(repr(float(at)))
    for places in range(1, 13):
        candidate = float(exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_FLOOR))
        if below is None or candidate > below:
            return candidate
    return float(at)


def _written(thresholds: np.ndarray, index: int) -> float:
    below = float(thresholds[index - 1]) if index > 0 else None
    return threshold_between(below, float(thresholds[index]))


def _lowest_review_within_budget(
    scores: np.ndarray, thresholds: np.ndarray, block: float, budget: float, block_sends_to_review: bool
) -> float | None:
    """The lowest review threshold <= block whose review load is <= budget; None when even block exceeds it."""
    above_block = float((scores >= block).mean()) if block_sends_to_review else 0.0
    if above_block > budget + 1e-12:
        return None
    candidates = thresholds[thresholds < block]
    # Load at t: images with t <= score < block (plus those above block, when they go to review).
    below_block = np.sort(scores[scores < block])
    loads = (len(below_block) - np.searchsorted(below_block, candidates, side="left")) / len(scores) + above_block
    # The load falls as t rises, so the first candidate within budget is the lowest.
    within = np.flatnonzero(loads <= budget + 1e-12)
    if not len(within):
        return block
    return _written(thresholds, int(np.searchsorted(thresholds, candidates[within[0]])))


def _checked(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if scores.ndim != 1 or scores.shape != positive.shape:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {scores.shape} and {positive.shape}")
    if not np.all(np.isfinite(scores)) or np.any((scores < 0) | (scores > 1)):
        raise ValueError("scores must be numbers in [0, 1]")
    return scores, positive
