"""The calibration report: one self-contained HTML page with a PNG plot per category.

Plots are embedded as base64 so the page can be attached to a ticket or a review
as one file. matplotlib is used through its object API on the Agg canvas: no
pyplot global state, no display needed.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np

from moderation.offline.advice import WORDS, findings, threshold_sentences
from moderation.offline.calibration import CategoryCalibration, OperatingPoint, precision_recall_curve
from moderation.offline.labels import BENIGN
from moderation.policy.schema import Action
from moderation.offline.policy_calibration import PolicyCalibration

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.warning { background: #fff3cd; border: 1px solid #e0b000; padding: 0.6em 1em; }
.note { color: #8a4b00; }
.words { color: #555; font-size: 0.9em; }
details { color: #555; margin: 0.5em 0; }
.changed { font-weight: bold; }
section { border-top: 1px solid #ddd; margin-top: 1.5em; }
img { max-width: 100%; }
"""


def render_report(
    result: PolicyCalibration, labels_source: str, random_weights: bool, unreadable: Sequence[str], proposed_file: str, command: str = ""
) -> str:
    """The page. `command`: the calibrate command up to its targets, for the examples (moderation/offline/advice.py)."""
    policy, proposed = result.policy, result.proposed
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Calibration of {_e(policy.id)}@{_e(policy.version)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Calibration of policy {_e(policy.id)}: {_e(policy.version)} &rarr; {_e(proposed.version)}</h1>",
    ]
    if random_weights:
        parts.append(
            f"<p class='warning'><b>Random weights.</b> Model {_e(result.model_id)} has random weights: these scores, "
            "thresholds and rates mean nothing. Use this report only to check the workflow.</p>"
        )
    found = findings(result, command or f"moderation policy calibrate {policy.id}.yaml --labels {labels_source}")
    if found:
        listed = "".join(
            f"<li>{_e(f.headline)}<br><b>What to do:</b> {_e(f.todo)}"
            + (f"<br>For example: <code>{_e(f.example)}</code>" if f.example else "")
            + "</li>"
            for f in found
        )
        parts.append(f"<div class='warning'><b>Read before taking the proposal ({len(found)}):</b><ul>{listed}</ul></div>")
    parts.append(f"<p class='words'><b>Words used.</b> {_e(WORDS)}.</p>")
    parts.append(
        f"<p>Model <code>{_e(result.model_id)}</code>; labelled set <code>{_e(labels_source)}</code>; "
        f"generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Proposed policy file: <code>{_e(proposed_file)}</code>; {_e(result.model_note)}.</p>"
    )
    parts.append(_targets(result))
    parts.append(_label_counts(result))
    if unreadable:
        listed = "".join(f"<li>{_e(line)}</li>" for line in unreadable)
        parts.append(f"<p class='note'>{len(unreadable)} labelled files could not be scored and were left out:</p><ul>{listed}</ul>")
    parts.append(_action_mix(result))
    for calibration in result.categories:
        parts.append(_category_section(result, calibration))
    parts.append("</body></html>")
    return "\n".join(parts)


def plot_category_png(scores: np.ndarray, positive: np.ndarray, calibration: CategoryCalibration, target_precision: float) -> bytes:
    """Score histograms of positives and negatives with both threshold pairs, and the precision-recall curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.1), dpi=90)
    FigureCanvasAgg(figure)
    # Fixed margins: matplotlib's automatic layout doubled the time to draw a figure. The bottom
    # margin holds the legends, below the axes: inside, they covered the threshold lines (issue 22).
    histogram, pr = figure.subplots(1, 2, width_ratios=(3, 2), gridspec_kw={"left": 0.07, "right": 0.98, "bottom": 0.3, "top": 0.92, "wspace": 0.2})
    current, proposed = calibration.current, calibration.proposed
    marks = [current.review, current.block, proposed.review, proposed.block]
    low, high = min(float(scores.min()), *marks), max(float(scores.max()), *marks)
    pad = max((high - low) * 0.03, 1e-3)
    bins = np.linspace(max(0.0, low - pad), min(1.0, high + pad), 41)
    for mask, colour, name in ((~positive, "tab:blue", "other images"), (positive, "tab:red", f"{calibration.category_id} images")):
        if mask.any():
            # Each class sums to 1, so a small positive set is as visible as a large negative one.
            histogram.hist(scores[mask], bins=bins, weights=np.full(mask.sum(), 1 / mask.sum()), alpha=0.5, color=colour, label=f"{name} ({mask.sum()})")
    for value, colour, style, name in (
        (current.review, "grey", ":", "current review"),
        (current.block, "grey", "--", "current block"),
        (proposed.review, "tab:orange", ":", "proposed review"),
        (proposed.block, "darkred", "--", "proposed block"),
    ):
        histogram.axvline(value, color=colour, linestyle=style, linewidth=1.5, label=f"{name} {value:g}")
    histogram.set(xlabel="score", ylabel="share of the group's images", title=f"{calibration.category_id}: scores of labelled images")
    histogram.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)

    if positive.any() and (~positive).any():
        curve = precision_recall_curve(scores, positive)
        pr.step(curve.recall, curve.precision, where="post", color="black", linewidth=1)
        for threshold, colour, name in ((proposed.review, "tab:orange", "proposed review"), (proposed.block, "darkred", "proposed block")):
            flagged = scores >= threshold
            if flagged.any():
                true_positives = (flagged & positive).sum()
                pr.plot(true_positives / positive.sum(), true_positives / flagged.sum(), "o", color=colour, label=name)
        pr.axhline(target_precision, color="darkred", linestyle=":", linewidth=1, label=f"target: {target_precision:.0%} right")
        pr.set(
            xlim=(0, 1.02), ylim=(0, 1.02), xlabel="caught (share of the category's images)", ylabel="right (share of flagged)",
            title="right vs caught, over every threshold",
        )
        pr.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    else:
        pr.axis("off")
        pr.text(0.5, 0.5, "no right-vs-caught curve:\nneeds labelled images of the category and others", ha="center", va="center")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _targets(result: PolicyCalibration) -> str:
    targets = result.targets
    review = []
    if targets.review_recall is not None:
        review.append(f"it catches at least {targets.review_recall:.0%} of the category's labelled images")
    if targets.max_review_rate is not None:
        review.append(f"the category sends at most {targets.max_review_rate:.1%} of all labelled images to review")
    collapse = (
        "a proposal that takes away a category's review step is taken (--allow-collapse)"
        if targets.allow_collapse
        else "a proposal that would take away a category's review step (review = block) keeps its current review threshold"
    )
    return (
        f"<p><b>How thresholds were chosen.</b> Block: the lowest score at which at least {targets.precision:.0%} of the "
        f"flagged images are right (really in the category rather than in another or benign). Review: the lowest "
        f"score at which {' and '.join(review)}, never above block; {collapse}. docs/policies.md, Calibrating, has "
        "the exact rule.</p>"
    )


def _label_counts(result: PolicyCalibration) -> str:
    counts = Counter(label for labels in result.labels for label in labels)
    rows = "".join(f"<tr><td>{_e(label)}</td><td>{counts[label]}</td></tr>" for label in [BENIGN, *(c.id for c in result.policy.categories)])
    return f"<h2>Labelled images: {len(result.labels)}</h2><table><tr><th>label</th><th>images</th></tr>{rows}</table>"


def _action_mix(result: PolicyCalibration) -> str:
    rows = "".join(
        f"<tr><td>{action.value}</td><td>{result.current_actions[action]:.1%}</td><td>{result.proposed_actions[action]:.1%}</td></tr>"
        for action in Action
    )
    budget = result.targets.max_review_rate
    total = (
        f"<p>REVIEW in total: {result.current_actions[Action.REVIEW]:.1%} &rarr; {result.proposed_actions[Action.REVIEW]:.1%} "
        + (f"(budget {budget:.1%} per category, {budget * len(result.policy.categories):.1%} for "
           f"{len(result.policy.categories)} categories).</p>" if budget is not None else "(no review budget given).</p>")
    )  # fmt: skip
    return total + (
        "<h2>Image actions on the labelled set</h2>"
        "<p>Share of labelled images per action (the most severe category action). The labelled set's mix of "
        "labels is not your traffic's: read these as a comparison between versions, not as production rates.</p>"
        f"<table><tr><th>action</th><th>current</th><th>proposed</th></tr>{rows}</table>"
    )


def _category_section(result: PolicyCalibration, calibration: CategoryCalibration) -> str:
    category = result.policy.category(calibration.category_id)
    png = plot_category_png(result.scores[category.id], result.positives[category.id], calibration, result.targets.precision)
    rows = "".join(
        f"<tr{' class=changed' if current != proposed else ''}><td>{name}</td><td>{current}</td><td>{proposed}</td></tr>"
        for name, current, proposed in _metric_rows(calibration.current, calibration.proposed)
    )
    plain = "".join(f"<li>{_e(sentence)}</li>" for sentence in threshold_sentences(result, calibration))
    # The rule's own terms (and its notes and warnings, grouped in plain words at the top) for whoever checks the rule.
    why = "".join(
        f"<li>{name} {_number(getattr(calibration.current, name))} &rarr; {_number(getattr(calibration.proposed, name))}: "
        f"{_e(calibration.why[name])}</li>"
        for name in ("review", "block")
        if name in calibration.why
    )
    why += "".join(f"<li>{_e(line)}</li>" for line in (*calibration.notes, *calibration.warnings))
    return (
        f"<section><h2>{_e(category.id)} (clause {_e(category.clause.id)}, on_block {category.on_block.value})</h2>"
        f"<p>{calibration.positives} labelled {_e(category.id)} images, {calibration.negatives} others.</p><ul>{plain}</ul>"
        f"<details><summary>How the rule chose them</summary><ul>{why}</ul></details>"
        f"<table><tr><th></th><th>current</th><th>proposed</th></tr>{rows}</table>"
        f"<img alt='{_e(category.id)} score histograms and precision-recall curve' "
        f"src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'></section>"
    )


def _metric_rows(current: OperatingPoint, proposed: OperatingPoint) -> list[tuple[str, str, str]]:
    """(metric, current, proposed), formatted."""

    number = _number

    def share(value: float) -> str:
        return f"{value:.1%}"

    def share_or_dash(value: float | None) -> str:
        return "&ndash;" if value is None else f"{value:.0%}"

    return [
        ("review threshold", number(current.review), number(proposed.review)),
        ("block threshold", number(current.block), number(proposed.block)),
        ("right at review: share of images at or above review really in the category", share_or_dash(current.precision_at_review), share_or_dash(proposed.precision_at_review)),
        ("right at block", share_or_dash(current.precision_at_block), share_or_dash(proposed.precision_at_block)),
        ("caught at review: share of the category's images at or above review", share_or_dash(current.recall_at_review), share_or_dash(proposed.recall_at_review)),
        ("caught at block", share_or_dash(current.recall_at_block), share_or_dash(proposed.recall_at_block)),
        ("to review: share of all labelled images", share(current.review_load), share(proposed.review_load)),
        ("blocked: share of all labelled images", share(current.block_load), share(proposed.block_load)),
    ]


def _number(value: float | None) -> str:
    return "&ndash;" if value is None else f"{value:.4g}"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
