from __future__ import annotations

import pytest
import torch

from moderation.signals.clip import ClipModelSpec, ClipScorer, WeightsUnavailable
from moderation.core.decode import DecodeLimits, decode_frames
from moderation.policy import load_policy_file
from moderation.runtime import load_scorer
from tests import images
from tests.conftest import POLICIES


@pytest.fixture(scope="module")
def scorer(tiny_clip_model: str) -> ClipScorer:
    return load_scorer(ClipModelSpec(model=tiny_clip_model, weights="random"))


def prepared(data: bytes, scorer: ClipScorer) -> torch.Tensor:
    return scorer.prepare(decode_frames(data, DecodeLimits()))


def test_model_id_says_random(scorer: ClipScorer) -> None:
    assert scorer.model_id.endswith("/random") and scorer.random_weights


def test_scores_are_probabilities_for_every_category(scorer: ClipScorer) -> None:
    policy, _ = load_policy_file(POLICIES / "default.yaml")
    index = scorer.index_policy(policy)
    pixels = torch.cat([prepared(data, scorer) for data in (images.astronaut_jpeg(), images.coffee_png())])
    scores = scorer.score(scorer.embed_images(pixels), index)
    assert len(scores) == 2
    for per_image in scores:
        assert set(per_image) == {c.id for c in policy.categories}
        assert all(0.0 <= s <= 1.0 for s in per_image.values())
    assert scores[0] != scores[1], "different images must score differently"


def test_score_matches_its_documented_definition(scorer: ClipScorer) -> None:
    policy, _ = load_policy_file(POLICIES / "default.yaml")
    index = scorer.index_policy(policy)
    embedding = scorer.embed_images(prepared(images.astronaut_jpeg(), scorer))
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
    original = scorer.encoder.encode_texts

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    scorer.encoder.encode_texts = counting
    try:
        index = scorer.index_policy(policy)
        after_index = calls
        decoded = decode_frames(images.astronaut_jpeg(), DecodeLimits())
        for _ in range(3):
            scorer.score_decoded([decoded], index)
    finally:
        del scorer.encoder.encode_texts
    assert after_index > 0 and calls == after_index


def test_compile_can_be_stopped_between_chunks(scorer: ClipScorer) -> None:
    from moderation.policy.compile import CompileCancelled

    policy, _ = load_policy_file(POLICIES / "default.yaml")
    with pytest.raises(CompileCancelled, match="stopped after 0 of"):
        scorer.index_policy(policy, should_stop=lambda: True)


def test_tensors_cross_the_seam_as_float32_on_the_cpu(scorer: ClipScorer) -> None:
    embeddings = scorer.embed_images(prepared(images.astronaut_jpeg(), scorer))
    texts = scorer.encoder.encode_texts(["a cat", "a dog"])
    for tensor in (embeddings, texts):
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu"
        assert torch.allclose(tensor.norm(dim=-1), torch.ones(tensor.shape[0]), atol=1e-4)


def test_missing_weights_fail_fast_naming_the_setting(tmp_path) -> None:  # noqa: ANN001
    spec = ClipModelSpec(model="ViT-B-32", weights="laion2b_s34b_b79k", cache_dir=tmp_path, allow_downloads=False)
    with pytest.raises(WeightsUnavailable) as caught:
        load_scorer(spec)
    message = str(caught.value)
    assert "\n" not in message
    assert "MODERATION_CLIP_WEIGHTS" in message and "--weights random" in message


def test_missing_local_checkpoint_fails_fast(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(WeightsUnavailable, match="cannot load CLIP model 'ViT-B-32'"):
        load_scorer(ClipModelSpec(model="ViT-B-32", weights=str(tmp_path / "missing.bin")))


def test_unknown_pretrained_tag_names_the_known_ones() -> None:
    with pytest.raises(WeightsUnavailable, match="unknown pretrained tag; tags of ViT-B-32: .*laion2b_s34b_b79k"):
        load_scorer(ClipModelSpec(model="ViT-B-32", weights="no_such_tag", allow_downloads=False))
