"""Banks of known content and the matcher that answers "is this image in a bank?".

A bank (`BankConfig`) is a curated list of entries (`BankEntry`): hashes (PDQ, MD5,
SHA-256) or embeddings of known content, each with who added it and why. `BankMatcher`
is an immutable snapshot of every bank's indexes; `match` hashes the upload and its
sampled frames and returns every entry within its bank's threshold. `LiveBanks` owns the
current snapshot for a process: readers take `.matcher` (one reference read, no lock) and
a writer's `apply` derives and swaps in a new snapshot, so a request sees the banks as
they were before a change or after it, never in between.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import threading
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

import numpy as np
from PIL import Image

from moderation.signals.banks.hashing import (
    PdqHash,
    md5_hex,
    parse_md5_hex,
    parse_pdq_hex,
    parse_sha256_hex,
    pdq_hash_frame,
    sha256_hex,
)
from moderation.signals.banks.index import EmbeddingIndex, ExactIndex, PdqIndex

log = logging.getLogger(__name__)
_warned_dimensions: set[tuple[str, int, int]] = set()

SignalType = Literal["pdq", "md5", "sha256", "embedding"]
SIGNAL_TYPES: tuple[str, ...] = get_args(SignalType)

# Meta's published PDQ operating point: 31 of 256 bits, quality 50 and up.
DEFAULT_PDQ_MAX_DISTANCE = 31
DEFAULT_PDQ_MIN_QUALITY = 50


@dataclass(frozen=True, slots=True)
class BankConfig:
    """How one bank matches.

    embedding_min_cosine has no default on purpose: the right cosine depends on the image
    encoder and has to be measured on it (near-duplicates versus unrelated images) before a
    bank of embeddings can be trusted; a guessed default would block or miss silently.
    matching_ratio rolls a bank out gradually: that share of contents is matched, chosen by
    the SHA-256 of the bytes and the bank's name, so the same upload always gets the same
    answer and a ratio raised from 0.1 to 0.5 keeps the first tenth.
    """

    name: str
    embedding_min_cosine: float
    enabled: bool = True
    pdq_max_distance: int = DEFAULT_PDQ_MAX_DISTANCE
    pdq_min_quality: int = DEFAULT_PDQ_MIN_QUALITY
    matching_ratio: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise ValueError("a bank needs a name")
        if not 0 <= self.pdq_max_distance < 256:
            raise ValueError(f"bank {self.name!r}: pdq_max_distance is 0 to 255 bits; got {self.pdq_max_distance}")
        if not 0 <= self.pdq_min_quality <= 100:
            raise ValueError(f"bank {self.name!r}: pdq_min_quality is 0 to 100; got {self.pdq_min_quality}")
        if not -1.0 <= self.embedding_min_cosine <= 1.0:
            raise ValueError(f"bank {self.name!r}: embedding_min_cosine is -1 to 1; got {self.embedding_min_cosine}")
        if not 0.0 <= self.matching_ratio <= 1.0:
            raise ValueError(f"bank {self.name!r}: matching_ratio is 0 to 1; got {self.matching_ratio}")


@dataclass(frozen=True, slots=True)
class BankEntry:
    """One known piece of content in a bank, by one signal.

    `value` is the text form for hashes (canonicalised to lowercase hex here, so a pasted
    upper-case hash finds the same entry) and, for embeddings, the vector as float32
    little-endian bytes (`embedding_value`), the form a store keeps as a blob. `quality` is
    the PDQ quality when the hash came with one (None: imported without it, kept).
    """

    bank: str
    content_id: str
    signal_type: SignalType
    value: str | bytes
    note: str = ""
    added_by: str = ""
    added_at: datetime | None = None
    quality: int | None = None

    def __post_init__(self) -> None:
        if self.signal_type not in SIGNAL_TYPES:
            raise ValueError(f"a bank entry's signal type is one of {', '.join(SIGNAL_TYPES)}; got {self.signal_type!r}")
        if self.signal_type == "embedding":
            if not isinstance(self.value, bytes) or not self.value or len(self.value) % 4:
                raise ValueError("an embedding entry's value is float32 bytes (embedding_value(vector))")
            return
        parse = {"pdq": lambda text: parse_pdq_hex(text).hex(), "md5": parse_md5_hex, "sha256": parse_sha256_hex}
        object.__setattr__(self, "value", parse[self.signal_type](self.value))

    @property
    def key(self) -> EntryKey:
        """What identifies the entry for removal: the same content by the same value in the same bank."""
        return (self.bank, self.content_id, self.signal_type, self.value)

    def embedding(self) -> np.ndarray:
        return np.frombuffer(self.value, dtype="<f4")  # type: ignore[arg-type]


EntryKey = tuple[str, str, str, "str | bytes"]


def embedding_value(vector: np.ndarray | Sequence[float]) -> bytes:
    """An embedding in BankEntry's form: float32 little-endian bytes."""
    return np.asarray(vector, dtype="<f4").reshape(-1).tobytes()


@dataclass(frozen=True, slots=True)
class BankMatch:
    """One entry the content matched.

    distance is Hamming bits for 'pdq' (a match is <= threshold), cosine similarity for
    'embedding' (a match is >= threshold), 0 for exact hashes (threshold 0). frame_index is
    the position in the `frames` given to `match` (None for hashes of the whole upload).
    """

    bank: str
    content_id: str
    signal_type: SignalType
    distance: float
    threshold: float
    frame_index: int | None


@dataclass(frozen=True, slots=True)
class ContentHashes:
    """What matching needs from one upload, computed once per request (not once per policy)."""

    sha256: str
    md5: str
    pdq: tuple[PdqHash, ...]  # one per sampled frame, frame order


def hash_content(data: bytes, frames: Sequence[Image.Image], signal_types: Iterable[str] = SIGNAL_TYPES) -> ContentHashes:
    """The SHA-256 of the bytes (rollout is keyed by it), and the MD5 and each sampled frame's PDQ hash where asked."""
    kinds = frozenset(signal_types)
    return ContentHashes(
        sha256_hex(data),
        md5_hex(data) if "md5" in kinds else "",
        tuple(pdq_hash_frame(frame) for frame in frames) if "pdq" in kinds else (),
    )


def in_rollout(content_sha256: str, bank: str, ratio: float) -> bool:
    """Whether a bank with this matching_ratio matches this content: stable per (content, bank)."""
    if ratio >= 1.0:
        return True
    if ratio <= 0.0:
        return False
    digest = hashlib.sha256(f"{bank}\n{content_sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < ratio * 2**64


@dataclass(frozen=True, slots=True)
class _Bank:
    """One bank's indexes; `embedding` exists once the bank has an embedding entry (its dimension)."""

    config: BankConfig
    pdq: PdqIndex
    md5: ExactIndex
    sha256: ExactIndex
    embedding: EmbeddingIndex | None


class BankMatcher:
    """Every bank's indexes, immutable: `match` from any thread, no lock."""

    def __init__(self, configs: Iterable[BankConfig], entries: Iterable[BankEntry] = ()) -> None:
        self._build(configs, enumerate(entries))

    def _build(self, configs: Iterable[BankConfig], numbered: Iterable[tuple[int, BankEntry]]) -> None:
        configs = _by_name(configs)
        indexed: dict[int, BankEntry] = {}
        grouped: dict[tuple[str, str], list[tuple[int, BankEntry]]] = defaultdict(list)
        for entry_id, entry in numbered:
            if _indexed(configs, entry):
                indexed[entry_id] = entry
                grouped[(entry.bank, entry.signal_type)].append((entry_id, entry))
        self._entries: Mapping[int, BankEntry] = indexed
        self._banks: Mapping[str, _Bank] = {
            name: _build_bank(config, {kind: grouped.get((name, kind), []) for kind in SIGNAL_TYPES})
            for name, config in configs.items()
        }

    @property
    def configs(self) -> tuple[BankConfig, ...]:
        return tuple(bank.config for bank in self._banks.values())

    def __len__(self) -> int:
        """Entries indexed: those of enabled banks, less PDQ hashes below their bank's quality."""
        return len(self._entries)

    @functools.cached_property
    def signal_types(self) -> frozenset[str]:
        """The signal types some enabled bank has entries of: a request computes only these (PDQ costs 3-14 ms a frame).

        Read twice per request, computed once per snapshot (a snapshot never changes)."""
        return frozenset(
            kind
            for bank in self._banks.values()
            if bank.config.enabled
            for kind, present in (
                ("pdq", len(bank.pdq) > 0),
                ("md5", bool(bank.md5)),
                ("sha256", bool(bank.sha256)),
                ("embedding", bank.embedding is not None and len(bank.embedding) > 0),
            )
            if present
        )

    def bank_names(self) -> frozenset[str]:
        return frozenset(self._banks)

    def match(self, data: bytes, frames: Sequence[Image.Image], embeddings: np.ndarray | None = None) -> list[BankMatch]:
        """Every bank entry this upload matches. embeddings: one row per frame, frame order, or None."""
        return self.match_hashes(hash_content(data, frames), embeddings)

    def match_hashes(
        self,
        hashes: ContentHashes,
        embeddings: np.ndarray | None = None,
        banks: Collection[str] | None = None,
        *,
        rollout: bool = True,
        every_frame: bool = False,
    ) -> list[BankMatch]:
        """`match` for hashes already computed (the request computes them once for every policy); `banks`: only these.

        An entry matched by several frames is one match, named by its closest frame; with `every_frame`
        (a video's frames: when it was shown matters) one match per entry and frame.

        `rollout=False` ignores matching_ratio: for a curator's lookup of a hash alone, which has no upload
        whose SHA-256 could place it in or out of a bank's rollout.
        """
        vectors = None
        if embeddings is not None:
            vectors = np.asarray(embeddings, dtype=np.float32)
            vectors = vectors.reshape(len(vectors), -1) if vectors.ndim > 1 else vectors.reshape(1, -1)
        codes = np.frombuffer(b"".join(h.bits for h in hashes.pdq), dtype=np.uint8).reshape(-1, 32)
        qualities = np.array([h.quality for h in hashes.pdq], dtype=np.int64)
        found: list[BankMatch] = []
        for bank in self._banks.values():
            config = bank.config
            if banks is not None and config.name not in banks:
                continue
            if not config.enabled or (rollout and not in_rollout(hashes.sha256, config.name, config.matching_ratio)):
                continue
            found.extend(self._exact(bank, hashes))
            found.extend(self._pdq(bank, codes, qualities, every_frame))
            if vectors is not None and bank.embedding is not None:
                found.extend(self._embedding(bank, vectors, every_frame))
        return found

    def _exact(self, bank: _Bank, hashes: ContentHashes) -> list[BankMatch]:
        return [
            self._hit(bank.config.name, entry_id, kind, 0, 0, None)
            for kind, index, value in (("sha256", bank.sha256, hashes.sha256), ("md5", bank.md5, hashes.md5))
            for entry_id in index.search(value)
        ]

    def _pdq(self, bank: _Bank, codes: np.ndarray, qualities: np.ndarray, every_frame: bool = False) -> list[BankMatch]:
        if not len(bank.pdq) or not len(codes):
            return []
        # Flat frames (quality below the bank's bar) match too much to mean anything.
        usable = np.flatnonzero(qualities >= bank.config.pdq_min_quality)
        # entry (and frame, with every_frame) -> (distance, frame): the closest frame names the match
        best: dict[tuple[int, int], tuple[int, int]] = {}
        for frame, hits in zip(usable.tolist(), bank.pdq.search(codes[usable]), strict=True):
            for entry_id, distance in hits:
                key = (entry_id, frame if every_frame else 0)
                if key not in best or distance < best[key][0]:
                    best[key] = (distance, frame)
        threshold = bank.config.pdq_max_distance
        return [self._hit(bank.config.name, i, "pdq", d, threshold, f) for (i, _), (d, f) in best.items()]

    def _embedding(self, bank: _Bank, vectors: np.ndarray, every_frame: bool = False) -> list[BankMatch]:
        index = bank.embedding
        assert index is not None
        if vectors.shape[1] != index.dim:
            # Another encoder's embeddings (the model changed under the bank): they cannot match this one's,
            # and a curator's bank must never fail requests. Logged once per bank and dimension.
            _warn_dimension(bank.config.name, index.dim, vectors.shape[1])
            return []
        best: dict[tuple[int, int], tuple[float, int]] = {}
        for frame, hits in enumerate(index.search(vectors)):
            for entry_id, cosine in hits:
                key = (entry_id, frame if every_frame else 0)
                if key not in best or cosine > best[key][0]:
                    best[key] = (cosine, frame)
        threshold = bank.config.embedding_min_cosine
        return [self._hit(bank.config.name, i, "embedding", c, threshold, f) for (i, _), (c, f) in best.items()]

    def _hit(self, bank: str, entry_id: int, kind: SignalType, distance: float, threshold: float, frame: int | None) -> BankMatch:
        return BankMatch(bank, self._entries[entry_id].content_id, kind, distance, threshold, frame)

    def _derived(self, added: Sequence[tuple[int, BankEntry]], removed: Sequence[tuple[int, BankEntry]]) -> BankMatcher:
        """A new snapshot with these changes; this one is untouched (readers may be in it)."""
        configs = {name: bank.config for name, bank in self._banks.items()}
        gone = [(i, e) for i, e in removed if i in self._entries]
        new = [(i, e) for i, e in added if _indexed(configs, e)]
        entries = dict(self._entries)
        for entry_id, _ in gone:
            del entries[entry_id]
        entries.update(new)
        banks = dict(self._banks)
        for name in {e.bank for _, e in gone} | {e.bank for _, e in new}:
            banks[name] = _changed_bank(
                banks[name], [p for p in new if p[1].bank == name], [p for p in gone if p[1].bank == name]
            )
        derived = object.__new__(BankMatcher)
        derived._entries, derived._banks = entries, banks
        return derived


class LiveBanks:
    """The process's current BankMatcher, and the one writer that changes it.

    Readers: `live.matcher.match(...)`; the reference they read is a complete snapshot.
    Writers (the store's refresh loop) call `apply` or `replace`; a lock orders writers,
    never readers. A change costs the writer a copy of the entry table (memory speed) and a
    faiss rebuild only once the index's pending changes pass their bound (see index.py);
    `replace` (a bank's config changed) rebuilds everything.
    """

    def __init__(self, configs: Iterable[BankConfig] = (), entries: Iterable[BankEntry] = ()) -> None:
        self._lock = threading.Lock()
        self._next_id = 0
        self._live: dict[EntryKey, tuple[int, BankEntry]] = {}
        self._matcher = BankMatcher(())
        self.replace(configs, entries)

    @property
    def matcher(self) -> BankMatcher:
        return self._matcher

    def replace(self, configs: Iterable[BankConfig], entries: Iterable[BankEntry]) -> None:
        """Every bank and entry anew (start-up, a config change)."""
        configs = _by_name(configs)
        with self._lock:
            live: dict[EntryKey, tuple[int, BankEntry]] = {}
            for entry in entries:
                _check_bank(configs, entry)
                live[entry.key] = (self._take_id(), entry)
            matcher = object.__new__(BankMatcher)
            matcher._build(configs.values(), live.values())
            self._live, self._matcher = live, matcher

    def reconfigure(self, configs: Iterable[BankConfig]) -> None:
        """New bank settings (enabled, thresholds, ratio; a new bank) over the entries held: a full rebuild."""
        configs = _by_name(configs)
        with self._lock:
            for _, entry in self._live.values():
                _check_bank(configs, entry)
            matcher = object.__new__(BankMatcher)
            matcher._build(configs.values(), self._live.values())
            self._matcher = matcher

    def apply(self, added: Iterable[BankEntry] = (), removed: Iterable[BankEntry | EntryKey] = ()) -> None:
        """Remove then add; all or nothing. Re-adding an entry's key replaces it (its note may change);
        removing one that is not there does nothing, so replaying a change is harmless."""
        added = list({entry.key: entry for entry in added}.values())  # the same key twice: the last wins
        removed_keys = [r.key if isinstance(r, BankEntry) else tuple(r) for r in removed]
        with self._lock:
            configs = {c.name: c for c in self._matcher.configs}
            for entry in added:
                _check_bank(configs, entry)
            live = dict(self._live)
            gone = [live.pop(key) for key in [*removed_keys, *(e.key for e in added)] if key in live]
            new = []
            for entry in added:
                live[entry.key] = (self._take_id(), entry)
                new.append(live[entry.key])
            matcher = self._matcher._derived(new, gone)
            self._live, self._matcher = live, matcher

    def _take_id(self) -> int:
        # Ids are never reused, so an old snapshot's id can never name a newer entry.
        self._next_id += 1
        return self._next_id


def _warn_dimension(bank: str, banked: int, given: int) -> None:
    if (bank, banked, given) not in _warned_dimensions:
        _warned_dimensions.add((bank, banked, given))
        log.warning(
            "bank %r holds %d-dimensional embeddings but the encoder gives %d: its embeddings cannot match (re-add them "
            "with this model); its hashes still match",
            bank, banked, given,
        )  # fmt: skip


def _by_name(configs: Iterable[BankConfig]) -> dict[str, BankConfig]:
    named: dict[str, BankConfig] = {}
    for config in configs:
        if config.name in named:
            raise ValueError(f"two banks are named {config.name!r}")
        named[config.name] = config
    return named


def _check_bank(configs: Mapping[str, BankConfig], entry: BankEntry) -> None:
    if entry.bank not in configs:
        raise ValueError(f"entry {entry.content_id!r} names bank {entry.bank!r}, which is not configured")


def _indexed(configs: Mapping[str, BankConfig], entry: BankEntry) -> bool:
    """Whether an entry goes into the indexes: its bank is enabled and, for PDQ, its quality suffices."""
    _check_bank(configs, entry)
    config = configs[entry.bank]
    if not config.enabled:
        return False
    return entry.signal_type != "pdq" or entry.quality is None or entry.quality >= config.pdq_min_quality


def _build_bank(config: BankConfig, entries: Mapping[str, list[tuple[int, BankEntry]]]) -> _Bank:
    pdq = entries["pdq"]
    embeddings = entries["embedding"]
    codes = np.array([np.frombuffer(bytes.fromhex(e.value), np.uint8) for _, e in pdq], dtype=np.uint8).reshape(-1, 32)  # type: ignore[arg-type]
    embedding = None
    if embeddings:
        vectors = _stack([e.embedding() for _, e in embeddings], config.name)
        embedding = EmbeddingIndex(vectors.shape[1], config.embedding_min_cosine, [i for i, _ in embeddings], vectors)
    return _Bank(
        config,
        PdqIndex(config.pdq_max_distance, [i for i, _ in pdq], codes),
        ExactIndex((i, e.value) for i, e in entries["md5"]),  # type: ignore[misc]
        ExactIndex((i, e.value) for i, e in entries["sha256"]),  # type: ignore[misc]
        embedding,
    )


def _changed_bank(bank: _Bank, added: list[tuple[int, BankEntry]], removed: list[tuple[int, BankEntry]]) -> _Bank:
    def of(kind: str, pairs: list[tuple[int, BankEntry]]) -> list[tuple[int, BankEntry]]:
        return [p for p in pairs if p[1].signal_type == kind]

    pdq_added = of("pdq", added)
    pdq = bank.pdq.with_changes(
        [i for i, _ in pdq_added],
        np.array([np.frombuffer(bytes.fromhex(e.value), np.uint8) for _, e in pdq_added], np.uint8).reshape(-1, 32),  # type: ignore[arg-type]
        [i for i, _ in of("pdq", removed)],
    )
    exact = {
        kind: getattr(bank, kind).with_changes([(i, e.value) for i, e in of(kind, added)], [(i, e.value) for i, e in of(kind, removed)])
        for kind in ("md5", "sha256")
    }
    embedding = bank.embedding
    emb_added, emb_removed = of("embedding", added), [i for i, _ in of("embedding", removed)]
    if emb_added or emb_removed:
        vectors = _stack([e.embedding() for _, e in emb_added], bank.config.name) if emb_added else None
        if embedding is None:
            # The bank's first embeddings fix its dimension.
            embedding = EmbeddingIndex(vectors.shape[1], bank.config.embedding_min_cosine) if vectors is not None else None
        if embedding is not None:
            embedding = embedding.with_changes([i for i, _ in emb_added], vectors, emb_removed)  # type: ignore[assignment]
    return dataclasses.replace(bank, pdq=pdq, md5=exact["md5"], sha256=exact["sha256"], embedding=embedding)


def _stack(vectors: list[np.ndarray], bank: str) -> np.ndarray:
    dims = {len(v) for v in vectors}
    if len(dims) > 1:
        raise ValueError(f"bank {bank!r} mixes embeddings of {sorted(dims)} dimensions; one encoder per bank")
    return np.stack(vectors)
