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
    assert decision.reasons[0].startswith("violence scored 0.700, at or above its block threshold 0.60: BLOCK under clause V-2")


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
