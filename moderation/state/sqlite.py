"""The SQLite backend of the store seam: one file, one machine, the embedded default.

WAL mode, so `policy diff` and `case show` read while the server writes. The file is
created owner-only (0600; SQLite gives its -wal and -shm files the same mode):
embeddings support similarity search, and thumbnails are pictures of flagged cases.
A read-only store opens the file with `mode=ro` and never creates or changes it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from moderation.state.migrations import SCHEMA_VERSION, SCHEMA_VERSION_TABLE, newer_than_code_message, pending
from moderation.state.records import StoreError
from moderation.state.review import NewCase, write_cases
from moderation.state.store import CaseKey, DecisionRow, RejectedRows, StateStore, ThumbnailRow

_INSERT_DECISION = (
    "INSERT INTO decisions (request_id, ts, policy_id, policy_version, action, model_id, embedding, caller, details) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_THUMBNAIL = (
    "INSERT INTO thumbnails (caller, request_id, saved_at, jpeg) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (caller, request_id) DO UPDATE SET saved_at = excluded.saved_at, jpeg = excluded.jpeg"
)


class SQLiteStore(StateStore):
    _row_key = "rowid"

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 1.0, read_only: bool = False, **options: object):
        self.path = Path(path)
        super().__init__(str(self.path), read_only=read_only, **options)  # type: ignore[arg-type]
        if read_only:
            self._connection = self._open_read_only()
            self._version = self._read_version(self._connection)
            if self._version > SCHEMA_VERSION:
                self._connection.close()
                raise StoreError(newer_than_code_message(str(self.path), self._version))
            return
        try:
            # Owner-only, created before SQLite touches it (see the module docstring).
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        except OSError as error:
            raise StoreError(f"cannot open state store {self.path}: {error.strerror}") from error
        try:
            self._connection = sqlite3.connect(self.path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None)
            self._connection.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a power cut may lose the last transactions, never corrupt the file.
            self._connection.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as error:
            raise StoreError(f"cannot open state store {self.path}: {error}") from error
        self._busy_timeout_s = busy_timeout_s
        self._version = self._migrate(busy_timeout_s)
        self._start_flusher()

    @property
    def schema_version(self) -> int:
        return self._version

    def _migrate(self, busy_timeout_s: float) -> int:
        """Apply the missing migrations in one IMMEDIATE transaction: two processes opening one file take turns."""
        connection = self._connection
        # Another process may hold the write lock for a while at start (its own migration): wait longer than for a row.
        connection.execute(f"PRAGMA busy_timeout = {int(max(busy_timeout_s, 10.0) * 1000)}")
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute(SCHEMA_VERSION_TABLE)
                connection.execute("CREATE TABLE IF NOT EXISTS store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                current = self._read_version(connection)
                if current > SCHEMA_VERSION:
                    raise StoreError(newer_than_code_message(str(self.path), current))
                if current and not connection.execute("SELECT 1 FROM schema_version LIMIT 1").fetchone():
                    # A file from before migrations: its version lives only in store_info. Adopt it.
                    connection.execute("INSERT INTO schema_version VALUES (?, ?, ?)", (current, "adopted from store_info", time.time()))
                for migration in pending(current):
                    for statement in migration.sqlite:
                        connection.execute(statement)
                    connection.execute("INSERT INTO schema_version VALUES (?, ?, ?)", (migration.version, migration.description, time.time()))
                    current = migration.version
                # Kept current so releases from before migrations refuse this file rather than write to it.
                connection.execute("INSERT OR REPLACE INTO store_info VALUES ('schema_version', ?)", (str(current),))
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as error:
            raise StoreError(f"cannot migrate state store {self.path}: {error}") from error
        finally:
            connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        return current

    def _read_version(self, connection: sqlite3.Connection) -> int:
        """The highest applied migration; 0 for an empty file. StoreError for a file that is not a store."""
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" in tables:
            row = connection.execute("SELECT MAX(version) FROM schema_version").fetchone()
            if row[0] is not None:
                return int(row[0])
        if "store_info" in tables:
            row = connection.execute("SELECT value FROM store_info WHERE key = 'schema_version'").fetchone()
            if row is not None:
                return int(row[0])
        if tables - {"schema_version", "store_info"}:
            raise StoreError(f"{self.path} is not a moderation state store (it has tables {sorted(tables)} but no schema version)")
        if self.read_only:
            raise StoreError(f"{self.path} is not a moderation state store (empty)")
        return 0

    def _open_read_only(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(f"no state store at {self.path}")
        try:
            return sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.Error as error:
            raise StoreError(f"cannot open state store {self.path}: {error}") from error

    def _write(self, decisions: list[DecisionRow], thumbnails: list[ThumbnailRow], cases: Sequence[NewCase] = ()) -> int:
        queue_full = 0
        try:
            # IMMEDIATE when cases come: the count of open cases and the inserts it allows are one turn.
            self._connection.execute("BEGIN IMMEDIATE" if cases else "BEGIN")
            try:
                if decisions:
                    self._connection.executemany(_INSERT_DECISION, decisions)
                if thumbnails:
                    self._connection.executemany(_UPSERT_THUMBNAIL, thumbnails)
                if cases:
                    queue_full = write_cases(SQLiteTransaction(self._connection), cases, self.max_open_cases)
                self._connection.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except (sqlite3.IntegrityError, sqlite3.DataError) as error:
            raise RejectedRows(f"state store {self.path} refused {len(decisions)} decisions and {len(thumbnails)} thumbnails: {error}") from error
        except sqlite3.Error as error:
            raise StoreError(f"cannot write to state store {self.path}: {error}") from error
        return queue_full

    def _fetchall(self, sql: str, params: tuple[object, ...]) -> list[tuple]:
        if self.read_only and self._version < 2 and "thumbnails" in sql:
            return []  # a schema-1 file, read without migrating: it has no thumbnails
        try:
            return self._connection.execute(sql, params).fetchall()
        except sqlite3.Error as error:
            raise StoreError(f"cannot read state store {self.path}: {error}") from error

    def _delete_decisions_before(self, cutoff: float) -> int:
        return self._delete("DELETE FROM decisions WHERE ts < ?", cutoff)

    def _delete_thumbnails_before(self, cutoff: float) -> int:
        return self._delete("DELETE FROM thumbnails WHERE saved_at < ?", cutoff)

    def _delete_thumbnails(self, cases: list[CaseKey]) -> int:
        try:
            self._connection.execute("BEGIN")
            try:
                deleted = self._connection.executemany("DELETE FROM thumbnails WHERE caller = ? AND request_id = ?", cases).rowcount
                self._connection.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            return deleted
        except sqlite3.Error as error:
            raise StoreError(f"cannot evict thumbnails from state store {self.path}: {error}") from error

    def _delete(self, sql: str, cutoff: float) -> int:
        try:
            return self._connection.execute(sql, (cutoff,)).rowcount
        except sqlite3.Error as error:
            raise StoreError(f"cannot prune state store {self.path}: {error}") from error

    @contextlib.contextmanager
    def _transaction(self, *, timeout_s: float | None = None) -> Iterator[SQLiteTransaction]:
        """One write transaction (`BEGIN IMMEDIATE`) on the store's connection, under its write lock.

        For writers other than the decision buffer (banks): the write lock keeps the flush
        thread's batches out of it; IMMEDIATE takes the file's write lock at once, so two
        processes' bank writes take turns. `timeout_s` waits that long for another process's
        write (an import) instead of the busy timeout. Commits when the block ends, rolls
        back when it raises; sqlite3 errors become StoreError, anything else (ValueError)
        passes through after the rollback.
        """
        if self.read_only:
            raise StoreError(f"{self.where} was opened read-only")
        with self._write_lock:
            if timeout_s is not None:
                self._connection.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            try:
                self._connection.execute("BEGIN IMMEDIATE")
                try:
                    yield SQLiteTransaction(self._connection)
                    self._connection.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            except sqlite3.Error as error:
                raise StoreError(f"cannot write to state store {self.path}: {error}") from error
            finally:
                if timeout_s is not None:
                    self._connection.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")

    def _rollback(self) -> None:
        try:
            self._connection.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # nothing was begun (BEGIN itself failed)

    def _disconnect(self) -> None:
        self._connection.close()


class SQLiteTransaction:
    """What a bank write needs from an open transaction: statements with `?` placeholders."""

    dialect = "sqlite"

    def __init__(self, connection: sqlite3.Connection):
        self._connection = connection

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        return self._connection.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[tuple[object, ...]]) -> int:
        """Run `sql` for every row (a generator is consumed as it goes); how many rows it changed."""
        return self._connection.executemany(sql, rows).rowcount
