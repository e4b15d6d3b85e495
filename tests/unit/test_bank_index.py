"""The per-bank indexes: exact range search, removal through tombstones and compaction, snapshots."""

from __future__ import annotations

import numpy as np
import pytest

from moderation.signals.banks.index import EmbeddingIndex, ExactIndex, MultiIndexHash, PdqIndex


def flipped(code: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """`code` (32 uint8) with `bits` distinct bits flipped."""
    unpacked = np.unpackbits(code)
    unpacked[rng.choice(256, size=bits, replace=False)] ^= 1
    return np.packbits(unpacked)


@pytest.fixture
def codes() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (5000, 32), dtype=np.uint8)


@pytest.mark.parametrize("max_distance", [0, 15, 31, 47, 63])
def test_pdq_range_search_finds_exactly_the_hashes_within_the_threshold(codes: np.ndarray, max_distance: int) -> None:
    rng = np.random.default_rng(max_distance)
    index = PdqIndex(max_distance, np.arange(len(codes)) + 100, codes)
    at = [flipped(codes[i], max_distance, rng) for i in range(20)]
    beyond = [flipped(codes[i], max_distance + 1, rng) for i in range(20, 40)]
    found = index.search(np.array(at + beyond))
    for i, hits in enumerate(found[:20]):
        assert hits == [(i + 100, max_distance)]
    # Random 256-bit hashes sit ~128 bits apart: nothing else is anywhere near.
    assert all(hits == [] for hits in found[20:])


@pytest.mark.parametrize("radius", [12, 16, 32, 48])
def test_the_multi_index_answers_exactly_what_an_exhaustive_search_does(radius: int) -> None:
    """Clustered codes (many neighbours per query, duplicates, near-flat hashes) against faiss's IndexBinaryFlat."""
    import faiss

    rng = np.random.default_rng(radius)
    centres = rng.integers(0, 256, (20, 32), dtype=np.uint8)
    codes = np.array([flipped(centres[i % 20], int(rng.integers(0, 40)), rng) for i in range(3000)] + [centres[0]] * 5 + [np.zeros(32, np.uint8)] * 3)
    queries = np.array([flipped(c, int(rng.integers(0, 30)), rng) for c in centres] + [np.zeros(32, np.uint8)])
    exhaustive = faiss.IndexBinaryFlat(256)
    exhaustive.add(codes)
    lims, distances, positions = MultiIndexHash(codes).range_search(queries, radius)
    want_lims, want_distances, want_positions = exhaustive.range_search(queries, radius)
    assert lims[-1] > 100, "the data must give many hits for the comparison to mean something"
    for q in range(len(queries)):
        got = sorted(zip(positions[lims[q] : lims[q + 1]].tolist(), distances[lims[q] : lims[q + 1]].tolist()))
        want = sorted(zip(want_positions[want_lims[q] : want_lims[q + 1]].tolist(), want_distances[want_lims[q] : want_lims[q + 1]].tolist()))
        assert got == want, q


def test_pdq_distance_31_matches_and_32_does_not(codes: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    index = PdqIndex(31, range(len(codes)), codes)
    assert index.search(flipped(codes[9], 31, rng)[None]) == [[(9, 31)]]
    assert index.search(flipped(codes[9], 32, rng)[None]) == [[]]


def test_removed_hashes_are_never_returned_and_added_ones_are(codes: np.ndarray) -> None:
    base = PdqIndex(31, range(1000), codes[:1000])
    changed = base.with_changes([5000, 5001], codes[4000:4002], removed=[3, 4])
    assert changed.search(codes[[3, 4, 5]]) == [[], [], [(5, 0)]]
    assert changed.search(codes[4000:4002]) == [[(5000, 0)], [(5001, 0)]]
    assert len(changed) == 1000
    # The snapshot it came from is untouched: a reader still in it sees the old entries.
    assert base.search(codes[[3, 4000]]) == [[(3, 0)], []]
    # An id added and removed again goes from the added layer, not into the tombstones.
    again = changed.with_changes(removed=[5000])
    assert again.search(codes[4000:4002]) == [[], [(5001, 0)]]
    assert len(again) == 999


def test_pending_changes_are_bounded_by_compaction(codes: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PdqIndex, "MAX_PENDING", 8)
    index = PdqIndex(31, range(100), codes[:100])
    for step in range(30):
        index = index.with_changes([1000 + step], codes[100 + step : 101 + step], removed=[step])
        assert index._layers.pending <= 8
    assert len(index) == 100
    assert index.search(codes[[0, 29, 30, 129]]) == [[], [], [(30, 0)], [(1029, 0)]]


def test_an_empty_pdq_index_finds_nothing(codes: np.ndarray) -> None:
    empty = PdqIndex(31)
    assert empty.search(codes[:2]) == [[], []]
    assert empty.with_changes([1], codes[:1]).search(codes[:1]) == [[(1, 0)]]
    assert PdqIndex(31, [1], codes[:1]).with_changes(removed=[1]).search(codes[:1]) == [[]]


def test_pdq_index_refuses_bad_input(codes: np.ndarray) -> None:
    with pytest.raises(ValueError, match="0 to 255 bits; got 256"):
        PdqIndex(256)
    with pytest.raises(ValueError, match="rows of 32 bytes"):
        PdqIndex(31, [0], codes[:1, :31])
    with pytest.raises(ValueError, match="unique"):
        PdqIndex(31, [0, 0], codes[:2])


def unit(rng: np.random.Generator, n: int, dim: int = 64) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def toward(vector: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly `cosine` from unit `vector`."""
    other = rng.standard_normal(vector.shape)
    other -= other.dot(vector) * vector
    other /= np.linalg.norm(other)
    return cosine * vector + np.sqrt(1 - cosine**2) * other


def test_embeddings_match_at_or_above_the_cosine_threshold() -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 2000)
    index = EmbeddingIndex(64, 0.9, np.arange(2000), vectors * 3.0)  # scale is normalised away
    near, far = toward(vectors[5], 0.95, rng), toward(vectors[6], 0.85, rng)
    found = index.search(np.stack([near, far]))
    assert [i for i, _ in found[0]] == [5] and found[0][0][1] == pytest.approx(0.95, abs=1e-5)
    assert found[1] == []
    assert index.search(vectors[7:8])[0][0] == (7, pytest.approx(1.0, abs=1e-5))


def test_embedding_removal_and_dimension_checks() -> None:
    rng = np.random.default_rng(2)
    vectors = unit(rng, 100)
    index = EmbeddingIndex(64, 0.9, range(100), vectors).with_changes([500], vectors[:1] * -1, removed=[0])
    assert [i for i, _ in index.search(vectors[:1])[0]] == []
    assert [i for i, _ in index.search(-vectors[:1])[0]] == [500]
    with pytest.raises(ValueError, match="64 dimensions; got 32"):
        index.search(np.ones((1, 32)))
    with pytest.raises(ValueError, match="all zeros"):
        index.with_changes([501], np.zeros((1, 64)))


def test_exact_index_is_a_copy_on_write_table() -> None:
    index = ExactIndex([(1, "aa"), (2, "aa"), (3, "bb")])
    assert index.search("aa") == (1, 2) and index.search("cc") == ()
    changed = index.with_changes(added=[(4, "cc")], removed=[(1, "aa"), (3, "bb")])
    assert changed.search("aa") == (2,) and changed.search("bb") == () and changed.search("cc") == (4,)
    assert index.search("aa") == (1, 2) and len(index) == 3 and len(changed) == 2


def test_a_large_embedding_bank_is_an_inverted_file_that_finds_near_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over IVF_MIN_VECTORS the base is approximate (IVF): near-duplicates still match, removals and compaction hold."""
    import faiss

    monkeypatch.setattr(EmbeddingIndex, "IVF_MIN_VECTORS", 2000)
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((6000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = EmbeddingIndex(64, 0.9, np.arange(6000), vectors)
    assert isinstance(index._base, faiss.IndexIVF), "the large base is an inverted file"
    noise = rng.standard_normal((100, 64)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    near = vectors[:100] * 0.95 + noise * np.sqrt(1 - 0.95**2)  # cosine ~0.95 to its original
    found = index.search(near)
    assert all([i for i, _ in hits] == [q] for q, hits in enumerate(found)), "every near-duplicate finds its original, only it"
    assert all(hits[0][1] >= 0.9 for hits in found)
    # Removing an original drops it; past MAX_PENDING changes the IVF is rebuilt from the live rows.
    smaller = index.with_changes(removed=[0])
    assert smaller.search(near[:1]) == [[]]
    monkeypatch.setattr(EmbeddingIndex, "MAX_PENDING", 10)
    rebuilt = smaller.with_changes(np.arange(6000, 6020), vectors[100:120], removed=[1])
    assert isinstance(rebuilt._base, faiss.IndexIVF) and len(rebuilt) == 6018
    gone_0, gone_1, kept_2 = rebuilt.search(near[:3])
    assert gone_0 == [] and gone_1 == [] and [i for i, _ in kept_2] == [2]
