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


def _unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / vector.norm()


def test_prompt_embedding_is_the_normalised_mean_over_every_template(scorer: ClipScorer) -> None:
    """docs/architecture.md: 'each prompt's embedding is the normalised mean of its template embeddings'.

    The expected value is built from the encoder alone, one text per call: not from encode_prompts.
    25 prompts x 3 templates = 75 texts, more than one encoder chunk.
    """
    templates = ["a photo of {}.", "a drawing of {}.", "{}, seen from far away"]
    prompts = [f"object number {i}" for i in range(25)]
    got = scorer.encode_prompts(prompts, templates)
    assert got.shape[0] == len(prompts)
    for row, prompt in enumerate(prompts):
        per_template = [scorer.encoder.encode_texts([template.format(prompt)])[0] for template in templates]
        expected = _unit(torch.stack(per_template).mean(dim=0))
        assert torch.allclose(got[row], expected, atol=1e-5), f"prompt {row}"
        first_only = _unit(per_template[0])
        assert not torch.allclose(got[row], first_only, atol=1e-3), "the templates must differ for this test to mean anything"
        assert float(got[row].norm()) == pytest.approx(1.0, abs=1e-5)


def test_category_score_from_an_index_matches_the_definition_with_independent_prompt_embeddings(scorer: ClipScorer) -> None:
    """score_c(x) = sum over positives of softmax over (positives, contrasts, benign) of s * cos(x, t)."""
    from moderation.policy import load_policy_text

    policy = load_policy_text(
        """\
id: t
version: "1"
templates: ["a photo of {}.", "an illustration of {}."]
benign: ["a cat", "a landscape"]
categories:
  - id: weapons
    clause: {id: W-1, text: "No threatening display of firearms."}
    positive: ["a gun", "a rifle"]
    contrast: ["a water pistol"]
    thresholds: {review: 0.3, block: 0.6}
  - id: drugs
    clause: {id: D-1, text: "No drug paraphernalia or use."}
    positive: ["a syringe"]
    thresholds: {review: 0.3, block: 0.6}
"""
    )

    def prompt_embedding(prompt: str) -> torch.Tensor:
        return _unit(torch.stack([scorer.encoder.encode_texts([t.format(prompt)])[0] for t in policy.templates]).mean(dim=0))

    image = scorer.embed_images(prepared(images.astronaut_jpeg(), scorer))[0]
    scores = scorer.score(image[None], scorer.index_policy(policy))[0]
    for category in policy.categories:
        competing = [*category.positive, *category.contrast, *policy.benign]
        logits = torch.stack([scorer.logit_scale * (image @ prompt_embedding(p)) for p in competing])
        expected = float(logits.softmax(-1)[: len(category.positive)].sum())
        assert scores[category.id] == pytest.approx(expected, abs=1e-5), category.id


def test_most_severe_frame_names_the_animation_frame_not_the_row() -> None:
    from moderation.signals.clip.scorer import most_severe_frame

    per_frame = [{"a": 0.1, "b": 0.9}, {"a": 0.8, "b": 0.2}, {"a": 0.3, "b": 0.9}]
    result = most_severe_frame(per_frame, (0, 14, 29))
    assert result.scores == {"a": 0.8, "b": 0.9}
    assert result.deciding == {"a": 14, "b": 0}, "a tie keeps the earliest frame"
