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
    assert problem.startswith("p.yaml:8: categories[weapons].thresholds.review:")
    assert "must be at most 1.0, not 1.5" in problem
    assert "expected scores at or above this go to REVIEW" in problem


def test_unknown_field_is_reported_at_its_line() -> None:
    text = VALID + "    treshold: 0.5\n"
    (problem,) = problems_of(text)
    assert problem.startswith("p.yaml:9: categories[weapons].treshold: unknown field 'treshold' (did you mean 'thresholds'?")


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


def test_on_block_typo_lists_only_what_on_block_accepts() -> None:
    # Issue 22: "must be one of ALLOW, REVIEW or BLOCK", then ALLOW was refused.
    (problem,) = problems_of(VALID + "    on_block: BLOK\n")
    assert "must be BLOCK or REVIEW" in problem and "'BLOK'" in problem
    assert "one of ALLOW" not in problem


def test_template_needs_one_slot() -> None:
    text = VALID.replace("id: test\n", "id: test\ntemplates: ['a photo']\n")
    (problem,) = problems_of(text)
    assert "must contain exactly one '{}'" in problem


def test_duplicate_category_and_clause_ids() -> None:
    data = yaml.safe_load(VALID)
    data["categories"].append(dict(data["categories"][0]))
    problems = problems_of(yaml.safe_dump(data))
    assert any("category id 'weapons' is used twice" in p for p in problems)
    assert any("clause id 'W-1' is used twice" in p for p in problems)


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
    registry = PolicyRegistry(lambda policy, should_stop: policy.id.upper(), model_id="ViT-B-32/laion2b_s34b_b79k")
    with pytest.raises(PolicyFileError, match="calibrated for model 'ViT-L-14/openai'"):
        registry.load_directory(tmp_path)

    random_registry = PolicyRegistry(lambda policy, should_stop: policy.id.upper(), model_id="ViT-B-32/random", random_weights=True)
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
    registry = PolicyRegistry(lambda policy, should_stop: policy.id, model_id="m")
    registry.load_directory(tmp_path)
    active, shadows = registry.with_shadows("")
    assert active.policy.id == "test" and [s.policy.id for s in shadows] == ["test_shadow"]
    with pytest.raises(PolicyNotFound, match="served policies: test$"):
        registry.get("test_shadow")


# -- cost limits ----------------------------------------------------------------------


def _policy_with(categories: int = 1, prompts_each: int = 1, templates: int = 1, benign: int = 1) -> str:
    data = {
        "id": "big",
        "version": "1",
        "templates": [f"{i} {{}}." for i in range(templates)],
        "benign": [f"benign {i}" for i in range(benign)],
        "categories": [
            {
                "id": f"c{c}",
                "clause": {"id": f"C-{c}", "text": "A clause long enough to read."},
                "positive": [f"positive {c} {i}" for i in range(prompts_each)],
                "thresholds": {"review": 0.3, "block": 0.6},
            }
            for c in range(categories)
        ],
    }
    return yaml.safe_dump(data, sort_keys=False)


def test_limits_name_the_limit_and_allow_policies_at_it() -> None:
    from moderation.policy.schema import MAX_CATEGORIES, MAX_CATEGORY_PROMPTS, MAX_PROMPTS, MAX_TEMPLATES, MAX_TEXTS

    at_limits = load_policy_text(_policy_with(categories=MAX_CATEGORIES, prompts_each=7, templates=2, benign=MAX_PROMPTS - 7 * MAX_CATEGORIES))
    assert at_limits.text_count == MAX_TEXTS == 1024
    (problem,) = problems_of(_policy_with(categories=MAX_CATEGORIES + 1))
    assert problem == "p.yaml:7: categories: 65 categories; a policy may have at most 64 (limit MAX_CATEGORIES, docs/policies.md#limits)"
    (problem,) = problems_of(_policy_with(templates=MAX_TEMPLATES + 1))
    assert problem == "p.yaml:3: templates: 17 templates; a policy may have at most 16 (limit MAX_TEMPLATES, docs/policies.md#limits)"
    (problem,) = problems_of(_policy_with(prompts_each=MAX_CATEGORY_PROMPTS + 1))
    assert problem.startswith("p.yaml:8: categories[c0]: 33 positive and contrast prompts; a category may have at most 32")
    (problem,) = problems_of(_policy_with(benign=MAX_PROMPTS))
    assert problem.startswith("p.yaml:1: 513 prompts (benign, positive and contrast together); a policy may have at most 512 (limit MAX_PROMPTS")
    (problem,) = problems_of(_policy_with(templates=16, benign=64))
    assert problem.startswith("p.yaml:3: templates: 16 templates x 65 prompts = 1040 texts to encode; a policy may have at most 1024")
    assert "(limit MAX_TEXTS" in problem


def test_the_2000_by_2000_policy_of_the_incident_is_refused_quickly() -> None:
    import time

    started = time.monotonic()
    problems = problems_of(_policy_with(templates=2000, benign=2000))
    assert time.monotonic() - started < 5
    assert any("limit MAX_TEMPLATES" in p for p in problems) and any("limit MAX_TEXTS" in p for p in problems)


# -- every problem at once, in plain words ----------------------------------------------


def test_every_problem_of_a_file_comes_out_in_one_run_at_its_line() -> None:
    text = (
        VALID.replace("id: test", "id: test\nmode: shadow")
        + "  - id: weapons\n"
        + "    clause: {id: W-2, text: 'Another firearms clause.'}\n"
        + "    positive: ['a rifle']\n"
        + "    thresholds: {review: 0.3, block: 0.6}\n"
        + "    on_blok: REVIEW\n"
    )
    problems = problems_of(text)
    assert problems[:2] == [
        "p.yaml:2: mode: a shadow policy needs shadow_of: the id of the active policy it runs beside",
        "p.yaml:10: categories[weapons].id: category id 'weapons' is used twice; each category id must be unique in the policy "
        "(first on line 6)",
    ]
    assert problems[2].startswith("p.yaml:14: categories[weapons].on_blok: unknown field 'on_blok' (did you mean 'on_block'? a category takes id,")
    assert len(problems) == 3


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda t: t.replace('clause: {id: W-1, text: "No threatening display of firearms."}', "clause: W-1"),
            "p.yaml:6: categories[weapons].clause: must be a mapping with id, text (one 'key: value' per line, or {key: value, ...}), "
            "not the text 'W-1'",
        ),
        (
            lambda t: t.replace('    positive: ["a gun"]', '     positive: ["a gun"]'),
            "p.yaml:7: not valid YAML: this line does not line up with the lines above it: the keys of one mapping start in the same column",
        ),
        (lambda t: t.replace("  - id: weapons", "\t- id: weapons"), "p.yaml:5: not valid YAML: a tab character: indent with spaces only"),
        (
            lambda t: t.replace("{review: 0.3, block: 0.6}", "[0.3, 0.6]"),
            "p.yaml:8: categories[weapons].thresholds: must be a mapping with review, block (one 'key: value' per line, or "
            "{key: value, ...}), not a list",
        ),
        (
            lambda t: t.replace("id: weapons", "id: Weapons"),
            "p.yaml:5: categories[Weapons].id: must be lower_snake_case: a lowercase letter, then lowercase letters, digits or '_', "
            "at most 63 characters (e.g. 'graphic_violence'), not the text 'Weapons'",
        ),
        (
            lambda t: t.replace('positive: ["a gun"]', "positive: []"),
            "p.yaml:7: categories[weapons].positive: must not be empty (expected prompts describing violating content)",
        ),
        (
            lambda t: t + "    explainer: final\n",
            "p.yaml:9: categories[weapons].explainer: must be one of advisory or decisive, not the text 'final'",
        ),
        (
            lambda t: t.replace("    thresholds:", "    positive: ['a rifle']\n    thresholds:"),
            "p.yaml:8: categories[weapons]: 'positive' appears twice in this mapping (first on line 7); YAML would silently keep "
            "only the last one: delete or merge one of them",
        ),
    ],
)
def test_problems_read_as_plain_sentences(edit, expected: str) -> None:  # noqa: ANN001
    problems = problems_of(edit(VALID))
    assert problems == [expected]
    for jargon in ("Input should", "instance of", "<block end>", "Value error", "validation"):
        assert jargon not in problems[0]


def test_actions_roles_and_modes_are_case_insensitive() -> None:
    text = VALID + "    on_block: review\n    explainer: Decisive\n"
    policy = load_policy_text(text)
    assert policy.categories[0].on_block is Action.REVIEW
    assert policy.categories[0].explainer.value == "decisive"
    assert load_policy_text(VALID.replace("id: test", "id: test\nmode: Shadow\nshadow_of: other")).mode.value == "shadow"


def test_a_file_with_thousands_of_problems_shows_the_first_ones() -> None:
    text = _policy_with(categories=60).replace("review: 0.3", "review: high")
    problems = problems_of(text)
    assert len(problems) == 51
    assert problems[-1] == "p.yaml: and more problems not shown: 10 of them; fix these first"


def test_content_hash_ignores_comments_layout_and_defaults() -> None:
    from moderation.policy.schema import content_sha256

    plain = load_policy_text(VALID)
    commented = load_policy_text("# a note\n" + VALID.replace("{review: 0.3, block: 0.6}", "\n      review: 0.30\n      block: 0.6") + "    on_block: BLOCK\n")
    assert content_sha256(plain) == content_sha256(commented)
    assert content_sha256(plain) != content_sha256(load_policy_text(VALID.replace("a gun", "a rifle")))


# -- the loader's edges (moderation/policy/loader.py, docs/policies.md "limits") ----------------------


def test_a_policy_file_of_exactly_the_byte_limit_is_read_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    from tests.policies import one_category_yaml

    text = one_category_yaml("1")
    path = tmp_path / "p.yaml"
    # The padding first and no final newline: the last byte read is the policy's own closing brace.
    path.write_text("#" * (1_000_000 - len(text.encode())) + "\n" + text.rstrip("\n"))
    assert path.stat().st_size == 1_000_000
    assert load_policy_file(path)[0].categories[0].thresholds.block == 0.6
    path.write_text(text + "#" * (1_000_001 - len(text.encode())))
    with pytest.raises(PolicyFileError) as caught:
        load_policy_file(path)
    assert [str(p) for p in caught.value.problems] == [f"{path}: file is 1000001 bytes; a policy must be under 1000000"]


def test_a_location_names_items_by_id_or_by_their_1_based_position() -> None:
    """loader.dotted's documented form: `categories[weapons].thresholds.review`, `positive[#2]`."""
    from moderation.policy.loader import dotted

    data = {"categories": [{"id": "weapons", "positive": ["a", "b"]}], "Benign": {"x": 1}}
    assert dotted(("categories", 0, "thresholds", "review"), data) == "categories[weapons].thresholds.review"
    assert dotted(("categories", 0, "positive", 1), data) == "categories[weapons].positive[#2]"
    assert dotted(("categories", 0, "positive", 2), data) == "categories[weapons].positive[#3]"  # past the end
    assert dotted(("categories", 0, "positive", 7), data) == "categories[weapons].positive[#8]"
    assert dotted(("Benign", 0), data) == "Benign[#1]"  # an index into a mapping: by position only
    assert dotted(("Benign", "[key]", "x"), data) == "Benign.x"  # pydantic's key marker is not shown


def test_whole_file_problems_come_first_and_the_count_of_hidden_ones_last() -> None:
    from moderation.policy.loader import PolicyProblem, problem_order

    line_one = PolicyProblem("p.yaml", 1, "id", "bad id")
    whole = PolicyProblem("p.yaml", None, "", "file is not UTF-8 text")
    more = PolicyProblem("p.yaml", None, "", "and more problems not shown: 3 of them; fix these first")
    line_nine = PolicyProblem("p.yaml", 9, "version", "bad version")
    assert sorted([more, line_one, line_nine, whole], key=problem_order) == [whole, line_one, line_nine, more]


def test_loader_problems_say_where_and_why(tmp_path: Path) -> None:
    import dataclasses

    from moderation.policy.loader import PolicyProblem

    with pytest.raises(PolicyFileError) as caught:
        load_policy_file(tmp_path)  # a directory, not a file
    assert [str(p) for p in caught.value.problems] == [f"{tmp_path}: cannot read file: Is a directory"]
    with pytest.raises(PolicyFileError) as caught:
        load_policy_text("- a\n- b\n", source="list.yaml")
    (problem,) = caught.value.problems
    assert (problem.path, problem.line) == ("list.yaml", 1)
    warning = PolicyProblem("p.yaml", 3, "model", "calibrated for another model")
    assert PolicyFileError([problem], [warning]).warnings == [warning]
    assert PolicyFileError([problem]).warnings == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.line = 2  # type: ignore[misc]


def test_a_problem_points_at_the_deepest_line_its_location_reaches() -> None:
    """loader.line_of: the value's key line; a location that leaves the file stops at the last line it reached."""
    from moderation.policy.loader import line_of

    text = "version: '1'\nid: p\npositive:\n  - a\n  - b\n"
    assert line_of(text, ("positive", 1)) == 5
    assert line_of(text, ("positive", 2)) == line_of(text, ("positive", 9)) == 3  # past the end: the list's key
    assert line_of(text, ("positive", "x")) == 3
    assert line_of(text, ("id", 0)) == 2  # a scalar has no items
    assert line_of(text, ("nothere", "id")) == 1  # not found: not looked for again one level up
    assert line_of("id: [broken\n", ("id",)) is None


@pytest.mark.parametrize(("count", "shown", "more"), [(49, 49, None), (50, 50, None), (51, 50, "p.yaml: and more problems not shown: 1 of them; fix these first")])
def test_a_file_with_more_than_50_problems_lists_the_first_50_and_how_many_more(count: int, shown: int, more: str | None) -> None:
    """docs/policies.md ("Limits"): "A file with more than 50 problems lists the first 50 and how many more there are"."""
    problems = problems_of(_policy_with(categories=count).replace("review: 0.3", "review: high"))
    listed = [p for p in problems if "and more problems not shown" not in p]
    assert len(listed) == shown
    assert all("thresholds.review" in p for p in listed)
    assert listed[0].startswith("p.yaml:") and "categories[c0].thresholds.review" in listed[0]
    assert f"categories[c{shown - 1}].thresholds.review" in listed[-1]
    assert problems[shown:] == ([more] if more else [])
