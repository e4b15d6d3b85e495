"""Calibrate a whole policy from scored, labelled images: the proposed next version.

Pure (no torch, no I/O): `moderation policy calibrate` scores the images and
writes the files; this module turns scores and labels into thresholds per category
(`moderation.offline.calibration`), the proposed policy text (`moderation.policy.rewrite`)
and what both versions would do to the labelled set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np

from moderation.offline.calibration import REVIEW_LOAD_RISE, CalibrationTargets, CategoryCalibration, calibrate_category
from moderation.core.decision import decide
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
    model_written: str | None = None  # what `model:` was set to; None: left as it was
    model_note: str = ""  # why `model:` is what it is in the proposal
    warnings: tuple[str, ...] = ()  # policy-wide: the total review load

    @property
    def random_model(self) -> bool:
        return is_random_model(self.model_id)


def is_random_model(model_id: str) -> bool:
    """Random weights (`ViT-B-32/random`): thresholds calibrated on them are for no model at all."""
    return model_id.endswith("/random")


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

    The proposed version names `model_id` as the model it was calibrated for (unless
    `model_id` has random weights: then `model:` is left as it was, and `model_note`
    says so), and changes only the thresholds that moved, so its diff shows exactly
    what calibration did.
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
    if is_random_model(model_id):
        model_written = None
        kept = f"left as {policy.model!r}" if policy.model else "left unset"
        model_note = f"model: {kept}: {model_id} has random weights, a model no thresholds are calibrated for"
    else:
        model_written = model_id
        model_note = f"model: set to {model_id!r}, the model that scored the labelled images"
    proposed_text = rewrite_policy_text(
        policy_text, version=version or next_version(policy.version, today), thresholds=moved, model=model_written, source=source
    )
    proposed = load_policy_text(proposed_text, source=f"{source} (proposed)")
    current_actions, proposed_actions = action_shares(policy, scores), action_shares(proposed, scores)
    warnings = []
    before, after = current_actions[Action.REVIEW], proposed_actions[Action.REVIEW]
    budget = targets.max_review_rate
    if budget is not None and after > budget * len(policy.categories) + 1e-12:
        warnings.append(
            f"REVIEW takes {after:.1%} of labelled images in total, over the {budget:.1%} per-category budget times "
            f"{len(policy.categories)} categories"
        )
    elif after > before + REVIEW_LOAD_RISE:
        warnings.append(
            f"REVIEW rises from {before:.1%} to {after:.1%} of labelled images in total"
            + ("; pass --max-review-rate to bound it" if budget is None else "")
        )
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
        current_actions=current_actions,
        proposed_actions=proposed_actions,
        model_written=model_written,
        model_note=model_note,
        warnings=tuple(warnings),
    )


def action_shares(policy: Policy, scores: Sequence[Mapping[str, float]]) -> dict[Action, float]:
    """Share of images per image action (the most severe category action) under `policy`."""
    counts = Counter(decide(per_image, policy).action for per_image in scores)
    return {action: counts[action] / len(scores) for action in Action}


def calibration_document(result: PolicyCalibration) -> dict:
    """The calibration as plain data (`policy calibrate --json`): every threshold with its reason, loads and warnings."""
    targets = result.targets

    def point(p):  # noqa: ANN001, ANN202 - OperatingPoint
        return {
            "review": p.review,
            "block": p.block,
            "precision_at_review": p.precision_at_review,
            "precision_at_block": p.precision_at_block,
            "recall_at_review": p.recall_at_review,
            "recall_at_block": p.recall_at_block,
            "review_load": p.review_load,
            "block_load": p.block_load,
        }

    return {
        "policy_id": result.policy.id,
        "version": result.policy.version,
        "proposed_version": result.proposed.version,
        "scored_with": result.model_id,
        "random_weights": result.random_model,
        "model": {"written": result.model_written, "proposed": result.proposed.model, "why": result.model_note},
        "targets": {
            "precision": targets.precision,
            "recall": targets.review_recall,
            "max_review_rate": targets.max_review_rate,
            "allow_collapse": targets.allow_collapse,
        },
        "labelled_images": len(result.labels),
        "categories": [
            {
                "id": c.category_id,
                "positives": c.positives,
                "negatives": c.negatives,
                "changed": c.changed,
                "current": point(c.current),
                "proposed": point(c.proposed),
                "why": dict(c.why),
                "review_band_empty": c.collapsed,
                "collapse_refused": c.collapse_refused,
                "notes": list(c.notes),
                "warnings": list(c.warnings),
            }
            for c in result.categories
        ],
        "image_actions": {
            "current": {a.value: share for a, share in result.current_actions.items()},
            "proposed": {a.value: share for a, share in result.proposed_actions.items()},
        },
        "review_total": {
            "current": result.current_actions[Action.REVIEW],
            "proposed": result.proposed_actions[Action.REVIEW],
            "budget_per_category": targets.max_review_rate,
        },
        "warnings": list(result.warnings),
    }
