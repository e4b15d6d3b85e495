from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

from moderation.cli import app
from moderation.signals.clip import ClipScorer
from moderation.offline.scoring import check_golden_cases, offline_policy
from moderation.ops.config import Settings
from moderation.policy import Policy
from moderation.policy.golden import load_cases_file
from moderation.runtime import build_core
from tests.conftest import POLICIES, TINY_CLIP

TINY = ["--model", f"local-dir:{TINY_CLIP}", "--weights", "random"]
SAMPLES = POLICIES / "tests" / "samples"


def run(*args: str):  # noqa: ANN201
    return CliRunner().invoke(app, list(args))


def test_check_only_runs_every_shipped_policy_with_random_weights() -> None:
    result = run("policy", "test", *map(str, sorted(POLICIES.glob("*.yaml"))), *TINY)
    assert result.exit_code == 0, result.output
    assert "CHECK-ONLY" in result.output and "random weights" in result.output
    assert "default: 4 of 4 cases checked, actions not compared" in result.output


def test_missing_and_undecodable_images_and_missing_cases_fail(tmp_path: Path) -> None:
    shutil.copy(POLICIES / "default.yaml", tmp_path / "default.yaml")
    shutil.copy(POLICIES / "default.yaml", tmp_path / "untested.yaml")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "not-an-image.jpg").write_bytes(b"plain text, not a JPEG")
    shutil.copy(SAMPLES / "coffee.jpg", tmp_path / "tests" / "coffee.jpg")
    (tmp_path / "tests" / "default.tests.yaml").write_text(
        "policy: default\ncases:\n"
        "  - {image: coffee.jpg, expect: ALLOW}\n"
        "  - {image: missing.jpg, expect: ALLOW}\n"
        "  - {image: not-an-image.jpg, expect: ALLOW}\n"
    )
    result = run("policy", "test", str(tmp_path / "default.yaml"), str(tmp_path / "untested.yaml"), *TINY)
    assert result.exit_code == 1
    # Each failing case with the line it is on in the cases file.
    assert "default.tests.yaml:4: cases[missing.jpg]: cannot read file: No such file or directory" in result.output
    assert "default.tests.yaml:5: cases[not-an-image.jpg]: the bytes are not an image" in result.output
    assert "untested.tests.yaml: cannot read file" in result.output
    assert "default: 1 of 3 cases checked" in result.output
    assert "2 of 2 policies failed their tests" in result.output


def test_cases_naming_unknown_categories_fail_before_loading_a_model(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text("policy: default\ncases:\n  - {image: x.jpg, expect: BLOCK, flagged: [weapon]}\n")
    # A model that cannot load: the case problems must be reported without it.
    result = run("policy", "test", str(POLICIES / "default.yaml"), "--cases", str(cases), "--weights", str(tmp_path / "none.bin"))
    assert result.exit_code == 1
    assert "category 'weapon' is not in policy 'default'" in result.output


def test_compared_cases_pass_and_fail_on_real_decisions(tiny_scorer: ClipScorer, tmp_path: Path) -> None:
    # Thresholds of 0 put a category ABOVE and thresholds of 1 keep it BELOW whatever
    # the random model scores, so the right expectation is known.
    data = yaml.safe_load((POLICIES / "default.yaml").read_text())
    for category in data["categories"]:
        flagged = category["id"] in ("drugs", "sexual_content")
        category["thresholds"] = {"review": 0.0, "block": 0.0} if flagged else {"review": 1.0, "block": 1.0}
    policy = Policy.model_validate(data)
    shutil.copy(SAMPLES / "chelsea.jpg", tmp_path / "chelsea.jpg")
    (tmp_path / "cases.yaml").write_text(
        "policy: default\ncases:\n"
        "  - {image: chelsea.jpg, expect: BLOCK, flagged: [drugs, sexual_content], bands: {drugs: ABOVE}}\n"
    )
    core, served = build_core(Settings(), tiny_scorer), offline_policy(tiny_scorer, policy)
    (outcome,) = check_golden_cases(core, served, load_cases_file(tmp_path / "cases.yaml"), compare=True)
    assert outcome.decision is not None and outcome.decision.action.value == "BLOCK"
    assert outcome.problems == ()
    (unchecked,) = check_golden_cases(core, served, load_cases_file(tmp_path / "cases.yaml"), compare=False)
    assert unchecked.passed and unchecked.decision == outcome.decision

    (tmp_path / "cases.yaml").write_text("policy: default\ncases:\n  - {image: chelsea.jpg, expect: ALLOW, flagged: []}\n")
    (failing,) = check_golden_cases(core, served, load_cases_file(tmp_path / "cases.yaml"), compare=True)
    assert failing.problems[0] == "action BLOCK, expected ALLOW"
    assert failing.problems[1] == "flagged ['drugs', 'sexual_content'], expected none"


def test_every_problem_of_every_file_is_reported_in_one_run_before_a_model_loads(tmp_path: Path) -> None:
    """Issue 22: a policy error, then a cases error, then a model mismatch took 3 runs of ~40 s each."""
    broken = (POLICIES / "default.yaml").read_text().replace("on_block: BLOCK", "on_block: BLOK", 1)
    assert "BLOK" in broken
    (tmp_path / "broken.yaml").write_text(broken)
    shutil.copy(POLICIES / "default.yaml", tmp_path / "other.yaml")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "broken.tests.yaml").write_text("policy: default\ncases:\n  - {image: a.jpg, expect: BLOK}\n")
    (tmp_path / "tests" / "other.tests.yaml").write_text(
        "policy: other\ncases:\n  - {image: a.jpg, expect: BLOCK, flagged: [weapon]}\n"
    )
    # Weights that cannot load: every problem must be reported without them.
    result = run("policy", "test", str(tmp_path / "broken.yaml"), str(tmp_path / "other.yaml"), "--weights", str(tmp_path / "none.bin"))
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "broken.yaml" in output and "on_block: must be BLOCK or REVIEW" in output and "not the text 'BLOK'" in output  # the policy's schema
    assert "broken.tests.yaml:3" in output and "expect" in output  # its cases file's schema, in the same run
    assert "cases are for policy 'other', not 'default'" in output  # the other file's cases against its policy
    assert "category 'weapon' is not in policy 'default'" in output
    assert "thresholds were calibrated for model 'ViT-B-32/laion2b_s34b_b79k' but this run uses 'ViT-B-32/none.bin'" in output
    assert "cannot load CLIP model" not in output and "2 of 2 policies failed their tests" in output
