from __future__ import annotations

import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from moderation.policy import Action
from moderation.state.embeddings import EmbeddingStore, StoreError, find_decisions, read_decisions, store_freshness, stored_model_ids

NOW = datetime.now(timezone.utc)
DIM = 8


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def read_all(path: Path, **window: object) -> list:
    batches = list(read_decisions(path, since=window.pop("since", NOW - timedelta(days=365)), **window))
    return [(b.request_ids[i], b.policy_ids[i], b.actions[i], b.embeddings[i]) for b in batches for i in range(len(b))]


def test_round_trip_in_time_order_with_exact_embeddings(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with EmbeddingStore(path) as store:
        for i, hours_ago in enumerate([5, 1, 3, 2, 4]):
            store.record(f"r{i}", NOW - timedelta(hours=hours_ago), "default", "v1", ["ALLOW", Action.REVIEW, "BLOCK"][i % 3], vector(i), "ViT-B-32/x")
    batches = list(read_decisions(path, since=NOW - timedelta(days=1), batch_size=2))
    assert [len(b) for b in batches] == [2, 2, 1]  # paged, no batch larger than asked
    rows = [(rid, b.embeddings[i], b.actions[i], b.timestamps[i]) for b in batches for i, rid in enumerate(b.request_ids)]
    assert [r[0] for r in rows] == ["r0", "r4", "r2", "r3", "r1"]  # oldest first
    for request_id, embedding, action, ts in rows:
        i = int(request_id[1:])
        assert embedding.dtype == np.float32 and np.array_equal(embedding, vector(i))
        assert action is [Action.ALLOW, Action.REVIEW, Action.BLOCK][i % 3]
    assert np.all(np.diff([r[3] for r in rows]) > 0)


def test_window_and_policy_filters(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with EmbeddingStore(path) as store:
        store.record("old", NOW - timedelta(days=10), "default", "v1", "ALLOW", vector(0), "m1")
        store.record("a", NOW - timedelta(days=2), "default", "v1", "ALLOW", vector(1), "m1")
        store.record("b", NOW - timedelta(hours=1), "marketplace", "v3", "BLOCK", vector(2), "m2")
        store.record("future", (NOW + timedelta(hours=1)).timestamp(), "default", "v2", "REVIEW", vector(3), "m2")
    assert [r[0] for r in read_all(path, since=NOW - timedelta(days=7), until=NOW)] == ["a", "b"]
    assert [r[0] for r in read_all(path, since=NOW - timedelta(days=7), policy_id="default")] == ["a", "future"]
    assert stored_model_ids(path, NOW - timedelta(days=7)) == {"m2": 2, "m1": 1}
    assert stored_model_ids(path, NOW - timedelta(days=7), policy_id="marketplace") == {"m2": 1}


def test_rows_are_batched_until_a_batch_fills_or_the_delay_passes(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = EmbeddingStore(path, batch_size=3, max_delay_s=3600)
    store.record("a", NOW, "p", "1", "ALLOW", vector(0), "m")
    store.record("b", NOW, "p", "1", "ALLOW", vector(1), "m")
    assert read_all(path) == []  # buffered, not written
    store.record("c", NOW, "p", "1", "ALLOW", vector(2), "m")
    assert [r[0] for r in read_all(path)] == ["a", "b", "c"]  # the third filled the batch
    store.close()

    eager = EmbeddingStore(path, batch_size=100, max_delay_s=0.0)
    eager.record("d", NOW, "p", "1", "ALLOW", vector(3), "m")
    assert [r[0] for r in read_all(path)][-1] == "d"  # the delay had passed: written at once
    eager.close()


def test_prune_by_age_and_automatic_retention(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with EmbeddingStore(path) as store:
        for days in (1, 5, 9, 20):
            store.record(f"{days}d", NOW - timedelta(days=days), "p", "1", "ALLOW", vector(days), "m")
        store.flush()
        assert store.prune(timedelta(days=7)) == 2
        assert store.prune(NOW - timedelta(days=3)) == 1  # an absolute cut-off works too
        with pytest.raises(ValueError, match="needs an age or a time"):
            store.prune()
    assert [r[0] for r in read_all(path)] == ["1d"]

    with EmbeddingStore(path, retention=timedelta(days=2), batch_size=1) as store:
        store.record("stale", NOW - timedelta(days=3), "p", "1", "ALLOW", vector(0), "m")
        store.record("fresh", NOW, "p", "1", "ALLOW", vector(1), "m")
    # The first write pruned what the two-day retention no longer keeps; "1d" stays.
    assert [r[0] for r in read_all(path)] == ["1d", "fresh"]


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = EmbeddingStore(path, batch_size=16)

    def write(thread: int) -> None:
        for i in range(150):
            store.record(f"t{thread}-{i}", NOW, "p", "1", "ALLOW", vector(i), "m")

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    ids = [r[0] for r in read_all(path)]
    assert len(ids) == 8 * 150 and set(ids) == {f"t{t}-{i}" for t in range(8) for i in range(150)}


def test_a_locked_database_never_fails_record_and_the_buffer_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = EmbeddingStore(path, batch_size=2, max_buffered=5, busy_timeout_s=0.01, max_delay_s=3600)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    for i in range(10):
        store.record(f"r{i}", NOW, "p", "1", "ALLOW", vector(i), "m")  # must not raise
    assert store.dropped == 5  # the five oldest went when the sixth to tenth arrived
    with pytest.raises(StoreError, match="cannot write to embedding store"):
        store.flush()
    blocker.execute("ROLLBACK")
    blocker.close()
    assert store.flush() == 5
    store.close()
    assert [r[0] for r in read_all(path)] == [f"r{i}" for i in range(5, 10)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_embedding": np.zeros((2, DIM), np.float32)}, "one non-empty vector"),
        ({"image_embedding": np.full(DIM, np.nan, np.float32)}, "must be finite"),
        ({"timestamp": datetime(2026, 11, 23, 12, 0)}, "timezone-aware"),
        ({"action": "DENY"}, "'DENY' is not a valid Action"),
    ],
)
def test_bad_records_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    arguments = {"request_id": "r", "timestamp": NOW, "policy_id": "p", "policy_version": "1", "action": "ALLOW", "image_embedding": vector(0), "model_id": "m"}
    with EmbeddingStore(tmp_path / "store.db") as store, pytest.raises(ValueError, match=message):
        store.record(**{**arguments, **change})


def test_reading_never_creates_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no embedding store at"):
        list(read_decisions(tmp_path / "missing.db", since=NOW))
    assert not (tmp_path / "missing.db").exists()
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="is not an embedding store"):
        stored_model_ids(other, since=NOW)
    with pytest.raises(StoreError, match="cannot open embedding store"):
        EmbeddingStore(tmp_path / "no-such-folder" / "store.db")


def test_a_quiet_store_writes_its_buffer_on_an_interval_and_on_close(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    # A batch that never fills and a record-time delay that never passes: only the interval writes.
    store = EmbeddingStore(path, batch_size=1000, max_delay_s=3600, flush_interval_s=0.1)
    store.record("a", NOW, "p", "1", "ALLOW", vector(0), "m")
    deadline = time.monotonic() + 10
    while not read_all(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r[0] for r in read_all(path)] == ["a"], "no request came after it, and it was written anyway"
    store.close()

    slow = EmbeddingStore(path, batch_size=1000, max_delay_s=3600)
    slow.record("b", NOW, "p", "1", "ALLOW", vector(1), "m")
    assert [r[0] for r in read_all(path)] == ["a"]
    slow.close()
    assert [r[0] for r in read_all(path)] == ["a", "b"]


def test_freshness_and_lookup_by_request_id(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with EmbeddingStore(path) as store:
        store.record("old", NOW - timedelta(days=3), "default", "1", "ALLOW", vector(0), "m")
        store.record("a", NOW - timedelta(hours=2), "default", "1", "REVIEW", vector(1), "m")
        store.record("b", NOW - timedelta(minutes=5), "default", "2", "BLOCK", vector(2), "m")
        store.record("c", NOW - timedelta(minutes=1), "marketplace", "4", "ALLOW", vector(3), "m")
    fresh = store_freshness(path, NOW - timedelta(days=1), policy_id="default")
    assert fresh.in_window == 2
    assert fresh.oldest_in_window == pytest.approx((NOW - timedelta(hours=2)).timestamp())
    assert fresh.newest_in_window == pytest.approx((NOW - timedelta(minutes=5)).timestamp())
    assert fresh.newest == pytest.approx((NOW - timedelta(minutes=1)).timestamp())
    empty = store_freshness(path, NOW - timedelta(days=1), policy_id="nsfw")
    assert (empty.in_window, empty.newest_in_window) == (0, None) and empty.newest is not None
    found = find_decisions(path, "b")
    assert found is not None and found.policy_versions == ("2",) and found.actions == (Action.BLOCK,)
    assert np.array_equal(found.embeddings[0], vector(2))
    assert find_decisions(path, "nope") is None
