"""The calibration in an analyst's words: what each threshold does, and what to read before taking it.

calibration.py says why each threshold is what it is in the rule's own terms
(precision, recall, load, budget); the JSON document keeps those. The people who
take a proposal are trust-and-safety analysts: this module says the same in
numbers of images ("9 of 10 labelled weapons images score at or above it"), groups
the findings that hit several categories into one ("the review budget is smaller
than one image" once, not once per category), and gives each a way forward with a
command that works on this labelled set (issue 22).

Words used, once: "right" (when flagged) is the share of the images at or above a
threshold that really are in the category (precision); "caught" is the share of the
category's labelled images at or above it (recall); "to review" is the share of
all labelled images the category sends to REVIEW.

Pure: numpy and the calibration results, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from moderation.offline.calibration import (
    DEFAULT_PRECISION,
    CalibrationTargets,
    CategoryCalibration,
    _smallest_review_load_below_block,
)
from moderation.offline.policy_calibration import PolicyCalibration
from moderation.policy.schema import Action

WORDS = (
    "right: of the images at or above the threshold, the share really in the category (precision); "
    "caught: of the category's labelled images, the share at or above it (recall); "
    "to review: of all labelled images, the share the category sends to REVIEW"
)


@dataclass(frozen=True)
class Finding:
    """One thing to read before taking the proposal, for one or more categories."""

    headline: str  # what happened, in plain words, naming the categories
    todo: str  # what to do about it
    example: str = ""  # a command that does it on this labelled set ("" when there is none to run)
    categories: tuple[str, ...] = ()


def threshold_sentences(result: PolicyCalibration, calibration: CategoryCalibration) -> list[str]:
    """What the proposed review and block thresholds of one category do to the labelled images, counted."""
    cid = calibration.category_id
    current, proposed = calibration.current, calibration.proposed
    scores, positive = result.scores[cid], result.positives[cid]
    total = len(scores)

    def moved(name: str) -> str:
        before, after = getattr(current, name), getattr(proposed, name)
        return f"{before:g} (unchanged)" if before == after else f"{before:g} -> {after:g}"

    if calibration.positives == 0:
        return [f"{cid}: no labelled {cid} images, so its thresholds stay ({proposed.review:g}, {proposed.block:g})"]
    if calibration.negatives == 0:
        return [f"{cid}: every labelled image is {cid}: nothing to tell it from, so its thresholds stay"]
    caught = int((positive & (scores >= proposed.review)).sum())
    at_block = scores >= proposed.block
    right = int((at_block & positive).sum())
    review = (
        f"{cid} review at {moved('review')}: {caught} of {calibration.positives} labelled {cid} images score at or "
        f"above it; {proposed.review_load:.1%} of all {total} labelled images go to review for {cid}"
    )
    if at_block.any():
        outcome = "go to review" if result.policy.category(cid).on_block is Action.REVIEW else "are blocked"
        block = (
            f"{cid} block at {moved('block')}: {int(at_block.sum())} labelled images {outcome} for {cid}, "
            f"{right} of them really {cid}"
        )
    else:
        block = f"{cid} block at {moved('block')}: no labelled image scores that high"
    return [review, block]


def findings(result: PolicyCalibration, command: str) -> list[Finding]:
    """Everything to read before taking the proposal, grouped: one finding per kind, naming its categories.

    `command` is the calibrate command up to its targets (e.g. "moderation policy calibrate
    policies/default.yaml --labels labels/"): each example adds this run's targets with the
    one it changes, so it can be pasted as it is.
    """
    targets = result.targets
    total = len(result.labels)
    one_image = 1 / total
    budget = targets.max_review_rate
    found: list[Finding] = []
    explained: set[str] = set()

    # The budget below one image: every category with a review band loses it, for one reason.
    lost = [c for c in result.categories if c.collapse_refused or (c.collapsed and c.current.review < c.current.block)]
    if budget is not None and budget < one_image - 1e-12 and lost:
        names = tuple(c.category_id for c in lost)
        wanted = _budget_that_keeps_a_band(result, names)
        need = math.ceil(1 / budget) if budget > 0 else None
        found.append(
            Finding(
                f"The review budget, {budget:.1%} of the labelled images per category, is less than one image: with "
                f"{total} labelled images, one image is {one_image:.1%}. No review threshold below block fits it, so "
                f"{_names(names)} would lose their review step (nothing between allowed and blocked for a person to "
                f"look at). {_kept_or_taken(lost)}",
                (f"Label more images (at least {need} for a {budget:.1%} budget), or allow" if need else "Allow")
                + f" at least {wanted:.0%} per category with these {total} images.",
                _example(command, targets, max_review_rate=wanted),
                names,
            )
        )
        explained |= set(names)
        # The other examples run with a budget that works, not with the one that cannot.
        targets = dataclasses.replace(targets, max_review_rate=wanted)

    refused = [c for c in result.categories if c.collapse_refused and c.category_id not in explained]
    if refused:
        names = tuple(c.category_id for c in refused)
        wanted = _budget_that_keeps_a_band(result, names)
        found.append(
            Finding(
                f"The proposal would take away the review step of {_names(names)} (review threshold = block threshold: "
                "every image allowed or blocked, none left for a person to look at). Their current review thresholds "
                "were kept instead.",
                f"To keep a review step, allow more images to review (at least {wanted:.0%} per category here) or label "
                "more images; if no review step is what you want, take it with --allow-collapse.",
                _example(command, targets, max_review_rate=wanted),
                names,
            )
        )
        explained |= set(names)

    taken = [c for c in result.categories if c.collapsed and c.current.review < c.current.block and not c.collapse_refused]
    taken = [c for c in taken if c.category_id not in explained]
    if taken:
        names = tuple(c.category_id for c in taken)
        found.append(
            Finding(
                f"{_names(names)} lose their review step in the proposal (taken because of --allow-collapse): no image "
                "of these categories will be borderline, so none goes to a person or to the explainer below block.",
                "Run without --allow-collapse to keep their current review thresholds.",
                _example(command, targets, allow_collapse=False),
                names,
            )
        )
        explained |= set(names)

    if budget is not None:
        over = [c for c in result.categories if c.proposed.review_load > budget + 1e-12 and c.category_id not in explained]
        if over:
            listed = ", ".join(f"{c.category_id} {c.proposed.review_load:.1%}" for c in over)
            on_block_review = [c.category_id for c in over if result.policy.category(c.category_id).on_block is Action.REVIEW]
            found.append(
                Finding(
                    f"Over the {budget:.1%} review budget even so: {listed}."
                    + (
                        f" ({_names(tuple(on_block_review))} send everything at or above block to review: on_block is REVIEW.)"
                        if on_block_review
                        else ""
                    ),
                    "Expect that many images in review, or raise the budget"
                    + (
                        "; for a category without labelled images, add some so its thresholds can be calibrated"
                        if any(c.positives == 0 for c in over)
                        else ""
                    )
                    + ("; or change on_block to BLOCK where a person need not see every certain case." if on_block_review else "."),
                    _example(command, targets, max_review_rate=math.ceil(max(c.proposed.review_load for c in over) * 100) / 100),
                    tuple(c.category_id for c in over),
                )
            )
    else:
        rising = [c for c in result.categories if any(w.startswith("review load rises") for w in c.warnings)]
        if rising:
            listed = ", ".join(f"{c.category_id} {c.current.review_load:.1%} -> {c.proposed.review_load:.1%}" for c in rising)
            highest = max(c.current.review_load for c in rising)
            suggestion = max(math.ceil(max(highest, one_image) * 100) / 100, 0.01)
            found.append(
                Finding(
                    f"More images would go to review than today: {listed} of the labelled images.",
                    "Set a review budget per category; calibration then keeps each category's review share within it.",
                    _example(command, targets, max_review_rate=suggestion),
                    tuple(c.category_id for c in rising),
                )
            )
    for warning in result.warnings:  # policy-wide: REVIEW in total
        found.append(
            Finding(
                "Across categories: " + _plain_total(warning),
                "Read the image actions line: it counts each image once, at its most severe category; the labelled set's "
                "mix is not your traffic's (`moderation policy diff` on stored traffic forecasts the queue).",
            )
        )

    unmet = [c for c in result.categories if c.why.get("block", "").startswith("kept: no threshold reaches precision")]
    if unmet:
        listed = ", ".join(f"{c.category_id} (at best {_best_right(result, c):.0%})" for c in unmet)
        lower = max(0.05, math.floor(min(_best_right(result, c) for c in unmet) * 20) / 20)
        found.append(
            Finding(
                f"At no score are the flagged images right often enough: the target is {targets.precision:.0%} right; "
                f"{listed}. Their block thresholds were kept.",
                "Add labelled images of these categories and of the look-alikes they are confused with, or sharpen their "
                "prompts and contrast prompts; a lower target blocks more wrongly.",
                _example(command, targets, precision=lower),
                tuple(c.category_id for c in unmet),
            )
        )
    recall = targets.review_recall
    short = [
        c
        for c in result.categories
        if recall is not None and c.proposed.recall_at_review is not None and c.proposed.recall_at_review < recall - 1e-12
    ]
    if short:
        listed = ", ".join(f"{c.category_id} {c.proposed.recall_at_review:.0%}" for c in short)
        found.append(
            Finding(
                f"Fewer labelled images caught at review than the {recall:.0%} target: {listed} (kept down by the review "
                "budget or by kept thresholds).",
                "More of these go unreviewed: allow a larger review budget if a person should see them.",
                "",
                tuple(c.category_id for c in short),
            )
        )
    empty = [c.category_id for c in result.categories if c.positives == 0]
    if empty:
        found.append(
            Finding(
                f"No labelled images of {_names(tuple(empty))}: their thresholds were kept.",
                f"Add a folder per category in the labelled set, named by its id (e.g. {empty[0]}/), with examples.",
                "",
                tuple(empty),
            )
        )
    only = [c.category_id for c in result.categories if c.negatives == 0 and c.positives > 0]
    if only:
        found.append(
            Finding(
                f"Every labelled image is {_names(tuple(only))}: nothing to tell them from, thresholds kept.",
                "Add benign images (a benign/ folder) and images of the other categories.",
                "",
                tuple(only),
            )
        )
    return found


def _example(command: str, targets: CalibrationTargets, **changed: object) -> str:
    """`command` with this run's targets, `changed` applied: a command line that runs as shown."""
    values = {
        "precision": targets.precision, "recall": targets.recall, "max_review_rate": targets.max_review_rate,
        "allow_collapse": targets.allow_collapse, **changed,
    }  # fmt: skip
    parts = [command]
    if values["precision"] != DEFAULT_PRECISION:
        parts.append(f"--target-precision {values['precision']:g}")
    if values["recall"] is not None:
        parts.append(f"--target-recall {values['recall']:g}")
    if values["max_review_rate"] is not None:
        parts.append(f"--max-review-rate {values['max_review_rate']:g}")
    if values["allow_collapse"]:
        parts.append("--allow-collapse")
    return " ".join(parts)


def _names(names: tuple[str, ...]) -> str:
    if len(names) == 1:
        return names[0]
    return f"{', '.join(names[:-1])} and {names[-1]}" if len(names) < 8 else f"all {len(names)} categories ({', '.join(names)})"


def _kept_or_taken(lost: list[CategoryCalibration]) -> str:
    if all(c.collapse_refused for c in lost):
        return "Their current review thresholds were kept instead."
    if not any(c.collapse_refused for c in lost):
        return "Taken because of --allow-collapse."
    return "Where --allow-collapse was not given, their current review thresholds were kept."


def _budget_that_keeps_a_band(result: PolicyCalibration, names: tuple[str, ...]) -> float:
    """The smallest budget, in whole percent, under which each of these categories can keep a threshold below block."""
    needed = 1 / len(result.labels)
    for c in (next(c for c in result.categories if c.category_id == name) for name in names):
        on_review = result.policy.category(c.category_id).on_block is Action.REVIEW
        needed = max(needed, _smallest_review_load_below_block(result.scores[c.category_id], c.proposed.block, on_review))
    return min(1.0, math.ceil(needed * 100 - 1e-9) / 100)


def _best_right(result: PolicyCalibration, c: CategoryCalibration) -> float:
    scores, positive = result.scores[c.category_id], result.positives[c.category_id]
    best = 0.0
    for t in np.unique(scores):
        flagged = scores >= t
        best = max(best, float((flagged & positive).sum() / flagged.sum()))
    return best


def _plain_total(warning: str) -> str:
    """A policy-wide warning of policy_calibration.py without its option name."""
    return warning.replace(" of labelled images in total", " of all labelled images").split("; pass --max-review-rate")[0] + "."
