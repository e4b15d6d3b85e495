"""The GPU's dtypes on the CPU: CLIP and the explainer in fp16 and bf16, end to end.

Production runs CLIP in fp16 and SmolVLM2 in bf16 on CUDA. Every dtype mismatch that
broke the service there (float32 pixels into fp16 weights, bf16 logits into the grammar
mask) fails the same way on the CPU, so these tests run the half-precision models on
the CPU, in the normal suite, without a GPU. Device mismatches cannot be provoked
without a second device; tests/unit/test_device_independence.py checks those statically.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moderation.signals.clip import ClipModelSpec, ClipScorer
from moderation.escalation import TINY_TEST_MODEL, Explainer, ExplainerSpec
from moderation.escalation.grammar import VerdictGrammars
from moderation.escalation.loading import load_explainer
from moderation.escalation.local_processor import build_local_tokenizer
from moderation.core.decode import DecodeLimits, decode_frames
from moderation.policy import load_policy_file
from moderation.runtime import load_scorer
from tests import images
from tests.conftest import POLICIES
from tests.unit.test_escalation import CATEGORY_SETS, assert_valid_verdict, make_images

HALF = (torch.float16, torch.bfloat16)
NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def policy():
    policy, _ = load_policy_file(POLICIES / "default.yaml")
    return policy


@pytest.fixture(scope="module")
def clip_scorers(tiny_clip_model: str) -> dict[torch.dtype, ClipScorer]:
    # load_scorer seeds random weights: the three are one model in three dtypes.
    return {
        dtype: load_scorer(ClipModelSpec(model=tiny_clip_model, weights="random", precision=NAMES[dtype]))
        for dtype in (torch.float32, *HALF)
    }


def test_precision_auto_means_fp16_clip_and_bf16_explainer_on_cuda_fp32_on_cpu() -> None:
    assert ClipModelSpec(device="cuda").torch_dtype == torch.float16
    assert ClipModelSpec(device="cuda:1", precision="bf16").torch_dtype == torch.bfloat16
    assert ClipModelSpec(device="cpu").torch_dtype == torch.float32
    assert ExplainerSpec(device="cuda").torch_dtype == torch.bfloat16
    assert ExplainerSpec(device="cuda", precision="fp16").torch_dtype == torch.float16
    assert ExplainerSpec(device="cpu").torch_dtype == torch.float32


@pytest.mark.parametrize("dtype", HALF, ids=NAMES.get)
def test_half_precision_clip_builds_half_weights_and_scores_through_the_seam(clip_scorers, policy, dtype) -> None:
    scorer, reference = clip_scorers[dtype], clip_scorers[torch.float32]
    assert scorer.encoder.dtype == dtype
    # What the issue hit: open_clip keeps some parameters (the first among them) in
    # float32, so the first parameter's dtype is not the tower's.
    parameter_dtypes = {p.dtype for p in scorer.encoder._model.parameters()}
    assert dtype in parameter_dtypes and torch.float32 in parameter_dtypes
    decoded = [decode_frames(data, DecodeLimits()) for data in (images.astronaut_jpeg(), images.coffee_png())]
    pixels = torch.cat([scorer.prepare(d) for d in decoded])
    assert pixels.dtype == torch.float32, "preprocess output stays float32: the backend casts"
    embeddings = scorer.embed_images(pixels)
    texts = scorer.encoder.encode_texts(["a cat", "a dog"])
    for tensor in (embeddings, texts):
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu"
        assert torch.allclose(tensor.norm(dim=-1), torch.ones(tensor.shape[0]), atol=1e-3)
    # The same model in half precision: the same directions, up to rounding.
    assert F.cosine_similarity(embeddings, reference.embed_images(pixels)).min() > 0.98
    index = scorer.index_policy(policy)
    results = scorer.score_decoded(decoded, index)
    expected = reference.score_decoded(decoded, reference.index_policy(policy))
    for got, want in zip(results, expected, strict=True):
        assert set(got.scores) == {c.id for c in policy.categories}
        assert all(0.0 <= s <= 1.0 for s in got.scores.values())
        assert got.scores == pytest.approx(want.scores, abs=0.05)
    # What the embedding store does with a row (pipeline._record): numpy, no device left.
    assert embeddings[0].numpy().dtype.name == "float32"


@pytest.fixture(scope="module")
def half_explainers() -> dict[torch.dtype, tuple[Explainer, torch.nn.Module]]:
    built = {}
    for dtype in HALF:
        loaded = load_explainer(ExplainerSpec(model=TINY_TEST_MODEL, weights="random", precision=NAMES[dtype]))
        built[dtype] = (Explainer(loaded), loaded.model)
    return built


@pytest.mark.parametrize("dtype", HALF, ids=NAMES.get)
def test_half_precision_explainer_answers_valid_verdicts(half_explainers, policy, dtype) -> None:
    explainer, model = half_explainers[dtype]
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert explainer.info.dtype == str(dtype).removeprefix("torch.")
    seen: list[tuple[torch.dtype, str]] = []

    def record_pixels(module, args, kwargs):  # noqa: ANN001, ANN202
        if kwargs.get("pixel_values") is not None:
            seen.append((kwargs["pixel_values"].dtype, kwargs["input_ids"].device.type))

    hook = model.register_forward_pre_hook(record_pixels, with_kwargs=True)
    try:
        for category_ids in CATEGORY_SETS:
            for image in make_images():
                result = explainer.explain(image, policy, category_ids)
                assert_valid_verdict(result, policy, category_ids)
                assert result.generated_tokens > result.forced_tokens > 0
        whole = explainer.explain(make_images()[0], policy, CATEGORY_SETS[0], reuse_prefix=False)
        assert_valid_verdict(whole, policy, CATEGORY_SETS[0])
        timing = explainer.generate_unconstrained(make_images()[0], policy, CATEGORY_SETS[0], new_tokens=5)
        assert timing.new_tokens == 5
    finally:
        hook.remove()
    # The processor's float32 pixels were cast explicitly to the weights' dtype.
    assert seen and set(seen) == {(dtype, "cpu")}


def test_grammar_mask_refuses_logits_that_are_not_float32_on_the_cpu(policy) -> None:
    tokenizer = build_local_tokenizer()
    grammars = VerdictGrammars(tokenizer, vocab_size=len(tokenizer), stop_token_ids=[tokenizer.eos_token_id])
    constraint = grammars.constraint(grammars.compile(policy, CATEGORY_SETS[1]))
    with pytest.raises(ValueError, match="float32 logits on the CPU"):
        constraint.mask(torch.zeros(len(tokenizer), dtype=torch.bfloat16))
    logits = torch.zeros(len(tokenizer))
    constraint.mask(logits)
    allowed = torch.isfinite(logits).nonzero().flatten().tolist()
    assert allowed and all(tokenizer.decode([i]).startswith("{") for i in allowed), "only the verdict's opening brace"


def test_int8_quantization_is_refused_off_the_cpu_or_in_half_precision() -> None:
    with pytest.raises(ValueError, match="CPU in float32 only"):
        ExplainerSpec(device="cuda", quantize=True)
    with pytest.raises(ValueError, match="CPU in float32 only"):
        ExplainerSpec(precision="bf16", quantize=True)
    with pytest.raises(ValueError, match="precision must be"):
        ExplainerSpec(precision="int4")
    assert ExplainerSpec(quantize=True).torch_dtype == torch.float32
