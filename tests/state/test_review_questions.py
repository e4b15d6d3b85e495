"""Reviewers' questions kept with a case (schema 6), on SQLite and a real PostgreSQL: who may ask, what is
kept and audited, and that retention deletes them with the case (an injected clock, never a sleep)."""

from __future__ import annotations

import pytest

from moderation.state.review import CaseConflict, ReviewStore
from moderation.state.store import open_store
from tests.state.test_review_store import T0, Clock, opened, store_location  # noqa: F401 - the fixture


def test_only_the_lease_holder_may_ask_and_questions_are_kept_and_audited(store_location: str) -> None:  # noqa: F811
    clock = Clock()
    with open_store(store_location) as store:
        (new,) = opened(store, 1)
        queue = ReviewStore(store, lease_s=60, clock=clock)
        with pytest.raises(CaseConflict, match="lease it first") as refused:
            queue.check_asker(new.case_id, "token:a")
        assert refused.value.kind == "not_leased"
        queue.lease_case(new.case_id, "token:a")
        with pytest.raises(CaseConflict, match="leased by another reviewer") as refused:
            queue.check_asker(new.case_id, "token:b")
        assert refused.value.kind == "leased_by_other"
        assert queue.check_asker(new.case_id, "token:a").case_id == new.case_id

        kept = queue.record_question(
            new.case_id, "token:a", "Is the <script>knife</script> sold?", "question of 35 characters; advisory answer by m", answer="Maybe.", model_id="m"
        )
        assert kept is not None and kept.asked_at == T0 and kept.answer == "Maybe."
        assert queue.record_question(new.case_id, "token:a", "And now?", "question of 8 characters; not answered (SHED): busy") is None
        assert [(q.asked_by, q.question, q.answer, q.model_id) for q in queue.questions(new.case_id)] == [
            ("token:a", "Is the <script>knife</script> sold?", "Maybe.", "m")
        ]
        asks = [(a.who, a.detail) for a in queue.audit(new.case_id) if a.action == "ask"]
        assert asks == [
            ("token:a", "question of 35 characters; advisory answer by m"),
            ("token:a", "question of 8 characters; not answered (SHED): busy"),
        ]

        clock.now += 61  # the lease expired
        with pytest.raises(CaseConflict, match="expired") as refused:
            queue.check_asker(new.case_id, "token:a")
        assert refused.value.kind == "lease_expired"
        queue.lease_case(new.case_id, "token:a")
        queue.decide(new.case_id, "token:a", violates=False)
        with pytest.raises(CaseConflict, match="is decided"):
            queue.check_asker(new.case_id, "token:a")


def test_retention_deletes_questions_with_their_case(store_location: str) -> None:  # noqa: F811
    clock = Clock()
    with open_store(store_location) as store:
        (new,) = opened(store, 1)
        queue = ReviewStore(store, retention_s=1000, max_case_age_s=10_000, clock=clock)
        queue.lease_case(new.case_id, "token:a")
        queue.record_question(new.case_id, "token:a", "Sold?", "asked", answer="No.", model_id="m")
        assert len(queue.questions(new.case_id)) == 1
        clock.now += 2000
        assert queue.maintain() == (0, 1)
        assert queue.questions(new.case_id) == []


def test_a_full_page_of_cases_can_be_listed(store_location: str) -> None:  # noqa: F811
    with open_store(store_location) as store:
        opened(store, 2)
        assert len(ReviewStore(store, clock=Clock()).list_cases(limit=501)) == 2  # ListCases asks for a page of 500 plus one
