"""The calibration in an analyst's words (issue 22): findings grouped, plain words, examples that work. Synthetic scores."""

from __future__ import annotations

import re
import shlex
from datetime import date

import numpy as np

from moderation.offline.advice import findings, threshold_sentences
from moderation.offline.calibration import CalibrationTargets
from moderation.offline.policy_calibration import calibrate_policy
from moderation.offline.report import render_report
from moderation.policy import load_policy_text
from tests.conftest import POLICIES

TEXT = (POLICIES / "default.yaml").read_text()
POLICY = load_policy_text(TEXT)
COMMAND = "moderation policy calibrate policies/default.yaml --labels labels/"


def forty_five_images() -> tuple[list[frozenset[str]], list[dict[str, float]]]:
    """The docs' case: 45 labelled images, 5 of each category and 15 benign, scores overlapping between them."""
    rng = np.random.default_rng(7)
    labels, scores = [], []
    for label, n in [(c.id, 5) for c in POLICY.categories] + [("benign", 15)]:
        for _ in range(n):
            per_image = {c.id: float(rng.uniform(0.0, 0.5)) for c in POLICY.categories}
            if label != "benign":
                per_image[label] = float(rng.uniform(0.3, 0.95))
            labels.append(frozenset({label}))
            scores.append(per_image)
    return labels, scores


def calibrate(budget: float | None):  # noqa: ANN201 - PolicyCalibration
    labels, scores = forty_five_images()
    targets = CalibrationTargets(precision=0.8, max_review_rate=budget)
    return calibrate_policy(POLICY, TEXT, labels, scores, targets, "ViT-B-32/openai", date(2026, 12, 3))


def test_a_budget_under_one_image_is_one_finding_with_a_budget_that_works() -> None:
    result = calibrate(0.02)  # the docs' old example: one image of 45 is 2.2%
    lost = {c.category_id for c in result.categories if c.collapse_refused}
    assert len(lost) >= 3, "the set is built so that most categories would lose their review band"
    found = findings(result, COMMAND)
    budget = [f for f in found if "less than one image" in f.headline]
    assert len(budget) == 1 and set(budget[0].categories) == lost  # one finding, not one per category
    assert "with 45 labelled images, one image is 2.2%" in budget[0].headline
    assert not any("review step" in f.headline for f in found if f is not budget[0])
    for finding in found:  # plain words: no rule jargon in what an analyst reads first
        assert not re.search(r"\b(precision|recall|REVIEW band|collapse)\b", finding.headline), finding.headline
    # The example is a command line with this run's targets and a budget that keeps every review step.
    argv = shlex.split(budget[0].example)
    assert argv[:5] == ["moderation", "policy", "calibrate", "policies/default.yaml", "--labels"]
    assert argv[argv.index("--target-precision") + 1] == "0.8"
    suggested = float(argv[argv.index("--max-review-rate") + 1])
    assert suggested > 1 / 45
    again = calibrate(suggested)
    assert not any(c.collapse_refused for c in again.categories)
    assert not any("review step" in f.headline for f in findings(again, COMMAND))
    # Other examples run with the budget that works, not the one that cannot.
    assert all("--max-review-rate 0.02" not in f.example for f in found)


def test_threshold_sentences_count_images() -> None:
    result = calibrate(None)
    weapons = next(c for c in result.categories if c.category_id == "weapons")
    review, block = threshold_sentences(result, weapons)
    caught = int(((result.scores["weapons"] >= weapons.proposed.review) & result.positives["weapons"]).sum())
    assert review.startswith("weapons review at ") and f": {caught} of 5 labelled weapons images score at or above it" in review
    assert "of all 45 labelled images go to review for weapons" in review
    assert block.startswith("weapons block at ")


def test_the_report_groups_findings_and_keeps_the_rule_folded() -> None:
    result = calibrate(0.02)
    page = render_report(result, "labels/", False, [], "calibration-default/default.yaml", COMMAND)
    warning_box = page.split("<div class='warning'>", 1)[1].split("</div>", 1)[0]
    assert warning_box.count("<li>") == len(findings(result, COMMAND)) and "For example: <code>moderation policy calibrate" in warning_box
    assert "precision" not in re.sub(r"<code>.*?</code>", "", warning_box).lower()  # only inside the example commands
    assert page.count("<details><summary>How the rule chose them</summary>") == len(POLICY.categories)
