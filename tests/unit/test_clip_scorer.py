from __future__ import annotations

import pytest
import torch

from moderation.clip import ClipModelSpec, ClipScorer, WeightsUnavailable, load_clip
from moderation.imaging import DecodeLimits, decode_image
from moderation.policy import load_policy_file
from tests import images
from tests.conftest import POLICIES


@pytest.fixture(scope="module")
def scorer(tiny_clip_model: str) -> ClipScorer:
    torch.manual_seed(0)
    return ClipScorer(load_clip(ClipModelSpec(model=tiny_clip_model, weights="random")))


def test_model_id_says_random(scorer: ClipScorer) -> None:
    assert scorer.model_id.endswith("/random") and scorer.random_weights


def test_scores_are_probabilities_for_every_category(scorer: ClipScorer) -> None:
    policy, _ = load_policy_file(POLICIES / "default.yaml")
    index = scorer.index_policy(policy)
    pixels = torch.stack([scorer.clip.preprocess(decode_image(data, DecodeLimits())) for data in (images.astronaut_jpeg(), images.coffee_png())])
    scores = scorer.score(scorer.embed_images(pixels), index)
    assert len(scores) == 2
    for per_image in scores:
        assert set(per_image) == {c.id for c in policy.categories}
        assert all(0.0 <= s <= 1.0 for s in per_image.values())
    assert scores[0] != scores[1], "different images must score differently"


def test_score_matches_its_documented_definition(scorer: ClipScorer) -> None:
    policy, _ = load_policy_file(POLICIES / "default.yaml")
    index = scorer.index_policy(policy)
    embedding = scorer.embed_images(scorer.clip.preprocess(decode_image(images.astronaut_jpeg(), DecodeLimits())).unsqueeze(0))
    category = policy.categories[2]
    # Recompute by hand: softmax over positive + contrast + benign prompt embeddings.
    prompts = [*category.positive, *category.contrast, *policy.benign]
    text = scorer.encode_prompts(prompts, policy.templates)
    probabilities = (scorer.logit_scale * embedding @ text.T).softmax(-1)[0]
    expected = float(probabilities[: len(category.positive)].sum())
    assert scorer.score(embedding, index)[0][category.id] == pytest.approx(expected, abs=1e-5)


def test_text_is_encoded_once_per_policy_not_per_request(scorer: ClipScorer) -> None:
    policy, _ = load_policy_file(POLICIES / "default.yaml")
    calls = 0
    original = scorer.clip.model.encode_text

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    scorer.clip.model.encode_text = counting
    try:
        index = scorer.index_policy(policy)
        after_index = calls
        pixels = scorer.clip.preprocess(decode_image(images.astronaut_jpeg(), DecodeLimits())).unsqueeze(0)
        for _ in range(3):
            scorer.score(scorer.embed_images(pixels), index)
    finally:
        del scorer.clip.model.encode_text
    assert after_index > 0 and calls == after_index


def test_missing_weights_fail_fast_naming_the_setting(tmp_path) -> None:  # noqa: ANN001
    spec = ClipModelSpec(model="ViT-B-32", weights="laion2b_s34b_b79k", cache_dir=tmp_path, allow_downloads=False)
    with pytest.raises(WeightsUnavailable) as caught:
        load_clip(spec)
    message = str(caught.value)
    assert "\n" not in message
    assert "MODERATION_CLIP_WEIGHTS" in message and "--weights random" in message


def test_missing_local_checkpoint_fails_fast(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(WeightsUnavailable, match="cannot load CLIP model 'ViT-B-32'"):
        load_clip(ClipModelSpec(model="ViT-B-32", weights=str(tmp_path / "missing.bin")))
