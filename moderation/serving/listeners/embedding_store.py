"""The embedding store listener: keep each decision's image embedding (never the image) for `policy diff`,
and what decided it (scores, thresholds, shadow results, the explainer's rationale) for `case show`."""

from __future__ import annotations

import numpy as np

from moderation.core.decision import Decision
from moderation.escalation.tier import EscalationStatus
from moderation.serving.listeners.shadow import category_actions
from moderation.serving.result import ModerationResult
from moderation.state.records import decision_details
from moderation.state.store import StateStore


class EmbeddingStoreListener:
    name = "embedding_store"

    def __init__(self, store: StateStore):
        self._store = store

    def handle(self, result: ModerationResult) -> None:
        decision = result.judgement.decision  # what the policy decided on the embedding, as `policy diff` re-decides it
        # For animations, the frame behind the highest-scoring category stands for the image.
        vector = np.array(result.judgement.frames.embeddings[result.judgement.representative_row()], dtype=np.float32)  # a copy; torch or numpy rows
        self._store.record(
            result.request_id, result.decided_at, decision.policy_id, decision.policy_version, decision.action.value, vector, result.model_id,
            caller=result.caller, details=result_details(result),
        )  # fmt: skip

    def close(self) -> None:
        self._store.close()


def result_details(result: ModerationResult) -> dict[str, object]:
    """What decided `result`: the final decision's categories and reasons, the explainer's answer, each shadow's."""
    decision = result.decision  # final, after escalation: what the caller got
    escalation = None
    outcome = result.escalation
    if outcome.status is not EscalationStatus.NOT_NEEDED:
        escalation = {"status": outcome.status.value, "reason": outcome.reason}
        if outcome.verdict is not None:
            escalation |= {
                "category": outcome.verdict.category_id,
                "violates": outcome.verdict.violates,
                "confidence": round(outcome.verdict.confidence, 4),
                "rationale": outcome.verdict.rationale,
                "model": outcome.model_id,
                "changed_action": outcome.changed_action,
            }
    shadows = [
        {
            "policy_id": shadow.decision.policy_id,
            "version": shadow.decision.policy_version,
            "action": shadow.decision.action.value,
            "disagree": [cid for cid, (mine, theirs) in category_actions(result.judgement.decision, shadow.decision).items() if mine is not theirs],
        }
        for shadow in result.shadows
    ]
    return decision_details(_categories(decision), reasons=list(decision.reasons), escalation=escalation, shadows=shadows)


def _categories(decision: Decision) -> list[dict[str, object]]:
    return [
        {
            "id": c.category_id, "clause": c.clause_id, "score": round(c.score, 6), "review": c.review_threshold,
            "block": c.block_threshold, "band": c.band.value, "action": c.action.value, **({"forced_by": c.forced_by} if c.forced_by else {}),
        }  # fmt: skip
        for c in decision.categories
    ]
