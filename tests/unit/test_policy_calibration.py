"""Policy-level calibration and its report, on synthetic scores (no model)."""

from __future__ import annotations

import base64
import re
from datetime import date

import numpy as np
import pytest

from moderation.offline.calibration import CalibrationTargets
from moderation.offline.report import render_report
from moderation.policy import Action, load_policy_text
from moderation.offline.policy_calibration import calibrate_policy
from tests.conftest import POLICIES

TEXT = (POLICIES / "default.yaml").read_text()
POLICY = load_policy_text(TEXT)


def synthetic_set() -> tuple[list[frozenset[str]], list[dict[str, float]]]:
    """40 benign images scoring low everywhere, 20 weapons images scoring 0.55-0.95 on weapons."""
    rng = np.random.default_rng(3)
    labels, scores = [], []
    for label, n in (("benign", 40), ("weapons", 20)):
        for _ in range(n):
            per_image = {c.id: float(rng.uniform(0.0, 0.2)) for c in POLICY.categories}
            if label == "weapons":
                per_image["weapons"] = float(rng.uniform(0.55, 0.95))
            labels.append(frozenset({label}))
            scores.append(per_image)
    return labels, scores


def test_only_categories_with_evidence_move_and_the_new_version_names_the_model() -> None:
    labels, scores = synthetic_set()
    result = calibrate_policy(POLICY, TEXT, labels, scores, CalibrationTargets(precision=1.0, recall=1.0, allow_collapse=True), "ViT-B-32/openai", date(2026, 11, 24))
    weapons = next(c for c in result.categories if c.category_id == "weapons")
    lowest_weapons = min(s["weapons"] for s, l in zip(scores, labels) if "weapons" in l)
    highest_benign = max(s["weapons"] for s, l in zip(scores, labels) if "benign" in l)
    assert highest_benign < weapons.proposed.block <= lowest_weapons
    assert weapons.proposed.review == weapons.proposed.block
    assert result.proposed.category("weapons").thresholds.block == weapons.proposed.block
    for category in POLICY.categories:
        if category.id != "weapons":
            assert result.proposed.category(category.id).thresholds == category.thresholds
            assert "no labelled positives" in next(c for c in result.categories if c.category_id == category.id).notes[0]
    assert result.proposed.version == "2026-11-24.1" and result.proposed.model == "ViT-B-32/openai"
    # Unchanged categories keep their text exactly (0.70 is not rewritten as 0.7).
    assert TEXT.count("{review: 0.35, block: 0.70}") == result.proposed_text.count("{review: 0.35, block: 0.70}") == 2
    # weapons has on_block REVIEW: every weapons image goes to review, every benign one is allowed.
    assert result.proposed_actions[Action.REVIEW] == pytest.approx(20 / 60)
    assert result.proposed_actions[Action.ALLOW] == pytest.approx(40 / 60)
    assert sum(result.current_actions.values()) == pytest.approx(1.0)


def test_random_weights_never_become_the_policy_model() -> None:
    labels, scores = synthetic_set()
    assert POLICY.model == "ViT-B-32/laion2b_s34b_b79k"
    result = calibrate_policy(POLICY, TEXT, labels, scores, CalibrationTargets(precision=0.9), "ViT-B-32/random", date(2026, 11, 24))
    assert result.random_model and result.model_written is None
    assert result.proposed.model == POLICY.model
    assert "ViT-B-32/random" not in result.proposed_text
    assert "left as 'ViT-B-32/laion2b_s34b_b79k'" in result.model_note and "random weights" in result.model_note
    text = "\n".join(line for line in TEXT.splitlines() if not line.startswith("model:"))
    unset = calibrate_policy(load_policy_text(text), text, labels, scores, CalibrationTargets(precision=0.9), "tiny/random", date(2026, 11, 24))
    assert unset.proposed.model is None and "left unset" in unset.model_note


def test_total_review_load_rise_without_a_budget_is_warned() -> None:
    rng = np.random.default_rng(4)
    labels, scores = [], []
    for i in range(60):
        drugs = i < 20
        per_image = {c.id: 0.05 for c in POLICY.categories}
        # drugs images score 0.2-0.9, the rest 0.2-0.34: under the current review threshold (0.35).
        per_image["drugs"] = float(rng.uniform(0.2, 0.9) if drugs else rng.uniform(0.2, 0.34))
        labels.append(frozenset({"drugs" if drugs else "benign"}))
        scores.append(per_image)
    rising = calibrate_policy(POLICY, TEXT, labels, scores, CalibrationTargets(precision=0.9, recall=1.0), "m", date(2026, 11, 24))
    assert rising.proposed_actions[Action.REVIEW] > rising.current_actions[Action.REVIEW] + 0.05
    assert any("REVIEW rises from" in w and "--max-review-rate" in w for w in rising.warnings), rising.warnings
    drugs = next(c for c in rising.categories if c.category_id == "drugs")
    assert any("review load rises from" in w for w in drugs.warnings)
    budgeted = calibrate_policy(POLICY, TEXT, labels, scores, CalibrationTargets(precision=0.9, recall=1.0, max_review_rate=0.05), "m", date(2026, 11, 24))
    assert budgeted.warnings == () and budgeted.proposed_actions[Action.REVIEW] <= 0.05


def test_report_has_a_png_per_category_and_the_random_weights_warning() -> None:
    labels, scores = synthetic_set()
    result = calibrate_policy(POLICY, TEXT, labels, scores, CalibrationTargets(precision=1.0, max_review_rate=0.2), "ViT-B-32/random", date(2026, 11, 24))
    page = render_report(result, "labels/", random_weights=True, unreadable=["labels/benign/x.jpg: truncated"], proposed_file="out/default.yaml")
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(pngs) == len(POLICY.categories)
    assert all(base64.b64decode(png).startswith(b"\x89PNG") for png in pngs)
    for category in POLICY.categories:
        assert f"<h2>{category.id} (clause {category.clause.id}" in page
    assert "Random weights." in page and "labels/benign/x.jpg: truncated" in page
    assert "the category sends at most 20.0% of all labelled images to review" in page
    assert "to review: share of all labelled images" in page
    assert "right at review: share of images at or above review really in the category" in page
    # The rule's reasons, per change, folded for whoever checks the rule.
    assert "block 0.75 &rarr; 0.5: lowest threshold with precision &gt;= 1 (precision 1.000" in page
    # weapons (on_block REVIEW) sends a third of the images to review at block: over budget, and the band is kept.
    assert "Read before taking the proposal (" in page and "would take away the review step of weapons" in page
    assert "model: left as &#x27;ViT-B-32/laion2b_s34b_b79k&#x27;" in page


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="one label set per scored image"):
        calibrate_policy(POLICY, TEXT, [frozenset({"benign"})], [], CalibrationTargets(), "m", date(2026, 11, 24))


# -- the policy-wide rules at their edges (docs/policies.md "Calibrating": warnings, outputs) -----

TWO = """\
id: two
version: "2026-11-23.1"
benign: ["a cat"]
categories:
  - id: weapons
    clause: {id: W-1, text: "No threatening display of firearms."}
    positive: ["a gun"]
    thresholds: {review: 0.5, block: 0.9}
  - id: drugs
    clause: {id: D-1, text: "No drug paraphernalia or use."}
    positive: ["a syringe"]
    thresholds: {review: 0.5, block: 0.9}
"""


def calibrate_two(weapons: list[float], benign: list[float], targets: CalibrationTargets, on_block_review: bool = False, **kwargs):  # noqa: ANN003, ANN201
    """20 labelled images: `weapons` scores of images labelled weapons, `benign` of the rest; drugs scores 0.05 everywhere."""
    text = TWO.replace("block: 0.9}\n  - id: drugs", "block: 0.9}\n    on_block: REVIEW\n  - id: drugs") if on_block_review else TWO
    labels = [frozenset({"weapons"})] * len(weapons) + [frozenset({"benign"})] * len(benign)
    scores = [{"weapons": s, "drugs": 0.05} for s in weapons + benign]
    return calibrate_policy(load_policy_text(text), text, labels, scores, targets, kwargs.pop("model_id", "ViT-B-32/openai"), date(2026, 12, 3), **kwargs)


def test_without_a_budget_a_rise_of_exactly_5_points_in_review_is_not_warned_and_more_is() -> None:
    """Current review 0.5: one benign image (0.5) in REVIEW, 5%. The proposal (review 0.3) adds the 0.3 positive: 10%."""
    targets = CalibrationTargets(precision=1.0, recall=1.0)
    five = calibrate_two([0.95, 0.3], [0.5] + [0.1] * 17, targets)
    assert (five.current_actions[Action.REVIEW], five.proposed_actions[Action.REVIEW]) == (pytest.approx(0.05), pytest.approx(0.10))
    assert five.warnings == ()
    ten = calibrate_two([0.95, 0.3], [0.5, 0.4] + [0.1] * 16, targets)
    assert ten.proposed_actions[Action.REVIEW] == pytest.approx(0.15)
    assert ten.warnings == ("REVIEW rises from 5.0% to 15.0% of labelled images in total; pass --max-review-rate to bound it",)


def test_with_a_budget_the_review_share_is_warned_only_above_budget_times_categories() -> None:
    """on_block REVIEW: block alone sends the positives to review. Budget 5% x 2 categories = 10%."""
    targets = CalibrationTargets(precision=1.0, max_review_rate=0.05)
    at = calibrate_two([0.95, 0.9], [0.1] * 18, targets, on_block_review=True)
    assert at.proposed_actions[Action.REVIEW] == pytest.approx(0.10) and at.warnings == ()
    over = calibrate_two([0.95, 0.9, 0.85], [0.1] * 17, targets, on_block_review=True)
    assert over.proposed_actions[Action.REVIEW] == pytest.approx(0.15)
    assert over.warnings == ("REVIEW takes 15.0% of labelled images in total, over the 5.0% per-category budget times 2 categories",)
    weapons = over.categories[0]
    assert "review load 15.0% of labelled images is over the 5.0% budget" in weapons.warnings, "on_block REVIEW counts block in the load"


def test_the_proposal_names_the_scoring_model_and_takes_a_given_version() -> None:
    result = calibrate_two([0.95, 0.3], [0.5] + [0.1] * 17, CalibrationTargets(precision=1.0, recall=1.0), version="2026-12-03.7")
    assert result.proposed.version == "2026-12-03.7" and result.proposed.model == "ViT-B-32/openai"
    assert result.model_written == "ViT-B-32/openai" and not result.random_model
    assert result.model_note == "model: set to 'ViT-B-32/openai', the model that scored the labelled images"
    assert result.proposed.category("weapons").thresholds.review == 0.3
    assert result.proposed.category("drugs").thresholds == result.policy.category("drugs").thresholds
    assert [c.category_id for c in result.categories if c.changed] == ["weapons"]
    assert result.positives["weapons"].tolist() == [True, True] + [False] * 18 and not result.positives["drugs"].any()
    assert result.scores["weapons"][:2].tolist() == [0.95, 0.3] and result.labels[0] == frozenset({"weapons"})
    bumped = calibrate_two([0.95, 0.3], [0.5] + [0.1] * 17, CalibrationTargets(precision=1.0, recall=1.0))
    assert bumped.proposed.version == "2026-12-03.1", "2026-11-23.1 calibrated on a later day: <today>.1"


def test_image_action_shares_cover_every_action() -> None:
    from moderation.offline.policy_calibration import action_shares

    policy = load_policy_text(TWO)
    shares = action_shares(policy, [{"weapons": 0.1, "drugs": 0.1}] * 3 + [{"weapons": 0.95, "drugs": 0.6}])
    assert shares == {Action.ALLOW: 0.75, Action.REVIEW: 0.0, Action.BLOCK: 0.25}, "the most severe category action decides"


def test_the_json_document_carries_every_threshold_with_its_reason() -> None:
    from moderation.offline.policy_calibration import calibration_document

    targets = CalibrationTargets(precision=1.0, recall=1.0)
    result = calibrate_two([0.95, 0.3], [0.5, 0.4] + [0.1] * 16, targets)
    doc = calibration_document(result)
    assert (doc["policy_id"], doc["version"], doc["proposed_version"], doc["scored_with"], doc["random_weights"]) == (
        "two", "2026-11-23.1", "2026-12-03.1", "ViT-B-32/openai", False,
    )
    assert doc["model"] == {"written": "ViT-B-32/openai", "proposed": "ViT-B-32/openai", "why": result.model_note}
    assert doc["targets"] == {"precision": 1.0, "recall": 1.0, "max_review_rate": None, "allow_collapse": False}
    assert doc["labelled_images"] == 20
    weapons, drugs = doc["categories"]
    assert (weapons["id"], weapons["positives"], weapons["negatives"], weapons["changed"]) == ("weapons", 2, 18, True)
    assert (drugs["id"], drugs["positives"], drugs["changed"]) == ("drugs", 0, False)
    assert (weapons["current"]["review"], weapons["current"]["block"]) == (0.5, 0.9)
    assert (weapons["proposed"]["review"], weapons["proposed"]["block"]) == (0.3, 0.9)
    assert weapons["proposed"]["recall_at_review"] == 1.0 and weapons["proposed"]["recall_at_block"] == 0.5
    assert weapons["proposed"]["precision_at_block"] == 1.0 and weapons["proposed"]["precision_at_review"] == pytest.approx(0.5)
    assert weapons["proposed"]["review_load"] == pytest.approx(0.15) and weapons["proposed"]["block_load"] == pytest.approx(0.05)
    assert weapons["current"]["review_load"] == pytest.approx(0.05) and weapons["current"]["precision_at_review"] == pytest.approx(0.5)
    assert weapons["current"]["recall_at_review"] == 0.5 and weapons["current"]["recall_at_block"] == 0.5
    assert weapons["current"]["precision_at_block"] == 1.0 and weapons["current"]["block_load"] == pytest.approx(0.05)
    assert set(weapons["why"]) >= {"review", "block"} and weapons["review_band_empty"] is False and weapons["collapse_refused"] is False
    assert weapons["warnings"] == ["review load rises from 5.0% to 15.0% of labelled images; pass --max-review-rate to bound it"]
    assert "no labelled positives" in drugs["notes"][0]
    assert doc["image_actions"]["current"] == pytest.approx({"ALLOW": 0.90, "REVIEW": 0.05, "BLOCK": 0.05})
    assert doc["image_actions"]["proposed"] == pytest.approx({"ALLOW": 0.80, "REVIEW": 0.15, "BLOCK": 0.05})
    assert doc["review_total"] == {"current": pytest.approx(0.05), "proposed": pytest.approx(0.15), "budget_per_category": None}
    assert doc["warnings"] == list(result.warnings) and len(doc["warnings"]) == 1


def test_inputs_that_do_not_pair_up_are_refused_with_both_counts() -> None:
    with pytest.raises(ValueError, match="got 0 and 0"):
        calibrate_policy(POLICY, TEXT, [], [], CalibrationTargets(), "m", date(2026, 11, 24))
    with pytest.raises(ValueError, match="got 2 and 1"):
        calibrate_policy(POLICY, TEXT, [frozenset({"benign"})] * 2, [{c.id: 0.1 for c in POLICY.categories}], CalibrationTargets(), "m", date(2026, 11, 24))


def test_fewer_labels_than_images_are_refused_too_and_hundreds_of_images_pair_up() -> None:
    one_score = {c.id: 0.1 for c in POLICY.categories}
    with pytest.raises(ValueError, match="got 1 and 2"):
        calibrate_policy(POLICY, TEXT, [frozenset({"benign"})], [one_score] * 2, CalibrationTargets(), "m", date(2026, 11, 24))
    many = calibrate_two([0.95, 0.3] * 10, [0.1] * 280, CalibrationTargets(precision=1.0, recall=1.0))  # 300 images: past Python's small ints
    assert len(many.labels) == 300 and many.categories[0].positives == 20


def test_a_calibration_result_is_a_value() -> None:
    import dataclasses

    result = calibrate_two([0.95, 0.3], [0.5] + [0.1] * 17, CalibrationTargets(precision=1.0, recall=1.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.warnings = ("edited",)  # type: ignore[misc]
