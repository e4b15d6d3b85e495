"""Decision embeddings kept for retroactive re-scoring (`moderation policy diff`).

After each decision the server records the image's CLIP embedding with the request
id, time, policy id and version, action and model id. Never the image: an embedding
cannot be turned back into the picture, and re-scoring a policy needs only the
embedding, because a score is the embedding against the policy's text embeddings.

Storage is one SQLite file (WAL mode, so `policy diff` can read while the server
writes). `record` is cheap and thread-safe: it appends to an in-memory buffer, and
the thread whose record fills a batch (or finds the oldest buffered row older than
`max_delay_s`) writes the batch in one transaction. A thread never waits for
another's write. A background thread also writes whatever is buffered every
`flush_interval_s` (default `max_delay_s`), so a quiet server's last decisions reach
the file within seconds rather than waiting for more traffic; `close()` writes the
rest. If SQLite refuses a write (disk full, database locked) the rows
stay buffered, the next attempt waits `max_delay_s`, and past `max_buffered` the
oldest rows are dropped and counted in `dropped`: the request path never grows
memory without bound and never fails because of the store.

Rows older than `retention` are deleted at most once per `prune_every_s`, during a
write; `prune()` does it on demand.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from moderation.policy.schema import Action

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    request_id     TEXT NOT NULL,
    ts             REAL NOT NULL,  -- unix seconds, UTC
    policy_id      TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    action         TEXT NOT NULL,  -- ALLOW, REVIEW or BLOCK
    model_id       TEXT NOT NULL,
    embedding      BLOB NOT NULL   -- float32, little-endian, L2-normalised as the model returned it
);
CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions (ts);
CREATE INDEX IF NOT EXISTS decisions_by_policy_time ON decisions (policy_id, ts);
CREATE INDEX IF NOT EXISTS decisions_by_request ON decisions (request_id);  -- `moderation case show`
"""
_INSERT = "INSERT INTO decisions (request_id, ts, policy_id, policy_version, action, model_id, embedding) VALUES (?, ?, ?, ?, ?, ?, ?)"

Timestamp = datetime | float  # an aware datetime, or unix seconds


class StoreError(RuntimeError):
    """The store cannot be read or written; the message says which file and why."""


@dataclass(frozen=True)
class StoredDecisions:
    """A batch of stored decisions, oldest first."""

    request_ids: tuple[str, ...]
    timestamps: np.ndarray  # unix seconds, float64
    policy_ids: tuple[str, ...]
    policy_versions: tuple[str, ...]
    actions: tuple[Action, ...]
    model_ids: tuple[str, ...]
    embeddings: np.ndarray  # [n, dim] float32

    def __len__(self) -> int:
        return len(self.request_ids)


class EmbeddingStore:
    def __init__(
        self,
        path: str | Path,
        *,
        retention: timedelta | None = None,
        batch_size: int = 256,
        max_delay_s: float = 5.0,
        max_buffered: int = 10_000,
        busy_timeout_s: float = 1.0,
        prune_every_s: float = 3600.0,
        flush_interval_s: float | None = None,
    ):
        if batch_size < 1 or max_buffered < batch_size:
            raise ValueError(f"need 1 <= batch_size <= max_buffered, got {batch_size} and {max_buffered}")
        self.path = Path(path)
        self.retention = retention
        self.batch_size = batch_size
        self.max_delay_s = max_delay_s
        self.max_buffered = max_buffered
        self.prune_every_s = prune_every_s
        self.dropped = 0  # rows lost because writes kept failing and the buffer was full
        self._buffer: list[tuple[object, ...]] = []
        self._oldest_buffered_at: float | None = None  # monotonic time of the oldest buffered row
        self._retry_at = 0.0  # after a failed write, the monotonic time of the next attempt
        self._last_prune_at = -math.inf
        self._buffer_lock = threading.Lock()
        self._write_lock = threading.Lock()
        # Connect and create the schema now: a bad path fails at start-up, not on the first request.
        try:
            # Owner-only: embeddings support similarity search. SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        except OSError as error:
            raise StoreError(f"cannot open embedding store {self.path}: {error.strerror}") from error
        try:
            self._connection = sqlite3.connect(self.path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None)
            self._connection.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a power cut may lose the last transactions, never corrupt the file.
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._connection.executescript(_SCHEMA)
            self._connection.execute("INSERT OR IGNORE INTO store_info VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.Error as error:
            raise StoreError(f"cannot open embedding store {self.path}: {error}") from error
        self._closed = threading.Event()
        interval = max_delay_s if flush_interval_s is None else flush_interval_s
        self._flusher = threading.Thread(target=self._flush_periodically, args=(max(interval, 0.05),), name="embedding-store-flush", daemon=True)
        self._flusher.start()

    def record(
        self,
        request_id: str,
        timestamp: Timestamp,
        policy_id: str,
        policy_version: str,
        action: Action | str,
        image_embedding: np.ndarray,
        model_id: str,
    ) -> None:
        """Buffer one decision; write a batch when one is due. Never raises for storage trouble."""
        row = (
            request_id,
            unix_seconds(timestamp),
            policy_id,
            policy_version,
            Action(action).value,
            model_id,
            _embedding_bytes(image_embedding),
        )
        now = time.monotonic()
        with self._buffer_lock:
            self._buffer.append(row)
            if self._oldest_buffered_at is None:
                self._oldest_buffered_at = now
            self._drop_overflow()
            due = now >= self._retry_at and (
                len(self._buffer) >= self.batch_size or now - self._oldest_buffered_at >= self.max_delay_s
            )
        if due:
            try:
                self.flush(wait=False)
            except StoreError as error:
                log.warning("%s; %d decisions stay buffered, next attempt in %.0f s", error, len(self._buffer), self.max_delay_s)

    def flush(self, wait: bool = True) -> int:
        """Write every buffered row in one transaction; return how many.

        Raises StoreError when SQLite refuses; the rows then stay buffered. With
        `wait=False`, returns 0 at once if another thread is writing.
        """
        if not self._write_lock.acquire(blocking=wait):
            return 0
        try:
            with self._buffer_lock:
                rows, self._buffer, self._oldest_buffered_at = self._buffer, [], None
            if rows:
                try:
                    self._connection.execute("BEGIN")
                    self._connection.executemany(_INSERT, rows)
                    self._connection.execute("COMMIT")
                except sqlite3.Error as error:
                    self._rollback()
                    with self._buffer_lock:
                        self._buffer[:0] = rows  # oldest first, as they came
                        self._oldest_buffered_at = time.monotonic()
                        self._retry_at = time.monotonic() + self.max_delay_s
                        self._drop_overflow()
                    raise StoreError(f"cannot write to embedding store {self.path}: {error}") from error
                self._retry_at = 0.0
            if self.retention is not None and time.monotonic() - self._last_prune_at >= self.prune_every_s:
                self._prune_locked(datetime.now(timezone.utc) - self.retention)
            return len(rows)
        finally:
            self._write_lock.release()

    def prune(self, older_than: timedelta | datetime | None = None) -> int:
        """Delete decisions older than `older_than` (an age, or a time); default the retention. Returns how many."""
        older_than = older_than if older_than is not None else self.retention
        if older_than is None:
            raise ValueError("prune needs an age or a time, or a store with a retention period")
        cutoff = datetime.now(timezone.utc) - older_than if isinstance(older_than, timedelta) else older_than
        with self._write_lock:
            return self._prune_locked(cutoff)

    def close(self) -> None:
        """Stop the flush thread, write what is buffered and close the file."""
        self._closed.set()
        self._flusher.join()
        try:
            self.flush()
        finally:
            self._connection.close()

    def _flush_periodically(self, interval_s: float) -> None:
        while not self._closed.wait(interval_s):
            with self._buffer_lock:
                due = bool(self._buffer) and time.monotonic() >= self._retry_at
            if not due:
                continue
            try:
                self.flush(wait=False)
            except StoreError as error:
                log.warning("%s; %d decisions stay buffered, next attempt in %.0f s", error, len(self._buffer), self.max_delay_s)

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _prune_locked(self, cutoff: datetime) -> int:
        try:
            deleted = self._connection.execute("DELETE FROM decisions WHERE ts < ?", (unix_seconds(cutoff),)).rowcount
        except sqlite3.Error as error:
            raise StoreError(f"cannot prune embedding store {self.path}: {error}") from error
        self._last_prune_at = time.monotonic()
        return deleted

    def _drop_overflow(self) -> None:
        # Called with the buffer lock held.
        overflow = len(self._buffer) - self.max_buffered
        if overflow > 0:
            del self._buffer[:overflow]
            self.dropped += overflow

    def _rollback(self) -> None:
        try:
            self._connection.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # nothing was begun (BEGIN itself failed)


def read_decisions(
    path: str | Path,
    since: Timestamp,
    until: Timestamp | None = None,
    policy_id: str | None = None,
    batch_size: int = 1024,
) -> Iterator[StoredDecisions]:
    """Stored decisions with since <= time < until, oldest first, in batches.

    Opens the file read-only and pages by (time, rowid), so no read transaction stays
    open between batches and the server keeps writing meanwhile.
    """
    where, params = _window(since, until, policy_id)
    after: tuple[float, int] = (-math.inf, -1)
    with _read_only(path) as connection:
        while True:
            rows = connection.execute(
                "SELECT ts, rowid, request_id, policy_id, policy_version, action, model_id, embedding FROM decisions "
                f"WHERE {where} AND (ts, rowid) > (?, ?) ORDER BY ts, rowid LIMIT ?",
                (*params, *after, batch_size),
            ).fetchall()
            if not rows:
                return
            after = (rows[-1][0], rows[-1][1])
            yield _batch(rows, path)


def stored_model_ids(path: str | Path, since: Timestamp, until: Timestamp | None = None, policy_id: str | None = None) -> dict[str, int]:
    """How many stored decisions in the window each model id embedded."""
    where, params = _window(since, until, policy_id)
    with _read_only(path) as connection:
        rows = connection.execute(f"SELECT model_id, COUNT(*) FROM decisions WHERE {where} GROUP BY model_id ORDER BY 2 DESC", params)
        return dict(rows.fetchall())


@dataclass(frozen=True)
class StoreFreshness:
    """How current a store is: what `policy diff` re-scores, and how old the newest decision is."""

    in_window: int  # decisions in the window (and policy)
    oldest_in_window: float | None  # unix seconds
    newest_in_window: float | None
    newest: float | None  # the newest decision of any policy, any time


def store_freshness(path: str | Path, since: Timestamp, until: Timestamp | None = None, policy_id: str | None = None) -> StoreFreshness:
    where, params = _window(since, until, policy_id)
    with _read_only(path) as connection:
        count, oldest, newest_in_window = connection.execute(f"SELECT COUNT(*), MIN(ts), MAX(ts) FROM decisions WHERE {where}", params).fetchone()
        (newest,) = connection.execute("SELECT MAX(ts) FROM decisions").fetchone()
    return StoreFreshness(int(count), oldest, newest_in_window, newest)


def find_decisions(path: str | Path, request_id: str) -> StoredDecisions | None:
    """Every stored decision with this request id (one, unless a caller reused the id), oldest first."""
    with _read_only(path) as connection:
        rows = connection.execute(
            "SELECT ts, rowid, request_id, policy_id, policy_version, action, model_id, embedding FROM decisions "
            "WHERE request_id = ? ORDER BY ts, rowid LIMIT 100",
            (request_id,),
        ).fetchall()
    return _batch(rows, path) if rows else None


def unix_seconds(timestamp: Timestamp) -> float:
    if isinstance(timestamp, datetime):
        if timestamp.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware datetimes (or unix seconds)")
        return timestamp.timestamp()
    seconds = float(timestamp)
    if not math.isfinite(seconds):
        raise ValueError(f"timestamp must be finite, got {timestamp!r}")
    return seconds


def _embedding_bytes(embedding: np.ndarray) -> bytes:
    vector = np.asarray(embedding, dtype="<f4")
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError(f"an image embedding is one non-empty vector, got shape {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise ValueError("an image embedding must be finite")
    return vector.tobytes()


def _window(since: Timestamp, until: Timestamp | None, policy_id: str | None) -> tuple[str, tuple[object, ...]]:
    clauses, params = ["ts >= ?"], [unix_seconds(since)]
    if until is not None:
        clauses.append("ts < ?")
        params.append(unix_seconds(until))
    if policy_id is not None:
        clauses.append("policy_id = ?")
        params.append(policy_id)
    return " AND ".join(clauses), tuple(params)


@contextmanager
def _read_only(path: str | Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to an existing store: reading never creates or changes a file."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no embedding store at {path}")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise StoreError(f"cannot open embedding store {path}: {error}") from error
    try:
        try:
            row = connection.execute("SELECT value FROM store_info WHERE key = 'schema_version'").fetchone()
        except sqlite3.Error as error:
            raise StoreError(f"{path} is not an embedding store ({error})") from error
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"{path} has store schema {row and row[0]}; this version reads schema {SCHEMA_VERSION}")
        yield connection
    finally:
        connection.close()


def _batch(rows: list[tuple[object, ...]], path: str | Path) -> StoredDecisions:
    sizes = {len(row[7]) for row in rows}  # type: ignore[arg-type]
    if len(sizes) != 1:
        raise StoreError(f"{path}: stored embeddings of different sizes in one window; filter by model")
    return StoredDecisions(
        request_ids=tuple(str(row[2]) for row in rows),
        timestamps=np.array([row[0] for row in rows], dtype=np.float64),
        policy_ids=tuple(str(row[3]) for row in rows),
        policy_versions=tuple(str(row[4]) for row in rows),
        actions=tuple(Action(row[5]) for row in rows),
        model_ids=tuple(str(row[6]) for row in rows),
        embeddings=np.stack([np.frombuffer(row[7], dtype="<f4") for row in rows]).astype(np.float32),  # type: ignore[arg-type]
    )
