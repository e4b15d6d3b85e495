"""Greedy decoding from a prefilled KV cache, optionally under a JSON grammar.

Our own loop rather than `model.generate` because it starts from a cache we prefilled
in two steps (shared prefix, then the image), applies the grammar mask, and feeds
grammar-forced tokens to the model in one pass. Callers run it under
`torch.inference_mode()`.

Devices: the model runs wherever its weights are (CUDA in bf16, CPU in float32...);
each step's logits row moves to the CPU as float32 before the grammar sees it
(xgrammar fills its token bitmask on the CPU), and each step's input ids go to the
device the logits came from.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass

import torch
from transformers import Cache, PreTrainedModel

from moderation.escalation.grammar import JsonConstraint


@dataclass(frozen=True, slots=True)
class DecodeOutcome:
    token_ids: list[int]
    forced_tokens: int  # of token_ids, those the grammar dictated (not chosen by the model)
    forward_passes: int  # after the prefill
    first_token_at: float  # time.perf_counter() when the first token was known
    finished_at: float
    complete: bool  # the grammar's object was closed (always True without a grammar)
    closing_text: str  # text appended after the budget ran out inside the last string


def greedy_decode(
    model: PreTrainedModel,
    cache: Cache,
    next_token_logits: torch.Tensor,
    max_new_tokens: int,
    constraint: JsonConstraint | None = None,
    stop_token_ids: Collection[int] = (),
) -> DecodeOutcome:
    """Decode from `next_token_logits` (the prefill's last position) and `cache`, which grows in place.

    Without a constraint it stops at a stop token or after exactly `max_new_tokens`
    (pass no stop tokens to force that count, as benchmarks do).
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    tokens: list[int] = []
    forced_count = forward_passes = 0
    first_token_at = None
    model_device = next_token_logits.device
    # A copy: the mask writes in place, and the caller's tensor stays intact.
    logits = _host_logits(next_token_logits, copy=True)
    while True:
        if constraint is not None:
            constraint.mask(logits)
        token_id = int(torch.argmax(logits))
        if first_token_at is None:
            first_token_at = time.perf_counter()
        if constraint is not None:
            constraint.accept(token_id)
        elif token_id in stop_token_ids:
            break
        tokens.append(token_id)
        forced = constraint.forced_tokens(max_new_tokens - len(tokens)) if constraint is not None else []
        tokens.extend(forced)
        forced_count += len(forced)
        if len(tokens) >= max_new_tokens or (constraint is not None and constraint.complete):
            break
        step_ids = torch.tensor([[token_id, *forced]], device=model_device)
        output = model(input_ids=step_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        forward_passes += 1
        logits = _host_logits(output.logits[0, -1])

    complete = constraint is None or constraint.complete or constraint.close_after_budget()
    return DecodeOutcome(
        token_ids=tokens,
        forced_tokens=forced_count,
        forward_passes=forward_passes,
        first_token_at=first_token_at,
        finished_at=time.perf_counter(),
        complete=complete,
        closing_text=constraint.closing_text if constraint is not None else "",
    )


def _host_logits(logits: torch.Tensor, copy: bool = False) -> torch.Tensor:
    """One row of logits as float32 on the CPU, where the grammar mask and argmax run."""
    return logits.to(device="cpu", dtype=torch.float32, copy=copy)
