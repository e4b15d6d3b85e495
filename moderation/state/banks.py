"""Known-content banks in the state store: the lists, their entries, who changed them, and a version.

A bank is a named list of known violating content, matched in the request path by the
bank signal (moderation/signals/banks/). This module keeps the banks' *state* in the
store that outlives a pod (schema 4, moderation/state/migrations.py):

- `banks`: one row per bank: enabled, PDQ distance and quality floors, the embedding
  cosine (none until measured on the encoder), the matching ratio, who made it, a note.
- `bank_entries`: one row per (bank, signal type, value), unique: PDQ, MD5 and SHA-256
  as lowercase hex; an embedding as float32 little-endian bytes, its `value` the SHA-256
  of those bytes (what makes it unique and what removes it by value).
- `bank_removals`: a tombstone per removed entry, so a replica can drop it from its index.
- `bank_audit`: who did what to which bank, when, with counts; never image bytes.
- `bank_version`: one row, the version of the last change.

**Versions, and why they commit in order.** Every write (create, settings, enable, add,
remove, import) first increments `bank_version` in its own transaction and stamps what it
changes with that number (an entry's `version`, a bank's `version`, a tombstone's, an
audit row's). Incrementing one row locks it until commit, so writers take turns and a
version N is only ever visible after every version below it: a replica that has applied
"everything up to N" can never miss a slower transaction that took N-1. (A PostgreSQL
sequence would not give this: numbers are taken in one order and committed in another.)
Bank writes are rare, so the turn-taking costs nothing that matters; an import holds
the turn for its duration (seconds for a million lines, see docs/architecture.md).

**The refresh contract** (what each replica does, every few seconds):

1. At start: `v = current_version()`, then `load_bank_entries(name)` for each of
   `list_banks()` and build the indexes. Anything that changes while it loads has a
   version above `v` and comes back in step 2.
2. Poll: `current_version()` (one row) and compare with `v`. Unchanged: done.
3. Changed: `changes_since(v)` returns the banks whose settings changed, the entries
   added and the entries removed with a version in (v, now], and the new version. Apply
   removals then additions (re-applying one is harmless: an entry is keyed by bank,
   signal type and value). It says `reload_all` instead when more than `limit` entries
   changed (an import: reloading is cheaper than a million small changes), or when the
   tombstones it would need were pruned (`prune_removals`), or when the store's version
   went backwards (a different or restored database): then do step 1 again.

Incremental, not reload-everything on every change: a million-entry bank takes seconds to
read and index, and a curator adding one hash should not cost every replica that.

**Imports are all or nothing.** `import_entries` reads CSV lines
`content_id,signal_type,value[,quality[,note]]` (a header line and `#` comments are
skipped; an embedding's value is its numbers separated by spaces). Every line is checked
as it streams into one transaction (PostgreSQL: COPY into a temporary table, then one
INSERT ... SELECT; SQLite: one executemany); if any line is bad, nothing is applied and
`ImportRejected` names the bad lines by number. A line whose (signal type, value) is
already in the bank or earlier in the file is *skipped and counted* (not refused):
re-importing a list, or a list that overlaps another, is the common case and adds
exactly what is new; the first line of a value wins (its content id and note).

Every write runs on the store's own connection (`_transaction` of the backend), under
its write lock, and writes its audit row in the same transaction.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moderation.state.records import StoreError
from moderation.state.store import StateStore

SIGNAL_TYPES: tuple[str, ...] = ("pdq", "md5", "sha256", "embedding")
HEX_LENGTHS = {"pdq": 64, "md5": 32, "sha256": 64}
HASH_NAMES = {"pdq": "a PDQ hash", "md5": "an MD5", "sha256": "a SHA-256"}
DEFAULT_PDQ_MAX_DISTANCE = 31
DEFAULT_PDQ_MIN_QUALITY = 50
MAX_NAME = 128
MAX_TEXT = 1000  # content ids and notes: a label, not a document
MAX_REPORTED_ERRORS = 100
IMPORT_TIMEOUT_S = 1800.0  # a million lines take seconds; this bounds a stuck one

_HEX = re.compile(r"[0-9a-fA-F]*")
_ENTRY_COLUMNS = "bank, content_id, signal_type, value, embedding, quality, note, added_by, added_at, version"
_INSERT_ENTRY = (
    f"INSERT INTO bank_entries ({_ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (bank, signal_type, value) DO NOTHING"
)
_BANK_COLUMNS = (
    "name, enabled, pdq_max_distance, pdq_min_quality, embedding_min_cosine, embedding_dim, matching_ratio, "
    "created_by, created_at, note, version"
)


@dataclass(frozen=True, slots=True)
class Bank:
    name: str
    enabled: bool
    pdq_max_distance: int
    pdq_min_quality: int
    embedding_min_cosine: float | None  # None until set: embeddings are refused until then
    matching_ratio: float
    embedding_dim: int | None  # fixed by the first embedding added
    created_by: str
    created_at: float  # unix seconds
    note: str
    version: int  # the version of its creation or last settings change


@dataclass(frozen=True, slots=True)
class NewEntry:
    """An entry to add: `value` is hex text for hashes, float32 bytes or a vector for an embedding."""

    content_id: str
    signal_type: str
    value: str | bytes | np.ndarray
    note: str = ""
    quality: int | None = None


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An entry as stored: `value` is lowercase hex for hashes and float32 little-endian bytes for an embedding
    (the forms moderation.signals.banks.BankEntry takes)."""

    bank: str
    content_id: str
    signal_type: str
    value: str | bytes
    quality: int | None
    note: str
    added_by: str
    added_at: float
    version: int


@dataclass(frozen=True, slots=True)
class RemovedEntry:
    version: int
    bank: str
    content_id: str
    signal_type: str
    value: str | bytes  # as in StoredEntry


@dataclass(frozen=True, slots=True)
class BankChanges:
    """What changed in (since, version]. With `reload_all`, the lists are empty: load everything again."""

    since: int
    version: int
    reload_all: bool
    banks: tuple[Bank, ...]  # created, or settings/enabled changed
    added: tuple[StoredEntry, ...]
    removed: tuple[RemovedEntry, ...]

    @property
    def changed(self) -> bool:
        return self.version != self.since


@dataclass(frozen=True, slots=True)
class AddResult:
    added: int
    skipped: int  # already in the bank, or the same value twice in this call
    version: int


@dataclass(frozen=True, slots=True)
class ImportResult:
    bank: str
    lines: int  # entry lines read (not counting blank, comment and header lines)
    added: int
    skipped: int  # duplicates: already in the bank, or earlier in the file
    version: int


@dataclass(frozen=True, slots=True)
class AuditRow:
    at: float
    who: str
    action: str  # create, enable, disable, settings, add, remove, import
    bank: str
    content_id: str | None
    count: int
    detail: str
    version: int


class BankNotFound(ValueError):
    """No bank has this name (BankService answers NOT_FOUND)."""


class BankExists(ValueError):
    """A bank of this name exists already (BankService answers ALREADY_EXISTS)."""


class ImportRejected(ValueError):
    """Some lines were bad; nothing was imported. `errors`: (line number, sentence), the first MAX_REPORTED_ERRORS."""

    def __init__(self, source: str, bad_lines: int, errors: list[tuple[int, str]]):
        self.source, self.bad_lines, self.errors = source, bad_lines, errors
        shown = "; ".join(f"line {n}: {message}" for n, message in errors[:10])
        more = f" (and {bad_lines - 10} more)" if bad_lines > 10 else ""
        super().__init__(f"{source}: {bad_lines} bad line{'s' if bad_lines != 1 else ''}, nothing was imported: {shown}{more}")


class BankStore:
    """The banks of one StateStore: `BankStore(open_store(url))`."""

    def __init__(self, store: StateStore, *, import_timeout_s: float = IMPORT_TIMEOUT_S):
        if store.schema_version < 4:
            raise StoreError(f"{store.where} is at store schema {store.schema_version}, before banks (4): open it writable once to migrate it")
        self.store = store
        self.import_timeout_s = import_timeout_s

    # --- banks -------------------------------------------------------------------------------

    def create_bank(
        self,
        name: str,
        *,
        by: str,
        note: str = "",
        enabled: bool = True,
        pdq_max_distance: int = DEFAULT_PDQ_MAX_DISTANCE,
        pdq_min_quality: int = DEFAULT_PDQ_MIN_QUALITY,
        embedding_min_cosine: float | None = None,
        matching_ratio: float = 1.0,
    ) -> Bank:
        """A new bank; ValueError when the name is taken or a setting is out of range."""
        _check_name(name)
        _check_who(by)
        _check_settings(name, pdq_max_distance, pdq_min_quality, embedding_min_cosine, matching_ratio)
        with self.store._transaction() as tx:
            version = _next_version(tx)
            if tx.execute("SELECT 1 FROM banks WHERE name = ?", (name,)).fetchone():
                raise BankExists(f"bank {name!r} already exists")
            tx.execute(
                f"INSERT INTO banks ({_BANK_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)",
                (name, bool(enabled), int(pdq_max_distance), int(pdq_min_quality), _float_or_none(embedding_min_cosine),
                 float(matching_ratio), by, time.time(), _text(note, "note"), version),
            )  # fmt: skip
            settings = _settings_text(pdq_max_distance, pdq_min_quality, embedding_min_cosine, matching_ratio, enabled)
            _audit(tx, by, "create", name, version, detail=settings)
            return _bank(tx.execute(f"SELECT {_BANK_COLUMNS} FROM banks WHERE name = ?", (name,)).fetchone())

    def list_banks(self) -> list[Bank]:
        return [_bank(row) for row in self.store._fetchall(f"SELECT {_BANK_COLUMNS} FROM banks ORDER BY name", ())]

    def get_bank(self, name: str) -> Bank | None:
        rows = self.store._fetchall(f"SELECT {_BANK_COLUMNS} FROM banks WHERE name = ?", (name,))
        return _bank(rows[0]) if rows else None

    def count_entries(self, name: str) -> dict[str, int]:
        """How many entries the bank holds, by signal type."""
        rows = self.store._fetchall("SELECT signal_type, COUNT(*) FROM bank_entries WHERE bank = ? GROUP BY signal_type", (name,))
        return {str(kind): int(count) for kind, count in rows}

    def set_enabled(self, name: str, enabled: bool, *, by: str, reason: str = "") -> Bank:
        """Turn a bank's matching off (or on again) without deleting its entries."""
        _check_who(by)
        with self.store._transaction() as tx:
            version = _next_version(tx)
            _existing(tx, name)
            tx.execute("UPDATE banks SET enabled = ?, version = ? WHERE name = ?", (bool(enabled), version, name))
            _audit(tx, by, "enable" if enabled else "disable", name, version, detail=_text(reason, "reason"))
            return _bank(tx.execute(f"SELECT {_BANK_COLUMNS} FROM banks WHERE name = ?", (name,)).fetchone())

    def update_settings(
        self,
        name: str,
        *,
        by: str,
        pdq_max_distance: int | None = None,
        pdq_min_quality: int | None = None,
        embedding_min_cosine: float | None = None,
        matching_ratio: float | None = None,
        note: str | None = None,
        reason: str = "",
    ) -> Bank:
        """Change the given settings (None: unchanged); the audit row says from what to what, and why (`reason`)."""
        _check_who(by)
        with self.store._transaction() as tx:
            version = _next_version(tx)
            old = _existing(tx, name)
            new = (
                old.pdq_max_distance if pdq_max_distance is None else int(pdq_max_distance),
                old.pdq_min_quality if pdq_min_quality is None else int(pdq_min_quality),
                old.embedding_min_cosine if embedding_min_cosine is None else float(embedding_min_cosine),
                old.matching_ratio if matching_ratio is None else float(matching_ratio),
            )
            _check_settings(name, *new)
            tx.execute(
                "UPDATE banks SET pdq_max_distance = ?, pdq_min_quality = ?, embedding_min_cosine = ?, matching_ratio = ?, "
                "note = ?, version = ? WHERE name = ?",
                (*new, old.note if note is None else _text(note, "note"), version, name),
            )
            before = _settings_text(old.pdq_max_distance, old.pdq_min_quality, old.embedding_min_cosine, old.matching_ratio, old.enabled)
            after = _settings_text(*new, old.enabled)
            detail = f"{before} -> {after}" + (" (note changed)" if note is not None else "") + (f"; {_text(reason, 'reason')}" if reason else "")
            _audit(tx, by, "settings", name, version, detail=detail)
            return _bank(tx.execute(f"SELECT {_BANK_COLUMNS} FROM banks WHERE name = ?", (name,)).fetchone())

    # --- entries -----------------------------------------------------------------------------

    def add_entries(self, bank: str, entries: NewEntry | Iterable[NewEntry], *, by: str) -> AddResult:
        """Add one or many entries in one transaction; duplicates (in the bank or in `entries`) are skipped and counted.

        ValueError, and nothing added, when an entry is invalid (its position is named).
        """
        _check_who(by)
        entries = [entries] if isinstance(entries, NewEntry) else list(entries)
        with self.store._transaction() as tx:
            version = _next_version(tx)
            target = _existing(tx, bank)
            checker = _EntryChecker(target)
            now = time.time()
            rows = []
            for position, entry in enumerate(entries, 1):
                try:
                    rows.append(checker.row(entry.content_id, entry.signal_type, entry.value, entry.quality, entry.note, by, now, version))
                except ValueError as error:
                    raise ValueError(f"entry {position} of {len(entries)}: {error}") from None
            added = tx.executemany(_INSERT_ENTRY, rows) if rows else 0
            checker.record_dimension(tx)
            detail = f"{added} added, {len(rows) - added} skipped as duplicates"
            content = entries[0].content_id if len(entries) == 1 else None
            _audit(tx, by, "add", bank, version, content_id=content, count=added, detail=detail)
            return AddResult(added, len(rows) - added, version)

    def remove_entries(
        self,
        bank: str,
        *,
        by: str,
        content_ids: Iterable[str] = (),
        values: Iterable[tuple[str, str | bytes | np.ndarray]] = (),
        reason: str = "",
        signal_type: str | None = None,
    ) -> int:
        """Remove every entry of these content ids and these (signal_type, value) pairs; how many were removed.

        `signal_type` limits the removal by content id to that signal's entries (a content
        id's PDQ hashes, say, keeping its MD5). Each removed entry leaves a tombstone
        (`bank_removals`) so replicas drop it too.
        """
        _check_who(by)
        content_ids = [_text(c, "content_id") for c in content_ids]
        keys = [(kind, _value_key(kind, value)) for kind, value in values]
        if signal_type is not None and signal_type not in SIGNAL_TYPES:
            raise ValueError(f"signal_type is one of {', '.join(SIGNAL_TYPES)}; got {str(signal_type)[:40]!r}")
        by_content = ("content_id = ?", [(c,) for c in content_ids])
        if signal_type is not None:
            by_content = ("content_id = ? AND signal_type = ?", [(c, signal_type) for c in content_ids])
        with self.store._transaction() as tx:
            version = _next_version(tx)
            _existing(tx, bank)
            removed = 0
            for where, params in [by_content, ("signal_type = ? AND value = ?", keys)]:
                if not params:
                    continue
                tx.executemany(
                    "INSERT INTO bank_removals (version, bank, content_id, signal_type, value, embedding) "
                    f"SELECT {version}, bank, content_id, signal_type, value, embedding FROM bank_entries WHERE bank = ? AND {where}",
                    [(bank, *p) for p in params],
                )
                removed += tx.executemany(f"DELETE FROM bank_entries WHERE bank = ? AND {where}", [(bank, *p) for p in params])
            content = content_ids[0] if len(content_ids) == 1 and not keys else None
            detail = f"{removed} removed" + (f" ({signal_type} only)" if signal_type and content_ids else "") + (f"; {_text(reason, 'reason')}" if reason else "")
            _audit(tx, by, "remove", bank, version, content_id=content, count=removed, detail=detail)
            return removed

    def find_content(self, bank: str, content_id: str) -> list[StoredEntry]:
        """The entries of one content id in a bank."""
        rows = self.store._fetchall(f"SELECT {_ENTRY_COLUMNS} FROM bank_entries WHERE bank = ? AND content_id = ? ORDER BY id", (bank, content_id))
        return [_entry(row) for row in rows]

    def load_bank_entries(self, bank: str, *, page_size: int = 10_000) -> Iterator[StoredEntry]:
        """Every entry of a bank, in the order added, read in pages of `page_size` by row id.

        Each page is its own short query (no transaction stays open while an index is
        built); memory holds one page. Entries changed while it reads come back through
        `changes_since(v)` with the `v` read before starting (see the module docstring).
        """
        after = 0
        while True:
            rows = self.store._fetchall(
                f"SELECT id, {_ENTRY_COLUMNS} FROM bank_entries WHERE bank = ? AND id > ? ORDER BY id LIMIT ?", (bank, after, page_size)
            )
            if not rows:
                return
            after = rows[-1][0]
            for row in rows:
                yield _entry(row[1:])

    # --- changes -----------------------------------------------------------------------------

    def current_version(self) -> int:
        """The version of the last committed change: what a replica polls (one row)."""
        ((version,),) = self.store._fetchall("SELECT version FROM bank_version WHERE id = 1", ())
        return int(version)

    def changes_since(self, version: int, *, limit: int = 100_000) -> BankChanges:
        """What changed after `version`, up to the current one (see the refresh contract above)."""
        ((current, pruned),) = self.store._fetchall("SELECT version, removals_pruned_through FROM bank_version WHERE id = 1", ())
        current, pruned = int(current), int(pruned)
        if current == version:
            return BankChanges(version, current, False, (), (), ())
        if version > current or version < pruned:
            return BankChanges(version, current, True, (), (), ())
        window = (version, current)
        ((added_count,),) = self.store._fetchall("SELECT COUNT(*) FROM bank_entries WHERE version > ? AND version <= ?", window)
        ((removed_count,),) = self.store._fetchall("SELECT COUNT(*) FROM bank_removals WHERE version > ? AND version <= ?", window)
        if added_count + removed_count > limit:
            return BankChanges(version, current, True, (), (), ())
        banks = self.store._fetchall(f"SELECT {_BANK_COLUMNS} FROM banks WHERE version > ? AND version <= ? ORDER BY name", window)
        added = self.store._fetchall(f"SELECT {_ENTRY_COLUMNS} FROM bank_entries WHERE version > ? AND version <= ? ORDER BY id", window)
        removed = self.store._fetchall(
            "SELECT version, bank, content_id, signal_type, value, embedding FROM bank_removals WHERE version > ? AND version <= ? ORDER BY version",
            window,
        )
        return BankChanges(
            version,
            current,
            False,
            tuple(_bank(row) for row in banks),
            tuple(_entry(row) for row in added),
            tuple(RemovedEntry(int(v), b, c, t, bytes(e) if t == "embedding" else val) for v, b, c, t, val, e in removed),
        )

    def prune_removals(self, through_version: int) -> int:
        """Delete tombstones with a version up to `through_version`; replicas further behind then reload everything."""
        with self.store._transaction() as tx:
            tx.execute(
                "UPDATE bank_version SET removals_pruned_through = ? WHERE id = 1 AND removals_pruned_through < ?",
                (int(through_version), int(through_version)),
            )
            return tx.execute("DELETE FROM bank_removals WHERE version <= ?", (int(through_version),)).rowcount

    def audit(self, bank: str | None = None, *, limit: int = 100) -> list[AuditRow]:
        """The newest audit rows (of one bank when given), newest first."""
        where, params = ("WHERE bank = ?", (bank, limit)) if bank is not None else ("", (limit,))
        rows = self.store._fetchall(
            f"SELECT at, who, action, bank, content_id, count, detail, version FROM bank_audit {where} ORDER BY id DESC LIMIT ?", params
        )
        return [AuditRow(float(a), w, act, b, c, int(n), d, int(v)) for a, w, act, b, c, n, d, v in rows]

    # --- import ------------------------------------------------------------------------------

    def import_entries(self, bank: str, source: str | Path | Iterable[str], *, by: str, name: str | None = None) -> ImportResult:
        """Import CSV lines into `bank`, all or nothing (see the module docstring).

        `source` is a file path or an iterable of lines. ImportRejected (a ValueError)
        names the bad lines; StoreError when the database refuses.
        """
        _check_who(by)
        if isinstance(source, str | Path):
            label = name or str(source)
            with open(source, encoding="utf-8", newline="") as lines:
                return self._import(bank, lines, by, label)
        return self._import(bank, source, by, name or "import")

    def _import(self, bank: str, lines: Iterable[str], by: str, label: str) -> ImportResult:
        errors: list[tuple[int, str]] = []
        counts = {"lines": 0, "bad": 0}
        with self.store._transaction(timeout_s=self.import_timeout_s) as tx:
            version = _next_version(tx)
            target = _existing(tx, bank)
            checker = _EntryChecker(target)
            now = time.time()

            def rows() -> Iterator[tuple]:
                reader = csv.reader(lines)
                first = True
                for fields in reader:
                    if not fields or (len(fields) == 1 and not fields[0].strip()) or fields[0].lstrip().startswith("#"):
                        continue
                    if first:
                        first = False
                        if fields[0].strip().lower() == "content_id":
                            continue  # the header
                    counts["lines"] += 1
                    try:
                        if not 3 <= len(fields) <= 5:
                            raise ValueError(f"expected content_id,signal_type,value[,quality[,note]]; got {len(fields)} fields")
                        quality = fields[3].strip() if len(fields) > 3 else ""
                        row = checker.row(
                            fields[0], fields[1].strip(), fields[2], _quality_field(quality), fields[4] if len(fields) > 4 else "", by, now, version
                        )
                    except ValueError as error:
                        counts["bad"] += 1
                        if len(errors) < MAX_REPORTED_ERRORS:
                            errors.append((reader.line_num, str(error)))
                        continue
                    if not errors:  # after a bad line nothing will be applied: keep checking, stop writing
                        yield row

            if tx.dialect == "postgres":
                tx.execute(
                    "CREATE TEMPORARY TABLE bank_import (bank TEXT, content_id TEXT, signal_type TEXT, value TEXT, embedding BYTEA, "
                    "quality SMALLINT, note TEXT, added_by TEXT, added_at DOUBLE PRECISION, version BIGINT, line BIGSERIAL) ON COMMIT DROP"
                )
                tx.copy(f"COPY bank_import ({_ENTRY_COLUMNS}) FROM STDIN", rows())
                if errors:
                    raise ImportRejected(label, counts["bad"], errors)
                added = tx.execute(
                    f"INSERT INTO bank_entries ({_ENTRY_COLUMNS}) SELECT {_ENTRY_COLUMNS} FROM bank_import ORDER BY line "
                    "ON CONFLICT (bank, signal_type, value) DO NOTHING"
                ).rowcount
            else:
                added = tx.executemany(_INSERT_ENTRY, rows())
                if errors:
                    raise ImportRejected(label, counts["bad"], errors)
            checker.record_dimension(tx)
            skipped = counts["lines"] - added
            detail = f"{label}: {counts['lines']} lines, {added} added, {skipped} skipped as duplicates"
            _audit(tx, by, "import", bank, version, count=added, detail=detail)
            return ImportResult(bank, counts["lines"], added, skipped, version)


# --- checking values ---------------------------------------------------------------------------


class _EntryChecker:
    """Checks entries for one bank and turns them into rows; remembers the embedding length they set."""

    def __init__(self, bank: Bank):
        self.bank = bank
        self.dimension = bank.embedding_dim
        self.new_dimension = False

    def row(
        self, content_id: str, signal_type: str, value: object, quality: int | None, note: str, by: str, now: float, version: int
    ) -> tuple:
        content_id = _text(content_id, "content_id").strip()
        if not content_id:
            raise ValueError("content_id is empty")
        if signal_type not in SIGNAL_TYPES:
            raise ValueError(f"signal_type is one of {', '.join(SIGNAL_TYPES)}; got {str(signal_type)[:40]!r}")
        embedding = None
        if signal_type == "embedding":
            embedding = self._embedding(value)
            key = hashlib.sha256(embedding).hexdigest()
        else:
            key = _hex(signal_type, value)
        if quality is not None and not (isinstance(quality, int) and 0 <= quality <= 100):
            raise ValueError(f"quality is a whole number from 0 to 100; got {quality!r}")
        return (self.bank.name, content_id, signal_type, key, embedding, quality, _text(note, "note"), by, now, version)

    def _embedding(self, value: object) -> bytes:
        if self.bank.embedding_min_cosine is None:
            raise ValueError(f"bank {self.bank.name!r} has no embedding_min_cosine: set one (measured on the encoder) before adding embeddings")
        vector = _vector(value)
        if self.dimension is None:
            self.dimension, self.new_dimension = len(vector), True
        elif len(vector) != self.dimension:
            raise ValueError(f"the embedding has {len(vector)} numbers; bank {self.bank.name!r} holds embeddings of {self.dimension}")
        return vector.astype("<f4").tobytes()

    def record_dimension(self, tx: object) -> None:
        if self.new_dimension:
            tx.execute("UPDATE banks SET embedding_dim = ? WHERE name = ? AND embedding_dim IS NULL", (self.dimension, self.bank.name))  # type: ignore[attr-defined]


def _hex(signal_type: str, value: object) -> str:
    length, what = HEX_LENGTHS[signal_type], HASH_NAMES[signal_type]
    if not isinstance(value, str):
        raise ValueError(f"{what} is written as {length} hexadecimal characters; got {type(value).__name__}")
    text = value.strip()
    if not _HEX.fullmatch(text):
        bad = next(i for i, c in enumerate(text) if c not in "0123456789abcdefABCDEF")
        raise ValueError(f"{what} is written in hexadecimal (0-9, a-f); character {bad + 1} of {text[:80]!r} is {text[bad]!r}")
    if len(text) != length:
        raise ValueError(f"{what} is {length} hexadecimal characters; got {len(text)}")
    return text.lower()


def _vector(value: object) -> np.ndarray:
    if isinstance(value, bytes | bytearray):
        if not value or len(value) % 4:
            raise ValueError(f"an embedding given as bytes is float32 values (a multiple of 4 bytes); got {len(value)} bytes")
        vector = np.frombuffer(bytes(value), dtype="<f4")
    elif isinstance(value, str):
        try:
            vector = np.array(value.split(), dtype=np.float64)
        except ValueError:
            raise ValueError("an embedding is written as numbers separated by spaces") from None
    else:
        vector = np.asarray(value, dtype=np.float64).reshape(-1)
    if vector.size == 0:
        raise ValueError("the embedding is empty")
    if not np.all(np.isfinite(vector)):
        raise ValueError("the embedding has a value that is not a finite number")
    return vector.astype("<f4")


def _value_key(signal_type: str, value: object) -> str:
    """What `bank_entries.value` holds for this value: the hex, or the SHA-256 of an embedding's float32 bytes."""
    if signal_type not in SIGNAL_TYPES:
        raise ValueError(f"signal_type is one of {', '.join(SIGNAL_TYPES)}; got {str(signal_type)[:40]!r}")
    if signal_type == "embedding":
        return hashlib.sha256(_vector(value).tobytes()).hexdigest()
    return _hex(signal_type, value)


def _quality_field(text: str) -> int | None:
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"quality is a whole number from 0 to 100; got {text[:20]!r}")
    return int(text)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"a bank name is non-empty text without surrounding blanks; got {name!r}")
    if len(name) > MAX_NAME or not name.isprintable():
        raise ValueError(f"a bank name is at most {MAX_NAME} printable characters; got {name[:40]!r}")


def _check_who(by: str) -> None:
    if not isinstance(by, str) or not by.strip():
        raise ValueError("every bank change names who made it (by=...)")
    _text(by, "by")


def _check_settings(name: str, pdq_max_distance: int, pdq_min_quality: int, embedding_min_cosine: float | None, matching_ratio: float) -> None:
    if not 0 <= pdq_max_distance <= 255:
        raise ValueError(f"bank {name!r}: pdq_max_distance is 0 to 255 bits; got {pdq_max_distance}")
    if not 0 <= pdq_min_quality <= 100:
        raise ValueError(f"bank {name!r}: pdq_min_quality is 0 to 100; got {pdq_min_quality}")
    if embedding_min_cosine is not None and not (math.isfinite(embedding_min_cosine) and -1.0 <= embedding_min_cosine <= 1.0):
        raise ValueError(f"bank {name!r}: embedding_min_cosine is -1 to 1; got {embedding_min_cosine}")
    if not (math.isfinite(matching_ratio) and 0.0 <= matching_ratio <= 1.0):
        raise ValueError(f"bank {name!r}: matching_ratio is 0 to 1; got {matching_ratio}")


def _text(value: str, field: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{field} is text; got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{field} is at most {MAX_TEXT} characters; got {len(value)}")
    if "\x00" in value:
        raise ValueError(f"{field} contains a NUL character")
    return value


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def _settings_text(pdq_max_distance: int, pdq_min_quality: int, embedding_min_cosine: float | None, matching_ratio: float, enabled: bool) -> str:
    return (
        f"pdq_max_distance={pdq_max_distance} pdq_min_quality={pdq_min_quality} embedding_min_cosine={embedding_min_cosine} "
        f"matching_ratio={matching_ratio} enabled={bool(enabled)}"
    )


# --- rows ----------------------------------------------------------------------------------


def _next_version(tx: object) -> int:
    """Take the next version; the row stays locked until this transaction ends, so versions commit in order."""
    (version,) = tx.execute("UPDATE bank_version SET version = version + 1 WHERE id = 1 RETURNING version").fetchone()  # type: ignore[attr-defined]
    return int(version)


def _existing(tx: object, name: str) -> Bank:
    row = tx.execute(f"SELECT {_BANK_COLUMNS} FROM banks WHERE name = ?", (name,)).fetchone()  # type: ignore[attr-defined]
    if row is None:
        raise BankNotFound(f"no bank named {name!r}")
    return _bank(row)


def _audit(tx: object, who: str, action: str, bank: str, version: int, *, content_id: str | None = None, count: int = 0, detail: str = "") -> None:
    tx.execute(  # type: ignore[attr-defined]
        "INSERT INTO bank_audit (at, who, action, bank, content_id, count, detail, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (time.time(), who, action, bank, content_id, count, detail, version),
    )


def _bank(row: tuple) -> Bank:
    name, enabled, distance, quality, cosine, dim, ratio, created_by, created_at, note, version = row
    return Bank(
        name, bool(enabled), int(distance), int(quality), None if cosine is None else float(cosine), float(ratio),
        None if dim is None else int(dim), created_by, float(created_at), note, int(version),
    )  # fmt: skip


def _entry(row: tuple) -> StoredEntry:
    bank, content_id, signal_type, value, embedding, quality, note, added_by, added_at, version = row
    return StoredEntry(
        bank, content_id, signal_type, bytes(embedding) if embedding is not None else value,
        None if quality is None else int(quality), note, added_by, float(added_at), int(version),
    )  # fmt: skip

