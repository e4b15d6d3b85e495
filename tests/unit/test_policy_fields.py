"""The bounds of each policy field, at and one past each edge (docs/policies.md: the field tables and "Limits").

Pure schema checks (no model): what `moderation policy validate` accepts and refuses.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import pytest
import yaml

from moderation.policy import Action, PolicyFileError, load_policy_text
from moderation.policy.schema import MAX_BANK_RULES, MAX_CATEGORY_PROMPTS, MAX_PROBE_DIM


def policy_data(**top: Any) -> dict:
    category = {
        "id": "weapons",
        "clause": {"id": "W-1", "text": "No threatening display of firearms."},
        "positive": ["a gun"],
        "thresholds": {"review": 0.3, "block": 0.6},
    }
    data = {"id": "test", "version": "1", "benign": ["a cat"], "categories": [category]}
    data.update(top)
    return data


def with_category(**fields: Any) -> dict:
    data = policy_data()
    data["categories"][0].update(fields)
    return data


def load(data: dict):  # noqa: ANN201
    return load_policy_text(yaml.safe_dump(data, sort_keys=False), source="p.yaml")


def problems(data: dict) -> list[str]:
    with pytest.raises(PolicyFileError) as caught:
        load(data)
    return [str(p) for p in caught.value.problems]


def test_action_severity_orders_allow_review_block() -> None:
    """'Decision for an image or a category, ordered by severity': ALLOW < REVIEW < BLOCK."""
    assert Action.ALLOW.severity < Action.REVIEW.severity < Action.BLOCK.severity
    assert sorted(Action, key=lambda a: a.severity) == [Action.ALLOW, Action.REVIEW, Action.BLOCK]


def test_a_prompt_is_1_to_300_characters_after_trimming() -> None:
    assert load(policy_data(benign=["x" * 300])).benign == ["x" * 300]
    assert load(policy_data(benign=["  a cat  "])).benign == ["a cat"]
    (problem,) = problems(policy_data(benign=["x" * 301]))
    assert "benign[#1]" in problem and "300" in problem
    (problem,) = problems(policy_data(benign=["   "]))
    assert "benign[#1]" in problem


def test_a_clause_is_an_id_and_10_to_2000_characters_of_text() -> None:
    assert load(with_category(clause={"id": "A" * 32, "text": "x" * 10})).categories[0].clause.id == "A" * 32
    assert load(with_category(clause={"id": "V-2.b_c", "text": "x" * 2000}))
    assert "clause.text" in problems(with_category(clause={"id": "W-1", "text": "x" * 9}))[0]
    assert "clause.text" in problems(with_category(clause={"id": "W-1", "text": "x" * 2001}))[0]
    assert "clause.id" in problems(with_category(clause={"id": "A" * 33, "text": "x" * 10}))[0]
    assert "clause.id" in problems(with_category(clause={"id": "1-W", "text": "x" * 10}))[0]


def test_escalation_instruction_is_20_to_2000_characters() -> None:
    """docs/policies.md: `escalation.instruction`: 20-2000 characters."""
    for length in (20, 2000):
        assert load(policy_data(escalation={"instruction": "x" * length})).escalation.instruction == "x" * length
    assert load(policy_data()).escalation.instruction is None
    for length in (19, 2001):
        (problem,) = problems(policy_data(escalation={"instruction": "x" * length}))
        assert "escalation.instruction" in problem


def test_a_version_is_1_to_64_characters_starting_with_a_letter_or_digit() -> None:
    assert load(policy_data(version="v" * 64)).version == "v" * 64
    assert load(policy_data(version="2026-11-23.1+b_2")).version == "2026-11-23.1+b_2"
    for bad in ("v" * 65, "", ".1", "1 2"):
        (problem,) = problems(policy_data(version=bad))
        assert problem.startswith("p.yaml:2: version:"), bad


def test_a_template_has_exactly_one_slot_and_3_to_200_characters() -> None:
    assert load(policy_data(templates=["{}."])).templates == ["{}."]
    assert load(policy_data(templates=["x" * 198 + "{}"])).templates == ["x" * 198 + "{}"]
    for bad in ("{}", "x" * 199 + "{}", "a photo", "{} and {}"):
        (problem,) = problems(policy_data(templates=[bad]))
        assert "templates[#1]" in problem, bad
    assert "must contain exactly one '{}'" in problems(policy_data(templates=["{} and {}"]))[0]
    assert "must contain exactly one '{}'" in problems(policy_data(templates=["a photo"]))[0]


def test_a_category_counts_positive_and_contrast_prompts_together() -> None:
    """MAX_CATEGORY_PROMPTS bounds positive + contrast of one category (docs/policies.md "Limits")."""
    half = MAX_CATEGORY_PROMPTS // 2
    at_limit = with_category(positive=[f"p{i}" for i in range(half)], contrast=[f"c{i}" for i in range(MAX_CATEGORY_PROMPTS - half)])
    assert len(load(at_limit).categories[0].contrast) == MAX_CATEGORY_PROMPTS - half
    over = with_category(positive=[f"p{i}" for i in range(half + 1)], contrast=[f"c{i}" for i in range(MAX_CATEGORY_PROMPTS - half)])
    (problem,) = problems(over)
    assert f"{MAX_CATEGORY_PROMPTS + 1} positive and contrast prompts; a category may have at most {MAX_CATEGORY_PROMPTS}" in problem


# -- bank rules (docs/policies.md "Each bank rule", docs/banks.md) ---------------------------


def rules(count: int, **rule: Any) -> list[dict]:
    return [{"bank": f"bank-{i}", "category": "weapons", **rule} for i in range(count)]


def test_a_policy_names_at_most_32_banks_each_once() -> None:
    assert len(load(policy_data(banks=rules(MAX_BANK_RULES))).banks) == MAX_BANK_RULES == 32
    (problem,) = problems(policy_data(banks=rules(MAX_BANK_RULES + 1)))
    assert "33 bank rules; a policy may have at most 32 (limit MAX_BANK_RULES" in problem
    twice = rules(2)
    twice[1]["bank"] = "bank-0"
    (problem,) = problems(policy_data(banks=twice))
    assert "bank 'bank-0' has two rules; one rule says what its match does" in problem


def test_a_bank_rule_names_a_category_of_the_policy_and_never_allows() -> None:
    policy = load(policy_data(banks=[{"bank": "b", "category": "weapons"}, {"bank": "c", "category": "weapons", "action": "review"}]))
    assert [r.action for r in policy.banks] == [Action.BLOCK, Action.REVIEW]
    (problem,) = problems(policy_data(banks=[{"bank": "b", "category": "drugs"}]))
    assert "bank rule names category 'drugs', which this policy does not have; its categories: weapons" in problem
    (problem,) = problems(policy_data(banks=[{"bank": "b", "category": "weapons", "action": "ALLOW"}]))
    assert "a match can never ALLOW" in problem


def test_a_bank_name_is_1_to_128_characters_without_surrounding_spaces() -> None:
    assert load(policy_data(banks=[{"bank": "b" * 128, "category": "weapons"}])).banks[0].bank == "b" * 128
    assert load(policy_data(banks=[{"bank": "x", "category": "weapons"}])).banks[0].bank == "x"
    for bad in ("", "b" * 129, " b", "b "):
        (problem,) = problems(policy_data(banks=[{"bank": bad, "category": "weapons"}]))
        assert "banks[#1].bank" in problem, bad


# -- probes (docs/policies.md: `probe`, "moderation policy train") -------------------------


def weights(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")


def probe(**fields: Any) -> dict:
    return {"model": "m", "weights": weights([0.5, -1.0]), "bias": 0.25, **fields}


def test_probe_weights_are_1_to_2048_finite_float32_values() -> None:
    loaded = load(with_category(probe=probe()) | {"model": "m"}).categories[0].probe
    assert loaded.dim == 2 and loaded.vector() == [0.5, -1.0] and loaded.bias == 0.25
    one = load(with_category(probe=probe(weights=weights([3.0]))) | {"model": "m"}).categories[0].probe
    assert one.dim == 1 and one.vector() == [3.0]
    widest = load(with_category(probe=probe(weights=weights([0.125] * MAX_PROBE_DIM))) | {"model": "m"}).categories[0].probe
    assert MAX_PROBE_DIM == 2048 and widest.dim == 2048 and widest.vector() == [0.125] * 2048
    for bad, message in (
        (weights([0.1] * (MAX_PROBE_DIM + 1)), "weights"),
        (base64.b64encode(b"\0" * 6).decode(), "float32 values; these are 6 bytes"),
        (weights([1.0, math.inf]), "must be finite"),
        (weights([-math.inf]), "must be finite"),
        ("AAAA AAAA", "must be base64 text"),
    ):
        (problem,) = problems(with_category(probe=probe(weights=bad)) | {"model": "m"})
        assert "categories[weapons].probe.weights" in problem and message in problem, bad
    (problem,) = problems(with_category(probe=probe(bias=math.nan)) | {"model": "m"})
    assert "probe.bias" in problem


def test_a_probe_model_is_1_to_200_characters_and_must_be_the_policy_model() -> None:
    long_model = "m" * 200
    assert load(with_category(probe=probe(model=long_model)) | {"model": long_model}).categories[0].probe.model == long_model
    (problem,) = problems(with_category(probe=probe(model="m" * 201)) | {"model": "m" * 201})
    assert "probe.model" in problem
    # Model ids compare case-insensitively, ignoring spaces around them.
    assert load(with_category(probe=probe(model="ViT-B-32/OpenAI")) | {"model": " vit-b-32/openai "})
    (problem,) = problems(with_category(probe=probe(model="other")) | {"model": "m"})
    assert "the probe was trained on model 'other' but the policy is for 'm'" in problem
    (problem,) = problems(with_category(probe=probe()))
    assert "a policy with a probe must name its model: add `model: m`" in problem


def test_what_training_measured_is_bounded() -> None:
    good = {"examples": 2, "positives": 1, "held_out": 0, "held_out_auc": 1.0, "zero_shot_auc": 0.0}
    training = load(with_category(probe=probe(training=good)) | {"model": "m"}).categories[0].probe.training
    assert (training.examples, training.positives, training.held_out, training.zero_shot_auc) == (2, 1, 0, 0.0)
    assert load(with_category(probe=probe(training=good | {"zero_shot_auc": 1.0, "held_out_auc": 0.0})) | {"model": "m"})
    for field, bad in (("examples", 1), ("positives", 0), ("held_out", -1), ("held_out_auc", 1.01), ("zero_shot_auc", 1.01), ("zero_shot_auc", -0.01)):
        (problem,) = problems(with_category(probe=probe(training=good | {field: bad})) | {"model": "m"})
        assert f"probe.training.{field}" in problem, field


def test_a_category_is_found_by_its_id() -> None:
    data = policy_data()
    data["categories"].append({"id": "drugs", "clause": {"id": "D-1", "text": "No drug paraphernalia."}, "positive": ["a syringe"], "thresholds": {"review": 0.2, "block": 0.9}})
    policy = load(data)
    assert policy.category("drugs").clause.id == "D-1"
    assert policy.category("weapons").clause.id == "W-1"
    with pytest.raises(KeyError):
        policy.category("hate_symbols")


def test_thresholds_are_numbers_in_0_to_1() -> None:
    for review, block in ((0.0, 0.0), (0.0, 1.0), (1.0, 1.0)):
        assert load(with_category(thresholds={"review": review, "block": block})).categories[0].thresholds.block == block
    for review, block, field in ((-0.01, 0.5, "review"), (0.2, -0.01, "block"), (0.2, 1.01, "block")):
        assert f"thresholds.{field}" in problems(with_category(thresholds={"review": review, "block": block}))[0]


def test_benign_needs_at_least_one_prompt() -> None:
    (problem,) = problems(policy_data(benign=[]))
    assert problem.startswith("p.yaml:3: benign: must not be empty")


def test_probe_weights_that_are_not_ascii_base64_are_refused_with_a_sentence() -> None:
    (problem,) = problems(with_category(probe=probe(weights="ÄÖÜß" * 3)) | {"model": "m"})
    assert "probe weights must be base64 text, as `moderation policy train` writes them" in problem


def test_training_notes_are_bounded() -> None:
    good = {"examples": 2, "positives": 1, "held_out": 0, "labels": "l" * 500, "trained_at": "t" * 40}
    assert load(with_category(probe=probe(training=good)) | {"model": "m"}).categories[0].probe.training.trained_at == "t" * 40
    for field, bad in (("labels", "l" * 501), ("trained_at", "t" * 41)):
        assert f"probe.training.{field}" in problems(with_category(probe=probe(training=good | {field: bad})) | {"model": "m"})[0]


def test_every_category_with_a_probe_is_checked_against_the_policy_model() -> None:
    """The rule holds for a probe in any category, not only the first (which here has none)."""
    data = policy_data(model="m")
    data["categories"].append(
        {"id": "drugs", "clause": {"id": "D-1", "text": "No drug paraphernalia."}, "positive": ["a syringe"], "thresholds": {"review": 0.2, "block": 0.9}}
    )
    data["categories"][1]["probe"] = probe(model="other")
    (problem,) = problems(data)
    assert "categories[drugs].probe.model" in problem and "trained on model 'other'" in problem


def test_a_shadow_policy_names_another_policy() -> None:
    """docs/policies.md: `shadow_of` is the id of another, active policy; a policy cannot shadow itself."""
    for other in ("zebra", "alpha"):  # ids that sort after and before this one's
        assert load(policy_data(mode="shadow", shadow_of=other)).shadow_of == other
    (problem,) = problems(policy_data(mode="shadow", shadow_of="test"))
    assert problem.startswith("p.yaml:") and "shadow_of: shadow_of must name another policy, not this one" in problem


def test_a_one_character_prompt_and_an_empty_probe_model() -> None:
    assert load(policy_data(benign=["x"])).benign == ["x"]
    found = problems(with_category(probe=probe(model="")) | {"model": "m"})
    assert any("probe.model: must not be empty" in p or "probe.model: must be at least 1" in p for p in found), found
    for field in ("held_out_auc", "zero_shot_auc"):
        good = {"examples": 2, "positives": 1, "held_out": 0}
        assert f"probe.training.{field}" in problems(with_category(probe=probe(training=good | {field: -0.01})) | {"model": "m"})[0]


def test_a_probe_trained_on_a_model_that_sorts_first_is_still_another_model() -> None:
    (problem,) = problems(with_category(probe=probe(model="a-model")) | {"model": "m"})
    assert "the probe was trained on model 'a-model' but the policy is for 'm'" in problem


def test_templates_and_categories_cannot_be_empty_lists() -> None:
    (problem,) = problems(policy_data(templates=[]))
    assert problem.startswith("p.yaml:") and "templates: must not be empty" in problem
    (problem,) = problems(policy_data(categories=[]))
    assert "categories: must not be empty" in problem


def test_a_version_is_text_a_number_becomes_text_and_a_yes_no_is_refused() -> None:
    assert load(policy_data(version=3)).version == "3"
    assert load(policy_data(version=1.5)).version == "1.5"
    (problem,) = problems(policy_data(version=True))
    assert problem.startswith("p.yaml:2: version:")


def test_an_unknown_mode_is_one_problem_whatever_shadow_of_says() -> None:
    """A mode that is neither active nor shadow is the mode's own problem; no shadow rule is guessed from it."""
    for mode in ("standby", "aaa", "zzz"):
        (problem,) = problems(policy_data(mode=mode, shadow_of="other"))
        assert problem.startswith("p.yaml:") and "mode: must be one of active or shadow" in problem, (mode, problem)
        (problem,) = problems(policy_data(mode=mode))
        assert "mode: must be one of active or shadow" in problem


def test_duplicate_ids_are_found_past_a_category_whose_id_is_not_text() -> None:
    data = policy_data()
    first = data["categories"][0]
    data["categories"] = [first | {"id": 5, "clause": {"id": "X-1", "text": "A clause long enough."}}, first, dict(first)]
    found = problems(data)
    assert any("categories[#1].id" in p for p in found)
    assert any("category id 'weapons' is used twice" in p for p in found)
    assert any("clause id 'W-1' is used twice" in p for p in found)


def test_text_count_is_templates_times_every_prompt() -> None:
    data = with_category(positive=["a", "b", "c"], contrast=["d", "e"])
    data["templates"] = ["a photo of {}.", "a drawing of {}."]
    data["benign"] = ["x", "y"]
    assert load(data).text_count == 2 * (2 + 3 + 2)


def test_a_loaded_policy_cannot_be_changed_in_place() -> None:
    import pydantic

    policy = load(policy_data())
    with pytest.raises(pydantic.ValidationError):
        policy.version = "2"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        policy.categories[0].thresholds.block = 0.1  # type: ignore[misc]


def test_the_content_hash_is_of_the_sorted_compact_json_of_what_is_not_default() -> None:
    """content_sha256: 'blind to comments, layout and fields left at their default': a new field with a default
    leaves every existing policy's hash as it was. Built here from the YAML by hand."""
    import hashlib
    import json

    from moderation.policy.schema import content_sha256

    data = policy_data()
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert content_sha256(load(data)) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
