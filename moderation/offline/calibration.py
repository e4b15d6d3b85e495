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

A proposal that would empty a REVIEW band the current version has (review >=
block, so nothing is ever BORDERLINE: no human review below block and no
escalation) is not taken unless `allow_collapse`: the category keeps its current
review threshold (and its current block threshold too when the proposed block
falls to or below it), with a warning saying what forced the collapse. Every
threshold comes with the reason it was chosen (`why`), and warnings name review
loads above the budget, or, without a budget, review loads that rise by more than
REVIEW_LOAD_RISE.

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
# Without a review budget, a category (or the whole labelled set) whose review load
# rises by more than this share of labelled images gets a warning.
REVIEW_LOAD_RISE = 0.05


@dataclass(frozen=True)
class CalibrationTargets:
    precision: float = DEFAULT_PRECISION  # block threshold
    recall: float | None = None  # review threshold; DEFAULT_RECALL when neither this nor a budget is given
    max_review_rate: float | None = None  # review budget, a share of all labelled images
    allow_collapse: bool = False  # take a proposal that empties the REVIEW band (review >= block)

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
    precision_at_review: float | None  # of everything at or above review (reviewed or blocked); None when nothing is
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
    notes: tuple[str, ...] = field(default_factory=tuple)  # facts worth reading (a missed target, a kept threshold)
    why: dict[str, str] = field(default_factory=dict)  # "review" / "block" -> why the proposed threshold is what it is
    warnings: tuple[str, ...] = field(default_factory=tuple)  # an emptied REVIEW band, a review load over budget
    collapsed: bool = False  # the proposed REVIEW band is empty (review >= block)
    collapse_refused: bool = False  # the calibration wanted an empty band; current thresholds kept instead

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
        precision_at_review=float((at_review & positive).sum() / at_review.sum()) if at_review.any() else None,
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
    """Thresholds for one category by the rule in this module's docstring, each with its reason."""
    scores, positive = _checked(scores, positive)
    positives, negatives = int(positive.sum()), int((~positive).sum())
    current = operating_point(scores, positive, current_review, current_block, block_sends_to_review)
    if positives == 0 or negatives == 0:
        note = "no labelled positives: thresholds kept" if positives == 0 else "no labelled negatives: precision cannot be measured, thresholds kept"
        why = {"review": f"kept: {note.split(':')[0]}", "block": f"kept: {note.split(':')[0]}"}
        return CategoryCalibration(category_id, positives, negatives, current, current, (note,), why, collapsed=current_review >= current_block)

    curve = precision_recall_curve(scores, positive)
    notes: list[str] = []
    warnings: list[str] = []
    why: dict[str, str] = {}
    # A small tolerance so that e.g. 19/20 meets a 0.95 target despite float rounding.
    reaching = np.flatnonzero((curve.precision >= targets.precision - 1e-12) & (curve.true_positives >= 1))
    if len(reaching):
        first = int(reaching[0])
        block = _written(curve.thresholds, first)
        why["block"] = (
            f"lowest threshold with precision >= {targets.precision:g} "
            f"(precision {curve.precision[first]:.3f}, recall {curve.recall[first]:.2f} at it)"
        )
    else:
        block = current_block
        notes.append(f"no threshold reaches precision {targets.precision:.2f}: block threshold kept at {block}")
        why["block"] = f"kept: no threshold reaches precision {targets.precision:g} (the best is {float(curve.precision.max()):.3f})"

    recall = targets.review_recall
    review = block
    budget_emptied_band = False
    if recall is not None:
        # The k-th highest positive score keeps k positives at or above it.
        k = max(1, math.ceil(recall * positives - 1e-9))
        kth_highest = np.sort(scores[positive])[positives - k]
        recall_review = _written(curve.thresholds, int(np.searchsorted(curve.thresholds, kth_highest)))
        review = min(recall_review, block)
        if recall_review >= block:
            why["review"] = f"= block: the block threshold alone keeps recall >= {recall:g}"
        else:
            why["review"] = f"highest threshold keeping recall >= {recall:g} ({k} of {positives} positives at or above it)"
    if targets.max_review_rate is not None:
        budget = targets.max_review_rate
        within_budget = _lowest_review_within_budget(scores, curve.thresholds, block, budget, block_sends_to_review)
        if within_budget is None:
            review, budget_emptied_band = block, True
            notes.append(
                f"on_block is REVIEW and the block threshold alone sends more than {budget:.1%} "
                "of images to review: review threshold set to the block threshold"
            )
            why["review"] = (
                f"= block: on_block is REVIEW and the block threshold alone sends "
                f"{float((scores >= block).mean()):.1%} of labelled images to review, over the {budget:.1%} budget"
            )
        elif within_budget >= block and (recall is None or review < block):
            review, budget_emptied_band = block, True
            smallest = _smallest_review_load_below_block(scores, block, block_sends_to_review)
            why["review"] = (
                f"= block: the {budget:.1%} review budget admits no threshold below block (the smallest review load one "
                f"gives is {smallest:.1%} of the {len(scores)} labelled images)"
            )
        elif recall is None or within_budget > review:
            raised = recall is not None
            review = within_budget
            why["review"] = f"lowest threshold with review load <= {budget:.1%} (the review budget)" + (
                f"; the budget raised it above the recall-{recall:g} threshold" if raised else ""
            )
        else:
            why["review"] += f"; its review load is within the {budget:.1%} budget"
    proposed = operating_point(scores, positive, review, block, block_sends_to_review)

    collapsed = proposed.review >= proposed.block
    collapse_refused = False
    if collapsed and current_review < current_block:
        cause = why["review"].removeprefix("= block: ")
        if targets.allow_collapse:
            warnings.append(
                f"REVIEW band EMPTIED (review {current_review:g} -> {review:g} = block {block:g}): {cause}. Nothing in this "
                "category will be BORDERLINE: no human review below block and no escalation. Taken because of --allow-collapse."
            )
        else:
            wanted = (review, block)
            if current_review < block:
                review = current_review
                kept = f"review threshold kept at {current_review:g}"
            else:
                review, block = current_review, current_block
                kept = f"both thresholds kept ({current_review:g}, {current_block:g}): the proposed block is not above the current review"
                why["block"] = f"kept: the proposed {wanted[1]:g} would leave no REVIEW band below it (--allow-collapse takes it)"
            why["review"] = f"kept: the proposed {wanted[0]:g} (= block) would empty the REVIEW band: {cause} (--allow-collapse takes it)"
            warnings.append(
                f"the proposal would EMPTY the REVIEW band (review {current_review:g} -> {wanted[0]:g} = block {wanted[1]:g}): "
                f"{cause}. Not taken: {kept}. Raise --max-review-rate, add labelled images, or pass --allow-collapse."
            )
            proposed = operating_point(scores, positive, review, block, block_sends_to_review)
            collapsed, collapse_refused = False, True
    elif collapsed:
        notes.append("the REVIEW band stays empty (review >= block), as in the current version")

    if recall is not None and proposed.recall_at_review is not None and proposed.recall_at_review < recall - 1e-12:
        holder = "the review budget" if targets.max_review_rate is not None and not collapse_refused else "the kept thresholds"
        notes.append(f"{holder} holds recall at {proposed.recall_at_review:.2f}, below the {recall:.2f} target")
    if targets.max_review_rate is not None and proposed.review_load > targets.max_review_rate + 1e-12:
        warnings.append(
            f"review load {proposed.review_load:.1%} of labelled images is over the {targets.max_review_rate:.1%} budget"
            + (" (on_block is REVIEW: everything at or above block is reviewed)" if budget_emptied_band and not collapse_refused else "")
        )
    elif targets.max_review_rate is None and proposed.review_load > current.review_load + REVIEW_LOAD_RISE:
        warnings.append(
            f"review load rises from {current.review_load:.1%} to {proposed.review_load:.1%} of labelled images; "
            "pass --max-review-rate to bound it"
        )
    return CategoryCalibration(
        category_id, positives, negatives, current, proposed, tuple(notes), why, tuple(warnings), collapsed, collapse_refused
    )


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


def _smallest_review_load_below_block(scores: np.ndarray, block: float, block_sends_to_review: bool) -> float:
    """The review load of the highest observed score below block as review threshold: the least any such threshold sends."""
    above_block = float((scores >= block).mean()) if block_sends_to_review else 0.0
    below = scores[scores < block]
    if not len(below):
        return above_block
    return float((below == below.max()).sum()) / len(scores) + above_block


def _checked(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if scores.ndim != 1 or scores.shape != positive.shape:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {scores.shape} and {positive.shape}")
    if not np.all(np.isfinite(scores)) or np.any((scores < 0) | (scores > 1)):
        raise ValueError("scores must be numbers in [0, 1]")
    return scores, positive
