from __future__ import annotations

import math

import pytest

from moderation.core.decision import Band, decide, decide_category
from moderation.policy import Action
from tests.policies import TWO_CATEGORIES

POLICY = TWO_CATEGORIES


@pytest.mark.parametrize(
    ("score", "band", "action"),
    [
        (0.0, Band.BELOW, Action.ALLOW),
        (0.2999, Band.BELOW, Action.ALLOW),
        (0.3, Band.BORDERLINE, Action.REVIEW),
        (0.5999, Band.BORDERLINE, Action.REVIEW),
        (0.6, Band.ABOVE, Action.BLOCK),
        (1.0, Band.ABOVE, Action.BLOCK),
    ],
)
def test_bands_are_half_open_at_thresholds(score: float, band: Band, action: Action) -> None:
    result = decide_category(score, POLICY.categories[0])
    assert (result.band, result.action, result.clause_id) == (band, action, "V-2")


def test_on_block_review_caps_the_category_at_review() -> None:
    assert decide_category(0.95, POLICY.categories[1]).action is Action.REVIEW


def test_overall_action_is_the_most_severe() -> None:
    decision = decide({"violence": 0.7, "weapons": 0.5}, POLICY)
    assert decision.action is Action.BLOCK
    assert (decision.policy_id, decision.policy_version) == ("p", "7")
    assert decision.cited_clauses == ("V-2",)
    assert [c.category_id for c in decision.borderline] == ["weapons"]
    assert decision.reasons[0].startswith("violence scored 0.700, at or above its block threshold 0.6: BLOCK under clause V-2")


def test_reasons_print_calibrated_thresholds_as_the_policy_holds_them() -> None:
    """calibrate writes thresholds of up to 5 decimals: a reason must show the one that decided, not a rounding."""
    category = POLICY.categories[0].model_copy(update={"thresholds": POLICY.categories[0].thresholds.model_copy(update={"review": 0.26412})})
    policy = POLICY.model_copy(update={"categories": [category, POLICY.categories[1]]})
    decision = decide({"violence": 0.268, "weapons": 0.1}, policy)
    assert decision.reasons[0] == (
        "violence scored 0.268, between its review threshold 0.26412 and block threshold 0.6: REVIEW under clause V-2."
    )


def test_all_below_allows_with_a_reason() -> None:
    decision = decide({"violence": 0.1, "weapons": 0.1}, POLICY)
    assert decision.action is Action.ALLOW
    assert decision.cited_clauses == ()
    assert decision.reasons == ("Every category scored below its review threshold.",)


def test_review_only_cites_review_clauses() -> None:
    decision = decide({"violence": 0.35, "weapons": 0.9}, POLICY)
    assert decision.action is Action.REVIEW
    assert set(decision.cited_clauses) == {"V-2", "W-1"}


def test_every_category_needs_a_score() -> None:
    with pytest.raises(ValueError, match="no score for categories"):
        decide({"violence": 0.1}, POLICY)


@pytest.mark.parametrize("bad", [math.nan, -0.1, 1.1, math.inf])
def test_scores_outside_unit_interval_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="must be a number in"):
        decide({"violence": bad, "weapons": 0.1}, POLICY)


# Validated like a YAML file would be: "decisive" becomes ExplainerRole.DECISIVE.
DECISIVE = type(POLICY).model_validate(
    {
        **POLICY.model_dump(),
        "categories": [{**POLICY.categories[0].model_dump(), "explainer": "decisive"}, POLICY.categories[1].model_dump()],
    }
)


def test_decisive_verdict_settles_a_borderline_case_both_ways() -> None:
    from moderation.core.decision import apply_verdict

    borderline = decide({"violence": 0.45, "weapons": 0.1}, DECISIVE)
    assert borderline.action is Action.REVIEW
    blocked, changed = apply_verdict(borderline, DECISIVE, "violence", violates=True, clause_id="V-2")
    assert changed and blocked.action is Action.BLOCK and "decisive" in blocked.reasons[-1]
    allowed, changed = apply_verdict(borderline, DECISIVE, "violence", violates=False, clause_id="V-2")
    assert changed and allowed.action is Action.ALLOW


def test_advisory_and_non_borderline_categories_keep_their_action() -> None:
    from moderation.core.decision import apply_verdict

    advisory = decide({"violence": 0.45, "weapons": 0.5}, DECISIVE)
    same, changed = apply_verdict(advisory, DECISIVE, "weapons", violates=False, clause_id="W-1")
    assert not changed and same is advisory
    above = decide({"violence": 0.9, "weapons": 0.1}, DECISIVE)
    same, changed = apply_verdict(above, DECISIVE, "violence", violates=False, clause_id="V-2")
    assert not changed and same.action is Action.BLOCK, "a verdict never lowers a category past its block threshold"


def test_failed_escalation_raises_allow_to_review_only() -> None:
    from moderation.core.decision import review_at_least

    allowed = decide({"violence": 0.1, "weapons": 0.1}, POLICY)
    assert review_at_least(allowed, "Escalation TIMED_OUT.").action is Action.REVIEW
    blocked = decide({"violence": 0.9, "weapons": 0.1}, POLICY)
    assert review_at_least(blocked, "Escalation SHED.").action is Action.BLOCK


# Both categories decisive; weapons' on_block is REVIEW (docs/policies.md: a decisive verdict
# that finds a violation gives the category's on_block, not BLOCK).
BOTH_DECISIVE = type(POLICY).model_validate(
    {**POLICY.model_dump(), "categories": [{**c.model_dump(), "explainer": "decisive"} for c in POLICY.categories]}
)


def test_decisive_violation_gives_the_categorys_on_block_review_not_block() -> None:
    from moderation.core.decision import apply_verdict

    borderline = decide({"violence": 0.1, "weapons": 0.5}, BOTH_DECISIVE)  # weapons borderline: 0.4 <= 0.5 < 0.8
    assert borderline.action is Action.REVIEW
    after, changed = apply_verdict(borderline, BOTH_DECISIVE, "weapons", violates=True, clause_id="W-1")
    assert after.action is Action.REVIEW
    assert [c.action for c in after.categories] == [Action.ALLOW, Action.REVIEW]
    assert not changed and after is borderline, "on_block REVIEW: the verdict confirms what the category already does"


def test_decisive_no_violation_allows_only_that_category_and_the_image_keeps_its_worst() -> None:
    from moderation.core.decision import apply_verdict

    # violence BLOCKs (0.7 >= 0.6); weapons is borderline. Clearing weapons leaves BLOCK.
    decision = decide({"violence": 0.7, "weapons": 0.5}, BOTH_DECISIVE)
    after, changed = apply_verdict(decision, BOTH_DECISIVE, "weapons", violates=False, clause_id="W-1")
    assert changed
    assert after.action is Action.BLOCK
    assert {c.category_id: c.action for c in after.categories} == {"violence": Action.BLOCK, "weapons": Action.ALLOW}
    assert after.reasons[: len(decision.reasons)] == decision.reasons, "CLIP's reasons stay as they were"
    assert after.reasons[-1] == (
        "The explainer found that the image does not violate clause W-1; the policy makes it decisive for weapons, "
        "so that category's action is ALLOW."
    )


def test_decisive_verdict_on_the_only_flagged_category_allows_the_image() -> None:
    from moderation.core.decision import apply_verdict

    decision = decide({"violence": 0.1, "weapons": 0.5}, BOTH_DECISIVE)
    after, changed = apply_verdict(decision, BOTH_DECISIVE, "weapons", violates=False, clause_id="W-1")
    assert changed and after.action is Action.ALLOW
    assert (after.policy_id, after.policy_version) == ("p", "7")


def test_a_verdict_for_a_category_the_decision_does_not_have_changes_nothing() -> None:
    from moderation.core.decision import apply_verdict

    decision = decide({"violence": 0.45, "weapons": 0.1}, BOTH_DECISIVE)
    same, changed = apply_verdict(decision, BOTH_DECISIVE, "drugs", violates=True, clause_id="D-1")
    assert not changed and same is decision


def test_a_decisive_verdict_on_a_category_below_review_changes_nothing() -> None:
    from moderation.core.decision import apply_verdict

    decision = decide({"violence": 0.1, "weapons": 0.5}, BOTH_DECISIVE)  # violence BELOW
    same, changed = apply_verdict(decision, BOTH_DECISIVE, "violence", violates=True, clause_id="V-2")
    assert not changed and same is decision and same.action is Action.REVIEW


@pytest.mark.parametrize(
    ("score", "leans"),
    # review 0.25, block 0.75: the middle is exactly 0.5 in binary floating point.
    [(0.4999, False), (0.5, True), (0.7499, True), (0.25, False)],
)
def test_clip_leans_violating_from_exactly_the_middle_of_the_borderline_band(score: float, leans: bool) -> None:
    from moderation.core.decision import CategoryDecision, clip_leans_violating

    category = CategoryDecision("c", score, 0.25, 0.75, Band.BORDERLINE, "C-1", Action.REVIEW)
    assert clip_leans_violating(category) is leans


def test_decisions_are_immutable() -> None:
    import dataclasses

    decision = decide({"violence": 0.7, "weapons": 0.5}, POLICY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.action = Action.ALLOW  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.categories[0].action = Action.ALLOW  # type: ignore[misc]


def test_failed_escalation_keeps_review_and_block_and_only_adds_the_reason() -> None:
    from moderation.core.decision import review_at_least

    review = decide({"violence": 0.35, "weapons": 0.1}, POLICY)
    kept = review_at_least(review, "Escalation SHED.")
    assert kept.action is Action.REVIEW and kept.reasons == (*review.reasons, "Escalation SHED.")
    allowed = decide({"violence": 0.1, "weapons": 0.1}, POLICY)
    raised = review_at_least(allowed, "Escalation TIMED_OUT.")
    assert raised.reasons == (*allowed.reasons, "Escalation TIMED_OUT. Sent to human review.")
    assert raised.categories == allowed.categories


def test_reasons_name_each_band_with_its_thresholds_most_severe_first() -> None:
    decision = decide({"violence": 0.35, "weapons": 0.95}, POLICY)  # both send to REVIEW; weapons scored higher
    assert decision.reasons == (
        "weapons scored 0.950, at or above its block threshold 0.8: REVIEW under clause W-1.",
        "violence scored 0.350, between its review threshold 0.3 and block threshold 0.6: REVIEW under clause V-2.",
    )
    blocked = decide({"violence": 0.61, "weapons": 0.95}, POLICY)  # weapons scored higher but only REVIEWs
    assert [r.split(" ")[0] for r in blocked.reasons] == ["violence", "weapons"], "BLOCK before REVIEW"
    assert blocked.borderline == () and blocked.cited_clauses == ("V-2",)


def test_on_block_review_at_exactly_the_block_threshold_is_above_but_reviewed() -> None:
    result = decide_category(0.8, POLICY.categories[1])
    assert (result.band, result.action, result.review_threshold, result.block_threshold) == (Band.ABOVE, Action.REVIEW, 0.4, 0.8)
    assert result.score == 0.8 and result.category_id == "weapons"


def test_a_verdict_changes_only_its_own_category() -> None:
    from moderation.core.decision import apply_verdict

    both_borderline = decide({"violence": 0.45, "weapons": 0.5}, BOTH_DECISIVE)
    after, changed = apply_verdict(both_borderline, BOTH_DECISIVE, "violence", violates=False, clause_id="V-2")
    assert changed
    assert {c.category_id: c.action for c in after.categories} == {"violence": Action.ALLOW, "weapons": Action.REVIEW}
    assert after.action is Action.REVIEW, "weapons is still borderline and unsettled"
