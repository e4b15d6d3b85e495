"""`moderation policy calibrate` end to end with the tiny random model on a tiny labelled folder."""

from __future__ import annotations

import csv
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
