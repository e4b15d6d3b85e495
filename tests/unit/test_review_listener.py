"""The review queue listener: which results open a case, what the case holds, and a full queue counted as dropped."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from moderation.core.decision import decide
from moderation.core.evidence import CategoryScores, ForcedAction, KnownContentMatch
from moderation.escalation.tier import EscalationOutcome
from moderation.ops.metrics import ModerationMetrics
from moderation.policy.schema import Action
from moderation.serving.app import count_dropped
from moderation.serving.listeners.review import ReviewQueueListener, new_case
from moderation.serving.result import ModerationResult, StageTimings
from moderation.core.judge import Judgement
from moderation.state.review import ReviewStore
from moderation.state.store import open_store
from tests.policies import TWO_CATEGORIES as POLICY
from tests.unit.test_listeners import FRAMES


def result(request_id: str, scores: dict[str, float], forced: tuple[ForcedAction, ...] = ()) -> ModerationResult:
    evidence = (CategoryScores("clip", scores), *forced)
    decision = decide(evidence, POLICY)
    judgement = Judgement(decision, evidence, {c.category_id: 0 for c in decision.categories}, FRAMES)
    return ModerationResult(request_id, decision, "tiny", StageTimings(), EscalationOutcome(), judgement, caller="token:upstream")


def test_only_review_decisions_open_a_case_with_scores_thresholds_and_clauses() -> None:
    assert new_case(result("allowed", {"violence": 0.1, "weapons": 0.1})) is None
    assert new_case(result("blocked", {"violence": 0.7, "weapons": 0.1})) is None
    case = new_case(result("flagged", {"violence": 0.1, "weapons": 0.5}))
    assert case is not None and case.reason == "score" and case.category_id == "weapons"
    assert (case.caller, case.request_id, case.policy_id, case.policy_version) == ("token:upstream", "flagged", "p", "7")
    weapons = next(c for c in case.categories if c.category_id == "weapons")
    assert (weapons.score, weapons.review_threshold, weapons.block_threshold, weapons.band, weapons.action, weapons.clause_id) == (
        0.5, 0.4, 0.8, "BORDERLINE", "REVIEW", "W-1",
    )  # fmt: skip


def test_a_bank_match_set_to_review_opens_a_case_naming_the_match() -> None:
    match = KnownContentMatch("known-guns", "item-7", "pdq", 3.0, 31.0, 0)
    forced = ForcedAction("banks", "weapons", Action.REVIEW, "W-1", "matched known-guns", matches=(match,))
    case = new_case(result("matched", {"violence": 0.1, "weapons": 0.1}, (forced,)))
    assert case is not None and case.reason == "bank_match" and case.category_id == "weapons"
    assert case.bank_matches == ({"bank": "known-guns", "content_id": "item-7", "signal_type": "pdq", "distance": 3.0, "action": "REVIEW"},)


def test_a_full_queue_counts_the_dropped_case_and_the_decision_is_untouched(tmp_path: Path) -> None:
    metrics = ModerationMetrics(CollectorRegistry())
    with open_store(tmp_path / "store.db", max_open_cases=1, on_dropped=lambda kind, n: count_dropped(metrics, kind, n)) as store:
        listener = ReviewQueueListener(store)
        for i in range(3):
            listener.handle(result(f"r{i}", {"violence": 0.1, "weapons": 0.5}))
        store.flush()
        assert [c.request_id for c in ReviewStore(store).list_cases()] == ["r0"]
    assert metrics.registry.get_sample_value("moderation_review_cases_dropped_total", {"reason": "queue_full"}) == 2.0
    assert metrics.registry.get_sample_value("moderation_store_dropped_total", {"kind": "case_queue_full"}) is None
