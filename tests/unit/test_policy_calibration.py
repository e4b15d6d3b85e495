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
