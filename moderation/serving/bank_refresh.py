"""Keeps this replica's in-memory bank indexes in step with the shared store.

Every replica polls the store's bank version every `bank_refresh_s` (one row) and applies
what changed since the version it holds (moderation/state/banks.py, "The refresh
contract"): new or changed bank settings rebuild the indexes from the entries already in
memory, added and removed entries are applied to a derived snapshot, and an import, a
pruned tombstone or a store that went backwards reloads everything. Readers never wait:
LiveBanks swaps in the new snapshot with one reference write.

A store that cannot be read keeps the last snapshot serving (a bank never empties because
the database blinked); the failure is logged (at most once a minute) and counted, and
moderation_bank_refresh_age_seconds grows, which the ModerationBanksStale alert watches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from moderation.runtime import ConfigurationError
from moderation.signals.banks.matcher import BankConfig, BankEntry, LiveBanks
from moderation.state.banks import Bank, BankStore, StoredEntry
from moderation.state.records import StoreError
from moderation.state.store import StateStore
from moderation.ops.config import Settings

log = logging.getLogger(__name__)

# A bank without a measured cosine holds no embeddings (the store refuses them), so any
# value works; the maximum keeps such a bank from ever matching by embedding.
_NO_EMBEDDINGS = 1.0


def _ignore_counts(counts: dict[tuple[str, str], int]) -> None:
    pass


def _ignore_error() -> None:
    pass


@dataclass(frozen=True, slots=True)
class RefreshMetrics:
    entries: Callable[[dict[tuple[str, str], int]], None] = _ignore_counts  # (bank, signal type) -> entries in the store
    failed: Callable[[], None] = _ignore_error


def bank_config(bank: Bank) -> BankConfig:
    cosine = bank.embedding_min_cosine
    return BankConfig(
        bank.name,
        embedding_min_cosine=_NO_EMBEDDINGS if cosine is None else cosine,
        enabled=bank.enabled,
        pdq_max_distance=bank.pdq_max_distance,
        pdq_min_quality=bank.pdq_min_quality,
        matching_ratio=bank.matching_ratio,
    )


def bank_entry(entry: StoredEntry) -> BankEntry:
    # Matching needs the value and quality; who added it and why stay in the store (a million notes cost memory).
    return BankEntry(entry.bank, entry.content_id, entry.signal_type, entry.value, quality=entry.quality)  # type: ignore[arg-type]


class BankRefresher:
    """Loads every bank into `live`, then follows the store from a daemon thread."""

    def __init__(self, store: BankStore, live: LiveBanks, interval_s: float, metrics: RefreshMetrics = RefreshMetrics()):
        self.store = store
        self.live = live
        self.interval_s = interval_s
        self.metrics = metrics
        self.version = -1
        self.refreshed_at = time.monotonic()  # last successful poll: its age is a metric
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error_log = 0.0

    def load_all(self) -> None:
        """Every bank and entry anew. Raises StoreError when the store cannot be read."""
        started = time.perf_counter()
        version = self.store.current_version()  # first: what changes while loading comes back in the next poll
        banks = self.store.list_banks()

        def entries() -> Iterator[BankEntry]:
            for bank in banks:
                for entry in self.store.load_bank_entries(bank.name):
                    yield bank_entry(entry)

        self.live.replace([bank_config(b) for b in banks], entries())
        self.version = version
        self.refreshed_at = time.monotonic()
        self._report_counts(banks)
        log.info(
            "banks at version %d: %d banks, %d entries indexed, loaded in %.1f s",
            version, len(banks), len(self.live.matcher), time.perf_counter() - started,
        )  # fmt: skip

    def poll(self) -> bool:
        """Apply what changed since the version held; True when something did. Raises StoreError."""
        current = self.store.current_version()
        if current == self.version:
            self.refreshed_at = time.monotonic()
            return False
        changes = self.store.changes_since(self.version)
        if changes.reload_all:
            self.load_all()
            return True
        if changes.banks:
            configs = {c.name: c for c in self.live.matcher.configs}
            configs.update((b.name, bank_config(b)) for b in changes.banks)
            self.live.reconfigure(configs.values())
        self.live.apply(
            added=[bank_entry(e) for e in changes.added],
            removed=[(r.bank, r.content_id, r.signal_type, r.value) for r in changes.removed],
        )
        self.version = changes.version
        self.refreshed_at = time.monotonic()
        self._report_counts(self.store.list_banks() if changes.banks or changes.added or changes.removed else None)
        log.info(
            "banks at version %d: %d settings changed, %d entries added, %d removed",
            changes.version, len(changes.banks), len(changes.added), len(changes.removed),
        )  # fmt: skip
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bank-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception as error:  # the store away, a bad row: keep serving the last snapshot
                self.metrics.failed()
                now = time.monotonic()
                if now - self._last_error_log >= 60:
                    self._last_error_log = now
                    log.warning("could not refresh banks (serving version %d until it works): %s", self.version, error)

    def _report_counts(self, banks: list[Bank] | None) -> None:
        if banks is None:
            return
        counts = {(b.name, kind): n for b in banks for kind, n in self.store.count_entries(b.name).items()}
        self.metrics.entries(counts)


@dataclass(frozen=True, slots=True)
class Banks:
    """The banks of a server with a state store: the shared store, this replica's indexes, and what keeps them current."""

    store: BankStore
    live: LiveBanks
    refresher: BankRefresher


def build_banks(settings: Settings, store: StateStore | None, metrics: RefreshMetrics | None = None) -> Banks | None:
    """Banks load from the state store (every replica shares it); None without a store or without the banks extra.

    Loaded now, before the server reports SERVING: a replica never answers without the
    banks it is meant to match. A store that cannot be read fails the start.
    """
    if store is None:
        return None
    bank_store = BankStore(store)
    live = LiveBanks()
    refresher = BankRefresher(bank_store, live, settings.bank_refresh_s, metrics or RefreshMetrics())
    try:
        refresher.load_all()
    except StoreError as error:
        raise ConfigurationError(f"cannot load the banks from the state store: {error}") from error
    return Banks(bank_store, live, refresher)
