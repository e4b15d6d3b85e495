from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moderation.policy import Action, PolicyFileError, load_policy_file, load_policy_text
from moderation.policy.registry import PolicyNotFound, PolicyRegistry, load_policy_dir

ROOT = Path(__file__).resolve().parents[2]

VALID = """\
id: test
version: 3
benign: ["a cat"]
categories:
  - id: weapons
    clause: {id: W-1, text: "No threatening display of firearms."}
    positive: ["a gun"]
    thresholds: {review: 0.3, block: 0.6}
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(PolicyFileError) as caught:
        load_policy_text(text, source="p.yaml")
    return [str(p) for p in caught.value.problems]


def test_every_shipped_policy_is_valid() -> None:
    files = sorted((ROOT / "policies").glob("*.yaml"))
    assert files, "policies/ must ship at least one policy"
    for path in files:
        policy, _ = load_policy_file(path)
        assert policy.categories


def test_default_policy_is_realistic() -> None:
    policy, _ = load_policy_file(ROOT / "policies" / "default.yaml")
    assert policy.default
    ids = {c.id for c in policy.categories}
    assert {"sexual_content", "graphic_violence", "weapons", "hate_symbols", "self_harm", "drugs"} <= ids
    for category in policy.categories:
        assert len(category.clause.text) > 80, f"{category.id}: clause text should read like a real policy"
        assert category.contrast, f"{category.id}: needs contrast prompts for look-alike content"


def test_numeric_version_is_text_and_defaults_apply() -> None:
    policy = load_policy_text(VALID)
    assert policy.version == "3"
    assert policy.templates == ["a photo of {}."]
    assert policy.categories[0].on_block is Action.BLOCK


def test_errors_name_file_line_field_and_expectation() -> None:
    text = VALID.replace("review: 0.3", "review: 1.5")
    (problem,) = problems_of(text)
    assert problem.startswith("p.yaml:8: categories[0].thresholds.review:")
    assert "less than or equal to 1" in problem
    assert "expected scores at or above this go to REVIEW" in problem


def test_unknown_field_is_reported_at_its_line() -> None:
    text = VALID + "    treshold: 0.5\n"
    (problem,) = problems_of(text)
    assert problem.startswith("p.yaml:9: categories[0].treshold: unknown field")


def test_missing_field_is_reported() -> None:
    text = VALID.replace('benign: ["a cat"]\n', "")
    (problem,) = problems_of(text)
    assert "benign: this field is required" in problem


def test_review_above_block_is_rejected() -> None:
    text = VALID.replace("review: 0.3", "review: 0.9")
    (problem,) = problems_of(text)
    assert "review threshold 0.9 must not exceed block threshold 0.6" in problem


def test_on_block_allow_is_rejected() -> None:
    text = VALID + "    on_block: ALLOW\n"
    (problem,) = problems_of(text)
    assert "on_block must be BLOCK or REVIEW" in problem


def test_template_needs_one_slot() -> None:
    text = VALID.replace("id: test\n", "id: test\ntemplates: ['a photo']\n")
    (problem,) = problems_of(text)
    assert "must contain exactly one '{}'" in problem


def test_duplicate_category_and_clause_ids() -> None:
    data = yaml.safe_load(VALID)
    data["categories"].append(dict(data["categories"][0]))
    problems = problems_of(yaml.safe_dump(data))
    assert any("category id 'weapons' appears more than once" in p for p in problems)


def test_broken_yaml_points_at_line() -> None:
    (problem,) = problems_of("id: test\ncategories: [\n  - oops\n")
    assert problem.startswith("p.yaml:") and "not valid YAML" in problem


def test_not_a_mapping() -> None:
    (problem,) = problems_of("- just\n- a list\n")
    assert "must be a YAML mapping" in problem


def _write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_text(text)


def test_directory_rejects_duplicate_ids_and_two_defaults(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", VALID.replace("id: test", "id: test\ndefault: true"))
    _write(tmp_path, "b.yaml", VALID.replace("id: test", "id: test\ndefault: true"))
    with pytest.raises(PolicyFileError) as caught:
        load_policy_dir(tmp_path)
    text = str(caught.value)
    assert "policy id 'test' is also used by" in text
    assert "more than one policy is marked default" in text


def test_directory_skips_configmap_internals(tmp_path: Path) -> None:
    data = tmp_path / "..2026_11_23"
    data.mkdir()
    _write(data, "x.yaml", "not: [valid")
    _write(tmp_path, "p.yaml", VALID)
    assert [p.id for p, _, _ in load_policy_dir(tmp_path)] == ["test"]


def test_registry_default_lookup_and_model_check(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", VALID.replace("id: test", "id: alpha\ndefault: true"))
    _write(tmp_path, "b.yaml", VALID.replace("id: test", "id: beta\nmodel: ViT-L-14/openai"))
    registry = PolicyRegistry(lambda policy: policy.id.upper(), model_id="ViT-B-32/laion2b_s34b_b79k")
    with pytest.raises(PolicyFileError, match="calibrated for model 'ViT-L-14/openai'"):
        registry.load_directory(tmp_path)

    random_registry = PolicyRegistry(lambda policy: policy.id.upper(), model_id="ViT-B-32/random", random_weights=True)
    random_registry.load_directory(tmp_path)
    assert random_registry.get("").policy.id == "alpha"
    assert random_registry.get("beta").compiled == "BETA"
    with pytest.raises(PolicyNotFound, match="no policy 'gamma' is served; served policies: alpha, beta"):
        random_registry.get("gamma")


def test_shadow_policy_rules() -> None:
    assert "a shadow policy needs shadow_of" in problems_of(VALID + "mode: shadow\n")[0]
    assert "only for policies with mode: shadow" in problems_of(VALID + "shadow_of: other\n")[0]
    assert "cannot be the default" in problems_of(VALID + "mode: shadow\nshadow_of: other\ndefault: true\n")[0]


def test_shadow_must_name_an_active_policy_and_is_not_served_directly(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", VALID)
    _write(tmp_path, "b.yaml", VALID.replace("id: test", "id: test_shadow") + "mode: shadow\nshadow_of: missing\n")
    with pytest.raises(PolicyFileError, match="no active policy 'missing'"):
        load_policy_dir(tmp_path)
    _write(tmp_path, "b.yaml", VALID.replace("id: test", "id: test_shadow") + "mode: shadow\nshadow_of: test\n")
    registry = PolicyRegistry(lambda policy: policy.id, model_id="m")
    registry.load_directory(tmp_path)
    active, shadows = registry.with_shadows("")
    assert active.policy.id == "test" and [s.policy.id for s in shadows] == ["test_shadow"]
    with pytest.raises(PolicyNotFound, match="served policies: test$"):
        registry.get("test_shadow")
