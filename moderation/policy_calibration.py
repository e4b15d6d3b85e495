"""Calibrate a whole policy from scored, labelled images: the proposed next version.

Pure (no torch, no I/O): `moderation policy calibrate` scores the images and
writes the files; this module turns scores and labels into thresholds per category
(`moderation.calibration`), the proposed policy text (`moderation.policy.rewrite`)
and what both versions would do to the labelled set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np

from moderation.calibration import CalibrationTargets, CategoryCalibration, calibrate_category
from moderation.decision import decide
from moderation.policy.loader import load_policy_text
from moderation.policy.rewrite import next_version, rewrite_policy_text
from moderation.policy.schema import Action, Policy


@dataclass(frozen=True)
class PolicyCalibration:
    policy: Policy
    proposed: Policy
    proposed_text: str
    targets: CalibrationTargets
    model_id: str
    labels: tuple[frozenset[str], ...]  # per scored image
    scores: Mapping[str, np.ndarray]  # category id -> score of every scored image
    positives: Mapping[str, np.ndarray]  # category id -> which images are labelled with it
    categories: tuple[CategoryCalibration, ...]
    current_actions: Mapping[Action, float]  # share of labelled images per image action
    proposed_actions: Mapping[Action, float]


def calibrate_policy(
    policy: Policy,
    policy_text: str,
    labels: Sequence[frozenset[str]],
    scores: Sequence[Mapping[str, float]],
    targets: CalibrationTargets,
    model_id: str,
    today: date,
    version: str | None = None,
    source: str = "<policy>",
) -> PolicyCalibration:
    """Thresholds for every category and the policy text of the next version.

    The proposed version names `model_id` as the model it was calibrated for, and
    changes only the thresholds that moved, so its diff shows exactly what calibration did.
    """
    if len(labels) != len(scores) or not scores:
        raise ValueError(f"need one label set per scored image and at least one image, got {len(labels)} and {len(scores)}")
    by_category = {c.id: np.array([s[c.id] for s in scores], dtype=np.float64) for c in policy.categories}
    positives = {c.id: np.array([c.id in image_labels for image_labels in labels], dtype=bool) for c in policy.categories}
    calibrations = []
    for category in policy.categories:
        calibrations.append(
            calibrate_category(
                category.id,
                by_category[category.id],
                positives[category.id],
                targets,
                category.thresholds.review,
                category.thresholds.block,
                block_sends_to_review=category.on_block is Action.REVIEW,
            )
        )
    moved = {c.category_id: (c.proposed.review, c.proposed.block) for c in calibrations if c.changed}
    proposed_text = rewrite_policy_text(
        policy_text, version=version or next_version(policy.version, today), thresholds=moved, model=model_id, source=source
    )
    proposed = load_policy_text(proposed_text, source=f"{source} (proposed)")
    return PolicyCalibration(
        policy=policy,
        proposed=proposed,
        proposed_text=proposed_text,
        targets=targets,
        model_id=model_id,
        labels=tuple(labels),
        scores=by_category,
        positives=positives,
        categories=tuple(calibrations),
        current_actions=action_shares(policy, scores),
        proposed_actions=action_shares(proposed, scores),
    )


def action_shares(policy: Policy, scores: Sequence[Mapping[str, float]]) -> dict[Action, float]:
    """Share of images per image action (the most severe category action) under `policy`."""
    counts = Counter(decide(per_image, policy).action for per_image in scores)
    return {action: counts[action] / len(scores) for action in Action}
