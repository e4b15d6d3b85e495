"""The store seam: everything that must outlive a pod, behind one interface.

`StateStore` is what the server, `policy diff` and `case show` use; two backends
implement it (chosen by a URL, see `open_store`):

- SQLite (moderation/state/sqlite.py): the embedded default, one file on one machine.
- PostgreSQL (moderation/state/postgres.py): one database shared by every replica.

What it keeps today: decision embeddings (record, read a window, find by request id,
freshness, the model ids of a window, prune past the retention) and opt-in thumbnails
(save, load and list by case: caller and request id; prune past the retention; evict the
oldest past `thumbnail_max_bytes`, see `_evict_over_cap`). Banks are more tables in the
same store (moderation/state/banks.py, schema 4), written through the backend's
`_transaction`; so is the review queue (moderation/state/review.py, schema 5), except
that *opening* a case rides the buffered path below (`open_case`): a REVIEW decision's
case is written with the next batch, never by the request, and a queue already holding
`max_open_cases` open cases takes no more: the new ones are dropped, counted
(`dropped_cases_queue_full`, `on_dropped("case_queue_full", n)`) and logged.

Writing never blocks a request and never fails one. `record` and `save_thumbnail`
append to an in-memory buffer; the thread whose call fills a batch (or finds the
oldest buffered row older than `max_delay_s`) writes the batch in one transaction,
and a background thread writes whatever is buffered every `flush_interval_s`, so a
quiet server's last decisions are in the database within that interval. That
interval is the loss window: a decision is *acknowledged* (durable) once a flush
that included it has committed; a process killed with SIGKILL loses at most what it
buffered in the last `flush_interval_s` (plus what a failing database kept
buffered), never a row already flushed. When the database refuses a write (down,
disk full, locked) the rows stay buffered, the next attempt waits `max_delay_s`,
and past `max_buffered` decisions (or `max_buffered_thumbnails` thumbnails) the
oldest are dropped and counted (`dropped`, `dropped_thumbnails`, the `on_dropped`
callback the server wires to `moderation_store_dropped_total`), with a warning at
most every `warn_every_s`. A backend reconnects on the next attempt after a lost
connection. No log line carries row contents: ids and counts only.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from moderation.policy.schema import Action
from moderation.state.migrations import DECISION_DETAILS
from moderation.state.records import (
    StoredDecisions,
    StoreError,
    StoreFreshness,
    Timestamp,
    decisions_batch,
    details_json,
    embedding_bytes,
    unix_seconds,
)

if TYPE_CHECKING:
    from moderation.state.review import NewCase

log = logging.getLogger(__name__)

# request_id, ts, policy_id, policy_version, action, model_id, embedding, caller, details
DecisionRow = tuple[str, float, str, str, str, str, bytes, str, str]  # ..., caller, details (JSON or '')
ThumbnailRow = tuple[str, str, float, bytes]  # caller, request_id, saved_at, jpeg
# A case is a caller's request id: another caller reusing the id neither replaces nor reads it.
CaseKey = tuple[str, str]  # caller, request_id
ANONYMOUS = "anonymous"
# A second callback, with how many thumbnails were evicted to keep under thumbnail_max_bytes.
EvictCallback = Callable[[int], None]
# At least this often (while thumbnails are written) the store measures their total bytes in the
# database, so the writes of replicas sharing it count against one cap.
THUMBNAIL_RECOUNT_S = 60.0
# Called with ("decision" | "thumbnail" | "case" | "case_queue_full", how many) whenever rows are dropped:
# "case" when buffered cases are lost (the database away too long), "case_queue_full" when the review
# queue already held max_open_cases open cases.
DropCallback = Callable[[str, int], None]

POSTGRES_SCHEMES = ("postgresql", "postgres")


class RejectedRows(StoreError):
    """The database refused the rows themselves (a constraint, a value it cannot hold), not the connection:
    retrying them cannot succeed, so the batch is dropped and counted."""


class StateStore(ABC):
    """One store: buffered, bounded, batched writes; windowed reads; thumbnails; retention."""

    # The column readers page by after ts: SQLite's implicit rowid, PostgreSQL's BIGSERIAL id.
    _row_key = "rowid"

    def __init__(
        self,
        where: str,
        *,
        read_only: bool = False,
        retention: timedelta | None = None,
        thumbnail_retention: timedelta | None = None,
        batch_size: int = 256,
        max_delay_s: float = 5.0,
        max_buffered: int = 10_000,
        max_buffered_thumbnails: int = 256,
        prune_every_s: float = 3600.0,
        flush_interval_s: float | None = None,
        warn_every_s: float = 30.0,
        on_dropped: DropCallback | None = None,
        thumbnail_max_bytes: int | None = None,
        on_evicted: EvictCallback | None = None,
        thumbnail_recount_s: float = THUMBNAIL_RECOUNT_S,
        max_buffered_cases: int = 1024,
        max_open_cases: int = 10_000,
    ):
        if batch_size < 1 or max_buffered < batch_size:
            raise ValueError(f"need 1 <= batch_size <= max_buffered, got {batch_size} and {max_buffered}")
        if max_buffered_thumbnails < 1:
            raise ValueError(f"max_buffered_thumbnails must be at least 1, got {max_buffered_thumbnails}")
        if max_buffered_cases < 1 or max_open_cases < 1:
            raise ValueError(f"max_buffered_cases and max_open_cases must be at least 1, got {max_buffered_cases} and {max_open_cases}")
        if thumbnail_max_bytes is not None and thumbnail_max_bytes < 1:
            raise ValueError(f"thumbnail_max_bytes must be at least 1, got {thumbnail_max_bytes}")
        self.thumbnail_max_bytes = thumbnail_max_bytes
        self.evicted_thumbnails = 0
        self._on_evicted = on_evicted
        # Bytes of thumbnails in the store: as last measured (a scan of the table) plus what this
        # process wrote since; None until the first write of thumbnails measures it.
        self.thumbnail_bytes: int | None = None
        self.thumbnail_recount_s = thumbnail_recount_s
        self._thumbnails_counted_at = -math.inf  # monotonic time of that measurement
        self.where = where  # for messages: a path, or a URL without its password
        self.read_only = read_only
        self.retention = retention
        self.thumbnail_retention = thumbnail_retention
        self.batch_size = batch_size
        self.max_delay_s = max_delay_s
        self.max_buffered = max_buffered
        self.max_buffered_thumbnails = max_buffered_thumbnails
        self.prune_every_s = prune_every_s
        self.warn_every_s = warn_every_s
        self.dropped = 0  # decisions lost because writes kept failing and the buffer was full
        self.dropped_thumbnails = 0
        self.max_buffered_cases = max_buffered_cases
        self.max_open_cases = max_open_cases
        self.dropped_cases = 0  # cases lost from the buffer (writes kept failing, or rows refused)
        self.dropped_cases_queue_full = 0  # cases not opened: the queue held max_open_cases open cases
        self._last_queue_full_warning_at = -math.inf
        self._cases: list[NewCase] = []
        self._on_dropped = on_dropped
        self._decisions: list[DecisionRow] = []
        self._thumbnails: dict[CaseKey, ThumbnailRow] = {}  # by case: a newer save replaces a buffered one
        self._oldest_buffered_at: float | None = None  # monotonic time of the oldest buffered row
        self._retry_at = 0.0  # after a failed write, the monotonic time of the next attempt
        self._last_prune_at = -math.inf
        self._last_warning_at = -math.inf
        self._failures_since_warning = 0
        self._failing_since: float | None = None  # monotonic time of the first failed write of an outage
        self._dropped_before_failure = (0, 0)
        self._buffer_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None
        self._flush_interval_s = max(max_delay_s if flush_interval_s is None else flush_interval_s, 0.05)

    def _start_flusher(self) -> None:
        """Backends call this once the store is open (and migrated), never for a read-only one."""
        if not self.read_only:
            self._flusher = threading.Thread(target=self._flush_periodically, name="state-store-flush", daemon=True)
            self._flusher.start()

    # --- writing -----------------------------------------------------------------------------

    def record(
        self,
        request_id: str,
        timestamp: Timestamp,
        policy_id: str,
        policy_version: str,
        action: Action | str,
        image_embedding: np.ndarray,
        model_id: str,
        caller: str = ANONYMOUS,
        details: Mapping[str, object] | None = None,
    ) -> None:
        """Buffer one decision; write a batch when one is due. Never raises for storage trouble.

        `details`: what decided it, for `case show` (records.decision_details: scores, thresholds,
        shadow results, rationale; never image bytes), kept as bounded JSON.
        """
        row = (
            _text(request_id), unix_seconds(timestamp), _text(policy_id), _text(policy_version), Action(action).value, _text(model_id),
            embedding_bytes(image_embedding), _text(caller), _text(details_json(details)) if details else "",
        )  # fmt: skip
        self._buffer(lambda: self._decisions.append(row))

    def save_thumbnail(self, request_id: str, jpeg: bytes, saved_at: Timestamp | None = None, caller: str = ANONYMOUS) -> None:
        """Buffer one thumbnail (replacing an older one of the same caller and request id when written)."""
        if not isinstance(jpeg, bytes | bytearray) or not jpeg:
            raise ValueError("a thumbnail is non-empty JPEG bytes")
        case = (_text(caller), _text(request_id))
        row = (*case, time.time() if saved_at is None else unix_seconds(saved_at), bytes(jpeg))

        def add() -> None:
            self._thumbnails.pop(case, None)
            self._thumbnails[case] = row

        self._buffer(add)

    def open_case(self, case: NewCase) -> None:
        """Buffer one review case (moderation/state/review.py); written with the next batch. Never raises for storage trouble."""
        self._buffer(lambda: self._cases.append(case))

    def _buffer(self, add: Callable[[], None]) -> None:
        if self.read_only:
            raise StoreError(f"{self.where} was opened read-only")
        now = time.monotonic()
        with self._buffer_lock:
            add()
            if self._oldest_buffered_at is None:
                self._oldest_buffered_at = now
            self._drop_overflow()
            pending = len(self._decisions) + len(self._thumbnails) + len(self._cases)
            due = now >= self._retry_at and (pending >= self.batch_size or now - self._oldest_buffered_at >= self.max_delay_s)
        if due:
            try:
                self.flush(wait=False)
            except StoreError as error:
                self._warn(error)

    def flush(self, wait: bool = True) -> int:
        """Write every buffered row in one transaction; return how many.

        Raises StoreError when the database refuses; the rows then stay buffered. With
        `wait=False`, returns 0 at once if another thread is writing.
        """
        if not self._write_lock.acquire(blocking=wait):
            return 0
        try:
            with self._buffer_lock:
                decisions, self._decisions = self._decisions, []
                thumbnails, self._thumbnails = self._thumbnails, {}
                cases, self._cases = self._cases, []
                self._oldest_buffered_at = None
            if decisions or thumbnails or cases:
                try:
                    queue_full = self._write(decisions, list(thumbnails.values()), cases)
                except RejectedRows:
                    # Retrying rows the database refuses for what they are would block every later row:
                    # they are dropped and counted like an overflow.
                    self.dropped += len(decisions)
                    self.dropped_thumbnails += len(thumbnails)
                    self.dropped_cases += len(cases)
                    self._count_dropped("decision", len(decisions))
                    self._count_dropped("thumbnail", len(thumbnails))
                    self._count_dropped("case", len(cases))
                    raise
                except StoreError:
                    with self._buffer_lock:
                        self._decisions[:0] = decisions  # oldest first, as they came
                        self._cases[:0] = cases
                        newer, self._thumbnails = self._thumbnails, thumbnails
                        for case, row in newer.items():
                            self._thumbnails.pop(case, None)
                            self._thumbnails[case] = row
                        self._oldest_buffered_at = time.monotonic()
                        self._retry_at = time.monotonic() + self.max_delay_s
                        if self._failing_since is None:
                            self._failing_since = time.monotonic()
                            self._dropped_before_failure = (self.dropped, self.dropped_thumbnails)
                        self._drop_overflow()
                    raise
                if self._failing_since is not None:
                    self._log_recovery()
                self._retry_at = 0.0
                if queue_full:
                    self._queue_full(queue_full)
                if thumbnails and self.thumbnail_max_bytes is not None:
                    self._evict_over_cap(self.thumbnail_max_bytes, sum(len(row[3]) for row in thumbnails.values()))
            if time.monotonic() - self._last_prune_at >= self.prune_every_s and (self.retention or self.thumbnail_retention):
                self._prune_locked()
            return len(decisions) + len(thumbnails) + len(cases)
        finally:
            self._write_lock.release()

    def prune(self, older_than: timedelta | datetime | None = None) -> int:
        """Delete decisions older than `older_than` (an age, or a time); default the retention. Returns how many."""
        older_than = older_than if older_than is not None else self.retention
        if older_than is None:
            raise ValueError("prune needs an age or a time, or a store with a retention period")
        with self._write_lock:
            return self._delete_decisions_before(_cutoff(older_than))

    def prune_thumbnails(self, older_than: timedelta | datetime | None = None) -> int:
        """Delete thumbnails saved before `older_than` (an age, or a time); default the thumbnail retention."""
        older_than = older_than if older_than is not None else self.thumbnail_retention
        if older_than is None:
            raise ValueError("prune_thumbnails needs an age or a time, or a store with a thumbnail retention")
        with self._write_lock:
            deleted = self._delete_thumbnails_before(_cutoff(older_than))
            if deleted:
                self._thumbnails_counted_at = -math.inf  # the running total is measured again at the next write
            return deleted

    def _evict_over_cap(self, cap: int, written: int) -> None:
        """Delete the oldest thumbnails until they hold at most 90% of `cap` bytes (under the write lock).

        Bounded work: the total is measured in the database (a scan of the table, ~0.1 s
        for 1 GiB of SQLite rows) only when this process's running total (the last
        measurement plus the `written` bytes since) passes the cap, or the measurement is
        `thumbnail_recount_s` old, so replicas sharing one store keep one cap between
        them, overshooting it by at most what the others wrote in that time. The 10%
        headroom makes eviction a batch now and then rather than a delete per write.
        """
        now = time.monotonic()
        if self.thumbnail_bytes is not None:
            self.thumbnail_bytes += written
            if self.thumbnail_bytes <= cap and now - self._thumbnails_counted_at < self.thumbnail_recount_s:
                return
        evicted = 0
        try:
            ((total,),) = self._fetchall("SELECT COALESCE(SUM(LENGTH(jpeg)), 0) FROM thumbnails", ())
            self.thumbnail_bytes, self._thumbnails_counted_at = int(total), now
            excess = self.thumbnail_bytes - int(cap * 0.9)
            if self.thumbnail_bytes <= cap or excess <= 0:
                return
            while excess > 0:
                oldest = self._fetchall("SELECT caller, request_id, LENGTH(jpeg) FROM thumbnails ORDER BY saved_at LIMIT 256", ())
                if not oldest:
                    break
                chosen = []
                for caller, request_id, size in oldest:
                    chosen.append((caller, request_id))
                    excess -= int(size)
                    self.thumbnail_bytes -= int(size)  # gone, by this delete or a replica's
                    if excess <= 0:
                        break
                evicted += self._delete_thumbnails(chosen)
        except StoreError as error:
            self._thumbnails_counted_at = -math.inf  # measured again at the next write of thumbnails
            self._warn(error)
        finally:
            if evicted:
                self.evicted_thumbnails += evicted
                if self._on_evicted is not None:
                    self._on_evicted(evicted)
                log.info("evicted the %d oldest thumbnails to keep %s under thumbnail_max_bytes (%d)", evicted, self.where, cap)

    def close(self) -> None:
        """Stop the flush thread, write what is buffered (one last try) and close the connection."""
        self._closed.set()
        if self._flusher is not None:
            self._flusher.join()
        try:
            if not self.read_only:
                try:
                    self.flush()
                except StoreError as error:
                    lost = len(self._decisions)
                    log.warning(
                        "%s; %d buffered decisions, %d thumbnails and %d review cases are lost at close",
                        error, lost, len(self._thumbnails), len(self._cases),
                    )  # fmt: skip
                    self._count_dropped("decision", lost)
                    self._count_dropped("thumbnail", len(self._thumbnails))
                    self._count_dropped("case", len(self._cases))
        finally:
            self._disconnect()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def buffered(self) -> int:
        with self._buffer_lock:
            return len(self._decisions) + len(self._thumbnails) + len(self._cases)

    def _flush_periodically(self) -> None:
        while not self._closed.wait(self._flush_interval_s):
            with self._buffer_lock:
                due = bool(self._decisions or self._thumbnails or self._cases) and time.monotonic() >= self._retry_at
            if not due:
                continue
            try:
                self.flush(wait=False)
            except StoreError as error:
                self._warn(error)

    def _prune_locked(self) -> None:
        self._last_prune_at = time.monotonic()
        try:
            if self.retention is not None:
                self._delete_decisions_before(_cutoff(self.retention))
            if self.thumbnail_retention is not None:
                deleted = self._delete_thumbnails_before(_cutoff(self.thumbnail_retention))
                if deleted:
                    self._thumbnails_counted_at = -math.inf  # the running total is measured again at the next write
                    log.info("deleted %d thumbnails older than %s", deleted, self.thumbnail_retention)
        except StoreError as error:
            self._warn(error)  # retention is best effort: the next prune catches up

    def _drop_overflow(self) -> None:
        # Called with the buffer lock held: the oldest go first, the newest are the ones still useful.
        overflow = len(self._decisions) - self.max_buffered
        if overflow > 0:
            del self._decisions[:overflow]
            self.dropped += overflow
            self._count_dropped("decision", overflow)
        while len(self._thumbnails) > self.max_buffered_thumbnails:
            del self._thumbnails[next(iter(self._thumbnails))]
            self.dropped_thumbnails += 1
            self._count_dropped("thumbnail", 1)
        overflow = len(self._cases) - self.max_buffered_cases
        if overflow > 0:
            del self._cases[:overflow]
            self.dropped_cases += overflow
            self._count_dropped("case", overflow)

    def _queue_full(self, count: int) -> None:
        """New cases the full review queue did not take: counted always, logged at most every `warn_every_s`."""
        self.dropped_cases_queue_full += count
        self._count_dropped("case_queue_full", count)
        now = time.monotonic()
        if now - self._last_queue_full_warning_at >= self.warn_every_s:
            self._last_queue_full_warning_at = now
            log.warning(
                "the review queue of %s is full (review_max_open_cases %d open cases): %d new cases were dropped "
                "(%d so far); their decisions were answered as usual",
                self.where, self.max_open_cases, count, self.dropped_cases_queue_full,
            )  # fmt: skip

    def _count_dropped(self, kind: str, count: int) -> None:
        if count and self._on_dropped is not None:
            self._on_dropped(kind, count)

    def _log_recovery(self) -> None:
        """The end of an outage, with what it cost: the one line that says how much was lost."""
        lost = (self.dropped - self._dropped_before_failure[0], self.dropped_thumbnails - self._dropped_before_failure[1])
        took = time.monotonic() - self._failing_since  # type: ignore[operator]
        level = logging.WARNING if any(lost) else logging.INFO
        log.log(level, "state store %s is writable again after %.1f s; %d decisions and %d thumbnails were dropped meanwhile", self.where, took, *lost)
        self._failing_since = None

    def _warn(self, error: StoreError) -> None:
        """One warning per `warn_every_s` at most: a database away for an hour is a few lines, not thousands."""
        self._failures_since_warning += 1
        now = time.monotonic()
        if now - self._last_warning_at < self.warn_every_s:
            return
        self._last_warning_at = now
        with self._buffer_lock:
            buffered_decisions, buffered_thumbnails = len(self._decisions), len(self._thumbnails)
        log.warning(
            "%s; %d decisions and %d thumbnails stay buffered (at most %d and %d), %d decisions and %d thumbnails dropped "
            "so far; %d failed writes since the last warning; next attempt in %.1f s",
            error, buffered_decisions, buffered_thumbnails, self.max_buffered, self.max_buffered_thumbnails,
            self.dropped, self.dropped_thumbnails, self._failures_since_warning, self.max_delay_s,
        )  # fmt: skip
        self._failures_since_warning = 0

    # --- reading -----------------------------------------------------------------------------

    def read_decisions(
        self, since: Timestamp, until: Timestamp | None = None, policy_id: str | None = None, batch_size: int = 4096
    ) -> Iterator[StoredDecisions]:
        """Stored decisions with since <= time < until, oldest first, in batches.

        Pages by (time, row key): every page is its own short query, so no read
        transaction stays open between batches, memory holds one page, and the
        servers keep writing meanwhile.
        """
        where, params = _window(since, until, policy_id)
        after: tuple[float, int] = (-math.inf, -1)
        key = self._row_key
        while True:
            rows = self._fetchall(
                f"SELECT ts, {key}, request_id, policy_id, policy_version, action, model_id, embedding FROM decisions "
                f"WHERE {where} AND (ts, {key}) > (?, ?) ORDER BY ts, {key} LIMIT ?",
                (*params, *after, batch_size),
            )
            if not rows:
                return
            after = (rows[-1][0], rows[-1][1])
            yield decisions_batch(rows, self.where)

    def stored_model_ids(self, since: Timestamp, until: Timestamp | None = None, policy_id: str | None = None) -> dict[str, int]:
        """How many stored decisions in the window each model id embedded."""
        where, params = _window(since, until, policy_id)
        rows = self._fetchall(f"SELECT model_id, COUNT(*) FROM decisions WHERE {where} GROUP BY model_id ORDER BY 2 DESC", params)
        return {str(model): int(count) for model, count in rows}

    def freshness(self, since: Timestamp, until: Timestamp | None = None, policy_id: str | None = None) -> StoreFreshness:
        where, params = _window(since, until, policy_id)
        ((count, oldest, newest_in_window),) = self._fetchall(f"SELECT COUNT(*), MIN(ts), MAX(ts) FROM decisions WHERE {where}", params)
        ((newest,),) = self._fetchall("SELECT MAX(ts) FROM decisions", ())
        return StoreFreshness(int(count), oldest, newest_in_window, newest)

    def find_decisions(self, request_id: str, caller: str | None = None) -> StoredDecisions | None:
        """Every stored decision with this request id (of `caller` when given), oldest first, with who asked."""
        key = self._row_key
        # A reader never migrates: a store from before callers were kept reads them as '' (unknown).
        callers = "caller" if self.schema_version >= 3 else "''"
        details = "details" if self.schema_version >= DECISION_DETAILS else "''"  # likewise what decided it, before it was kept
        where, params = ("request_id = ?", (request_id,)) if caller is None else (f"request_id = ? AND {callers} = ?", (request_id, caller))
        rows = self._fetchall(
            f"SELECT ts, {key}, request_id, policy_id, policy_version, action, model_id, embedding, {callers}, {details} FROM decisions "
            f"WHERE {where} ORDER BY ts, {key} LIMIT 100",
            params,
        )
        return decisions_batch(rows, self.where) if rows else None

    def load_thumbnail(self, request_id: str, caller: str = ANONYMOUS) -> bytes | None:
        """The stored JPEG of `caller`'s `request_id`, or None (never kept, not yet flushed, or past its retention)."""
        if self.schema_version < 3:
            rows = self._fetchall("SELECT jpeg FROM thumbnails WHERE request_id = ? AND '' = ?", (request_id, caller))
        else:
            rows = self._fetchall("SELECT jpeg FROM thumbnails WHERE caller = ? AND request_id = ?", (caller, request_id))
        return bytes(rows[0][0]) if rows else None

    def thumbnail_callers(self, request_id: str) -> list[str]:
        """Which callers have a thumbnail kept under this request id (usually one)."""
        callers = "caller" if self.schema_version >= 3 else "''"
        return [str(c) for (c,) in self._fetchall(f"SELECT {callers} FROM thumbnails WHERE request_id = ? ORDER BY 1 LIMIT 100", (request_id,))]

    def count_decisions(self) -> int:
        ((count,),) = self._fetchall("SELECT COUNT(*) FROM decisions", ())
        return int(count)

    # --- what a backend provides -------------------------------------------------------------

    @property
    @abstractmethod
    def schema_version(self) -> int:
        """The schema version the database is at (after the migrations applied at open)."""

    @abstractmethod
    def _write(self, decisions: list[DecisionRow], thumbnails: list[ThumbnailRow], cases: Sequence[NewCase] = ()) -> int:
        """Write the three lists in one transaction (cases through `review.write_cases`, up to `max_open_cases`
        open); return how many cases the full queue did not take. StoreError (and a usable store afterwards)
        when it cannot."""

    @abstractmethod
    def _fetchall(self, sql: str, params: tuple[object, ...]) -> list[tuple]:
        """Run one read (`?` placeholders); StoreError when it cannot."""

    @abstractmethod
    def _delete_decisions_before(self, cutoff: float) -> int: ...

    @abstractmethod
    def _delete_thumbnails_before(self, cutoff: float) -> int: ...

    @abstractmethod
    def _delete_thumbnails(self, cases: list[CaseKey]) -> int:
        """Delete these (caller, request_id) thumbnails in one transaction; how many were."""

    @abstractmethod
    def _disconnect(self) -> None: ...


def open_store(location: str | Path, *, read_only: bool = False, **options: object) -> StateStore:
    """The store at `location`: `postgresql://...` (or `postgres://`), `sqlite:///abs/path`, or a file path (SQLite).

    Writable stores are created if missing and migrated to the current schema; read-only
    ones must exist and are never changed (a reader of an older schema reads what it has).
    """
    text = str(location)
    scheme = urlsplit(text).scheme.lower() if "://" in text else ""
    if scheme in POSTGRES_SCHEMES:
        from moderation.state.postgres import PostgresStore

        return PostgresStore(text, read_only=read_only, **options)  # type: ignore[arg-type]
    if scheme == "sqlite":
        path = sqlite_path(text)
    elif scheme:
        raise StoreError(f"unknown store URL scheme {scheme!r} in {redact_url(text)}: use postgresql://... or sqlite:///path")
    else:
        path = Path(text)
    from moderation.state.sqlite import SQLiteStore

    return SQLiteStore(path, read_only=read_only, **options)  # type: ignore[arg-type]


def sqlite_path(url: str) -> Path:
    """`sqlite:///var/lib/x.db` -> /var/lib/x.db; `sqlite://relative.db` -> relative.db."""
    rest = url.split("://", 1)[1]
    if not rest or rest == "/":
        raise StoreError(f"{url!r} names no file: use sqlite:///absolute/path")
    return Path(rest)


def is_database_url(location: str | Path | None) -> bool:
    return location is not None and "://" in str(location)


def redact_url(url: str) -> str:
    """The URL with its password replaced: safe for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _text(value: str) -> str:
    """A caller's id as the store keeps it: PostgreSQL text cannot hold NUL, so neither backend stores one."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _cutoff(older_than: timedelta | datetime) -> float:
    return unix_seconds(datetime.now(timezone.utc) - older_than if isinstance(older_than, timedelta) else older_than)


def _window(since: Timestamp, until: Timestamp | None, policy_id: str | None) -> tuple[str, tuple[object, ...]]:
    clauses, params = ["ts >= ?"], [unix_seconds(since)]
    if until is not None:
        clauses.append("ts < ?")
        params.append(unix_seconds(until))
    if policy_id is not None:
        clauses.append("policy_id = ?")
        params.append(policy_id)
    return " AND ".join(clauses), tuple(params)
