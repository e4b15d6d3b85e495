"""Decisions as a pure function of the signals' evidence and a policy. No torch, no I/O.

A category's score is the highest any signal's CategoryScores gives it; its band says
where that score fell:
    BELOW       score <  review threshold            -> ALLOW
    BORDERLINE  review <= score < block threshold     -> REVIEW
    ABOVE       score >= block threshold              -> the category's on_block action
A ForcedAction (a bank match) raises the category's action to what it forces, citing its
clause, and is never weaker than the score's action; nothing later lowers it.
The image's action is the most severe of its categories' actions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from moderation.core.evidence import CategoryScores, Evidence, ForcedAction
from moderation.policy.schema import Action, Band, Category, ExplainerRole, Policy


@dataclass(frozen=True, slots=True)
class CategoryDecision:
    category_id: str
    score: float
    review_threshold: float
    block_threshold: float
    band: Band
    clause_id: str
    action: Action
    forced_by: str = ""  # the signal whose ForcedAction set this action ("" when the score did)


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    policy_id: str
    policy_version: str
    categories: tuple[CategoryDecision, ...]
    reasons: tuple[str, ...]

    @property
    def borderline(self) -> tuple[CategoryDecision, ...]:
        return tuple(c for c in self.categories if c.band is Band.BORDERLINE)

    @property
    def cited_clauses(self) -> tuple[str, ...]:
        """Clause ids of the categories that made the action what it is."""
        return tuple(c.clause_id for c in self.categories if c.action is self.action and c.action is not Action.ALLOW)


def band_of(score: float, category: Category) -> Band:
    if score >= category.thresholds.block:
        return Band.ABOVE
    if score >= category.thresholds.review:
        return Band.BORDERLINE
    return Band.BELOW


def decide_category(score: float, category: Category) -> CategoryDecision:
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise ValueError(f"score for category {category.id!r} must be a number in [0, 1], got {score!r}")
    band = band_of(score, category)
    action = {Band.BELOW: Action.ALLOW, Band.BORDERLINE: Action.REVIEW, Band.ABOVE: category.on_block}[band]
    return CategoryDecision(
        category_id=category.id,
        score=score,
        review_threshold=category.thresholds.review,
        block_threshold=category.thresholds.block,
        band=band,
        clause_id=category.clause.id,
        action=action,
    )


def combined_scores(evidence: Iterable[Evidence]) -> dict[str, float]:
    """Per category, the highest score any signal gave it."""
    scores: dict[str, float] = {}
    for item in evidence:
        if isinstance(item, CategoryScores):
            for category_id, score in item.scores.items():
                scores[category_id] = max(scores.get(category_id, score), score)
    return scores


def decide(evidence: Mapping[str, float] | Iterable[Evidence], policy: Policy) -> Decision:
    """One decision per image from its evidence; every policy category must have a score.

    A plain mapping of scores is read as one signal's CategoryScores (re-scoring and
    calibration, which only have scores).
    """
    items: tuple[Evidence, ...] = (CategoryScores("scores", evidence),) if isinstance(evidence, Mapping) else tuple(evidence)
    scores = combined_scores(items)
    missing = [c.id for c in policy.categories if c.id not in scores]
    if missing:
        raise ValueError(f"no score for categories {missing} of policy {policy.id!r}")
    forced = _most_severe_forced(items, policy)
    categories = tuple(_apply_forced(decide_category(float(scores[c.id]), c), forced.get(c.id)) for c in policy.categories)
    action = max((c.action for c in categories), key=lambda a: a.severity, default=Action.ALLOW)
    return Decision(
        action=action,
        policy_id=policy.id,
        policy_version=policy.version,
        categories=categories,
        reasons=tuple(forced[c.category_id].reason for c in categories if c.forced_by) + _reasons(categories, action),
    )


def _most_severe_forced(evidence: Iterable[Evidence], policy: Policy) -> dict[str, ForcedAction]:
    known = {c.id for c in policy.categories}
    forced: dict[str, ForcedAction] = {}
    for item in evidence:
        if isinstance(item, ForcedAction):
            if item.category_id not in known:
                raise ValueError(f"signal {item.signal!r} forced category {item.category_id!r}, which policy {policy.id!r} does not have")
            current = forced.get(item.category_id)
            if current is None or item.action.severity > current.action.severity:
                forced[item.category_id] = item
    return forced


def _apply_forced(category: CategoryDecision, forced: ForcedAction | None) -> CategoryDecision:
    """The forced action where it is at least as severe as the score's: a tie pins it, so no verdict lowers it."""
    if forced is None or forced.action.severity < category.action.severity:
        return category
    return replace(category, action=forced.action, clause_id=forced.clause_id, forced_by=forced.signal)


def _reasons(categories: tuple[CategoryDecision, ...], action: Action) -> tuple[str, ...]:
    # Thresholds as the policy holds them (`:g`: calibrate writes up to 5 decimals), never rounded: a
    # reason must not read "scored 0.268, between its review threshold 0.26" when the threshold is 0.264.
    reasons = []
    for c in sorted(categories, key=lambda c: (-c.action.severity, -c.score)):
        if c.forced_by:
            continue  # the forcing signal's own sentence says why
        if c.band is Band.ABOVE:
            reasons.append(
                f"{c.category_id} scored {c.score:.3f}, at or above its block threshold {c.block_threshold:g}: "
                f"{c.action.value} under clause {c.clause_id}."
            )
        elif c.band is Band.BORDERLINE:
            reasons.append(
                f"{c.category_id} scored {c.score:.3f}, between its review threshold {c.review_threshold:g} "
                f"and block threshold {c.block_threshold:g}: REVIEW under clause {c.clause_id}."
            )
    if action is Action.ALLOW:
        reasons.append("Every category scored below its review threshold.")
    return tuple(reasons)


def clip_leans_violating(category: CategoryDecision) -> bool:
    """CLIP's leaning on a category: at or above the middle of its borderline band."""
    return category.score >= (category.review_threshold + category.block_threshold) / 2


def apply_verdict(decision: Decision, policy: Policy, category_id: str, violates: bool, clause_id: str) -> tuple[Decision, bool]:
    """Let the explainer's verdict settle a borderline case where the policy makes it decisive.

    Returns the (possibly) new decision and whether the category's action changed.
    Advisory categories, and categories that were not borderline, keep their action:
    the rationale is attached for the human reviewer only. The verdict can never
    lower a category that crossed its block threshold.
    """
    target = next((c for c in decision.categories if c.category_id == category_id), None)
    if target is None or target.band is not Band.BORDERLINE:
        return decision, False
    if policy.category(category_id).explainer is not ExplainerRole.DECISIVE:
        return decision, False
    new_action = policy.category(category_id).on_block if violates else Action.ALLOW
    if new_action is target.action:
        return decision, False
    if target.forced_by and new_action.severity < target.action.severity:
        return decision, False  # a bank match outranks the explainer's reading
    categories = tuple(replace(c, action=new_action) if c.category_id == category_id else c for c in decision.categories)
    action = max((c.action for c in categories), key=lambda a: a.severity, default=Action.ALLOW)
    verdict = "violates" if violates else "does not violate"
    # CLIP's reasons stay as they were (they say what CLIP saw); the verdict is added.
    reasons = (
        *decision.reasons,
        f"The explainer found that the image {verdict} clause {clause_id}; the policy makes it decisive for "
        f"{category_id}, so that category's action is {new_action.value}.",
    )
    return replace(decision, action=action, categories=categories, reasons=reasons), True


def review_at_least(decision: Decision, reason: str) -> Decision:
    """The decision, raised to REVIEW if it was ALLOW (an escalation that could not answer)."""
    if decision.action.severity >= Action.REVIEW.severity:
        return replace(decision, reasons=(*decision.reasons, reason))
    return replace(decision, action=Action.REVIEW, reasons=(*decision.reasons, reason + " Sent to human review."))
