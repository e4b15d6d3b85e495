"""Shadow policies: how their decisions on live traffic differ from the active policy's, in metrics and the audit log.

The shell judges the request's frames under each shadow policy (same embeddings, host
pool); this listener counts each shadow decision and every category where the two
actions differ, and writes one audit line per shadow. A category that only one of the
two policies has is ALLOW on the other side: a shadow adding a category that flags is
a disagreement, as `policy diff` reports it.
"""

from __future__ import annotations

import logging

from moderation.core.decision import Decision
from moderation.ops.metrics import ModerationMetrics
from moderation.policy.schema import Action
from moderation.serving.result import ModerationResult

shadow_log = logging.getLogger("moderation.audit.shadow")


def category_actions(active: Decision, shadow: Decision) -> dict[str, tuple[Action, Action]]:
    """Every category of either policy -> (active action, shadow action); ALLOW where a policy lacks it."""
    mine = {c.category_id: c.action for c in active.categories}
    theirs = {c.category_id: c.action for c in shadow.categories}
    return {cid: (mine.get(cid, Action.ALLOW), theirs.get(cid, Action.ALLOW)) for cid in dict.fromkeys([*mine, *theirs])}


class ShadowListener:
    name = "shadow"

    def __init__(self, metrics: ModerationMetrics):
        self._metrics = metrics

    def handle(self, result: ModerationResult) -> None:
        active = result.judgement.decision
        for shadow in result.shadows:
            self._compare(result.request_id, active, shadow.decision)

    def _compare(self, request_id: str, active: Decision, shadow: Decision) -> None:
        self._metrics.count_shadow_decision(active.policy_id, shadow.policy_id, shadow.policy_version, shadow.action.value)
        actions = category_actions(active, shadow)
        disagreements = [cid for cid, (mine, theirs) in actions.items() if mine is not theirs]
        for category_id in disagreements:
            self._metrics.count_shadow_disagreement(active.policy_id, shadow.policy_id, shadow.policy_version, category_id)
        shadow_log.info(
            "shadow decision",
            extra={
                "fields": {
                    "request_id": request_id,
                    "policy_id": active.policy_id,
                    "policy_version": active.policy_version,
                    "action": active.action.value,
                    "shadow_policy_id": shadow.policy_id,
                    "shadow_policy_version": shadow.policy_version,
                    "shadow_action": shadow.action.value,
                    "disagreements": disagreements,
                    # Per category: [active score, shadow score] (None where a policy has no such
                    # category) and [active action, shadow action].
                    "scores": _score_pairs(active, shadow),
                    "actions": {cid: [mine.value, theirs.value] for cid, (mine, theirs) in actions.items()},
                }
            },
        )

    def close(self) -> None:
        pass


def _score_pairs(active: Decision, shadow: Decision) -> dict[str, list[float | None]]:
    mine = {c.category_id: round(c.score, 4) for c in active.categories}
    theirs = {c.category_id: round(c.score, 4) for c in shadow.categories}
    return {cid: [mine.get(cid), theirs.get(cid)] for cid in dict.fromkeys([*mine, *theirs])}
