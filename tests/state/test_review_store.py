"""The review queue in the state store, on SQLite and a real PostgreSQL: opening through the buffered
path, bounds, leases (expiry by an injected clock, never a sleep), decisions, reopening, audit, retention."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from moderation.state.review import CaseCategory, CaseConflict, CaseNotFound, NewCase, ReviewStore
from moderation.state.store import StateStore, open_store

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return request.getfixturevalue("postgres_url")


def new_case(n: int, *, opened_at: float = T0, request_id: str | None = None, band: str = "BORDERLINE") -> NewCase:
    return NewCase(
        case_id=uuid.uuid4().hex, opened_at=opened_at + n, caller="token:upstream", request_id=request_id or f"req-{n}",
        policy_id="default", policy_version="v3", model_id="tiny", reason="score", category_id="weapons",
        categories=(
            CaseCategory("weapons", 0.31, 0.3, 0.4, band, "REVIEW", "W1"),
            CaseCategory("drugs", 0.1, 0.3, 0.4, "BELOW", "ALLOW", "D1"),
        ),
        deciding_frame=0, rationale="a knife <b>on</b> a table",
    )  # fmt: skip


def opened(store: StateStore, count: int, **kwargs: object) -> list[NewCase]:
    cases = [new_case(i, **kwargs) for i in range(count)]  # type: ignore[arg-type]
    for case in cases:
        store.open_case(case)
    store.flush()
    return cases


def test_cases_open_through_the_buffer_and_read_back_whole(store_location: str) -> None:
    clock = Clock()
    with open_store(store_location) as store:
        store.open_case(new_case(0))
        assert store.buffered == 1  # buffered, not written by the caller
        store.flush()
        queue = ReviewStore(store, clock=clock)
        (case,) = queue.list_cases(status="open")
        assert case.request_id == "req-0" and case.caller == "token:upstream" and case.policy_version == "v3"
        assert [c.category_id for c in case.categories] == ["weapons", "drugs"] and case.categories[0].score == pytest.approx(0.31)
        assert case.rationale == "a knife <b>on</b> a table" and case.status == "open" and case.lease_holder is None
        assert [(a.who, a.action, a.policy_version) for a in queue.audit(case.case_id)] == [("service", "open", "v3")]
        assert queue.stats().open == 1 and queue.stats().oldest_open_at == pytest.approx(T0)


def test_a_full_queue_drops_new_cases_and_counts_them(store_location: str) -> None:
    dropped: list[tuple[str, int]] = []
    with open_store(store_location, max_open_cases=3, on_dropped=lambda kind, n: dropped.append((kind, n))) as store:
        opened(store, 5)
        queue = ReviewStore(store, clock=Clock())
        assert len(queue.list_cases(status="open")) == 3
        assert store.dropped_cases_queue_full == 2 and ("case_queue_full", 2) in dropped
        # A decided case leaves room for one more.
        case = queue.lease_next("token:a")
        assert case is not None
        queue.decide(case.case_id, "token:a", violates=False)
        opened(store, 2)
        assert len(queue.list_cases(status="open")) == 3 and store.dropped_cases_queue_full == 3


def test_one_reviewer_at_a_time_and_leases_expire(store_location: str) -> None:
    clock = Clock()
    with open_store(store_location) as store:
        first, second = opened(store, 2)
        queue = ReviewStore(store, lease_s=60, clock=clock)
        leased = queue.lease_next("token:a")
        assert leased is not None and leased.case_id == first.case_id and leased.lease_holder == "token:a"
        with pytest.raises(CaseConflict) as conflict:
            queue.lease_case(first.case_id, "token:b")
        assert conflict.value.kind == "leased_by_other"
        with pytest.raises(CaseConflict) as conflict:
            queue.decide(first.case_id, "token:b", violates=True)
        assert conflict.value.kind == "leased_by_other"
        other = queue.lease_next("token:b")  # the next one nobody holds
        assert other is not None and other.case_id == second.case_id
        assert queue.lease_next("token:c") is None  # nothing left to lease

        clock.now += 61  # a's lease expired: b may take it, and a must lease again to decide
        with pytest.raises(CaseConflict) as conflict:
            queue.decide(first.case_id, "token:a", violates=True)
        assert conflict.value.kind == "lease_expired"
        taken = queue.lease_case(first.case_id, "token:b")
        assert taken.lease_holder == "token:b"


def test_decide_once_then_reopen_on_appeal_with_every_step_audited(store_location: str) -> None:
    clock = Clock()
    with open_store(store_location) as store:
        (case,) = opened(store, 1)
        queue = ReviewStore(store, clock=clock)
        with pytest.raises(CaseConflict) as conflict:
            queue.decide(case.case_id, "token:a", violates=True)
        assert conflict.value.kind == "not_leased"
        queue.lease_case(case.case_id, "token:a")
        with pytest.raises(ValueError, match="at most 2000"):
            queue.decide(case.case_id, "token:a", violates=True, note="x" * 2001)
        with pytest.raises(ValueError, match="not a clause"):
            queue.decide(case.case_id, "token:a", violates=True, clause_id="Z9")
        decided = queue.decide(case.case_id, "token:a", violates=True, note="<script>alert(1)</script>")
        assert decided.status == "decided" and decided.violates is True and decided.clause_id == "W1" and decided.label == "weapons"
        assert decided.note == "<script>alert(1)</script>"  # plain text, as typed
        with pytest.raises(CaseConflict) as conflict:
            queue.decide(case.case_id, "token:a", violates=False)
        assert conflict.value.kind == "decided"
        with pytest.raises(CaseConflict) as conflict:
            queue.lease_case(case.case_id, "token:b")
        assert conflict.value.kind == "decided"

        clock.now += 10
        reopened = queue.reopen(case.case_id, "token:lead", note="appeal from the uploader")
        assert reopened.status == "open" and reopened.violates is None and reopened.reopened == 1
        with pytest.raises(CaseConflict) as conflict:
            queue.reopen(case.case_id, "token:lead")
        assert conflict.value.kind == "not_decided"
        queue.lease_case(case.case_id, "token:b")
        assert queue.decide(case.case_id, "token:b", violates=False).label == "benign"
        steps = [(a.who, a.action) for a in queue.audit(case.case_id)]
        assert steps == [
            ("service", "open"), ("token:a", "lease"), ("token:a", "decide"), ("token:lead", "reopen"), ("token:b", "lease"), ("token:b", "decide"),
        ]  # fmt: skip
        assert all(a.policy_version == "v3" for a in queue.audit(case.case_id))
        with pytest.raises(CaseNotFound):
            queue.get_case("nope")


def test_per_reviewer_lease_bound(store_location: str) -> None:
    with open_store(store_location) as store:
        cases = opened(store, 3)
        queue = ReviewStore(store, max_leases_per_reviewer=2, clock=Clock())
        queue.lease_next("token:a")
        queue.lease_next("token:a")
        with pytest.raises(CaseConflict) as conflict:
            queue.lease_next("token:a")
        assert conflict.value.kind == "too_many_leases"
        with pytest.raises(CaseConflict):
            queue.lease_case(cases[2].case_id, "token:a")
        assert queue.lease_case(cases[0].case_id, "token:a").lease_holder == "token:a"  # renewing one held is not a new lease


def test_old_open_cases_expire_and_retention_deletes(store_location: str) -> None:
    clock = Clock()
    with open_store(store_location) as store:
        old, young = opened(store, 2)
        queue = ReviewStore(store, max_case_age_s=100, retention_s=1000, clock=clock)
        clock.now = T0 + 100.5  # old (opened at T0) is past the age bound; young (T0 + 1) is not
        assert queue.maintain() == (1, 0)
        assert queue.get_case(old.case_id).status == "expired"
        assert [a.action for a in queue.audit(old.case_id)] == ["open", "expire"]
        assert queue.lease_next("token:a").case_id == young.case_id  # type: ignore[union-attr]
        with pytest.raises(CaseConflict):
            queue.lease_case(old.case_id, "token:a")
        clock.now = T0 + 2000
        assert queue.maintain() == (1, 1)  # young expires now (retention counts from then); old is past the retention
        assert [c.case_id for c in queue.list_cases()] == [young.case_id]
        clock.now = T0 + 3100
        assert queue.maintain() == (0, 1)
        assert queue.list_cases() == []
        with pytest.raises(CaseNotFound):
            queue.audit(old.case_id)


def test_thumbnail_by_reference(store_location: str) -> None:
    from datetime import timedelta

    with open_store(store_location, thumbnail_retention=timedelta(days=7)) as store:
        store.save_thumbnail("req-0", b"\xff\xd8jpeg", caller="token:upstream")
        (case,) = opened(store, 1)
        queue = ReviewStore(store, clock=Clock())
        assert queue.thumbnail(queue.get_case(case.case_id)) == b"\xff\xd8jpeg"


def test_list_pages_and_filters(store_location: str) -> None:
    with open_store(store_location) as store:
        cases = opened(store, 5)
        queue = ReviewStore(store, clock=Clock())
        first = queue.list_cases(limit=2)
        rest = queue.list_cases(limit=10, after=(first[-1].opened_at, first[-1].case_id))
        assert [c.case_id for c in first + rest] == [c.case_id for c in cases]
        assert queue.list_cases(policy_id="other") == [] and len(queue.list_cases(status="open", policy_id="default")) == 5
        with pytest.raises(ValueError, match="status"):
            queue.list_cases(status="closed")
