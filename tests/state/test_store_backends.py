"""One store test suite, run against both backends of the seam: SQLite and a real PostgreSQL.

`store_location` is a SQLite file path or the URL of a fresh PostgreSQL database
(tests/conftest.py starts the server); every test below must hold for both.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from moderation.policy import Action
from moderation.state.embeddings import find_decisions, read_decisions, store_freshness, stored_model_ids
from moderation.state.migrations import MIGRATIONS, SCHEMA_VERSION
from moderation.state.records import StoreError
from moderation.state.store import StateStore, open_store

NOW = datetime.now(timezone.utc)
DIM = 8


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return request.getfixturevalue("postgres_url")


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def read_all(location: str, **window: object) -> list:
    batches = list(read_decisions(location, since=window.pop("since", NOW - timedelta(days=365)), **window))
    return [(b.request_ids[i], b.policy_ids[i], b.actions[i], b.embeddings[i]) for b in batches for i in range(len(b))]


def ids(location: str) -> list[str]:
    return [r[0] for r in read_all(location)]


def test_round_trip_in_time_order_with_exact_embeddings(store_location: str) -> None:
    with open_store(store_location) as store:
        for i, hours_ago in enumerate([5, 1, 3, 2, 4]):
            store.record(f"r{i}", NOW - timedelta(hours=hours_ago), "default", "v1", ["ALLOW", Action.REVIEW, "BLOCK"][i % 3], vector(i), "ViT-B-32/x")
    batches = list(read_decisions(store_location, since=NOW - timedelta(days=1), batch_size=2))
    assert [len(b) for b in batches] == [2, 2, 1]  # paged, no batch larger than asked
    rows = [(rid, b.embeddings[i], b.actions[i], b.timestamps[i]) for b in batches for i, rid in enumerate(b.request_ids)]
    assert [r[0] for r in rows] == ["r0", "r4", "r2", "r3", "r1"]  # oldest first
    for request_id, embedding, action, ts in rows:
        i = int(request_id[1:])
        assert embedding.dtype == np.float32 and np.array_equal(embedding, vector(i))
        assert action is [Action.ALLOW, Action.REVIEW, Action.BLOCK][i % 3]
        assert ts == pytest.approx((NOW - timedelta(hours=[5, 1, 3, 2, 4][i])).timestamp())


def test_paging_keeps_rows_with_the_same_time_apart(store_location: str) -> None:
    with open_store(store_location) as store:
        for i in range(7):
            store.record(f"same{i}", NOW, "p", "1", "ALLOW", vector(i), "m")
    batches = list(read_decisions(store_location, since=NOW - timedelta(minutes=1), batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert [r for b in batches for r in b.request_ids] == [f"same{i}" for i in range(7)]  # in insertion order, none twice


def test_window_and_policy_filters(store_location: str) -> None:
    with open_store(store_location) as store:
        store.record("old", NOW - timedelta(days=10), "default", "v1", "ALLOW", vector(0), "m1")
        store.record("a", NOW - timedelta(days=2), "default", "v1", "ALLOW", vector(1), "m1")
        store.record("b", NOW - timedelta(hours=1), "marketplace", "v3", "BLOCK", vector(2), "m2")
        store.record("future", (NOW + timedelta(hours=1)).timestamp(), "default", "v2", "REVIEW", vector(3), "m2")
    assert [r[0] for r in read_all(store_location, since=NOW - timedelta(days=7), until=NOW)] == ["a", "b"]
    assert [r[0] for r in read_all(store_location, since=NOW - timedelta(days=7), policy_id="default")] == ["a", "future"]
    assert stored_model_ids(store_location, NOW - timedelta(days=7)) == {"m2": 2, "m1": 1}
    assert stored_model_ids(store_location, NOW - timedelta(days=7), policy_id="marketplace") == {"m2": 1}


def test_rows_are_batched_until_a_batch_fills_or_the_delay_passes(store_location: str) -> None:
    store = open_store(store_location, batch_size=3, max_delay_s=3600)
    store.record("a", NOW, "p", "1", "ALLOW", vector(0), "m")
    store.record("b", NOW, "p", "1", "ALLOW", vector(1), "m")
    assert ids(store_location) == []  # buffered, not written
    store.record("c", NOW, "p", "1", "ALLOW", vector(2), "m")
    assert ids(store_location) == ["a", "b", "c"]  # the third filled the batch
    store.close()

    eager = open_store(store_location, batch_size=100, max_delay_s=0.0)
    eager.record("d", NOW, "p", "1", "ALLOW", vector(3), "m")
    assert ids(store_location)[-1] == "d"  # the delay had passed: written at once
    eager.close()


def test_a_quiet_store_writes_its_buffer_on_an_interval_and_on_close(store_location: str) -> None:
    # A batch that never fills and a record-time delay that never passes: only the interval writes.
    store = open_store(store_location, batch_size=1000, max_delay_s=3600, flush_interval_s=0.1)
    store.record("a", NOW, "p", "1", "ALLOW", vector(0), "m")
    deadline = time.monotonic() + 10
    while not ids(store_location) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ids(store_location) == ["a"], "no request came after it, and it was written anyway"
    store.close()

    slow = open_store(store_location, batch_size=1000, max_delay_s=3600)
    slow.record("b", NOW, "p", "1", "ALLOW", vector(1), "m")
    assert ids(store_location) == ["a"]
    slow.close()
    assert ids(store_location) == ["a", "b"]


def test_prune_by_age_and_automatic_retention(store_location: str) -> None:
    with open_store(store_location) as store:
        for days in (1, 5, 9, 20):
            store.record(f"{days}d", NOW - timedelta(days=days), "p", "1", "ALLOW", vector(days), "m")
        store.flush()
        assert store.prune(timedelta(days=7)) == 2
        assert store.prune(NOW - timedelta(days=3)) == 1  # an absolute cut-off works too
        with pytest.raises(ValueError, match="needs an age or a time"):
            store.prune()
    assert ids(store_location) == ["1d"]

    with open_store(store_location, retention=timedelta(days=2), batch_size=1) as store:
        store.record("stale", NOW - timedelta(days=3), "p", "1", "ALLOW", vector(0), "m")
        store.record("fresh", NOW, "p", "1", "ALLOW", vector(1), "m")
    # The first write pruned what the two-day retention no longer keeps; "1d" stays.
    assert ids(store_location) == ["1d", "fresh"]


def test_concurrent_writers_lose_nothing(store_location: str) -> None:
    store = open_store(store_location, batch_size=16)

    def write(thread: int) -> None:
        for i in range(150):
            store.record(f"t{thread}-{i}", NOW, "p", "1", "ALLOW", vector(i), "m")

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    written = ids(store_location)
    assert len(written) == 8 * 150 and set(written) == {f"t{t}-{i}" for t in range(8) for i in range(150)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_embedding": np.zeros((2, DIM), np.float32)}, "one non-empty vector"),
        ({"image_embedding": np.full(DIM, np.nan, np.float32)}, "must be finite"),
        ({"timestamp": datetime(2026, 11, 23, 12, 0)}, "timezone-aware"),
        ({"action": "DENY"}, "'DENY' is not a valid Action"),
    ],
)
def test_bad_records_are_refused(store_location: str, change: dict, message: str) -> None:
    arguments = {"request_id": "r", "timestamp": NOW, "policy_id": "p", "policy_version": "1", "action": "ALLOW", "image_embedding": vector(0), "model_id": "m"}
    with open_store(store_location) as store, pytest.raises(ValueError, match=message):
        store.record(**{**arguments, **change})


def test_freshness_and_lookup_by_request_id(store_location: str) -> None:
    with open_store(store_location) as store:
        store.record("old", NOW - timedelta(days=3), "default", "1", "ALLOW", vector(0), "m")
        store.record("a", NOW - timedelta(hours=2), "default", "1", "REVIEW", vector(1), "m")
        store.record("b", NOW - timedelta(minutes=5), "default", "2", "BLOCK", vector(2), "m")
        store.record("c", NOW - timedelta(minutes=1), "marketplace", "4", "ALLOW", vector(3), "m")
    fresh = store_freshness(store_location, NOW - timedelta(days=1), policy_id="default")
    assert fresh.in_window == 2
    assert fresh.oldest_in_window == pytest.approx((NOW - timedelta(hours=2)).timestamp())
    assert fresh.newest_in_window == pytest.approx((NOW - timedelta(minutes=5)).timestamp())
    assert fresh.newest == pytest.approx((NOW - timedelta(minutes=1)).timestamp())
    empty = store_freshness(store_location, NOW - timedelta(days=1), policy_id="nsfw")
    assert (empty.in_window, empty.newest_in_window) == (0, None) and empty.newest is not None
    found = find_decisions(store_location, "b")
    assert found is not None and found.policy_versions == ("2",) and found.actions == (Action.BLOCK,)
    assert np.array_equal(found.embeddings[0], vector(2))
    assert find_decisions(store_location, "nope") is None


def test_thumbnails_are_rows_saved_replaced_loaded_and_pruned(store_location: str) -> None:
    with open_store(store_location, thumbnail_retention=timedelta(days=7), batch_size=2) as store:
        store.save_thumbnail("../../etc/passwd", b"\xff\xd8first")
        store.save_thumbnail("../../etc/passwd", b"\xff\xd8second")  # the newer replaces the older, even in the buffer
        store.save_thumbnail("old", b"\xff\xd8old", saved_at=NOW - timedelta(days=10))
        store.flush()
        assert store.load_thumbnail("../../etc/passwd") == b"\xff\xd8second"
        store.save_thumbnail("../../etc/passwd", b"\xff\xd8third")
        store.flush()
        assert store.load_thumbnail("../../etc/passwd") == b"\xff\xd8third"  # an upsert, not a second row
        assert store.load_thumbnail("old") is None, "the first write pruned what the retention no longer keeps"
        store.save_thumbnail("older", b"\xff\xd8older", saved_at=NOW - timedelta(days=8))
        store.flush()  # within prune_every_s of the last prune: kept until asked
        assert store.load_thumbnail("older") == b"\xff\xd8older"
        assert store.prune_thumbnails() == 1
        assert store.load_thumbnail("older") is None and store.load_thumbnail("never") is None
        with pytest.raises(ValueError, match="non-empty JPEG bytes"):
            store.save_thumbnail("empty", b"")
    with open_store(store_location, read_only=True) as reader:
        assert reader.load_thumbnail("../../etc/passwd") == b"\xff\xd8third"


def test_migrations_run_once_and_a_newer_schema_is_refused(store_location: str) -> None:
    with open_store(store_location) as store:
        assert store.schema_version == SCHEMA_VERSION
        applied = store._fetchall("SELECT version, description FROM schema_version ORDER BY version", ())
    assert [(v, d) for v, d in applied] == [(m.version, m.description) for m in MIGRATIONS]
    with open_store(store_location) as again:  # reopening applies nothing twice
        assert again._fetchall("SELECT COUNT(*) FROM schema_version", ()) == [(len(MIGRATIONS),)]
        again._write([], [])  # (a no-op write: the store stays usable)
    _insert_schema_row(store_location, SCHEMA_VERSION + 1)
    for read_only in (False, True):
        with pytest.raises(StoreError, match=f"has store schema {SCHEMA_VERSION + 1}, newer than this release"):
            open_store(store_location, read_only=read_only)


def test_stores_opened_at_once_migrate_once(store_location: str) -> None:
    """Replicas starting together: one migrates, the others wait for it and find the schema current."""
    opened: list[StateStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(open_store(store_location))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert {s.schema_version for s in opened} == {SCHEMA_VERSION}
    versions = opened[0]._fetchall("SELECT version FROM schema_version ORDER BY version", ())
    assert [v for (v,) in versions] == [m.version for m in MIGRATIONS]
    for store in opened:
        store.close()


def test_a_store_never_written_cannot_be_read(store_location: str) -> None:
    with pytest.raises(StoreError, match="no state store at|not a moderation state store yet"):
        list(read_decisions(store_location, since=NOW))


def _insert_schema_row(location: str, version: int) -> None:
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as connection:
            connection.execute("INSERT INTO schema_version VALUES (%s, 'from the future', 0)", (version,))
    else:
        import sqlite3

        with sqlite3.connect(location) as connection:
            connection.execute("INSERT INTO schema_version VALUES (?, 'from the future', 0)", (version,))


def test_ids_with_nul_are_stored_and_rows_the_database_refuses_are_dropped_not_retried(store_location: str) -> None:
    """PostgreSQL text cannot hold NUL: both backends store U+FFFD instead, so a caller's id never blocks the writer."""
    from moderation.state.store import RejectedRows

    dropped: list[tuple[str, int]] = []
    with open_store(store_location, batch_size=100, max_delay_s=3600, on_dropped=lambda k, n: dropped.append((k, n))) as store:
        store.record("evil\x00id", NOW, "p", "1", "ALLOW", vector(0), "m")
        store.save_thumbnail("evil\x00id", b"\xff\xd8jpeg")
        store.flush()
        assert store.find_decisions("evil\ufffdid") is not None and store.load_thumbnail("evil\ufffdid") == b"\xff\xd8jpeg"
        # A batch with a row no schema accepts (a thumbnail without bytes): the whole batch is refused and
        # counted, and the writer goes on with the next rows instead of retrying it forever.
        store._decisions.append(("bad", NOW.timestamp(), "p", "1", "ALLOW", "m", vector(1).tobytes(), "anonymous", ""))
        store._thumbnails["anonymous", "bad"] = ("anonymous", "bad", NOW.timestamp(), None)  # type: ignore[assignment] - NOT NULL violated
        with pytest.raises(RejectedRows, match="refused 1 decisions and 1 thumbnails"):
            store.flush()
        assert store.buffered == 0 and dropped == [("decision", 1), ("thumbnail", 1)]
        store.record("after", NOW, "p", "1", "ALLOW", vector(2), "m")
    assert ids(store_location) == ["evil\ufffdid", "after"]


def test_a_case_is_the_callers_request_id_and_thumbnails_are_capped(store_location: str) -> None:
    """Issue 18, item 3: a second caller reusing a request id replaced the first caller's thumbnail,
    and nothing capped what thumbnails took."""
    evicted: list[int] = []
    jpeg = b"\xff\xd8" + bytes(998)  # 1,000 bytes
    with open_store(
        store_location, thumbnail_retention=timedelta(days=7), batch_size=2, thumbnail_max_bytes=10_500, on_evicted=evicted.append
    ) as store:
        store.record("same", NOW, "p", "1", "BLOCK", vector(0), "m", caller="token:a")
        store.record("same", NOW + timedelta(seconds=1), "p", "1", "ALLOW", vector(1), "m", caller="token:b")
        store.save_thumbnail("same", b"\xff\xd8a", caller="token:a")
        store.save_thumbnail("same", b"\xff\xd8b", caller="token:b")
        store.flush()
        assert store.load_thumbnail("same", "token:a") == b"\xff\xd8a" and store.load_thumbnail("same", "token:b") == b"\xff\xd8b"
        assert store.thumbnail_callers("same") == ["token:a", "token:b"] and store.load_thumbnail("same") is None
        both = store.find_decisions("same")
        assert both is not None and both.callers == ("token:a", "token:b")
        only_b = store.find_decisions("same", "token:b")
        assert only_b is not None and only_b.callers == ("token:b",) and only_b.actions[0].value == "ALLOW"
        read = find_decisions(store_location, "same", "token:a")  # a reader's one-call helper
        assert read is not None and read.callers == ("token:a",) and read.actions[0].value == "BLOCK"
        for i in range(30):
            store.save_thumbnail(f"r{i}", jpeg, saved_at=NOW - timedelta(minutes=60 - i))
            store.flush()
        ((total,),) = store._fetchall("SELECT SUM(LENGTH(jpeg)) FROM thumbnails", ())
        assert total <= 10_500 and sum(evicted) == store.evicted_thumbnails > 0
        assert store.load_thumbnail("r29") == jpeg and store.load_thumbnail("r0") is None, "the oldest go first"


def test_the_thumbnail_cap_is_bounded_work_and_replicas_share_it(store_location: str) -> None:
    """The total is measured (a scan of the table) at the first write and then only when this
    process's running total passes the cap or the measurement is `thumbnail_recount_s` old, not
    after every flush; a replica's writes count against the one cap at the next measurement."""
    jpeg = b"\xff\xd8" + bytes(998)  # 1,000 bytes
    evicted: list[int] = []
    options = {"thumbnail_retention": timedelta(days=7), "thumbnail_max_bytes": 10_000, "on_evicted": evicted.append}
    with open_store(store_location, thumbnail_recount_s=3600, **options) as store, open_store(store_location) as replica:

        def total() -> int:
            ((kept,),) = store._fetchall("SELECT COALESCE(SUM(LENGTH(jpeg)), 0) FROM thumbnails", ())
            return int(kept)

        assert store.thumbnail_bytes is None, "nothing measured before the first write of thumbnails"
        for i in range(4):
            store.save_thumbnail(f"a{i}", jpeg, saved_at=NOW - timedelta(minutes=30 - i), caller="token:a")
            store.flush()
        assert store.thumbnail_bytes == total() == 4_000
        for i in range(5):  # another replica of the same database
            replica.save_thumbnail(f"b{i}", jpeg, saved_at=NOW - timedelta(minutes=20 - i), caller="token:b")
        replica.flush()
        store.save_thumbnail("a4", jpeg, saved_at=NOW - timedelta(minutes=10), caller="token:a")
        store.flush()
        # Not measured again: the running total is this process's own writes, the replica's are not in it yet.
        assert store.thumbnail_bytes == 5_000 and total() == 10_000 and evicted == []
        store.thumbnail_recount_s = 0.0  # the measurement is now stale: the next write measures
        store.save_thumbnail("a5", jpeg, saved_at=NOW - timedelta(minutes=5), caller="token:a")
        store.flush()
        assert total() == store.thumbnail_bytes == 9_000, "11,000 measured, the oldest evicted down to 90% of the cap"
        assert sum(evicted) == store.evicted_thumbnails == 2
        assert store.load_thumbnail("a0", "token:a") is None and store.load_thumbnail("a1", "token:a") is None
        assert store.load_thumbnail("a2", "token:a") == jpeg and store.load_thumbnail("b0", "token:b") == jpeg
        # Past the cap by this process's own writes alone: measured and evicted at once, whatever the period.
        store.thumbnail_recount_s = 3600
        for i in range(6, 8):
            store.save_thumbnail(f"a{i}", jpeg, caller="token:a")
        store.flush()
        assert total() == store.thumbnail_bytes <= 9_000 and store.load_thumbnail("a7", "token:a") == jpeg
        assert sum(evicted) == store.evicted_thumbnails == 4


def test_case_show_lists_every_callers_case_and_caller_picks_one(store_location: str, tmp_path: Path) -> None:
    """`case show REQUEST_ID` still works with a reused request id: every caller's decisions and
    thumbnail rows, and `--caller` picks one case (the one `--out` may copy)."""
    import json

    from typer.testing import CliRunner

    from moderation.cli import app

    with open_store(store_location, thumbnail_retention=timedelta(days=7)) as store:
        for n, caller in enumerate(("token:a", "token:b")):
            store.record("same", NOW + timedelta(seconds=n), "p", "1", "BLOCK", vector(n), "m", caller=caller)
            store.save_thumbnail("same", b"\xff\xd8" + caller.encode(), caller=caller)

    url = store_location if "://" in store_location else f"sqlite:///{store_location}"  # a database_url: thumbnails are rows

    def show(*options: str) -> tuple[int, str]:
        shown = CliRunner().invoke(app, ["case", "show", "same", "--store", url, *options])
        return shown.exit_code, shown.output

    code, output = show("--json")
    both = json.loads(output)
    assert code == 0 and [d["caller"] for d in both["decisions"]] == ["token:a", "token:b"] and both["thumbnail"] is None
    assert [t["caller"] for t in both["thumbnails"]] == ["token:a", "token:b"]
    code, output = show()
    assert code == 0 and "2 callers used this request id" in output and "token:a" in output and "token:b" in output
    copy = tmp_path / "b.jpg"
    code, output = show("--caller", "token:b", "--out", str(copy), "--json")
    mine = json.loads(output)
    assert code == 0 and [d["caller"] for d in mine["decisions"]] == ["token:b"] and mine["thumbnail"] is not None
    assert copy.read_bytes() == b"\xff\xd8token:b"
    code, _ = show("--caller", "token:nobody")
    assert code == 1, "no such case"


def test_case_show_gives_scores_thresholds_rationale_and_shadows(store_location: str) -> None:
    """Issue 22: `case show` gave time, version, action and thumbnail only. What decided the case is kept beside it."""
    import json

    from typer.testing import CliRunner

    from moderation.cli import app
    from moderation.state.records import decision_details

    categories = [
        {"id": "weapons", "clause": "W-1", "score": 0.4123, "review": 0.264, "block": 0.75, "band": "BORDERLINE", "action": "REVIEW"},
        {"id": "drugs", "clause": "D-4", "score": 0.01, "review": 0.3, "block": 0.6, "band": "BELOW", "action": "ALLOW"},
    ]
    details = decision_details(
        categories,
        reasons=["weapons scored 0.412, between its review threshold 0.264 and block threshold 0.75 (clause W-1)"],
        escalation={"status": "COMPLETED", "reason": "", "category": "weapons", "violates": False, "confidence": 0.8,
                    "rationale": "a toy <b>water pistol</b> on a beach towel", "model": "smolvlm2", "changed_action": False},
        shadows=[{"policy_id": "default_next", "version": "2026-11-24.1", "action": "BLOCK", "disagree": ["weapons"]}],
    )  # fmt: skip
    with open_store(store_location) as store:
        store.record("case-1", NOW, "default", "2026-11-23.1", "REVIEW", vector(0), "m", caller="token:a", details=details)
        store.record("case-0", NOW, "default", "2026-11-23.1", "ALLOW", vector(1), "m")  # without details: older servers
    url = store_location if "://" in store_location else f"sqlite:///{store_location}"
    shown = CliRunner().invoke(app, ["case", "show", "case-1", "--store", url], env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "weapons (W-1)" in text and "0.412" in text and "0.264" in text and "0.75" in text and "BORDERLINE" in text
    assert "between its review threshold 0.264" in text
    assert "does not violate, confidence 0.80; rationale: a toy <b>water pistol</b> on a beach towel" in text
    assert "shadow default_next@2026-11-24.1: BLOCK, disagrees on weapons" in text
    assert all(len(line) <= 80 for line in shown.output.splitlines())
    document = json.loads(CliRunner().invoke(app, ["case", "show", "case-1", "--store", url, "--json"]).stdout)
    (decision,) = document["decisions"]
    assert decision["details"]["categories"] == categories and decision["details"]["shadows"][0]["disagree"] == ["weapons"]
    assert decision["details"]["escalation"]["rationale"].startswith("a toy")
    old = CliRunner().invoke(app, ["case", "show", "case-0", "--store", url])
    assert "scores: not stored (decided before this release kept" in " ".join(old.output.split())


def test_case_show_without_thumbnails_says_which_setting_keeps_them(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from moderation.cli import app

    path = tmp_path / "store.db"
    with open_store(path) as store:
        store.record("r", NOW, "default", "1", "REVIEW", vector(0), "m")
    env = {"MODERATION_THUMBNAIL_STORE": None, "MODERATION_DATABASE_URL": None, "MODERATION_KEEP_THUMBNAILS": None}
    shown = CliRunner().invoke(app, ["case", "show", "r", "--store", str(path)], env=env)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "thumbnail: off: no thumbnail store" in text and "keep_thumbnails: true (MODERATION_KEEP_THUMBNAILS=true)" in text
    assert "thumbnail_store: DIR (MODERATION_THUMBNAIL_STORE)" in text
