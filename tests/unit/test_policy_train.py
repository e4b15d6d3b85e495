"""`moderation policy train`: a category learnt from labelled examples, served, validated and diffed like any change.

The labelled set is built so that no prompt can describe it: striped pictures whose
only difference is the stripes' direction (horizontal: the category; vertical:
benign), in random colours, widths and phases. Expected scores are computed from
the documented formula (docs/policies.md: sigmoid(weights . x + bias) on the
normalised image embedding), not with the scorer's own code.
"""

from __future__ import annotations

import base64
import json
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from moderation.cli import app
from moderation.core.decision import decide
from moderation.policy import Action, PolicyFileError, load_policy_file, load_policy_text
from moderation.policy.schema import Policy, Probe, encode_probe_weights
from moderation.offline.probe_training import MIN_EXAMPLES_PER_SIDE, TrainingError, train_probe
from moderation.state.store import open_store
from tests.conftest import POLICIES, TINY_CLIP

TINY = ["--model", f"local-dir:{TINY_CLIP}", "--weights", "random"]
NOW = datetime.now(timezone.utc)


def striped(rng: np.random.Generator, horizontal: bool, size: int = 96) -> Image.Image:
    period = int(rng.integers(20, 40))
    phase = int(rng.integers(0, period))
    colours = rng.integers(0, 256, (2, 3))
    bands = (np.arange(size) + phase) // (period // 2) % 2
    mask = np.broadcast_to(bands[:, None] if horizontal else bands[None, :], (size, size))
    pixels = np.where(mask[..., None] == 1, colours[0], colours[1]) + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def stripes_folder(root: Path, per_side: int, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    for label, horizontal in (("drugs", True), ("benign", False)):
        (root / label).mkdir(parents=True)
        for i in range(per_side):
            striped(rng, horizontal).save(root / label / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("train")
    labels, out = stripes_folder(root / "labels", 40), root / "out"
    result = CliRunner().invoke(
        app,
        ["policy", "train", str(POLICIES / "default.yaml"), "--category", "drugs", "--labels", str(labels), "--out", str(out),
         "--version", "2026-12-03.1", "--json", *TINY],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"report": json.loads(result.stdout), "proposed": out / "default.yaml", "labels": labels}


def test_a_probe_learns_a_pattern_the_prompts_cannot_describe(trained: dict) -> None:
    report = trained["report"]
    assert (report["examples"], report["positives"], report["held_out"]) == (60, 30, 20)
    assert report["held_out_auc"] >= 0.85, report
    assert report["held_out_auc"] > report["zero_shot_auc"] + 0.3, "the examples must teach more than the prompts on the same held-out images"


def test_the_proposed_policy_is_the_next_version_with_the_probe_and_the_rest_kept(trained: dict) -> None:
    current, current_text = load_policy_file(POLICIES / "default.yaml")
    proposed, text = load_policy_file(trained["proposed"])
    assert proposed.version == "2026-12-03.1"
    probe = proposed.category("drugs").probe
    assert probe is not None and probe.model == proposed.model == f"local-dir:{TINY_CLIP}/random"
    assert probe.training is not None and probe.training.held_out_auc == round(trained["report"]["held_out_auc"], 4)
    assert all(line in text.splitlines() for line in current_text.splitlines() if line.startswith("#")), "comments survive"
    for category in current.categories:
        kept = proposed.category(category.id)
        assert kept.thresholds == category.thresholds and kept.positive == category.positive
        assert (kept.probe is None) == (category.id != "drugs")


def documented_score(probe: Probe, embedding: np.ndarray) -> float:
    """docs/policies.md: sigmoid(weights . x + bias), weights as base64 float32 little-endian."""
    raw = base64.b64decode(probe.weights)
    weights = np.array(struct.unpack(f"<{len(raw) // 4}f", raw), dtype=np.float64)
    return float(1.0 / (1.0 + np.exp(-(weights @ embedding.astype(np.float64) + probe.bias))))


def test_a_probe_category_is_scored_by_its_probe_and_the_others_by_their_prompts(tiny_scorer, trained: dict) -> None:  # noqa: ANN001
    proposed, _ = load_policy_file(trained["proposed"])
    current, _ = load_policy_file(POLICIES / "default.yaml")
    vectors = torch.nn.functional.normalize(torch.randn(6, 32, generator=torch.Generator().manual_seed(3)), dim=-1)
    with_probe = tiny_scorer.score(vectors, tiny_scorer.index_policy(proposed))
    prompts_only = tiny_scorer.score(vectors, tiny_scorer.index_policy(current))
    probe = proposed.category("drugs").probe
    for row, (new, old) in enumerate(zip(with_probe, prompts_only, strict=True)):
        assert new["drugs"] == pytest.approx(documented_score(probe, vectors[row].numpy()), abs=1e-5)
        assert {k: v for k, v in new.items() if k != "drugs"} == pytest.approx({k: v for k, v in old.items() if k != "drugs"})


def test_a_probe_change_shows_in_policy_diff_like_a_threshold_change(tiny_scorer, trained: dict, tmp_path: Path) -> None:  # noqa: ANN001
    """The stored decisions are the labelled pictures' embeddings; NEW differs from OLD only by the probe."""
    proposed, text = load_policy_file(trained["proposed"])
    old_text = text.replace("version: \"2026-12-03.1\"", "version: \"2026-12-02.1\"")
    old_data = yaml.safe_load(old_text)
    del next(c for c in old_data["categories"] if c["id"] == "drugs")["probe"]
    old = Policy.model_validate(old_data)
    core_paths = sorted(trained["labels"].rglob("*.png"))
    from moderation.core.decode import DecodeLimits
    from moderation.core.judge import JudgingCore
    from moderation.core.signal import SignalResources
    from moderation.offline.scoring import offline_policy, score_image_files
    from moderation.signals.registry import build_signals

    core = JudgingCore(DecodeLimits(), tiny_scorer, build_signals(SignalResources(encoder=tiny_scorer, settings=None), ["clip"]))
    embedded = score_image_files(core, offline_policy(tiny_scorer, old), core_paths)
    vectors = np.stack([result.embedding for result in embedded])
    old_scores = tiny_scorer.score(torch.from_numpy(vectors), tiny_scorer.index_policy(old))
    store_path = tmp_path / "store.db"
    with open_store(store_path) as store:
        for i, vector in enumerate(vectors):
            store.record(f"r{i}", NOW - timedelta(minutes=i), "default", old.version, decide(old_scores[i], old).action, vector, tiny_scorer.model_id)
    drugs = proposed.category("drugs")

    def action(score: float) -> Action:  # docs/policies.md: below review ALLOW, from review REVIEW, from block on_block
        return Action.ALLOW if score < drugs.thresholds.review else Action.REVIEW if score < drugs.thresholds.block else drugs.on_block

    expected = sum(action(documented_score(drugs.probe, v)) != action(s["drugs"]) for v, s in zip(vectors, old_scores, strict=True))
    assert expected > 0, "the scenario must flip something to show"
    old_file = tmp_path / "old.yaml"
    old_file.write_text(yaml.safe_dump(old_data))
    result = CliRunner().invoke(
        app, ["policy", "diff", str(old_file), str(trained["proposed"]), "--store", str(store_path), "--since", "2d", "--json", *TINY]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    changes = [change for change in document["category_changes"] if change["category"] == "drugs"]
    assert sum(change["decisions"] for change in changes) == expected, document["category_changes"]


def test_too_few_examples_and_an_unknown_category_are_one_clear_line(tmp_path: Path) -> None:
    labels = stripes_folder(tmp_path / "labels", MIN_EXAMPLES_PER_SIDE - 1)
    result = CliRunner().invoke(app, ["policy", "train", str(POLICIES / "default.yaml"), "--category", "drugs", "--labels", str(labels), *TINY])
    assert result.exit_code == 2
    assert f"a probe needs at least {MIN_EXAMPLES_PER_SIDE} of each" in result.output
    result = CliRunner().invoke(app, ["policy", "train", str(POLICIES / "default.yaml"), "--category", "knives", "--labels", str(labels), *TINY])
    assert result.exit_code == 2 and "no category 'knives'" in result.output


def test_train_probe_refuses_a_held_out_share_that_leaves_nothing_to_fit() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((20, 8)).astype(np.float32)
    positive = np.arange(20) < 10
    with pytest.raises(TrainingError, match="held-out share"):
        train_probe(vectors, positive, np.zeros(20), "m", held_out_fraction=1.0)


def policy_text_with_probe(probe: dict, model: str | None = "m") -> str:
    data = yaml.safe_load((POLICIES / "default.yaml").read_text())
    data["model"] = model
    if model is None:
        del data["model"]
    data["categories"][0]["probe"] = probe
    return yaml.safe_dump(data)


@pytest.mark.parametrize(
    ("probe", "model", "message"),
    [
        ({"model": "m", "weights": "not base64!", "bias": 0}, "m", "probe weights must be base64 text"),
        ({"model": "m", "weights": base64.b64encode(b"\0\0\0").decode(), "bias": 0}, "m", "float32 values; these are 3 bytes"),
        ({"model": "m", "weights": base64.b64encode(struct.pack("<2f", 1.0, float("nan"))).decode(), "bias": 0}, "m", "must be finite"),
        ({"model": "m", "weights": encode_probe_weights([1.0]), "bias": 0}, None, "a policy with a probe must name its model: add `model: m`"),
        ({"model": "other", "weights": encode_probe_weights([1.0]), "bias": 0}, "m", "the probe was trained on model 'other' but the policy is for 'm'"),
    ],
)
def test_a_broken_probe_is_a_policy_problem_with_a_sentence(probe: dict, model: str | None, message: str) -> None:
    with pytest.raises(PolicyFileError) as raised:
        load_policy_text(policy_text_with_probe(probe, model), source="p.yaml")
    assert message in str(raised.value)


def test_a_probe_of_another_dimension_cannot_be_compiled_for_this_model(tiny_scorer) -> None:  # noqa: ANN001
    policy = load_policy_text(policy_text_with_probe({"model": "m", "weights": encode_probe_weights([0.5] * 7), "bias": 0}))
    with pytest.raises(PolicyFileError, match="the probe has 7 weights but model .* embeddings have 32 dimensions"):
        tiny_scorer.index_policy(policy)
