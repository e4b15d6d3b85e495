"""The PostgreSQL backend of the store seam: one database shared by every replica.

psycopg 3. The writer keeps one connection (autocommit; each batch is one explicit
transaction): decisions go in with COPY (one round trip for a whole batch),
thumbnails with one pipelined upsert. A connection that breaks (the database
restarted, a failover, a network cut) is dropped and the next attempt, at most
`max_delay_s` later, opens a new one; meanwhile rows stay buffered (see
moderation/state/store.py). Connect and keepalive timeouts are short so a database
that vanished costs a writer thread seconds, never minutes, and never a request.

Readers (`policy diff`, `case show`) open their own connection per store.
Passwords never appear in messages: the URL is redacted first.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence

import psycopg

from moderation.state.migrations import (
    POSTGRES_MIGRATION_LOCK,
    SCHEMA_VERSION,
    SCHEMA_VERSION_TABLE,
    newer_than_code_message,
    pending,
)
from moderation.state.records import StoreError
from moderation.state.review import NewCase, write_cases
from moderation.state.store import CaseKey, DecisionRow, RejectedRows, StateStore, ThumbnailRow, redact_url

_COPY_DECISIONS = "COPY decisions (request_id, ts, policy_id, policy_version, action, model_id, embedding, caller, details) FROM STDIN"
_UPSERT_THUMBNAIL = (
    "INSERT INTO thumbnails (caller, request_id, saved_at, jpeg) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (caller, request_id) DO UPDATE SET saved_at = EXCLUDED.saved_at, jpeg = EXCLUDED.jpeg"
)


class PostgresStore(StateStore):
    _row_key = "id"

    def __init__(self, url: str, *, read_only: bool = False, connect_timeout_s: float = 3.0, statement_timeout_s: float = 30.0, **options: object):
        super().__init__(redact_url(url), read_only=read_only, **options)  # type: ignore[arg-type]
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._statement_timeout_s = statement_timeout_s
        self._connection: psycopg.Connection | None = None
        # At start the database must answer: a wrong URL or password fails the server's start, not its first write.
        connection = self._connect()
        self._version = self._read_version(connection) if read_only else self._migrate(connection)
        self._start_flusher()

    @property
    def schema_version(self) -> int:
        return self._version

    def _connect(self) -> psycopg.Connection:
        if self._connection is not None and not self._connection.closed:
            return self._connection
        try:
            self._connection = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout_s)),
                application_name="moderation",
                # A peer that vanished without closing the socket is noticed in ~10 s, not the kernel's 2 hours.
                keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3, tcp_user_timeout=10_000,
                # Bounds a write or read stuck behind a lock; a batch of COPY takes milliseconds.
                options=f"-c statement_timeout={int(self._statement_timeout_s * 1000)}",
            )  # fmt: skip
        except psycopg.Error as error:
            self._connection = None
            raise StoreError(f"cannot connect to state store {self.where}: {_one_line(error)}") from None
        return self._connection

    def _migrate(self, connection: psycopg.Connection) -> int:
        """Apply the missing migrations in one transaction, under an advisory lock every replica takes."""
        try:
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (POSTGRES_MIGRATION_LOCK,))
                connection.execute(SCHEMA_VERSION_TABLE)
                (current,) = connection.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
                if current > SCHEMA_VERSION:
                    raise StoreError(newer_than_code_message(self.where, current))
                for migration in pending(current):
                    for statement in migration.postgres:
                        connection.execute(statement)
                    connection.execute(
                        "INSERT INTO schema_version VALUES (%s, %s, %s)", (migration.version, migration.description, time.time())
                    )
                    current = migration.version
        except psycopg.Error as error:
            self._close_connection()
            raise StoreError(f"cannot migrate state store {self.where}: {_one_line(error)}") from None
        except StoreError:
            self._close_connection()
            raise
        return int(current)

    def _read_version(self, connection: psycopg.Connection) -> int:
        try:
            (table,) = connection.execute("SELECT to_regclass('schema_version')").fetchone()
            if table is None:
                raise StoreError(f"{self.where} is not a moderation state store yet (no schema_version table); a server started with it creates one")
            (version,) = connection.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        except psycopg.Error as error:
            self._close_connection()
            raise StoreError(f"cannot read state store {self.where}: {_one_line(error)}") from None
        if version > SCHEMA_VERSION:
            self._close_connection()
            raise StoreError(newer_than_code_message(self.where, version))
        return int(version)

    def _write(self, decisions: list[DecisionRow], thumbnails: list[ThumbnailRow], cases: Sequence[NewCase] = ()) -> int:
        connection = self._connect()
        queue_full = 0
        try:
            with connection.transaction(), connection.cursor() as cursor:
                if decisions:
                    with cursor.copy(_COPY_DECISIONS) as copy:
                        for row in decisions:
                            copy.write_row(row)
                if thumbnails:
                    cursor.executemany(_UPSERT_THUMBNAIL, thumbnails)
                if cases:
                    queue_full = write_cases(PostgresTransaction(cursor), cases, self.max_open_cases)
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as error:
            raise RejectedRows(f"state store {self.where} refused {len(decisions)} decisions and {len(thumbnails)} thumbnails: {_one_line(error)}") from None
        except psycopg.Error as error:
            self._reset_if_broken()
            raise StoreError(f"cannot write to state store {self.where}: {_one_line(error)}") from None
        return queue_full

    def _fetchall(self, sql: str, params: tuple[object, ...]) -> list[tuple]:
        if self.read_only and self._version < 2 and "thumbnails" in sql:
            return []
        connection = self._connect()
        try:
            return connection.execute(sql.replace("?", "%s"), params).fetchall()
        except psycopg.Error as error:
            self._reset_if_broken()
            raise StoreError(f"cannot read state store {self.where}: {_one_line(error)}") from None

    def _delete_decisions_before(self, cutoff: float) -> int:
        return self._delete("DELETE FROM decisions WHERE ts < %s", cutoff)

    def _delete_thumbnails_before(self, cutoff: float) -> int:
        return self._delete("DELETE FROM thumbnails WHERE saved_at < %s", cutoff)

    def _delete_thumbnails(self, cases: list[CaseKey]) -> int:
        connection = self._connect()
        try:
            with connection.transaction(), connection.cursor() as cursor:
                cursor.executemany("DELETE FROM thumbnails WHERE caller = %s AND request_id = %s", cases)
                return cursor.rowcount
        except psycopg.Error as error:
            self._reset_if_broken()
            raise StoreError(f"cannot evict thumbnails from state store {self.where}: {_one_line(error)}") from None

    def _delete(self, sql: str, cutoff: float) -> int:
        connection = self._connect()
        try:
            return connection.execute(sql, (cutoff,)).rowcount
        except psycopg.Error as error:
            self._reset_if_broken()
            raise StoreError(f"cannot prune state store {self.where}: {_one_line(error)}") from None

    @contextlib.contextmanager
    def _transaction(self, *, timeout_s: float | None = None) -> Iterator[PostgresTransaction]:
        """One write transaction on the store's connection, under its write lock (the flush thread's
        batches wait rather than join it). `timeout_s` replaces the statement timeout inside it
        (SET LOCAL), for an import whose COPY and merge take longer than a batch. Commits when
        the block ends, rolls back when it raises; psycopg errors become StoreError, anything
        else (ValueError) passes through after the rollback.
        """
        if self.read_only:
            raise StoreError(f"{self.where} was opened read-only")
        with self._write_lock:
            connection = self._connect()
            try:
                with connection.transaction(), connection.cursor() as cursor:
                    if timeout_s is not None:
                        cursor.execute(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}")
                    yield PostgresTransaction(cursor)
            except psycopg.Error as error:
                self._reset_if_broken()
                raise StoreError(f"cannot write to state store {self.where}: {_one_line(error)}") from None

    def _reset_if_broken(self) -> None:
        """After an error: a connection the server closed (restart, failover) is replaced on the next attempt."""
        if self._connection is not None and (self._connection.closed or self._connection.broken):
            self._close_connection()

    def _close_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except psycopg.Error:
                pass
            self._connection = None

    def _disconnect(self) -> None:
        self._close_connection()


class PostgresTransaction:
    """What a bank write needs from an open transaction: statements with `?` placeholders, and COPY."""

    dialect = "postgres"

    def __init__(self, cursor: psycopg.Cursor):
        self._cursor = cursor

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> psycopg.Cursor:
        return self._cursor.execute(sql.replace("?", "%s"), params)

    def executemany(self, sql: str, rows: Iterable[tuple[object, ...]]) -> int:
        self._cursor.executemany(sql.replace("?", "%s"), rows)
        return self._cursor.rowcount

    def copy(self, statement: str, rows: Iterable[tuple[object, ...]]) -> None:
        """`COPY ... FROM STDIN` fed row by row (a generator is consumed as it goes)."""
        with self._cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)


def _one_line(error: psycopg.Error) -> str:
    # psycopg's messages can span lines (DETAIL, HINT); a log line stays one line. Never row data: ids and SQL only.
    return " ".join(str(error).split())

