"""Re-scoring stored embeddings under two policies: known flips, model checks, no image tower."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from moderation.cli import app
from moderation.signals.clip import ClipScorer
from moderation.core.decision import decide
from moderation.policy import Action, Policy
from moderation.offline.rescore import CannotRescore, rescore_stored_decisions
from moderation.state.store import open_store
from tests.conftest import POLICIES, TINY_CLIP

NOW = datetime.now(timezone.utc)
IMAGES = 20
DEFAULT = yaml.safe_load((POLICIES / "default.yaml").read_text())


def policy_with(version: str, thresholds: dict[str, tuple[float, float]]) -> dict:
    """The default policy's prompts with thresholds of 1.0 (nothing flagged) except those given."""
    data = yaml.safe_load(yaml.safe_dump(DEFAULT))
    data["version"] = version
    for category in data["categories"]:
        review, block = thresholds.get(category["id"], (1.0, 1.0))
        category["thresholds"] = {"review": review, "block": block}
    return data


def embeddings(dim: int) -> np.ndarray:
    vectors = np.random.default_rng(11).standard_normal((IMAGES, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def between_kth_and_next(scores: np.ndarray, k: int) -> float:
    """A threshold that exactly k of `scores` reach."""
    ranked = np.sort(scores)[::-1]
    return float((ranked[k - 1] + ranked[k]) / 2)


@pytest.fixture(scope="module")
def scenario(tiny_scorer: ClipScorer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A store of 20 'default' decisions, OLD flagging nothing and NEW flagging a known set."""
    vectors = embeddings(tiny_scorer.encoder.encode_texts(["dimension"]).shape[1])
    old = Policy.model_validate(policy_with("1", {}))
    # Prompts do not change between OLD and NEW, so neither do scores: pick NEW's
    # thresholds from them so that exactly the top 5 weapons and top 3 drugs images flip.
    scores = tiny_scorer.score(torch.from_numpy(vectors), tiny_scorer.index_policy(old))
    weapons = np.array([s["weapons"] for s in scores])
    drugs = np.array([s["drugs"] for s in scores])
    new_data = policy_with("2", {"weapons": (between_kth_and_next(weapons, 5),) * 2, "drugs": (between_kth_and_next(drugs, 3), 1.0)})
    new = Policy.model_validate(new_data)

    path = tmp_path_factory.mktemp("rescore") / "store.db"
    with open_store(path) as store:
        for i, vector in enumerate(vectors):
            stored_action = decide(scores[i], old).action if i != 7 else Action.BLOCK  # r7 was not decided by OLD
            version = "1" if i != 8 else "0.9"  # r8 was decided by an earlier version
            store.record(f"r{i}", NOW - timedelta(hours=i), "default", version, stored_action, vector, tiny_scorer.model_id)
        store.record("elsewhere", NOW, "marketplace", "4", "ALLOW", vectors[0], tiny_scorer.model_id)
        store.record("too-old", NOW - timedelta(days=30), "default", "1", "ALLOW", vectors[0], "ViT-L-14/openai")
    top_weapons = {f"r{i}" for i in np.argsort(-weapons)[:5]}
    top_drugs = {f"r{i}" for i in np.argsort(-drugs)[:3]}
    return {"store": path, "old": old, "new": new, "new_data": new_data, "weapons": top_weapons, "drugs": top_drugs}


def test_known_flips_per_action_and_category(tiny_scorer: ClipScorer, scenario: dict) -> None:
    flips = rescore_stored_decisions(scenario["store"], tiny_scorer, scenario["old"], scenario["new"], NOW - timedelta(days=7), policy_id="default", examples_per_change=50)
    assert flips.decisions == IMAGES  # not the marketplace one, not the month-old one
    # weapons has on_block REVIEW: ABOVE means REVIEW; drugs between review and block is REVIEW too.
    assert dict(flips.category_changes) == {
        "weapons": {(Action.ALLOW, Action.REVIEW): 5},
        "drugs": {(Action.ALLOW, Action.REVIEW): 3},
    }
    assert set(flips.category_examples[("weapons", (Action.ALLOW, Action.REVIEW))]) == scenario["weapons"]
    assert set(flips.category_examples[("drugs", (Action.ALLOW, Action.REVIEW))]) == scenario["drugs"]
    flipped = scenario["weapons"] | scenario["drugs"]
    assert flips.action_changes == {(Action.ALLOW, Action.REVIEW): len(flipped)}
    assert set(flips.action_examples[(Action.ALLOW, Action.REVIEW)]) == flipped
    assert flips.changed == len(flipped)
    assert flips.not_reproduced == 1 and flips.not_reproduced_examples == ["r7"]
    assert flips.stored_versions == {"1": IMAGES - 1, "0.9": 1}


def test_only_text_is_encoded(tiny_scorer: ClipScorer, scenario: dict) -> None:
    model = tiny_scorer.encoder
    calls = {"image": 0, "text": 0}
    original_image, original_text = model.encode_images, model.encode_texts

    def counting_image(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["image"] += 1
        return original_image(*args, **kwargs)

    def counting_text(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["text"] += 1
        return original_text(*args, **kwargs)

    model.encode_images, model.encode_texts = counting_image, counting_text
    try:
        flips = rescore_stored_decisions(scenario["store"], tiny_scorer, scenario["old"], scenario["new"], NOW - timedelta(days=7), policy_id="default")
    finally:
        del model.encode_images, model.encode_texts
    assert flips.decisions == IMAGES
    assert calls["image"] == 0 and calls["text"] > 0


def test_embeddings_of_another_model_are_refused(tiny_scorer: ClipScorer, scenario: dict) -> None:
    with pytest.raises(CannotRescore, match=r"come from 'ViT-L-14/openai' \(1 decisions\), not from 'local-dir:.*tiny-clip/random'"):
        rescore_stored_decisions(scenario["store"], tiny_scorer, scenario["old"], scenario["new"], NOW - timedelta(days=60))
    with pytest.raises(CannotRescore, match="holds no decisions from .* for policy 'nsfw'"):
        rescore_stored_decisions(scenario["store"], tiny_scorer, scenario["old"], scenario["new"], NOW - timedelta(days=7), policy_id="nsfw")


def test_diff_command_reports_the_known_flips(scenario: dict, tmp_path: Path) -> None:
    old_file, new_file = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old_file.write_text(yaml.safe_dump(policy_with("1", {})))
    new_file.write_text(yaml.safe_dump(scenario["new_data"]))
    # The CLI seeds torch as the tiny_scorer fixture does, so it builds the same random model.
    result = CliRunner().invoke(
        app, ["policy", "diff", str(old_file), str(new_file), "--store", str(scenario["store"]), "--since", "2d", "--model", f"local-dir:{TINY_CLIP}", "--weights", "random"]
    )
    assert result.exit_code == 0, result.output
    flipped = len(scenario["weapons"] | scenario["drugs"])
    assert f"re-scored {IMAGES} 'default' decisions of the last 2d" in result.output
    assert f"{flipped} change action" in result.output
    assert "image action changes" in result.output and "category action changes" in result.output
    assert "random weights" in result.output
    assert "1 decisions were made under other versions than 1: 0.9 (1)" in result.output
    # The warnings qualify every count: they come before them, not after the examples (issue 22).
    lines = result.stdout.splitlines()
    warned = next(i for i, line in enumerate(lines) if "decisions were made under other versions" in line)
    assert warned < next(i for i, line in enumerate(lines) if line.startswith("re-scored"))
    assert warned < next(i for i, line in enumerate(lines) if "get another action from it now" in line) < lines.index("image action changes")


def test_diff_command_refuses_another_model_before_loading_one(scenario: dict, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["policy", "diff", str(POLICIES / "default.yaml"), str(POLICIES / "default.yaml"), "--store", str(scenario["store"]), "--since", "60d", "--weights", str(tmp_path / "none.bin")],
    )
    assert result.exit_code == 2
    assert "error:" in result.output and "not from 'ViT-B-32/none.bin'" in result.output
    assert "cannot load CLIP model" not in result.output  # refused before trying to load it
    missing = CliRunner().invoke(app, ["policy", "diff", str(POLICIES / "default.yaml"), str(POLICIES / "default.yaml"), "--store", str(tmp_path / "nope.db")])
    assert missing.exit_code == 2 and "no state store at" in missing.output
    bad_age = CliRunner().invoke(app, ["policy", "diff", str(POLICIES / "default.yaml"), str(POLICIES / "default.yaml"), "--store", str(tmp_path / "nope.db"), "--since", "week"])
    assert bad_age.exit_code == 2 and "--since 'week' is not an age" in bad_age.output
    for age in ("infd", "0d", "1.5d", "999999w"):
        refused = CliRunner().invoke(app, ["policy", "diff", str(POLICIES / "default.yaml"), str(POLICIES / "default.yaml"), "--store", str(tmp_path / "nope.db"), "--since", age])
        assert refused.exit_code == 2 and "is not an age" in refused.output, age


def test_diff_names_whole_ids_with_scores_freshness_and_thumbnails(tiny_scorer: ClipScorer, tmp_path: Path) -> None:
    import json

    from PIL import Image

    from moderation.state.thumbnails import ThumbnailStore, make_thumbnail

    vectors = embeddings(tiny_scorer.encoder.encode_texts(["dimension"]).shape[1])
    ids = [f"upload-2026-11-24-{i:04d}-0123456789abcdef0123" for i in range(3)]
    store_path = tmp_path / "store.db"
    now = datetime.now(timezone.utc)  # not the module's NOW: ages are checked to the minute
    with open_store(store_path) as store:
        for i, request_id in enumerate(ids):
            store.record(request_id, now - timedelta(minutes=10 * (i + 1)), "default", "1", "ALLOW", vectors[i], tiny_scorer.model_id)
    thumbnails = ThumbnailStore(tmp_path / "thumbs", timedelta(days=1))
    kept = thumbnails.save(ids[0], make_thumbnail(Image.new("RGB", (300, 200), "blue"), 256))
    old_file, new_file = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old_file.write_text(yaml.safe_dump(policy_with("1", {})))
    new_file.write_text(yaml.safe_dump(policy_with("2", {"weapons": (0.0, 1.0)})))  # every image to REVIEW on weapons
    args = ["policy", "diff", str(old_file), str(new_file), "--store", str(store_path), "--since", "1d", "--thumbnails", str(tmp_path / "thumbs"),
            "--model", f"local-dir:{TINY_CLIP}", "--weights", "random"]  # fmt: skip

    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = result.stdout
    # At 80 columns lines are cut at spaces only: each fits, or is one word (an id, a path) kept whole (issue 22).
    for line in text.splitlines():
        assert len(line) <= 80 or " " not in line.strip(), line
    words = " ".join(text.split())
    assert "store: 3 decisions in the window, newest 10 min ago, oldest 30 min ago; newest decision of any policy 10 min ago" in words
    for request_id in ids:
        assert re.search(rf"(^|[ ,:]){re.escape(request_id)}($|[ ,])", text, re.M), f"{request_id} whole in the output"
    assert re.search(r"weapons \d\.\d{3} \(ALLOW -> REVIEW\)", words)
    assert str(kept) in text

    document = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    assert document["freshness"]["in_window"] == 3 and 590 < document["freshness"]["newest_age_s"] < 700
    (change,) = document["action_changes"]
    assert (change["from"], change["to"], change["decisions"]) == ("ALLOW", "REVIEW", 3)
    example = change["examples"][0]
    assert example["request_id"] in ids and example["categories"]["weapons"]["actions"] == ["ALLOW", "REVIEW"]
    old_score, new_score = example["categories"]["weapons"]["scores"]
    assert old_score == pytest.approx(new_score)  # same prompts, other thresholds
    assert document["thumbnails"] == {ids[0]: [str(kept)]}


def test_diff_shows_control_characters_in_stored_ids_instead_of_sending_them(tiny_scorer: ClipScorer, tmp_path: Path) -> None:
    """Issue 18: a stored request id holding ESC[2J ESC[H ... ESC[8m cleared the analyst's screen and hid what followed."""
    vectors = embeddings(tiny_scorer.encoder.encode_texts(["dimension"]).shape[1])
    hostile = "upload-1\x1b[2J\x1b[Hall clear\x1b[8m\u202e"
    store_path = tmp_path / "store.db"
    with open_store(store_path) as store:
        store.record(hostile, datetime.now(timezone.utc) - timedelta(minutes=5), "default", "1", "ALLOW", vectors[0], tiny_scorer.model_id)
    old_file, new_file = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old_file.write_text(yaml.safe_dump(policy_with("1", {})))
    new_file.write_text(yaml.safe_dump(policy_with("2", {"weapons": (0.0, 1.0)})))
    args = ["policy", "diff", str(old_file), str(new_file), "--store", str(store_path), "--since", "1d",
            "--model", f"local-dir:{TINY_CLIP}", "--weights", "random"]  # fmt: skip
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert r"upload-1\x1b[2J\x1b[Hall clear\x1b[8m\u202e" in result.stdout


def test_counting_a_batch_at_once_equals_adding_every_decision(tiny_scorer: ClipScorer, tmp_path: Path) -> None:
    """The numpy counting in rescore gives exactly the counts and examples of `DecisionFlips.add` row by row."""
    from moderation.offline.rescore import DecisionFlips, flips_document

    rng = np.random.default_rng(5)
    count = 3000
    vectors = rng.standard_normal((count, tiny_scorer.encoder.encode_texts(["d"]).shape[1])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    old = Policy.model_validate(policy_with("1", {"weapons": (0.2, 0.5), "drugs": (0.3, 0.9)}))
    new_data = policy_with("2", {"weapons": (0.1, 0.3), "violence": (0.2, 0.25)})
    new_data["categories"] = [c for c in new_data["categories"] if c["id"] != "drugs"]  # a category removed
    new = Policy.model_validate(new_data)
    path = tmp_path / "store.db"
    with open_store(path, batch_size=1000, max_buffered=10_000) as store:
        for i in range(count):
            store.record(f"r{i}", NOW - timedelta(seconds=count - i), "default", ["1", "0.9"][i % 7 == 0], Action.ALLOW, vectors[i], tiny_scorer.model_id)
    fast = rescore_stored_decisions(path, tiny_scorer, old, new, NOW - timedelta(days=1), examples_per_change=2)

    reference = DecisionFlips(examples_per_change=2)
    old_scores = tiny_scorer.score(torch.from_numpy(vectors), tiny_scorer.index_policy(old))
    new_scores = tiny_scorer.score(torch.from_numpy(vectors), tiny_scorer.index_policy(new))
    for i in range(count):
        version = ["1", "0.9"][i % 7 == 0]
        reference.add(f"r{i}", version, Action.ALLOW, decide(old_scores[i], old), decide(new_scores[i], new), (NOW - timedelta(seconds=count - i)).timestamp())
    assert reference.changed > 100 and reference.not_reproduced > 0, "the scenario must exercise the counting"
    assert flips_document(fast) == flips_document(reference)
    assert fast.decisions == reference.decisions and fast.stored_versions == reference.stored_versions


# Two versions of one policy for DecisionFlips alone: no model, scores given directly.
# v2 adds "drugs"; v1 has "gore", which v2 drops. Both keep "weapons" unchanged.
_V1 = Policy.model_validate(
    {
        "id": "p",
        "version": "1",
        "benign": ["a cat"],
        "categories": [
            {"id": "weapons", "clause": {"id": "W-1", "text": "No threatening display of firearms."}, "positive": ["a gun"], "thresholds": {"review": 0.3, "block": 0.6}},
            {"id": "gore", "clause": {"id": "G-1", "text": "No gore or mutilated bodies."}, "positive": ["gore"], "thresholds": {"review": 0.3, "block": 0.6}},
        ],
    }
)
_V2 = Policy.model_validate(
    {
        **_V1.model_dump(),
        "version": "2",
        "categories": [
            _V1.categories[0].model_dump(),
            {"id": "drugs", "clause": {"id": "D-1", "text": "No drug paraphernalia or use."}, "positive": ["a syringe"], "thresholds": {"review": 0.3, "block": 0.6}},
        ],
    }
)


def test_diff_counts_the_flips_of_a_category_only_the_new_policy_has() -> None:
    """docs/policies.md: diff shows 'a table of category-action changes'; a category NEW adds flags decisions too."""
    from moderation.offline.rescore import DecisionFlips

    flips = DecisionFlips()
    flips.add("r1", "1", Action.ALLOW, decide({"weapons": 0.1, "gore": 0.1}, _V1), decide({"weapons": 0.1, "drugs": 0.7}, _V2), 1.0)
    flips.add("r2", "1", Action.ALLOW, decide({"weapons": 0.1, "gore": 0.1}, _V1), decide({"weapons": 0.1, "drugs": 0.4}, _V2), 2.0)
    flips.add("r3", "1", Action.ALLOW, decide({"weapons": 0.1, "gore": 0.1}, _V1), decide({"weapons": 0.1, "drugs": 0.1}, _V2), 3.0)
    assert dict(flips.category_changes) == {"drugs": {(Action.ALLOW, Action.BLOCK): 1, (Action.ALLOW, Action.REVIEW): 1}}
    assert flips.category_examples[("drugs", (Action.ALLOW, Action.BLOCK))] == ["r1"]
    assert flips.action_changes == {(Action.ALLOW, Action.BLOCK): 1, (Action.ALLOW, Action.REVIEW): 1}
    assert flips.changed == 2 and flips.decisions == 3
    detail = flips.example_details["r1"]
    assert detail.scores == {"drugs": (None, 0.7)} and detail.actions == {"drugs": (Action.ALLOW, Action.BLOCK)}
    assert (detail.timestamp, detail.stored_version, detail.old_action, detail.new_action) == (1.0, "1", Action.ALLOW, Action.BLOCK)
    assert "r3" not in flips.example_details


def test_diff_counts_the_flips_of_a_category_the_new_policy_drops() -> None:
    from moderation.offline.rescore import DecisionFlips, flips_document

    flips = DecisionFlips()
    flips.add("r1", "1", Action.REVIEW, decide({"weapons": 0.1, "gore": 0.4}, _V1), decide({"weapons": 0.1, "drugs": 0.1}, _V2), 0.0)
    assert dict(flips.category_changes) == {"gore": {(Action.REVIEW, Action.ALLOW): 1}}
    document = flips_document(flips)
    assert document["category_changes"] == [
        {
            "category": "gore",
            "from": "REVIEW",
            "to": "ALLOW",
            "decisions": 1,
            "examples": [
                {
                    "request_id": "r1",
                    "decided_at": "1970-01-01T00:00:00+00:00",
                    "stored_version": "1",
                    "action": ["REVIEW", "ALLOW"],
                    "categories": {"gore": {"scores": [0.4, None], "actions": ["REVIEW", "ALLOW"]}},
                }
            ],
        }
    ]
    assert document["changed"] == 1 and document["not_reproduced"] == 0


def test_examples_stop_at_the_limit_and_not_reproduced_counts_only_the_old_version() -> None:
    from moderation.offline.rescore import DecisionFlips

    flips = DecisionFlips(examples_per_change=2)
    old, new = decide({"weapons": 0.1, "gore": 0.1}, _V1), decide({"weapons": 0.1, "drugs": 0.4}, _V2)
    for i in range(3):
        flips.add(f"r{i}", "1", Action.ALLOW, old, new)
    flips.add("blocked-by-1", "1", Action.BLOCK, old, old)  # version 1 (OLD's) stored BLOCK, OLD says ALLOW
    flips.add("blocked-by-0", "0", Action.BLOCK, old, old)  # another version: not OLD's to reproduce
    assert flips.action_examples[(Action.ALLOW, Action.REVIEW)] == ["r0", "r1"]
    assert flips.category_changes["drugs"][(Action.ALLOW, Action.REVIEW)] == 3
    assert set(flips.example_details) == {"r0", "r1", "blocked-by-1"}
    assert (flips.not_reproduced, flips.not_reproduced_examples) == (1, ["blocked-by-1"])
    assert flips.stored_versions == {"1": 4, "0": 1}


def test_a_whole_window_counts_every_flip_of_a_category_added_or_dropped(tiny_scorer: ClipScorer, scenario: dict) -> None:
    """docs/policies.md: a category only one version has counts as ALLOW in the other, for every stored
    decision, not only the few kept as examples. Forced by thresholds, whatever the random model scores:
    review 0.0 puts every image in the band (block 1.0 is never reached by a softmax over several prompts)."""
    old_data = policy_with("1", {"drugs": (0.0, 1.0)})  # OLD: every image REVIEW on drugs; NEW drops drugs
    new_data = policy_with("2", {"self_harm": (0.0, 1.0)})  # NEW: every image REVIEW on self_harm; OLD lacks it
    old_data["categories"] = [c for c in old_data["categories"] if c["id"] != "self_harm"]
    new_data["categories"] = [c for c in new_data["categories"] if c["id"] != "drugs"]
    old, new = Policy.model_validate(old_data), Policy.model_validate(new_data)
    flips = rescore_stored_decisions(scenario["store"], tiny_scorer, old, new, NOW - timedelta(days=7), policy_id="default", examples_per_change=1)
    assert flips.decisions == IMAGES
    assert dict(flips.category_changes) == {
        "drugs": {(Action.REVIEW, Action.ALLOW): IMAGES},
        "self_harm": {(Action.ALLOW, Action.REVIEW): IMAGES},
    }
    assert flips.action_changes == {}  # REVIEW under both: the image's action does not change
    assert len(flips.category_examples[("self_harm", (Action.ALLOW, Action.REVIEW))]) == 1


def test_a_flip_example_cannot_be_changed_once_made() -> None:
    import dataclasses

    from moderation.offline.rescore import DecisionFlips

    flips = DecisionFlips()
    flips.add("r1", "1", Action.ALLOW, decide({"weapons": 0.1, "gore": 0.1}, _V1), decide({"weapons": 0.1, "drugs": 0.7}, _V2), 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        flips.example_details["r1"].request_id = "r2"  # type: ignore[misc]


def _versioned(version: str) -> str:
    """`version` as a new string object, as one read from a store is (not the interned literal)."""
    return "".join([version[:1], version[1:]])


def test_not_reproduced_counts_only_decisions_of_the_old_version_itself_one_by_one() -> None:
    """docs/policies.md: a decision made under OLD's own version whose stored action OLD no longer gives;
    later versions (compared as strings they sort after) and earlier ones are not OLD's to reproduce."""
    from moderation.offline.rescore import DecisionFlips

    old_data = {**_V1.model_dump(), "version": "1.0"}
    old = Policy.model_validate(old_data)
    flips = DecisionFlips(examples_per_change=5)
    allow = decide({"weapons": 0.1, "gore": 0.1}, old)
    flips.add("mine", _versioned("1.0"), Action.BLOCK, allow, allow)
    flips.add("later", _versioned("2.0"), Action.BLOCK, allow, allow)
    flips.add("earlier", _versioned("0.9"), Action.BLOCK, allow, allow)
    flips.add("same", _versioned("1.0"), Action.ALLOW, allow, allow)
    assert (flips.not_reproduced, flips.not_reproduced_examples) == (1, ["mine"])


@pytest.fixture(scope="module")
def versions_store(tiny_scorer: ClipScorer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 'default' decisions: versions 1.0 (OLD's), 2.0 and 0.9 in turn, stored as BLOCK, REVIEW or ALLOW in turn."""
    vectors = embeddings(tiny_scorer.encoder.encode_texts(["dimension"]).shape[1])
    path = tmp_path_factory.mktemp("versions") / "store.db"
    with open_store(path) as store:
        for i, vector in enumerate(vectors):
            version = ["1.0", "2.0", "0.9"][i % 3]
            action = [Action.BLOCK, Action.REVIEW, Action.ALLOW, Action.BLOCK][i % 4]
            store.record(f"r{i}", NOW - timedelta(minutes=i + 1), "default", version, action, vector, tiny_scorer.model_id)
    return path


def test_not_reproduced_counts_only_decisions_of_the_old_version_itself_in_a_whole_window(tiny_scorer: ClipScorer, versions_store: Path) -> None:
    old = Policy.model_validate(policy_with("1.0", {}))  # flags nothing: every image ALLOW
    for examples in (0, 2, 50):  # counted as a batch, partly one by one, wholly one by one
        flips = rescore_stored_decisions(versions_store, tiny_scorer, old, old, NOW - timedelta(days=1), examples_per_change=examples)
        expected = [f"r{i}" for i in range(IMAGES) if i % 3 == 0 and i % 4 != 2]  # OLD's version, stored other than ALLOW
        assert flips.not_reproduced == len(expected) == 5, examples
        assert len(flips.not_reproduced_examples) == min(examples, 5) and set(flips.not_reproduced_examples) <= set(expected)
        assert flips.stored_versions == {"1.0": 7, "2.0": 7, "0.9": 6} and flips.decisions == IMAGES


def test_stored_embeddings_of_another_dimension_are_refused_naming_both(tiny_scorer: ClipScorer, tmp_path: Path) -> None:
    dim = tiny_scorer.encoder.encode_texts(["dimension"]).shape[1]
    policy = Policy.model_validate(policy_with("1", {}))
    for stored_dim in (dim - 1, dim + 3):
        path = tmp_path / f"store{stored_dim}.db"
        vector = np.ones(stored_dim, dtype=np.float32) / np.sqrt(stored_dim)
        with open_store(path) as store:
            for i in range(2):
                store.record(f"r{i}", NOW - timedelta(minutes=1), "default", "1", Action.ALLOW, vector, tiny_scorer.model_id)
        with pytest.raises(CannotRescore, match=rf"stored embeddings have {stored_dim} dimensions but .* has {dim}: they cannot come from this model"):
            rescore_stored_decisions(path, tiny_scorer, policy, policy, NOW - timedelta(days=1))


def test_embeddings_of_a_model_whose_id_sorts_first_are_refused_too(tiny_scorer: ClipScorer, tmp_path: Path) -> None:
    vectors = embeddings(tiny_scorer.encoder.encode_texts(["dimension"]).shape[1])
    policy = Policy.model_validate(policy_with("1", {}))
    path = tmp_path / "store.db"
    with open_store(path) as store:
        store.record("r0", NOW - timedelta(minutes=1), "default", "1", Action.ALLOW, vectors[0], "EVA01-g-14/laion400m_s11b_b41k")
    with pytest.raises(CannotRescore, match=r"come from 'EVA01-g-14/laion400m_s11b_b41k' \(1 decisions\)"):
        rescore_stored_decisions(path, tiny_scorer, policy, policy, NOW - timedelta(days=1))


def test_scores_exactly_at_a_threshold_and_both_bands_are_counted_as_decide_would(tiny_scorer: ClipScorer, scenario: dict) -> None:
    """docs/policies.md: a score at or above review goes to REVIEW, at or above block gets on_block. Thresholds
    set to stored images' own scores put images exactly on them; with no examples every row is counted at once."""
    old = scenario["old"]  # flags nothing
    vectors = embeddings(tiny_scorer.encoder.encode_texts(["dimension"]).shape[1])
    drugs = np.array([s["drugs"] for s in tiny_scorer.score(torch.from_numpy(vectors), tiny_scorer.index_policy(old))], dtype=np.float64)
    ranked = np.sort(drugs)[::-1]
    review, block = float(ranked[9]), float(ranked[3])  # the 10th and 4th highest scores themselves
    new = Policy.model_validate(policy_with("2", {"drugs": (review, block)}))  # drugs: on_block BLOCK
    assert (new.category("drugs").thresholds.review, new.category("drugs").thresholds.block) == (review, block)
    to_block = int((drugs >= block).sum())
    to_review = int(((drugs >= review) & (drugs < block)).sum())
    assert (to_block, to_review) == (4, 6)  # the images on the thresholds count: distinct scores
    for examples in (0, 1):
        flips = rescore_stored_decisions(scenario["store"], tiny_scorer, old, new, NOW - timedelta(days=7), policy_id="default", examples_per_change=examples)
        assert dict(flips.category_changes) == {"drugs": {(Action.ALLOW, Action.BLOCK): to_block, (Action.ALLOW, Action.REVIEW): to_review}}, examples
        assert flips.action_changes == {(Action.ALLOW, Action.BLOCK): to_block, (Action.ALLOW, Action.REVIEW): to_review}


def test_counting_a_column_gives_each_row_the_action_decide_gives_and_refuses_scores_outside_0_1() -> None:
    """`_category_severities` (the batch counting) against `decide` (docs/policies.md's bands) row by row,
    including scores exactly at review and block and at 0 and 1; a score that is not a probability is refused."""
    from moderation.offline.rescore import _category_severities

    weapons = np.array([0.0, 0.29, 0.3, 0.31, 0.59, 0.6, 0.61, 1.0], dtype=np.float32).astype(np.float64)
    gore = weapons[::-1].copy()
    severities = _category_severities({"weapons": weapons, "gore": gore}, _V1)
    for i in range(len(weapons)):
        decision = decide({"weapons": float(weapons[i]), "gore": float(gore[i])}, _V1)
        expected = {c.category_id: c.action.severity for c in decision.categories}
        assert {cid: int(column[i]) for cid, column in severities.items()} == expected, i
    for bad in (np.nan, np.inf, -0.01, 1.01, -1.0, 2.0):
        column = np.array([0.5, bad])
        with pytest.raises(ValueError, match="scores for category 'weapons' must be numbers in \\[0, 1\\]"):
            _category_severities({"weapons": column, "gore": np.array([0.5, 0.5])}, _V1)
        with pytest.raises(ValueError, match="must be numbers in \\[0, 1\\]"):
            _category_severities({"weapons": np.array([bad, bad]), "gore": np.array([0.5, 0.5])}, _V1)


def test_stored_embeddings_as_wide_as_a_real_clip_models_are_rescored(tmp_path: Path) -> None:
    """Dimensions are compared by value: a model of 512 dimensions (ViT-B-32's), as tiny as the
    other test model otherwise, re-scores its own stored embeddings (Python caches small ints
    only, so a 32-dimension model cannot tell `!=` from `is not`)."""
    import json

    from moderation.runtime import load_scorer
    from moderation.signals.clip import ClipModelSpec

    config = json.loads((TINY_CLIP / "open_clip_config.json").read_text())
    config["model_cfg"]["embed_dim"] = 512
    model_dir = tmp_path / "wide-clip"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(json.dumps(config))
    scorer = load_scorer(ClipModelSpec(model=f"local-dir:{model_dir}", weights="random"))
    vectors = embeddings(512)
    path = tmp_path / "store.db"
    with open_store(path) as store:
        for i in range(3):
            store.record(f"r{i}", NOW - timedelta(minutes=i + 1), "default", "1", Action.ALLOW, vectors[i], scorer.model_id)
    old = Policy.model_validate(policy_with("1", {}))
    new = Policy.model_validate(policy_with("2", {"weapons": (0.0, 1.0)}))
    flips = rescore_stored_decisions(path, scorer, old, new, NOW - timedelta(days=1))
    assert flips.decisions == 3 and flips.category_changes == {"weapons": {(Action.ALLOW, Action.REVIEW): 3}}
