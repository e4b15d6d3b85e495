"""The explainer on a tiny random-weight SmolVLM: real classes, real grammar, no network.

Random weights make the model's choices arbitrary, which is the point: whatever it
prefers, the grammar must turn it into a valid verdict citing an escalated clause.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import huggingface_hub.constants
import jsonschema
import numpy as np
import pytest
import torch
import xgrammar
from PIL import Image

from moderation.escalation import (
    RATIONALE_MAX_CHARS,
    TINY_TEST_MODEL,
    Explainer,
    ExplainerSpec,
    ExplainerWeightsUnavailable,
    ExplanationFailed,
    verdict_json_schema,
)
from moderation.escalation.grammar import VerdictGrammars
from moderation.escalation.local_processor import build_local_tokenizer
from moderation.escalation.prefix_cache import PrefixKey
from moderation.escalation.verdict import InvalidVerdict, parse_verdict
from moderation.policy.loader import load_policy_file

POLICY_FILE = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"
CATEGORY_SETS = (
    ("sexual_content", "graphic_violence"),
    ("weapons",),
    ("hate_symbols", "self_harm", "drugs"),
)
SEEDS = (0, 1, 2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def policy():
    policy, _ = load_policy_file(POLICY_FILE)
    return policy


@pytest.fixture(scope="module")
def explainers() -> dict[int, Explainer]:
    return {seed: Explainer.load(ExplainerSpec(model=TINY_TEST_MODEL, weights="random", seed=seed)) for seed in SEEDS}


@pytest.fixture(scope="module")
def explainer(explainers) -> Explainer:
    return explainers[0]


def make_images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    noise = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    gradient = Image.fromarray(np.tile(np.linspace(0, 255, 200, dtype=np.uint8), (50, 1)), mode="L")  # wide, greyscale
    solid = Image.new("RGB", (64, 64), (200, 30, 30))
    return [noise, gradient, solid]


def assert_valid_verdict(result, policy, category_ids) -> None:
    answer = json.loads(result.raw_json)
    jsonschema.validate(answer, verdict_json_schema(policy, category_ids))
    verdict = result.verdict
    assert verdict.category_id in category_ids
    assert verdict.clause_id == policy.category(verdict.category_id).clause.id
    assert (answer["category"], answer["clause"], answer["violates"]) == (
        verdict.category_id,
        verdict.clause_id,
        verdict.violates,
    )
    assert len(verdict.rationale) <= RATIONALE_MAX_CHARS
    assert 0.0 <= verdict.confidence <= 1.0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("category_ids", CATEGORY_SETS, ids="+".join)
def test_verdict_is_schema_valid_json_citing_an_escalated_clause(explainers, policy, seed, category_ids):
    explainer = explainers[seed]
    for image in make_images():
        result = explainer.explain(image, policy, category_ids)
        assert_valid_verdict(result, policy, category_ids)
        # The model, not only the grammar, chose tokens: the output is not all forced.
        assert result.generated_tokens > result.forced_tokens > 0


def test_different_random_models_give_different_answers(explainers, policy):
    image = make_images()[0]
    answers = {explainer.explain(image, policy, CATEGORY_SETS[0]).raw_json for explainer in explainers.values()}
    assert len(answers) == len(explainers)


def test_rationale_stays_bounded_with_a_large_budget(explainer, policy):
    for image in make_images():
        result = explainer.explain(image, policy, CATEGORY_SETS[2], max_new_tokens=400)
        assert_valid_verdict(result, policy, CATEGORY_SETS[2])
        assert not result.rationale_truncated


def test_budget_running_out_in_the_rationale_still_closes_the_json(explainer, policy):
    image = make_images()[0]
    full = explainer.explain(image, policy, CATEGORY_SETS[0], max_new_tokens=400)
    assert len(full.verdict.rationale) >= 40  # long enough that the cut below lands inside it
    # At most two tokens close the rationale and the object; cutting five cuts the rationale.
    cut = explainer.explain(image, policy, CATEGORY_SETS[0], max_new_tokens=full.generated_tokens - 5)
    assert cut.generated_tokens == full.generated_tokens - 5
    assert cut.rationale_truncated
    assert_valid_verdict(cut, policy, CATEGORY_SETS[0])
    assert full.verdict.rationale.startswith(cut.verdict.rationale)
    assert len(cut.verdict.rationale) < len(full.verdict.rationale)


def test_budget_too_small_for_a_verdict_fails_instead_of_inventing_one(explainer, policy):
    with pytest.raises(ExplanationFailed, match="max_new_tokens"):
        explainer.explain(make_images()[0], policy, CATEGORY_SETS[0], max_new_tokens=3)


def test_prefix_reuse_gives_the_same_tokens_as_prefilling_the_whole_prompt(explainer, policy):
    instruction = "Check this image against the clauses and answer in JSON."  # a fresh prefix key
    for image in make_images():
        reused = explainer.explain(image, policy, CATEGORY_SETS[1], instruction=instruction)
        whole = explainer.explain(image, policy, CATEGORY_SETS[1], instruction=instruction, reuse_prefix=False)
        assert not whole.prefix_cache_hit
        assert reused.raw_json == whole.raw_json
        assert reused.generated_tokens == whole.generated_tokens
    assert reused.prefix_cache_hit


def test_cached_prefix_is_not_changed_by_requests(explainer, policy):
    category_ids = ("hate_symbols", "drugs")
    images = make_images()
    first = explainer.explain(images[0], policy, category_ids)
    entry = explainer.prefix_cache.peek(PrefixKey(policy.id, policy.version, category_ids, None))
    assert entry is not None
    before = [(layer.keys.clone(), layer.values.clone()) for layer in entry.kv_cache.layers]
    assert entry.kv_cache.get_seq_length() == entry.token_count

    for image in images[1:]:
        assert explainer.explain(image, policy, category_ids).prefix_cache_hit
    again = explainer.explain(images[0], policy, category_ids)

    assert entry.kv_cache.get_seq_length() == entry.token_count
    for layer, (keys, values) in zip(entry.kv_cache.layers, before, strict=True):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
    assert again.raw_json == first.raw_json


def test_prefix_cache_keys_on_policy_version_and_instruction(explainer, policy):
    newer = policy.model_copy(update={"version": policy.version + "-next"})
    image = make_images()[2]
    explainer.explain(image, policy, CATEGORY_SETS[1])
    assert explainer.explain(image, policy, CATEGORY_SETS[1]).prefix_cache_hit
    assert not explainer.explain(image, newer, CATEGORY_SETS[1]).prefix_cache_hit
    assert not explainer.explain(image, policy, CATEGORY_SETS[1], instruction="Another instruction.").prefix_cache_hit


def test_grammar_ties_each_category_to_its_own_clause(policy):
    tokenizer = build_local_tokenizer()
    grammars = VerdictGrammars(tokenizer, vocab_size=len(tokenizer), stop_token_ids=[tokenizer.eos_token_id])
    compiled = grammars.compile(policy, CATEGORY_SETS[0])
    prefix = '{"category":"sexual_content","clause":'
    assert xgrammar.GrammarMatcher(compiled).accept_string(prefix + '"SX-1"')
    assert not xgrammar.GrammarMatcher(compiled).accept_string(prefix + '"V-2"')
    assert not xgrammar.GrammarMatcher(compiled).accept_string('{"category":"weapons"')


def test_parser_refuses_a_clause_of_another_category(policy):
    mismatched = '{"category":"sexual_content","clause":"V-2","violates":true,"confidence":0.5,"rationale":"x"}'
    with pytest.raises(InvalidVerdict, match="not the clause of category"):
        parse_verdict(mismatched, policy, CATEGORY_SETS[0])
    too_long = json.dumps(
        {
            "category": "weapons",
            "clause": "W-1",
            "violates": False,
            "confidence": 0.5,
            "rationale": "a" * (RATIONALE_MAX_CHARS + 1),
        }
    )
    with pytest.raises(InvalidVerdict, match="rationale"):
        parse_verdict(too_long, policy, CATEGORY_SETS[1])


def test_unknown_category_is_refused(explainer, policy):
    with pytest.raises(ValueError, match="no category 'nope'"):
        explainer.explain(make_images()[0], policy, ["weapons", "nope"])


def test_quantized_explainer_still_answers_valid_verdicts(policy):
    explainer = Explainer.load(ExplainerSpec(model=TINY_TEST_MODEL, weights="random", quantize=True))
    assert explainer.info.quantized
    for image in make_images():
        assert_valid_verdict(explainer.explain(image, policy, CATEGORY_SETS[0]), policy, CATEGORY_SETS[0])


def test_warmup_and_info(explainer):
    explainer.warmup()
    info = explainer.info
    assert info.random_weights and info.model_id == f"{TINY_TEST_MODEL}/random"


@pytest.mark.parametrize("model", ["HuggingFaceTB/SmolVLM2-256M-Video-Instruct", "/nonexistent/smolvlm2-folder"])
def test_missing_weights_offline_fail_fast_naming_the_setting(tmp_path, monkeypatch, model):
    # load_explainer switches huggingface_hub offline for the process; undo that after the test.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    spec = ExplainerSpec(model=model, allow_downloads=False, cache_dir=tmp_path / "empty-cache")
    started = time.monotonic()
    with pytest.raises(ExplainerWeightsUnavailable) as raised:
        Explainer.load(spec)
    assert time.monotonic() - started < 10, "offline loading must fail at once, not retry the hub"
    message = str(raised.value)
    assert "\n" not in message
    assert "MODERATION_EXPLAINER_MODEL" in message and "--explainer-weights random" in message


def test_random_weights_for_an_unshipped_architecture_say_what_to_set():
    with pytest.raises(ExplainerWeightsUnavailable, match="MODERATION_EXPLAINER_MODEL"):
        Explainer.load(ExplainerSpec(model="HuggingFaceTB/SmolVLM2-2.2B-Instruct", weights="random"))


# Reviewers' questions (answer.py) -----------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_an_answer_is_one_to_three_bounded_sentences_whatever_the_model(explainers, policy, seed):
    from moderation.escalation.answer import MAX_SENTENCES, SENTENCE_MAX_CHARS, answer_json_schema

    for image in make_images():
        result = explainers[seed].answer(image, "Is the knife being sold?", policy, "weapons", max_new_tokens=400)
        assert result.text and result.generated_tokens > 0
        assert len(result.text) <= MAX_SENTENCES * (SENTENCE_MAX_CHARS + 1)
        assert set(result.text) <= set("?!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 ,.;:'()-")
    jsonschema.validate({"answer": ["One.", "Two?"]}, answer_json_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"answer": ["a", "b", "c", "d"]}, answer_json_schema())


def test_an_answer_cut_by_its_budget_is_closed_and_marked(explainer, policy):
    result = explainer.answer(make_images()[0], "What is shown?", policy, None, max_new_tokens=8)
    assert result.truncated and result.text


def test_a_budget_too_small_for_any_answer_fails_instead_of_inventing_one(explainer, policy):
    with pytest.raises(ExplanationFailed):
        explainer.answer(make_images()[0], "What is shown?", policy, None, max_new_tokens=1)


@pytest.mark.parametrize(
    ("question", "says"),
    [("", "the question is empty"), ("  \t ", "the question is empty"), ("y" * 301, "at most 300"), ("a\nb", "on one line")],
)
def test_questions_are_checked_before_the_model_runs(explainer, policy, question, says):
    from moderation.escalation.answer import InvalidQuestion

    with pytest.raises(InvalidQuestion, match=says):
        explainer.answer(make_images()[0], question, policy, None)


def test_the_parser_refuses_answers_outside_the_schema():
    from moderation.escalation.answer import InvalidAnswer, parse_answer

    assert parse_answer('{"answer":["It is a knife.","Not sold."]}') == "It is a knife. Not sold."
    for text in ('{"answer":[]}', '{"answer":["<b>x</b>"]}', '{"answer":["a"],"extra":1}', "[]", "not json", '{"answer":["a","b","c","d"]}'):
        with pytest.raises(InvalidAnswer):
            parse_answer(text)


def test_questions_share_the_tiers_budget_with_escalations(explainer, policy):
    """docs/reviewing.md: questions go through the escalation tier's bounds; with its budget spent they are SHED."""
    import asyncio

    from moderation.escalation.backends import InProcessExplainer
    from moderation.escalation.tier import EscalationStatus, EscalationTier, ReviewerQuestion

    async def ask_twice():
        tier = EscalationTier(InProcessExplainer(explainer), budget_per_minute=1, timeout_s=120)
        question = ReviewerQuestion("case-1", b"", make_images()[2], policy, "weapons", "Is the knife being sold?")
        try:
            return await tier.ask(question, 120), await tier.ask(question, 120)
        finally:
            await tier.close()

    first, second = asyncio.run(ask_twice())
    assert first.status is EscalationStatus.COMPLETED and first.answer.text and first.answer.model_id == explainer.info.model_id
    assert second.status is EscalationStatus.SHED and "explainer_budget_per_minute" in second.reason
