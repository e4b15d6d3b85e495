from __future__ import annotations

from pathlib import Path

import pytest

from moderation.core.decision import decide
from moderation.core.decode import DecodeLimits, decode_image
from moderation.policy import PolicyFileError, load_policy_file
from moderation.offline.scoring import mismatches
from moderation.policy.golden import cases_path_for, load_cases_file, problems_against_policy
from tests.conftest import POLICIES
from tests.policies import TWO_CATEGORIES

POLICY = TWO_CATEGORIES


def write_cases(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.tests.yaml"
    path.write_text(text)
    return path


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(PolicyFileError) as caught:
        load_cases_file(write_cases(tmp_path, text))
    return [str(p) for p in caught.value.problems]


def test_cases_file_reads_and_resolves_images_beside_it(tmp_path: Path) -> None:
    path = write_cases(
        tmp_path,
        "policy: p\ncases:\n  - image: samples/a.jpg\n    expect: REVIEW\n    flagged: [weapons]\n    bands: {weapons: BORDERLINE, violence: BELOW}\n",
    )
    cases_file = load_cases_file(path)
    (case,) = cases_file.cases.cases
    assert cases_file.image_path(case) == (tmp_path / "samples" / "a.jpg").resolve()
    assert case.flagged == ["weapons"] and case.bands["violence"].value == "BELOW"
    assert problems_against_policy(cases_file, POLICY) == []


def test_unknown_case_field_is_reported_at_its_line(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, "policy: p\ncases:\n  - image: a.jpg\n    expect: ALLOW\n    expected_bands: {}\n")
    assert problem.startswith(f"{tmp_path / 'p.tests.yaml'}:5: cases[a.jpg].expected_bands: unknown field 'expected_bands'")
    assert "a case takes image, expect, flagged, bands, note" in problem


def test_bad_action_names_what_is_expected(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, "policy: p\ncases:\n  - image: a.jpg\n    expect: DENY\n")
    assert problem.endswith(":4: cases[a.jpg].expect: must be one of ALLOW, REVIEW or BLOCK, not the text 'DENY'")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("expect: REVIEW\n    flagged: [weapons]\n    bands: {violence: ABOVE}", "flagged leaves out 'violence' but bands says ABOVE"),
        ("expect: REVIEW\n    flagged: [weapons]\n    bands: {weapons: BELOW}", "flagged lists 'weapons' but bands says BELOW"),
        ("expect: BLOCK\n    flagged: []", "flagged is empty, so the action can only be ALLOW"),
        ("expect: ALLOW\n    flagged: [weapons]", "flagged names categories, so the action cannot be ALLOW"),
        ("expect: ALLOW\n    bands: {weapons: BORDERLINE}", "an ALLOW case can only expect BELOW bands"),
    ],
)
def test_contradictory_expectations_are_rejected_when_read(tmp_path: Path, case: str, message: str) -> None:
    (problem,) = problems_of(tmp_path, f"policy: p\ncases:\n  - image: a.jpg\n    {case}\n")
    assert message in problem


def test_duplicate_images_and_empty_cases_are_rejected(tmp_path: Path) -> None:
    duplicate = problems_of(tmp_path, "policy: p\ncases:\n  - {image: a.jpg, expect: ALLOW}\n  - {image: a.jpg, expect: BLOCK}\n")
    assert any("image 'a.jpg' appears in more than one case" in p for p in duplicate)
    assert any("cases:" in p for p in problems_of(tmp_path, "policy: p\ncases: []\n"))


def test_cases_naming_unknown_categories_or_another_policy(tmp_path: Path) -> None:
    path = write_cases(tmp_path, "policy: q\ncases:\n  - {image: a.jpg, expect: REVIEW, flagged: [weapon], bands: {drugs: BELOW}}\n")
    problems = [str(p) for p in problems_against_policy(load_cases_file(path), POLICY)]
    assert any("cases are for policy 'q', not 'p'" in p for p in problems)
    assert f"{path}:1: policy: cases are for policy 'q', not 'p'" in problems
    assert f"{path}:3: cases[a.jpg].flagged: category 'weapon' is not in policy 'p' (it has violence, weapons)" in problems
    assert f"{path}:3: cases[a.jpg].bands: category 'drugs' is not in policy 'p' (it has violence, weapons)" in problems


def test_mismatches_name_action_flagged_set_and_bands(tmp_path: Path) -> None:
    path = write_cases(
        tmp_path,
        """\
policy: p
cases:
  - {image: pass.jpg, expect: REVIEW, flagged: [weapons], bands: {violence: BELOW, weapons: ABOVE}}
  - {image: fail.jpg, expect: BLOCK, flagged: [violence], bands: {violence: ABOVE}}
""",
    )
    passing, failing = load_cases_file(path).cases.cases
    # weapons 0.85 is ABOVE with on_block REVIEW; violence 0.1 is BELOW.
    decision = decide({"violence": 0.1, "weapons": 0.85}, POLICY)
    assert mismatches(passing, decision) == []
    assert mismatches(failing, decision) == [
        "action REVIEW, expected BLOCK",
        "flagged ['weapons'], expected ['violence']",
        "violence BELOW (0.100), expected ABOVE",
    ]


def test_every_shipped_policy_has_valid_cases_with_decodable_images() -> None:
    for policy_path in sorted(POLICIES.glob("*.yaml")):
        policy, _ = load_policy_file(policy_path)
        cases_file = load_cases_file(cases_path_for(policy_path))
        assert problems_against_policy(cases_file, policy) == []
        for case in cases_file.cases.cases:
            image = decode_image(cases_file.image_path(case).read_bytes(), DecodeLimits())
            assert max(image.size) <= 512, f"{case.image}: keep sample images small"


def test_actions_and_bands_in_any_case(tmp_path: Path) -> None:
    path = write_cases(tmp_path, "policy: p\ncases:\n  - {image: a.jpg, expect: review, flagged: [weapons], bands: {weapons: borderline}}\n")
    (case,) = load_cases_file(path).cases.cases
    assert case.expect.value == "REVIEW" and case.bands["weapons"].value == "BORDERLINE"


def test_rule_problems_carry_no_misleading_hint_and_come_with_field_errors(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        "policy: p\ncases:\n"
        "  - {image: a.jpg, expect: BLOCK, flagged: []}\n"
        "  - {image: b.jpg, expect: DENY}\n"
        "  - {image: a.jpg, expect: ALLOW}\n",
    )
    path = tmp_path / "p.tests.yaml"
    assert problems == [
        f"{path}:3: cases[a.jpg]: flagged is empty, so the action can only be ALLOW, not BLOCK",
        f"{path}:4: cases[b.jpg].expect: must be one of ALLOW, REVIEW or BLOCK, not the text 'DENY'",
        f"{path}:5: cases[a.jpg].image: image 'a.jpg' appears in more than one case (first on line 3)",
    ]
