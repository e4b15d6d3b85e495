"""One bank's indexes, immutable once built: PDQ (Hamming), embeddings (cosine), exact hashes.

Readers (the request path, many threads) search a snapshot without locks; a writer derives
a new snapshot with `with_changes` and swaps the reference (matcher.LiveBanks). Nothing a
reader holds is ever mutated, so a reader sees the old entries or the new, never half.

Removal. Neither the PDQ multi-index below nor faiss's embedding indexes remove cheaply,
and rebuilding a million-hash index on every curator's click would cost seconds each. So a snapshot is layered:
a faiss `base` built in one go, `removed` ids (tombstones: base hits dropped after the
search) and `added` rows searched exhaustively with numpy. Deriving a snapshot copies only
the layers (at most MAX_PENDING rows and ids), and once they outgrow MAX_PENDING the
writer rebuilds the base from the live rows: one rebuild, O(N), per MAX_PENDING changes.
MAX_PENDING bounds the per-query cost of the exhaustive layer too (4096 PDQ hashes are
128 KiB to XOR; 1024 embeddings of 512 floats are 2 MiB to multiply).

Ids are the caller's int64s, unique within an index; an index never returns an id it was
told to remove.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import faiss
import numpy as np

from moderation.signals.banks.hashing import PDQ_BITS, PDQ_BYTES

# One OpenMP thread for this process's initial thread: a request looks up one frame's hash
# or embedding at a time (faiss does not split a single query), and the server's
# parallelism is its concurrent requests, not a team of spinning OpenMP threads.
faiss.omp_set_num_threads(1)


class MultiIndexHash:
    """Exact Hamming range search over 256-bit codes by multi-index hashing (Norouzi et al.; HMA's layout).

    The 256 bits are 16 chunks of 16 bits. A code within distance d of the query agrees with
    it, by pigeonhole, on some chunk up to d // 16 bits; so per chunk the index probes every
    value within that many flips of the query's chunk and checks the candidates' full
    distance. Each table is kept as a CSR layout: rows sorted by their chunk value
    (`order`, int32) and, per value, where its rows start (`bounds`), so a probe is two
    array reads and all 16 tables' probes are a handful of numpy calls.

    Why not faiss's IndexBinaryMultiHash, which does the same: measured side by side on a
    million random hashes, one query took 4x longer there (p50 2.2 ms against 0.56 ms, same
    run, bench/banks.py), and it holds 358 MB per million hashes against about 105 MB here
    (codes 32 MB, order 64 MB, bounds 8 MB). Exactness against faiss's exhaustive
    IndexBinaryFlat is a test (tests/unit/test_bank_index.py).

    `range_search(queries, radius)` answers as faiss's does (lims, distances, positions;
    distances strictly below `radius`), so the layered index treats both alike.
    """

    TABLES = 16
    _masks: ClassVar[dict[int, np.ndarray]] = {}

    def __init__(self, codes: np.ndarray) -> None:
        self.codes = np.ascontiguousarray(codes, dtype=np.uint8)
        n = self.ntotal = len(self.codes)
        chunks = self.codes.view("<u2")  # (n, 16): any fixed grouping of byte pairs works, queries use the same
        self.order = np.argsort(chunks, axis=0, kind="stable").T.astype(np.int32).reshape(-1)  # table t: [t*n, (t+1)*n)
        bounds = np.empty((self.TABLES, 65537), np.int64)
        for table in range(self.TABLES):
            bounds[table, 0] = 0
            np.cumsum(np.bincount(chunks[:, table], minlength=65536), out=bounds[table, 1:])
            bounds[table] += table * n
        self.bounds = bounds

    @classmethod
    def flip_masks(cls, flips: int) -> np.ndarray:
        """Every 16-bit mask with at most `flips` bits set (1 + 16 masks for PDQ's 31 bits)."""
        if flips not in cls._masks:
            masks = [sum(1 << bit for bit in bits) for k in range(flips + 1) for bits in itertools.combinations(range(16), k)]
            cls._masks[flips] = np.array(masks, dtype=np.int64)
        return cls._masks[flips]

    def range_search(self, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        max_distance = radius - 1
        masks = self.flip_masks(min(max_distance // self.TABLES, 16))
        tables = np.arange(self.TABLES)[:, None]
        lims, distances, positions = [0], [], []
        for query, chunks in zip(queries, queries.view("<u2").astype(np.int64), strict=True):
            probes = chunks[:, None] ^ masks  # (16, probes per table)
            starts, ends = self.bounds[tables, probes].ravel(), self.bounds[tables, probes + 1].ravel()
            counts = ends - starts
            total, hits = int(counts.sum()), 0
            if total:
                # Every row of every probed bucket, in one gather: bucket k's rows are order[starts[k]:ends[k]].
                rows = self.order[np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(total)]
                found = np.bitwise_count(self.codes[rows] ^ query).sum(axis=1)
                near = found <= max_distance
                # A row agreeing on several chunks comes up once per chunk: keep it once.
                unique, first = np.unique(rows[near], return_index=True)
                positions.append(unique)
                distances.append(found[near][first])
                hits = len(unique)
            lims.append(lims[-1] + hits)
        empty = np.empty(0, np.int64)
        return (
            np.array(lims, dtype=np.int64),
            np.concatenate(distances) if distances else empty,
            np.concatenate(positions).astype(np.int64) if positions else empty,
        )


@dataclass(frozen=True, slots=True)
class _Layers:
    """The rows changed since the base was built: ids removed from it, rows added after it."""

    removed: frozenset[int]
    added_ids: np.ndarray  # int64, (m,)
    added_rows: np.ndarray  # (m, width)

    @property
    def pending(self) -> int:
        return len(self.removed) + len(self.added_ids)

    def changed(self, added_ids: np.ndarray, added_rows: np.ndarray, removed: Iterable[int]) -> _Layers:
        """These layers with `removed` taken out (from `added` directly, else as base tombstones) and `added` appended."""
        gone = np.fromiter({int(i) for i in removed}, np.int64)
        in_added = np.isin(self.added_ids, gone)
        tombstones = self.removed | set(np.setdiff1d(gone, self.added_ids).tolist())
        return _Layers(
            frozenset(tombstones),
            np.concatenate([self.added_ids[~in_added], added_ids]),
            np.concatenate([self.added_rows[~in_added], added_rows]),
        )


class _LayeredIndex:
    """The layering shared by the PDQ and embedding indexes; subclasses build and search the base."""

    MAX_PENDING: ClassVar[int]
    _width: int
    _dtype: type

    def __init__(self, ids: Sequence[int] | np.ndarray, rows: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(rows):
            raise ValueError(f"{len(ids)} ids for {len(rows)} rows")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("index ids must be unique")
        self._rebuild(ids, rows)

    def __len__(self) -> int:
        # Exact while callers remove only live ids, as LiveBanks does.
        return len(self._base_ids) - len(self._layers.removed) + len(self._layers.added_ids)

    def with_changes(
        self, added_ids: Sequence[int] | np.ndarray = (), added_rows: np.ndarray | None = None, removed: Iterable[int] = ()
    ) -> _LayeredIndex:
        """A new snapshot with `removed` ids gone and `added` rows in; this one is left as it was.

        Removals apply first. Ids are the caller's to keep unique (matcher.LiveBanks never
        reuses one): checking them here would cost O(N) per change.
        """
        new_ids = np.asarray(added_ids, dtype=np.int64).reshape(-1)
        new_rows = self._rows(added_rows if added_rows is not None else np.empty((0, self._width), self._dtype))
        if len(new_ids) != len(new_rows):
            raise ValueError(f"{len(new_ids)} ids for {len(new_rows)} rows")
        layers = self._layers.changed(new_ids, new_rows, removed)
        derived = copy.copy(self)  # shares the base: nothing in a snapshot is mutated
        if layers.pending <= self.MAX_PENDING:
            derived._layers = layers
        else:
            # Compaction: the layers outgrew their bound, so fold them into a fresh base.
            derived._rebuild(*self._live(layers))
        return derived

    def _rebuild(self, ids: np.ndarray, rows: np.ndarray) -> None:
        self._base_ids = ids
        self._base = self._build(rows) if len(rows) else None
        self._layers = _Layers(frozenset(), np.empty(0, np.int64), np.empty((0, self._width), self._dtype))

    def _live(self, layers: _Layers) -> tuple[np.ndarray, np.ndarray]:
        """Every live (id, row), base first: what a compaction rebuilds from."""
        keep = ~np.isin(self._base_ids, np.fromiter(layers.removed, np.int64, len(layers.removed)))
        base_rows = self._base_rows() if self._base is not None else np.empty((0, self._width), self._dtype)
        return (
            np.concatenate([self._base_ids[keep], layers.added_ids]),
            np.concatenate([base_rows[keep], layers.added_rows]),
        )

    def _base_hits(self, lims: np.ndarray, values: np.ndarray, positions: np.ndarray, query: int) -> list[tuple[int, float]]:
        hits = []
        removed = self._layers.removed
        for k in range(int(lims[query]), int(lims[query + 1])):
            found = int(self._base_ids[positions[k]])
            if found not in removed:
                hits.append((found, float(values[k])))
        return hits

    # Subclasses: the row format and the faiss base.
    def _rows(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _build(self, rows: np.ndarray) -> faiss.Index:
        raise NotImplementedError

    def _base_rows(self) -> np.ndarray:
        raise NotImplementedError


class PdqIndex(_LayeredIndex):
    """PDQ hashes (rows of 32 uint8) searched for Hamming distance <= max_distance.

    The base is a MultiIndexHash (16 tables on 16-bit chunks, as HMA lays it out): exact,
    not approximate, and immutable once built, so readers need no lock.
    """

    MAX_PENDING = 4096
    _width = PDQ_BYTES
    _dtype = np.uint8

    def __init__(self, max_distance: int, ids: Sequence[int] | np.ndarray = (), codes: np.ndarray | None = None) -> None:
        if not 0 <= max_distance < PDQ_BITS:
            raise ValueError(f"a PDQ distance threshold is 0 to {PDQ_BITS - 1} bits; got {max_distance}")
        self.max_distance = max_distance
        super().__init__(ids, self._rows(codes if codes is not None else np.empty((0, PDQ_BYTES), np.uint8)))

    def search(self, queries: np.ndarray) -> list[list[tuple[int, int]]]:
        """For each query hash (rows of 32 uint8), every (id, distance) within max_distance."""
        queries = self._rows(queries)
        results: list[list[tuple[int, int]]] = [[] for _ in range(len(queries))]
        if self._base is not None and len(queries):
            # faiss's binary range search keeps distances strictly below the radius.
            lims, distances, positions = self._base.range_search(queries, self.max_distance + 1)
            for q in range(len(queries)):
                results[q].extend((found, int(d)) for found, d in self._base_hits(lims, distances, positions, q))
        added = self._layers.added_rows
        if len(added):
            for q, query in enumerate(queries):
                distances = np.bitwise_count(np.bitwise_xor(added, query)).sum(axis=1)
                for row in np.flatnonzero(distances <= self.max_distance):
                    results[q].append((int(self._layers.added_ids[row]), int(distances[row])))
        return results

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        if rows.ndim != 2 or rows.shape[1] != PDQ_BYTES:
            raise ValueError(f"PDQ hashes are rows of {PDQ_BYTES} bytes; got shape {rows.shape}")
        return rows

    def _build(self, rows: np.ndarray) -> MultiIndexHash:
        return MultiIndexHash(rows)

    def _base_rows(self) -> np.ndarray:
        return self._base.codes


class EmbeddingIndex(_LayeredIndex):
    """Unit-normalised embeddings searched for cosine similarity >= min_cosine.

    Up to IVF_MIN_VECTORS the base is exhaustive (faiss IndexFlatIP: every match found). A
    larger base is an inverted file (IVF: sqrt(n) k-means cells, the IVF_PROBES cells
    nearest the query searched): exhaustive search reads the whole bank per frame (81 ms
    for a million 512-float vectors here, bench/banks.py), the IVF about 1/60 of it. It is
    approximate: a match whose nearest cell is not among the probed ones is missed; the
    bench measures the recall of near-duplicates. Training is seeded, so replicas building
    from the same rows build the same index.
    """

    MAX_PENDING = 1024
    IVF_MIN_VECTORS = 100_000
    IVF_PROBES = 16
    _dtype = np.float32

    def __init__(self, dim: int, min_cosine: float, ids: Sequence[int] | np.ndarray = (), vectors: np.ndarray | None = None) -> None:
        if not -1.0 <= min_cosine <= 1.0:
            raise ValueError(f"a cosine threshold is between -1 and 1; got {min_cosine}")
        self._width = dim
        self.min_cosine = float(min_cosine)
        super().__init__(ids, self._rows(vectors if vectors is not None else np.empty((0, dim), np.float32)))

    @property
    def dim(self) -> int:
        return self._width

    def search(self, queries: np.ndarray) -> list[list[tuple[int, float]]]:
        """For each query embedding, every (id, cosine) at or above min_cosine."""
        queries = self._rows(queries)
        results: list[list[tuple[int, float]]] = [[] for _ in range(len(queries))]
        if self._base is not None and len(queries):
            # faiss keeps inner products strictly above the radius: ask one float32 step
            # lower so a cosine exactly at the threshold is kept, then apply it exactly.
            radius = float(np.nextafter(np.float32(self.min_cosine), np.float32(-2)))
            lims, cosines, positions = self._base.range_search(queries, radius)
            for q in range(len(queries)):
                results[q].extend(hit for hit in self._base_hits(lims, cosines, positions, q) if hit[1] >= self.min_cosine)
        added = self._layers.added_rows
        if len(added):
            cosines = queries @ added.T
            for q in range(len(queries)):
                for row in np.flatnonzero(cosines[q] >= self.min_cosine):
                    results[q].append((int(self._layers.added_ids[row]), float(cosines[q, row])))
        return results

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        rows = np.array(rows, dtype=np.float32, ndmin=2)
        if rows.shape[1] != self._width and rows.size:
            raise ValueError(f"this bank's embeddings have {self._width} dimensions; got {rows.shape[1]}")
        rows = rows.reshape(-1, self._width)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        if (norms == 0).any() or not np.isfinite(norms).all():
            raise ValueError("an embedding is all zeros or not finite; it has no direction to compare")
        # Cosine is the inner product of unit vectors: normalise once, on the way in.
        return np.ascontiguousarray(rows / norms)

    def _build(self, rows: np.ndarray) -> faiss.Index:
        if len(rows) < self.IVF_MIN_VECTORS:
            index = faiss.IndexFlatIP(self._width)
            index.add(rows)
            return index
        cells = int(np.sqrt(len(rows)))
        index = faiss.index_factory(self._width, f"IVF{cells},Flat", faiss.METRIC_INNER_PRODUCT)
        # k-means on 64 rows a cell, 10 rounds: seconds for a million rows on 2 cores, where
        # faiss's defaults (256 a cell, 25 rounds) take minutes; cells only steer the search.
        clustering = faiss.extract_index_ivf(index).cp
        clustering.niter, clustering.max_points_per_centroid, clustering.seed = 10, 64, 20
        sample = rows[np.random.default_rng(20).choice(len(rows), min(len(rows), cells * 64), replace=False)]
        index.train(sample)
        index.add(rows)
        faiss.extract_index_ivf(index).nprobe = self.IVF_PROBES  # set once, before any reader
        faiss.extract_index_ivf(index).make_direct_map()  # reconstruct_n for compaction
        return index

    def _base_rows(self) -> np.ndarray:
        return self._base.reconstruct_n(0, self._base.ntotal)


class ExactIndex:
    """Exact hashes (canonical lowercase hex) -> ids. A dict: a lookup is one hash probe.

    Copy-on-write: a derived snapshot copies the dict (a C-level copy, tens of milliseconds
    for a million hashes), paid by the writer once per change batch, never by a reader.
    """

    def __init__(self, entries: Iterable[tuple[int, str]] = ()) -> None:
        self._table: dict[str, tuple[int, ...]] = {}
        self._add(entries)

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._table.values())  # O(entries): for counts, never per request

    def __bool__(self) -> bool:
        return bool(self._table)

    def search(self, value: str) -> tuple[int, ...]:
        return self._table.get(value, ())

    def with_changes(self, added: Iterable[tuple[int, str]] = (), removed: Iterable[tuple[int, str]] = ()) -> ExactIndex:
        """A new snapshot; `removed` names each id with its value, so no reverse map is kept."""
        derived = object.__new__(ExactIndex)
        derived._table = dict(self._table)
        for found, value in removed:
            kept = tuple(i for i in derived._table.get(value, ()) if i != found)
            if kept:
                derived._table[value] = kept
            else:
                derived._table.pop(value, None)
        derived._add(added)
        return derived

    def _add(self, entries: Iterable[tuple[int, str]]) -> None:
        for found, value in entries:
            self._table[value] = (*self._table.get(value, ()), found)
