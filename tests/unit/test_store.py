"""What only the SQLite backend has: a file (locks, read-only opening, files from before migrations).

The behaviour both backends share is tested once for both in tests/state/test_store_backends.py.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from moderation.state.embeddings import find_decisions, read_decisions, stored_model_ids
from moderation.state.migrations import SCHEMA_VERSION
from moderation.state.records import StoreError
from moderation.state.store import open_store

NOW = datetime.now(timezone.utc)
DIM = 8

# The schema of the store before migrations existed (schema 1), verbatim: files like this are in the field.
SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    request_id     TEXT NOT NULL,
    ts             REAL NOT NULL,
    policy_id      TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    action         TEXT NOT NULL,
    model_id       TEXT NOT NULL,
    embedding      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions (ts);
CREATE INDEX IF NOT EXISTS decisions_by_policy_time ON decisions (policy_id, ts);
CREATE INDEX IF NOT EXISTS decisions_by_request ON decisions (request_id);
INSERT OR IGNORE INTO store_info VALUES ('schema_version', '1');
"""


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def ids(path: Path) -> list[str]:
    return [r for b in read_decisions(path, since=NOW - timedelta(days=365)) for r in b.request_ids]


def test_a_locked_database_never_fails_record_and_the_buffer_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    dropped: list[tuple[str, int]] = []
    store = open_store(path, batch_size=2, max_buffered=5, busy_timeout_s=0.01, max_delay_s=3600, on_dropped=lambda k, n: dropped.append((k, n)))
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    for i in range(10):
        store.record(f"r{i}", NOW, "p", "1", "ALLOW", vector(i), "m")  # must not raise
    assert store.dropped == 5 and sum(n for _, n in dropped) == 5  # the five oldest went when the sixth to tenth arrived
    with pytest.raises(StoreError, match="cannot write to state store"):
        store.flush()
    blocker.execute("ROLLBACK")
    blocker.close()
    assert store.flush() == 5
    store.close()
    assert ids(path) == [f"r{i}" for i in range(5, 10)]


def test_reading_never_creates_or_changes_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no state store at"):
        list(read_decisions(tmp_path / "missing.db", since=NOW))
    assert not (tmp_path / "missing.db").exists()
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="is not a moderation state store"):
        stored_model_ids(other, since=NOW)
    with pytest.raises(StoreError, match="is not a moderation state store"):
        open_store(other)  # nor is it written to: a file of something else stays as it was
    with pytest.raises(StoreError, match="cannot open state store"):
        open_store(tmp_path / "no-such-folder" / "store.db")


def test_a_schema_1_file_migrates_forward_and_keeps_its_decisions(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript(SCHEMA_1)
        old.execute("INSERT INTO decisions VALUES ('kept', ?, 'default', '1', 'BLOCK', 'm', ?)", (NOW.timestamp(), vector(0).tobytes()))
    # A reader of an old file reads it as it is, without migrating it.
    assert ids(path) == ["kept"]
    with open_store(path, read_only=True) as reader:
        assert reader.schema_version == 1 and reader.load_thumbnail("kept") is None
    with open_store(path, thumbnail_retention=timedelta(days=1)) as store:
        assert store.schema_version == SCHEMA_VERSION
        store.record("new", NOW, "default", "2", "ALLOW", vector(1), "m")
        store.save_thumbnail("new", b"\xff\xd8jpeg")
    assert ids(path) == ["kept", "new"]
    found = find_decisions(path, "kept")
    assert found is not None and np.array_equal(found.embeddings[0], vector(0))
    with sqlite3.connect(path) as db:
        versions = [v for (v,) in db.execute("SELECT version FROM schema_version ORDER BY version")]
        legacy = db.execute("SELECT value FROM store_info WHERE key = 'schema_version'").fetchone()
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    # Releases from before migrations read store_info: they now see a newer schema and refuse the file.
    assert legacy == (str(SCHEMA_VERSION),)


def test_sqlite_urls_name_files(tmp_path: Path) -> None:
    path = tmp_path / "url.db"
    with open_store(f"sqlite://{path}") as store:
        store.record("a", NOW, "p", "1", "ALLOW", vector(0), "m")
    assert ids(path) == ["a"]
    with pytest.raises(StoreError, match="unknown store URL scheme 'mysql' in mysql://u:\\*\\*\\*@h/db"):
        open_store("mysql://u:secret@h/db")


def test_a_schema_2_file_migrates_to_cases_keyed_by_caller_and_keeps_its_rows(tmp_path: Path) -> None:
    from moderation.state.migrations import MIGRATIONS, SCHEMA_VERSION_TABLE

    path = tmp_path / "v2.db"
    with sqlite3.connect(path) as old:
        old.execute(SCHEMA_VERSION_TABLE)
        for migration in MIGRATIONS[:2]:
            for statement in migration.sqlite:
                old.execute(statement)
            old.execute("INSERT INTO schema_version VALUES (?, ?, 0)", (migration.version, migration.description))
        old.execute("INSERT INTO decisions VALUES ('kept', ?, 'default', '1', 'BLOCK', 'm', ?)", (NOW.timestamp(), vector(0).tobytes()))
        old.execute("INSERT INTO thumbnails VALUES ('kept', ?, ?)", (NOW.timestamp(), b"\xff\xd8old"))
    with open_store(path, read_only=True) as reader:  # an old file read as it is: callers unknown
        assert reader.schema_version == 2 and reader.load_thumbnail("kept", "") == b"\xff\xd8old"
        assert reader.find_decisions("kept").callers == ("",)
    with open_store(path, thumbnail_retention=timedelta(days=1)) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.load_thumbnail("kept", "") == b"\xff\xd8old" and store.thumbnail_callers("kept") == [""]
        store.save_thumbnail("kept", b"\xff\xd8new", caller="token:a")  # another case under the same id
        store.flush()
        assert store.load_thumbnail("kept", "") == b"\xff\xd8old" and store.load_thumbnail("kept", "token:a") == b"\xff\xd8new"
        assert store.find_decisions("kept").callers == ("",)
