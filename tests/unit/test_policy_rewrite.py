from __future__ import annotations

import difflib
from datetime import date

import pytest

from moderation.policy import load_policy_text
from moderation.policy.rewrite import RewriteError, format_threshold, next_version, rewrite_policy_text
from tests.conftest import POLICIES

BLOCK_STYLE = """\
# top comment
id: p
version: '7'   # bumped by calibration
benign: ["a cat"]
categories:
  - id: weapons
    clause: {id: W-1, text: "No threatening display of firearms."}
    positive: ["a gun"]
    thresholds:
      review: 0.3   # set by hand
      block: .6
  - id: drugs
    clause: {id: D-1, text: "No sale of illegal drugs."}
    positive: ["drugs"]
    thresholds: {review: 0.2, block: 0.9}
"""


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0) if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def test_default_policy_keeps_comments_and_changes_only_the_edited_lines() -> None:
    text = (POLICIES / "default.yaml").read_text()
    policy = load_policy_text(text)
    new_thresholds = {c.id: (0.2 + i / 100, 0.8 - i / 100) for i, c in enumerate(policy.categories)}
    edited = rewrite_policy_text(text, version="2026-11-24.1", thresholds=new_thresholds, model="ViT-B-32/openai")

    proposed = load_policy_text(edited)
    assert proposed.version == "2026-11-24.1" and proposed.model == "ViT-B-32/openai"
    for category in proposed.categories:
        assert (category.thresholds.review, category.thresholds.block) == new_thresholds[category.id]
    assert proposed.model_dump(exclude={"version", "model", "categories"}) == policy.model_dump(exclude={"version", "model", "categories"})
    assert [c.model_dump(exclude={"thresholds"}) for c in proposed.categories] == [c.model_dump(exclude={"thresholds"}) for c in policy.categories]
    comments = [line for line in text.splitlines() if line.lstrip().startswith("#")]
    assert comments and all(line in edited.splitlines() for line in comments)
    # One version line, one model line and one thresholds line per category, each replaced.
    assert len(changed_lines(text, edited)) == 2 * (2 + len(policy.categories))
    assert 'version: "2026-11-24.1"' in edited and "thresholds: {review: 0.2, block: 0.8}" in edited


def test_block_style_thresholds_quoting_and_model_inserted_after_version() -> None:
    edited = rewrite_policy_text(BLOCK_STYLE, version="8", thresholds={"weapons": (0.00001, 0.25)}, model="local-dir:/m/random")
    assert "      review: 0.00001   # set by hand\n      block: 0.25\n" in edited
    assert "version: '8'   # bumped by calibration\nmodel: \"local-dir:/m/random\"\n" in edited
    assert "thresholds: {review: 0.2, block: 0.9}" in edited  # drugs was not asked for
    assert edited.startswith("# top comment\n")


def test_plain_version_that_yaml_would_read_as_a_date_gets_quoted() -> None:
    text = BLOCK_STYLE.replace("version: '7'", "version: v7")
    edited = rewrite_policy_text(text, version="2026-11-24", thresholds={})
    assert 'version: "2026-11-24"' in edited
    assert "version: v8" in rewrite_policy_text(text, version="v8", thresholds={})


def test_shared_anchor_and_unknown_category_are_refused() -> None:
    anchored = BLOCK_STYLE.replace("thresholds:\n      review: 0.3   # set by hand\n      block: .6", "thresholds: &t {review: 0.3, block: 0.6}").replace(
        "thresholds: {review: 0.2, block: 0.9}", "thresholds: *t"
    )
    assert load_policy_text(anchored).category("drugs").thresholds.block == 0.6
    with pytest.raises(RewriteError, match="categories 'weapons' and 'drugs' share one thresholds mapping"):
        rewrite_policy_text(anchored, version="8", thresholds={"weapons": (0.1, 0.5), "drugs": (0.2, 0.7)})
    with pytest.raises(RewriteError, match=r"no categories \['guns'\] in the policy"):
        rewrite_policy_text(BLOCK_STYLE, version="8", thresholds={"guns": (0.1, 0.5)})


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("2026-11-23.1", "2026-11-23.2"),
        ("2026-11-20.4", "2026-11-23.1"),
        ("2026-11-23", "2026-11-23.1"),
        ("7", "8"),
        ("v1.9", "v1.10"),
        ("r007", "r008"),
        ("beta", "beta.1"),
    ],
)
def test_next_version(version: str, expected: str) -> None:
    assert next_version(version, date(2026, 11, 23)) == expected


def test_threshold_text_is_positional() -> None:
    assert [format_threshold(v) for v in (0.5, 0.00001, 1.0, 0.4667)] == ["0.5", "0.00001", "1", "0.4667"]
