"""The review queue listener: every REVIEW decision opens a case (moderation/state/review.py), off the request path.

It runs in its own listener thread (queue.py) and only hands the case to the state
store's buffer (`StateStore.open_case`): the store writes it with its next batch, and a
full review queue drops it there, counted and logged. The case holds ids, scores,
thresholds, bands, clauses, bank matches and the explainer's rationale; its thumbnail,
when thumbnails are kept, is the thumbnail row of the same caller and request id.
"""

from __future__ import annotations

import uuid

from moderation.policy.schema import Action
from moderation.serving.result import ModerationResult
from moderation.state.review import CaseCategory, NewCase
from moderation.state.store import StateStore


def new_case(result: ModerationResult) -> NewCase | None:
    """The case a result opens: one for a REVIEW decision (by score, explainer or bank rule), else None."""
    decision = result.decision
    if decision.action is not Action.REVIEW:
        return None
    flagged = [c for c in decision.categories if c.action is Action.REVIEW] or list(decision.categories)
    top = max(flagged, key=lambda c: (c.forced_by != "", c.score))
    if top.forced_by:
        reason = "bank_match"
    elif result.escalation.changed_action:
        reason = "explainer"
    else:
        reason = "score"
    verdict = result.escalation.verdict
    matches = tuple(
        {"bank": m.bank, "content_id": m.content_id, "signal_type": m.signal_type, "distance": m.distance, "action": forced.action.value}
        for forced, m in result.judgement.forced_matches()
    )
    return NewCase(
        case_id=uuid.uuid4().hex,
        opened_at=result.decided_at,
        caller=result.caller,
        request_id=result.request_id,
        policy_id=decision.policy_id,
        policy_version=decision.policy_version,
        model_id=result.model_id,
        reason=reason,
        category_id=top.category_id,
        categories=tuple(
            CaseCategory(
                c.category_id, float(c.score), c.review_threshold, c.block_threshold, c.band.value, c.action.value, c.clause_id,
                c.forced_by, _explainer_said(verdict, c.category_id),
            )  # fmt: skip
            for c in decision.categories
        ),
        bank_matches=matches,
        deciding_frame=int(result.judgement.deciding.get(top.category_id, 0)),
        rationale=verdict.rationale if verdict is not None else "",
    )


def _explainer_said(verdict, category_id: str) -> str:  # noqa: ANN001 - ExplainerVerdict | None
    if verdict is None or verdict.category_id != category_id:
        return ""
    return "violates" if verdict.violates else "clear"


class ReviewQueueListener:
    name = "review_queue"

    def __init__(self, store: StateStore):
        self._store = store

    def handle(self, result: ModerationResult) -> None:
        case = new_case(result)
        if case is not None:
            self._store.open_case(case)  # buffered: never waits for the database

    def close(self) -> None:
        pass  # the embedding store listener (or the shell) closes the store
