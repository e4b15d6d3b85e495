from __future__ import annotations

import numpy as np
import pytest
import torch

from moderation.signals.clip import ClipModelSpec, ClipScorer, WeightsUnavailable
from moderation.core.decode import DecodeLimits, decode_frames
from moderation.policy import load_policy_file
from moderation.runtime import load_scorer
from tests import images
from tests.conftest import POLICIES

# One torch thread: tiny models on shared cores run several times faster (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


# -- compile chunks, probes, the numpy path, batching (docs/policies.md "Limits" and "moderation policy train") --

PROBE_POLICY = """\
id: t
version: "1"
model: {model}
templates: ["a photo of {{}}.", "an illustration of {{}}."]
benign: ["a cat", "a landscape"]
categories:
  - id: weapons
    clause: {{id: W-1, text: "No threatening display of firearms."}}
    positive: ["a gun", "a rifle"]
    contrast: ["a water pistol"]
    thresholds: {{review: 0.3, block: 0.6}}
  - id: stripes
    clause: {{id: S-1, text: "No striped patterns, learnt from examples."}}
    positive: ["stripes"]
    thresholds: {{review: 0.3, block: 0.6}}
    probe: {{model: {model}, weights: {weights}, bias: {bias}}}
"""


def test_a_compile_is_cancelled_within_one_chunk_of_64_texts(scorer: ClipScorer) -> None:
    """docs/policies.md: a newer edit or shutdown cancels a compile in progress 'within one chunk of 64 texts'."""
    from moderation.policy.compile import CompileCancelled

    policy, _ = load_policy_file(POLICIES / "default.yaml")
    assert policy.text_count == 212
    asked = []

    def stop_on_the_second_question() -> bool:
        asked.append(True)
        return len(asked) == 2

    with pytest.raises(CompileCancelled, match="^stopped after 64 of 212 texts$"):
        scorer.index_policy(policy, should_stop=stop_on_the_second_question)
    asked.clear()
    assert scorer.index_policy(policy, should_stop=lambda: False).embeddings.shape[0] == 53
    assert scorer.index_policy(policy, should_stop=lambda: asked.append(True) or False) and len(asked) == 4, "212 texts: 4 chunks"


def _probe_policy(scorer: ClipScorer, weights: list[float], bias: float):  # noqa: ANN202
    from moderation.policy import load_policy_text
    from moderation.policy.schema import encode_probe_weights

    return load_policy_text(PROBE_POLICY.format(model=scorer.model_id, weights=encode_probe_weights(weights), bias=bias))


def _documented_scores(scorer: ClipScorer, policy, image: torch.Tensor, weights: list[float], bias: float) -> dict[str, float]:  # noqa: ANN001
    """score = sum of softmax over (positive, contrast, benign) of s * cos(x, t); a probe category: sigmoid(w . x + b)."""

    def prompt_embedding(prompt: str) -> torch.Tensor:
        return _unit(torch.stack([scorer.encoder.encode_texts([t.format(prompt)])[0] for t in policy.templates]).mean(dim=0))

    weapons = policy.category("weapons")
    competing = [*weapons.positive, *weapons.contrast, *policy.benign]
    logits = torch.stack([scorer.logit_scale * (image @ prompt_embedding(p)) for p in competing])
    return {
        "weapons": float(logits.softmax(-1)[: len(weapons.positive)].sum()),
        "stripes": float(torch.sigmoid(image @ torch.tensor(weights) + bias)),
    }


def test_a_probe_category_is_scored_by_its_probe_on_the_image_embedding(scorer: ClipScorer) -> None:
    dim = scorer.embed_images(prepared(images.astronaut_jpeg(), scorer)).shape[1]
    weights = [((i * 7) % 5 - 2) * 0.75 for i in range(dim)]
    policy = _probe_policy(scorer, weights, bias=0.4)
    index = scorer.index_policy(policy)
    pixels = torch.cat([prepared(data, scorer) for data in (images.astronaut_jpeg(), images.coffee_png())])
    rows = scorer.embed_images(pixels)
    got = scorer.score(rows, index)
    for row, scores in zip(rows, got, strict=True):
        expected = _documented_scores(scorer, policy, row, weights, 0.4)
        assert scores == pytest.approx(expected, abs=1e-5)
    assert 0.01 < got[0]["stripes"] < 0.99, "the probe score must not be saturated for this test to mean anything"


def test_the_numpy_path_scores_by_the_same_definition(scorer: ClipScorer) -> None:
    """An exported model folder hands over numpy arrays (arrays.py): same scores, by the same formula."""
    import dataclasses

    dim = scorer.embed_images(prepared(images.astronaut_jpeg(), scorer)).shape[1]
    weights = [((i * 3) % 7 - 3) * 0.5 for i in range(dim)]
    policy = _probe_policy(scorer, weights, bias=-0.3)
    index = scorer.index_policy(policy)
    as_numpy = dataclasses.replace(
        index,
        embeddings=index.embeddings.numpy(),
        competitions=tuple((cid, rows.numpy(), positives) for cid, rows, positives in index.competitions),
        probes=tuple((cid, w.numpy(), bias) for cid, w, bias in index.probes),
    )
    pixels = torch.cat([prepared(data, scorer) for data in (images.astronaut_jpeg(), images.coffee_png())])
    rows = scorer.embed_images(pixels)
    columns = scorer.score_columns(rows.numpy(), as_numpy)
    assert set(columns) == {"weapons", "stripes"}
    for i, row in enumerate(rows):
        expected = _documented_scores(scorer, policy, row, weights, -0.3)
        assert {cid: float(column[i]) for cid, column in columns.items()} == pytest.approx(expected, abs=1e-5)
    assert all(column.dtype == np.float32 for column in columns.values())
    # Stored numpy embeddings against a torch index (policy diff re-scoring): the same numbers.
    mixed = scorer.score_columns(rows.numpy(), index)
    for cid in columns:
        assert np.allclose(mixed[cid], columns[cid], atol=1e-5)


def test_a_probe_of_another_dimension_is_refused_with_a_sentence(scorer: ClipScorer) -> None:
    from moderation.policy import PolicyFileError

    dim = scorer.embed_images(prepared(images.astronaut_jpeg(), scorer)).shape[1]
    for weights in (7, dim + 8):  # fewer and more weights than the embedding has dimensions
        policy = _probe_policy(scorer, [0.5] * weights, bias=0.0)
        with pytest.raises(PolicyFileError) as caught:
            scorer.index_policy(policy)
        (problem,) = caught.value.problems
        assert f"the probe has {weights} weights but model {scorer.model_id}'s embeddings have {dim} dimensions" in str(problem)
        assert "categories.stripes.probe" in str(problem) and "t@1" in str(problem)


def test_an_index_and_frame_scores_are_values(scorer: ClipScorer) -> None:
    import dataclasses

    from moderation.signals.clip.scorer import most_severe_frame

    policy, _ = load_policy_file(POLICIES / "default.yaml")
    index = scorer.index_policy(policy)
    assert (index.policy_id, index.policy_version) == (policy.id, policy.version)
    frames = most_severe_frame([{"a": 0.5}], (0,))
    for value, field in ((index, "policy_version"), (frames, "scores")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, None)


def test_many_images_are_embedded_in_batches_each_row_as_if_alone(scorer: ClipScorer) -> None:
    from moderation.signals.clip.scorer import OFFLINE_BATCH

    one = prepared(images.astronaut_jpeg(), scorer)
    other = prepared(images.coffee_png(), scorer)
    many = torch.cat([one, other] * OFFLINE_BATCH)[: OFFLINE_BATCH + 3]  # more frames than one forward pass takes
    assert scorer.embed_prepared([]) == []
    got = scorer.embed_prepared([one, many, other])
    assert [tuple(g.shape[:1]) for g in got] == [(1,), (OFFLINE_BATCH + 3,), (1,)]
    alone_one, alone_other = scorer.embed_images(one)[0], scorer.embed_images(other)[0]
    assert torch.allclose(got[0][0], alone_one, atol=1e-5) and torch.allclose(got[2][0], alone_other, atol=1e-5)
    for i, row in enumerate(got[1]):
        assert torch.allclose(row, alone_one if i % 2 == 0 else alone_other, atol=1e-5), i


def test_score_decoded_names_each_images_deciding_frame(scorer: ClipScorer) -> None:
    policy, _ = load_policy_file(POLICIES / "default.yaml")
    index = scorer.index_policy(policy)
    still = decode_frames(images.astronaut_jpeg(), DecodeLimits())
    results = scorer.score_decoded([still, decode_frames(images.coffee_png(), DecodeLimits())], index)
    assert len(results) == 2
    alone = scorer.score(scorer.embed_images(scorer.prepare(still)), index)[0]
    assert results[0].scores == pytest.approx(alone, abs=1e-5)
    assert results[0].deciding == {c.id: 0 for c in policy.categories}
    assert results[0].scores != results[1].scores


def test_the_scorer_reports_its_encoders_settings(scorer: ClipScorer) -> None:
    encoder = scorer.encoder
    assert (scorer.model_id, scorer.random_weights, scorer.image_size, scorer.logit_scale) == (
        encoder.name, encoder.random_weights, encoder.image_size, encoder.logit_scale,
    )
    assert scorer.prepare(decode_frames(images.astronaut_jpeg(), DecodeLimits())).shape[1:] == (3, encoder.image_size, encoder.image_size)


def test_a_probe_for_a_model_as_wide_as_a_real_one_is_accepted(tmp_path) -> None:  # noqa: ANN001
    """Dimensions are compared by value: 512 (ViT-B-32's) is past Python's cache of small ints,
    so a 32-dimension model alone cannot tell `!=` from `is not`."""
    import json

    from tests.conftest import TINY_CLIP

    config = json.loads((TINY_CLIP / "open_clip_config.json").read_text())
    config["model_cfg"]["embed_dim"] = 512
    model_dir = tmp_path / "wide-clip"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(json.dumps(config))
    wide = load_scorer(ClipModelSpec(model=f"local-dir:{model_dir}", weights="random"))
    weights = [((i * 5) % 9 - 4) * 0.25 for i in range(512)]
    policy = _probe_policy(wide, weights, bias=0.1)
    index = wide.index_policy(policy)
    assert [cid for cid, _, _ in index.probes] == ["stripes"]
    image = wide.embed_images(prepared(images.astronaut_jpeg(), wide))
    assert image.shape[1] == 512
    expected = float(torch.sigmoid(image[0] @ torch.tensor(weights) + 0.1))
    assert wide.score(image, index)[0]["stripes"] == pytest.approx(expected, abs=1e-5)
