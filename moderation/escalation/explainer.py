"""The explainer: SmolVLM2 reads the image and the borderline clauses and answers a verdict in JSON.

Threading: an Explainer is synchronous and meant to be confined to one worker thread
(the server runs it in its own bounded executor, so slow generations cannot starve
the CLIP tier). Calls from several threads are safe but run one at a time: a lock
serialises them, since the model and the prefix cache are shared.

Speed, per request:
  1. the prompt prefix (instruction + clauses) comes from the prefix cache: prefilled
     once per (policy id, version, category ids, instruction), copied per request;
  2. one prefill pass for the image (one 512px frame, no tiles) and the question,
     continuing from that copy;
  3. greedy decoding under the verdict grammar, grammar-forced tokens fed in one pass,
     bounded by max_new_tokens;
all under torch.inference_mode(), optionally with int8 dynamic quantization (loading.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import xgrammar
from PIL import Image
from transformers import Cache
from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

from moderation.escalation.answer import ANSWER_MAX_NEW_TOKENS, CLOSE_ANSWER, InvalidAnswer, check_question, parse_answer
from moderation.escalation.decoding import DecodeOutcome, greedy_decode
from moderation.escalation.grammar import VerdictGrammars
from moderation.escalation.loading import ExplainerSpec, LoadedExplainer, load_explainer
from moderation.escalation.prefix_cache import PrefilledPrefix, PrefixCache, PrefixKey
from moderation.escalation.prompt import (
    END_OF_UTTERANCE,
    build_prompt,
    build_question_prompt,
    escalated_categories,
)
from moderation.escalation.verdict import (
    ExplainerVerdict,
    InvalidVerdict,
    parse_verdict,
)
from moderation.policy.schema import Category, Clause, Policy, Thresholds

DEFAULT_MAX_NEW_TOKENS = 96


class ExplanationFailed(RuntimeError):
    """No valid verdict within the token budget. The caller falls back to human review."""


@dataclass(frozen=True, slots=True)
class ExplainerInfo:
    model_id: str
    random_weights: bool
    quantized: bool
    device: str
    dtype: str  # of the weights and the pixels fed to them, e.g. 'bfloat16'


@dataclass(frozen=True, slots=True)
class ExplanationResult:
    verdict: ExplainerVerdict
    raw_json: str  # the model's answer as generated (plus any closing added at the budget)
    generated_tokens: int  # output tokens, grammar-forced ones included
    forced_tokens: int  # of those, tokens the grammar dictated (fed to the model in bulk)
    rationale_truncated: bool  # the budget ran out inside the rationale, which was cut and closed there
    prefix_cache_hit: bool
    prefill_ms: float  # this request's prefill: the image and question, plus the prefix on a cache miss
    ttft_ms: float  # from the call to the first output token, image preprocessing included
    decode_ms_per_token: float  # after the first token
    total_ms: float


@dataclass(frozen=True, slots=True)
class AnswerResult:
    """A reviewer's question answered: advisory text, never a decision."""

    text: str
    generated_tokens: int
    truncated: bool  # the token budget ran out inside a sentence, which was cut and closed there
    total_ms: float


@dataclass(frozen=True, slots=True)
class GenerationTiming:
    """Timing of an unconstrained generation of a fixed length (benchmarks)."""

    new_tokens: int
    prefill_ms: float
    ttft_ms: float
    decode_ms_per_token: float
    total_ms: float


@dataclass(frozen=True, slots=True)
class PromptInputs:
    """The full prompt as model inputs, exactly as the explainer feeds it (prefix then image part)."""

    input_ids: torch.Tensor  # (1, sequence)
    pixel_values: torch.Tensor
    pixel_attention_mask: torch.Tensor
    prefix_tokens: int


@dataclass(frozen=True, slots=True)
class _Prefilled:
    cache: Cache
    next_token_logits: torch.Tensor
    grammar: xgrammar.CompiledGrammar
    prefix_cache_hit: bool
    prefill_ms: float


class Explainer:
    def __init__(self, loaded: LoadedExplainer, prefix_cache_entries: int = 32) -> None:
        self._spec = loaded.spec
        self._model = loaded.model
        self._processor = loaded.processor
        self._tokenizer = loaded.processor.tokenizer
        processor = loaded.processor
        self._image_placeholder = get_image_prompt_string(
            0,  # rows and columns 0: one frame, no tiles
            0,
            processor.image_seq_len,
            fake_token_around_image=processor.fake_image_token,
            image_token=processor.image_token,
            global_image_token=processor.global_image_token,
        )
        self._frame = {"longest_edge": processor.image_processor.max_image_size["longest_edge"]}
        stop_ids = {self._tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE), self._tokenizer.eos_token_id}
        self._stop_token_ids = sorted(i for i in stop_ids if i is not None)
        self._grammars = VerdictGrammars(self._tokenizer, loaded.vocab_size, self._stop_token_ids)
        self._prefixes = PrefixCache(prefix_cache_entries)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, spec: ExplainerSpec, prefix_cache_entries: int = 32) -> Explainer:
        return cls(load_explainer(spec), prefix_cache_entries=prefix_cache_entries)

    @property
    def info(self) -> ExplainerInfo:
        return ExplainerInfo(
            model_id=self._spec.model_id,
            random_weights=self._spec.random,
            quantized=self._spec.quantize,
            device=self._spec.device,
            dtype=str(self._spec.torch_dtype).removeprefix("torch."),
        )

    def warmup(self, policy: Policy | None = None, category_ids: Sequence[str] | None = None) -> None:
        """Run one explanation so the first request does not pay for lazy initialisation.

        With a policy, its prefix for `category_ids` (default: all categories) is cached too.
        """
        if policy is None:
            policy = _WARMUP_POLICY
        ids = list(category_ids) if category_ids is not None else [c.id for c in policy.categories]
        grey = Image.new("RGB", (self._frame["longest_edge"],) * 2, (128, 128, 128))
        self.explain(grey, policy, ids, max_new_tokens=DEFAULT_MAX_NEW_TOKENS)

    def explain(
        self,
        image: Image.Image,
        policy: Policy,
        category_ids: Sequence[str],
        instruction: str | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        reuse_prefix: bool = True,
    ) -> ExplanationResult:
        """A verdict on `image` for the borderline `category_ids` of `policy`.

        `instruction` replaces the default instruction text (a policy-level setting).
        `reuse_prefix=False` prefills the whole prompt from scratch (for checks).
        Raises ValueError for unknown categories and ExplanationFailed when no valid
        verdict fits in `max_new_tokens`.
        """
        with self._lock, torch.inference_mode():
            started = time.perf_counter()
            prefilled = self._prefill(image, policy, category_ids, instruction, reuse_prefix)
            constraint = self._grammars.constraint(prefilled.grammar)
            outcome = greedy_decode(
                self._model, prefilled.cache, prefilled.next_token_logits, max_new_tokens, constraint
            )
        if not outcome.complete:
            raise ExplanationFailed(
                f"the token budget of {max_new_tokens} ran out before the verdict reached its rationale; "
                "raise max_new_tokens"
            )
        # Exactly the bytes the grammar accepted: no special-token stripping, no space clean-up.
        text = self._tokenizer.decode(outcome.token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        text += outcome.closing_text
        try:
            verdict = parse_verdict(text, policy, category_ids)
        except InvalidVerdict as err:
            raise ExplanationFailed(f"the explainer's answer is not a valid verdict: {err}") from err
        return ExplanationResult(
            verdict=verdict,
            raw_json=text,
            generated_tokens=len(outcome.token_ids),
            forced_tokens=outcome.forced_tokens,
            rationale_truncated=outcome.closing_text.startswith('"'),
            prefix_cache_hit=prefilled.prefix_cache_hit,
            prefill_ms=prefilled.prefill_ms,
            **_timings(started, outcome),
        )

    def generate_unconstrained(
        self,
        image: Image.Image,
        policy: Policy,
        category_ids: Sequence[str],
        new_tokens: int,
        instruction: str | None = None,
    ) -> GenerationTiming:
        """Exactly `new_tokens` greedy tokens on the explain path without the grammar (benchmarks:
        the same work as `model.generate(min_new_tokens=max_new_tokens=new_tokens)`)."""
        with self._lock, torch.inference_mode():
            started = time.perf_counter()
            prefilled = self._prefill(image, policy, category_ids, instruction, reuse_prefix=True)
            outcome = greedy_decode(self._model, prefilled.cache, prefilled.next_token_logits, new_tokens)
        return GenerationTiming(
            new_tokens=len(outcome.token_ids), prefill_ms=prefilled.prefill_ms, **_timings(started, outcome)
        )

    def answer(
        self,
        image: Image.Image,
        question: str,
        policy: Policy,
        category_id: str | None = None,
        max_new_tokens: int = ANSWER_MAX_NEW_TOKENS,
    ) -> AnswerResult:
        """SmolVLM2's advisory answer to a reviewer's `question` about `image` (a case's frame or thumbnail).

        The case's clause (`category_id` of `policy`) is given as context. Raises InvalidQuestion
        (asked nothing), ValueError (unknown category) and ExplanationFailed (no answer within
        `max_new_tokens`). Questions are rare and each is different: no prefix cache.
        """
        question = check_question(question)
        prompt = build_question_prompt(policy, category_id, self._image_placeholder, question)
        with self._lock, torch.inference_mode():
            started = time.perf_counter()
            pixels = self._pixels(image)
            output = self._model(
                input_ids=self._encode(prompt).to(self._spec.device),
                pixel_values=pixels["pixel_values"].to(self._spec.device, self._spec.torch_dtype),
                pixel_attention_mask=pixels["pixel_attention_mask"].to(self._spec.device),
                use_cache=True,
                logits_to_keep=1,
            )
            constraint = self._grammars.constraint(self._grammars.answer, closing=CLOSE_ANSWER)
            outcome = greedy_decode(self._model, output.past_key_values, output.logits[0, -1], max_new_tokens, constraint)
        if not outcome.complete:
            raise ExplanationFailed(f"the token budget of {max_new_tokens} ran out before the answer could be closed")
        text = self._tokenizer.decode(outcome.token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        try:
            answer = parse_answer(text + outcome.closing_text)
        except InvalidAnswer as err:
            raise ExplanationFailed(f"the explainer's answer is not valid: {err}") from err
        return AnswerResult(
            answer, len(outcome.token_ids), bool(outcome.closing_text), (time.perf_counter() - started) * 1000.0
        )

    def prompt_inputs(
        self, image: Image.Image, policy: Policy, category_ids: Sequence[str], instruction: str | None = None
    ) -> PromptInputs:
        """The explain prompt as plain model inputs, e.g. for `model.generate` in benchmarks."""
        prompt = build_prompt(policy, category_ids, self._image_placeholder, instruction)
        prefix_ids = self._encode(prompt.prefix)
        suffix_ids = self._encode(prompt.suffix)
        pixels = self._pixels(image)
        return PromptInputs(
            input_ids=torch.cat([prefix_ids, suffix_ids], dim=1),
            pixel_values=pixels["pixel_values"],
            pixel_attention_mask=pixels["pixel_attention_mask"],
            prefix_tokens=prefix_ids.shape[1],
        )

    @property
    def prefix_cache(self) -> PrefixCache:
        return self._prefixes

    def _prefill(
        self,
        image: Image.Image,
        policy: Policy,
        category_ids: Sequence[str],
        instruction: str | None,
        reuse_prefix: bool,
    ) -> _Prefilled:
        escalated_categories(policy, category_ids)  # refuse unknown ids before any work
        pixels = self._pixels(image)
        prompt = build_prompt(policy, category_ids, self._image_placeholder, instruction)
        suffix_ids = self._encode(prompt.suffix)
        started = time.perf_counter()
        if reuse_prefix:
            key = PrefixKey(policy.id, policy.version, tuple(category_ids), instruction)
            prefix, hit = self._prefixes.get_or_build(
                key, lambda: self._prefill_prefix(prompt.prefix, policy, category_ids)
            )
            grammar, cache, input_ids = prefix.grammar, prefix.fork(), suffix_ids
        else:
            # The whole prompt in one pass, as model.generate would run it.
            grammar, cache, hit = self._grammars.compile(policy, category_ids), None, False
            input_ids = torch.cat([self._encode(prompt.prefix), suffix_ids], dim=1)
        output = self._model(
            input_ids=input_ids.to(self._spec.device),
            # The processor returns float32 pixels on the CPU; they take the weights' device and dtype.
            pixel_values=pixels["pixel_values"].to(self._spec.device, self._spec.torch_dtype),
            pixel_attention_mask=pixels["pixel_attention_mask"].to(self._spec.device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return _Prefilled(
            cache=output.past_key_values,
            next_token_logits=output.logits[0, -1],
            grammar=grammar,
            prefix_cache_hit=hit,
            prefill_ms=(time.perf_counter() - started) * 1000.0,
        )

    def _prefill_prefix(self, prefix_text: str, policy: Policy, category_ids: Sequence[str]) -> PrefilledPrefix:
        started = time.perf_counter()
        prefix_ids = self._encode(prefix_text)
        output = self._model(input_ids=prefix_ids.to(self._spec.device), use_cache=True, logits_to_keep=1)
        return PrefilledPrefix(
            token_count=prefix_ids.shape[1],
            kv_cache=output.past_key_values,
            grammar=self._grammars.compile(policy, category_ids),
            prefill_ms=(time.perf_counter() - started) * 1000.0,
        )

    def _encode(self, text: str) -> torch.Tensor:
        return self._tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]

    def _pixels(self, image: Image.Image) -> dict[str, torch.Tensor]:
        return self._processor.image_processor(
            images=[[image.convert("RGB")]],
            do_image_splitting=False,
            size=self._frame,
            max_image_size=self._frame,
            return_tensors="pt",
        )


def _timings(started: float, outcome: DecodeOutcome) -> dict[str, float]:
    decoded_after_first = max(1, len(outcome.token_ids) - 1)
    return {
        "ttft_ms": (outcome.first_token_at - started) * 1000.0,
        "decode_ms_per_token": (outcome.finished_at - outcome.first_token_at) * 1000.0 / decoded_after_first,
        "total_ms": (outcome.finished_at - started) * 1000.0,
    }


# Used by warmup() when no policy is given: exercises the same prompt and grammar paths.
_WARMUP_POLICY = Policy(
    id="warmup",
    version="1",
    benign=["an ordinary photo"],
    categories=[
        Category(
            id="example",
            clause=Clause(id="EX-1", text="An example clause used only to warm the explainer up."),
            positive=["an example"],
            thresholds=Thresholds(review=0.5, block=0.9),
        )
    ],
)
