"""`moderation policy calibrate` end to end with the tiny random model on a tiny labelled folder."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import skimage.data
from PIL import Image
from typer.testing import CliRunner

from moderation.cli import app
from moderation.policy import load_policy_file
from tests.conftest import POLICIES, TINY_CLIP

TINY = ["--model", f"local-dir:{TINY_CLIP}", "--weights", "random"]


def labelled_folder(root: Path) -> Path:
    """benign/, weapons/ and drugs/ crops of scikit-image pictures, plus one broken file."""
    pictures = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    for label, count in (("benign", 5), ("weapons", 4), ("drugs", 3)):
        (root / label).mkdir(parents=True)
        for i in range(count):
            picture = pictures[(i + len(label)) % len(pictures)]
            Image.fromarray(picture[20 * i : 20 * i + 96, 30 * i : 30 * i + 96]).save(root / label / f"{i}.png")
    (root / "benign" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def test_calibrate_writes_a_valid_next_version_a_report_and_scores(tmp_path: Path) -> None:
    labels, out = labelled_folder(tmp_path / "labels"), tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["policy", "calibrate", str(POLICIES / "default.yaml"), "--labels", str(labels), "--out", str(out), "--target-precision", "0.8", "--version", "2026-12-01.1", *TINY],
    )
    assert result.exit_code == 0, result.output
    current, current_text = load_policy_file(POLICIES / "default.yaml")
    proposed, text = load_policy_file(out / "default.yaml")
    assert proposed.version == "2026-12-01.1"
    assert proposed.model == current.model, "random weights never become the model a policy was calibrated for"
    assert [c.id for c in proposed.categories] == [c.id for c in current.categories]
    # Comments survive the rewrite.
    assert all(line in text.splitlines() for line in current_text.splitlines() if line.startswith("#"))
    # Categories without labelled positives keep their thresholds.
    for category_id in ("sexual_content", "graphic_violence", "hate_symbols", "self_harm"):
        assert proposed.category(category_id).thresholds == current.category(category_id).thresholds

    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == len(current.categories)
    assert "Random weights." in report and "broken.jpg" in report
    with (out / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12  # the broken file is skipped, not scored
    assert {row["labels"] for row in rows} == {"benign", "weapons", "drugs"}
    assert all(0.0 <= float(row["weapons"]) <= 1.0 for row in rows)

    assert "skipped" in result.output and "broken.jpg" in result.output
    assert '+version: "2026-12-01.1"' in result.output  # the YAML diff
    assert "image actions on the labelled set" in result.output


def test_unknown_label_folder_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "weapon").mkdir()
    result = CliRunner().invoke(app, ["policy", "calibrate", str(POLICIES / "default.yaml"), "--labels", str(tmp_path), *TINY])
    assert result.exit_code == 2
    assert "error:" in result.output and "folders weapon are neither 'benign'" in result.output
    assert "Traceback" not in result.output


def test_a_budget_that_would_empty_the_review_band_is_refused_and_explained(tmp_path: Path) -> None:
    labels = labelled_folder(tmp_path / "labels")
    # 12 images: one image is 8.3% of them, so a 2% budget admits no review threshold below block.
    args = ["policy", "calibrate", str(POLICIES / "default.yaml"), "--labels", str(labels), "--out", str(tmp_path / "out"),
            "--max-review-rate", "0.02", "--target-precision", "0.8", *TINY]  # fmt: skip
    narrow = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert narrow.exit_code == 0, narrow.output
    text = " ".join(narrow.stdout.split())
    # For an analyst (issue 22): one finding for the budget, not one per category, in plain words, with a command that works.
    assert text.count("would lose their review step") == 1, narrow.stdout
    assert "The review budget, 2.0% of the labelled images per category, is less than one image: with 12 labelled images, one image is 8.3%." in text
    assert "weapons and drugs would lose their review step" in text and "Their current review thresholds were kept instead." in text
    assert "Label more images (at least 50 for a 2.0% budget)" in text
    assert "warning:" not in text and "EMPTY the REVIEW band" not in text
    assert "…" not in narrow.stdout and "┃ category" in narrow.stdout  # a table at 80 columns, nothing cut
    assert all(len(line) <= 80 or " " not in line.strip() for line in narrow.stdout.splitlines())
    assert re.search(r"weapons review at [\d.]+( \(unchanged\)| -> [\d.]+): \d of 4 labelled weapons images score at or above it", text)
    assert "model: left as 'ViT-B-32/laion2b_s34b_b79k'" in text
    example = re.search(r"for example: (moderation policy calibrate .*? --max-review-rate (0\.\d+))(?: !| what|$)", text)
    assert example and float(example.group(2)) >= 1 / 12, text
    # The example runs as printed, and with it no category loses its review step.
    suggested = shlex.split(example.group(1))[1:]
    again = CliRunner().invoke(app, [*suggested, "--out", str(tmp_path / "again"), *TINY], env={"COLUMNS": "80"})
    assert again.exit_code == 0, again.output
    assert "review step" not in " ".join(again.stdout.split()) and "--max-review-rate 0.02" not in again.stdout
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Read before taking the proposal (" in report and report.count("would lose their review step") == 1
    assert "<b>Words used.</b>" in report and "How the rule chose them" in report
    proposed, _ = load_policy_file(tmp_path / "out" / "default.yaml")
    current, _ = load_policy_file(POLICIES / "default.yaml")
    assert all(c.thresholds.review < c.thresholds.block for c in proposed.categories), "no REVIEW band emptied"
    assert proposed.category("weapons").thresholds == current.category("weapons").thresholds

    document = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    weapons = next(c for c in document["categories"] if c["id"] == "weapons")
    assert weapons["collapse_refused"] and not weapons["review_band_empty"]
    assert "admits no threshold below block" in weapons["why"]["review"] and weapons["warnings"]
    assert document["model"]["written"] is None and document["random_weights"] is True

    taken = CliRunner().invoke(app, [*args, "--allow-collapse", "--json"])
    weapons = next(c for c in json.loads(taken.stdout)["categories"] if c["id"] == "weapons")
    assert weapons["review_band_empty"] and weapons["proposed"]["review"] == weapons["proposed"]["block"] == 0.75
    assert "REVIEW band EMPTIED" in weapons["warnings"][0]
