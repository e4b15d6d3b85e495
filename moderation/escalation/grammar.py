"""Constrained decoding: xgrammar masks every token that would break the verdict schema.

Whitespace is fixed (`any_whitespace=False`, compact separators): with free whitespace
a weak or random model emits blanks until its token budget runs out. Every string and
number in the schema is bounded, so every path through the grammar ends.

Where the schema leaves only one way to go on (`{"category":"`, or the rest of a
category id once its first letters are chosen), the continuation is "jumped forward":
its tokens are appended without asking the model, and fed to it in one forward pass
instead of one pass each.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property

import torch
import xgrammar
from transformers import PreTrainedTokenizerBase

from moderation.escalation.answer import answer_json_schema
from moderation.escalation.verdict import verdict_json_schema
from moderation.policy.schema import Policy

# What closes a verdict whose token budget ran out inside the rationale, the last field.
_CLOSE_RATIONALE = '"}'


class VerdictGrammars:
    """Compiles verdict schemas for one tokenizer. Compiled grammars are immutable and shareable."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        # vocab_size is the model's logits width, which may exceed the tokenizer's (padding rows):
        # xgrammar masks the ids no token owns.
        self._tokenizer = tokenizer
        self._tokenizer_info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids)
        )
        self._compiler = xgrammar.GrammarCompiler(self._tokenizer_info, cache_enabled=False)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer_info.vocab_size

    def compile(self, policy: Policy, category_ids: Sequence[str]) -> xgrammar.CompiledGrammar:
        schema = verdict_json_schema(policy, category_ids)
        return self._compiler.compile_json_schema(schema, any_whitespace=False, separators=(",", ":"))

    @cached_property
    def answer(self) -> xgrammar.CompiledGrammar:
        """The grammar of a reviewer's question's answer (answer.py): the same for every policy, compiled once."""
        return self._compiler.compile_json_schema(json.dumps(answer_json_schema()), any_whitespace=False, separators=(",", ":"))

    def constraint(self, compiled: xgrammar.CompiledGrammar, closing: str = _CLOSE_RATIONALE) -> JsonConstraint:
        return JsonConstraint(compiled, self._tokenizer, self.vocab_size, closing)


class JsonConstraint:
    """The grammar state of one generation. Not shared between requests."""

    def __init__(
        self, compiled: xgrammar.CompiledGrammar, tokenizer: PreTrainedTokenizerBase, vocab_size: int, closing: str = _CLOSE_RATIONALE
    ) -> None:
        # terminate_without_stop_token: the verdict is complete at its closing brace;
        # waiting for an end-of-utterance token would cost one more forward pass.
        self._matcher = xgrammar.GrammarMatcher(compiled, terminate_without_stop_token=True)
        self._bitmask = xgrammar.allocate_token_bitmask(1, vocab_size)
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._closing = closing  # what ends the last, open string field and the object (see close_after_budget)
        self._closing_text = ""

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits of every token the grammar forbids next to -inf, in place.

        `logits` must be float32 on the CPU, where xgrammar fills the bitmask: a model
        on CUDA or in half precision hands its logits over with an explicit
        `.to("cpu", torch.float32)` (decoding.py does). Anything else is refused here,
        on every machine, rather than failing inside xgrammar on a GPU only.
        """
        if logits.device.type != "cpu" or logits.dtype != torch.float32:
            raise ValueError(
                f"the grammar mask takes float32 logits on the CPU, not {logits.dtype} on {logits.device}; "
                "move them with .to('cpu', torch.float32) first"
            )
        self._matcher.fill_next_token_bitmask(self._bitmask)
        xgrammar.apply_token_bitmask_inplace(logits.view(1, -1), self._bitmask, vocab_size=self._vocab_size)

    def accept(self, token_id: int) -> None:
        if not self._matcher.accept_token(token_id):
            raise RuntimeError(f"token {token_id} is not allowed by the verdict grammar")

    def forced_tokens(self, budget: int) -> list[int]:
        """Tokens the grammar leaves no choice about, at most `budget`, already accepted."""
        if budget <= 0 or self.complete:
            return []
        text = self._matcher.find_jump_forward_string()
        if not text:
            return []
        forced = []
        for token_id in self._tokenizer.encode(text, add_special_tokens=False)[:budget]:
            # The grammar works on bytes, so any tokenization of the forced text is
            # accepted; stop at the first that is not rather than trust that.
            if not self._matcher.accept_token(token_id):
                break
            forced.append(token_id)
        return forced

    @property
    def complete(self) -> bool:
        return self._matcher.is_terminated()

    def close_after_budget(self) -> bool:
        """The token budget is spent: end the verdict if only the rationale was still open.

        The closing characters never reach the model; they are text appended to its
        output (see `closing_text`): what the grammar itself forces next (say the final
        brace), or else the end of the rationale string and of the object. False when
        the output cannot be closed without inventing a field.
        """
        if self.complete:
            return True
        for closing in (self._matcher.find_jump_forward_string(), self._closing):
            trial = self._matcher.fork()
            if closing and trial.accept_string(closing) and trial.is_completed():
                self._matcher = trial
                self._closing_text = closing
                return True
        return False

    @property
    def closing_text(self) -> str:
        return self._closing_text
