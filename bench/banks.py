"""Bank lookup benchmark (issue 20): one lookup in a million-entry bank, PDQ and embeddings.

One run, on this machine, random data (lookup cost does not depend on what the hashes show):
  - PDQ: `--pdq` (1M) random 256-bit hashes in one bank's PdqIndex (the project's
    exact MultiIndexHash, threshold 31); single-hash lookups, half of them near-duplicates
    of a stored hash (16 bits flipped: one hit), half random (no hit): p50/p99 of
    PdqIndex.search and of BankMatcher.match_hashes (the request path's whole bank step for
    one frame, hashing excluded), the same with the added/tombstone layers full
    (MAX_PENDING changes since the last build: the worst a reader sees), the RSS the
    index adds per million hashes, and the writer's full rebuild (compaction) time.
    Target: p99 < 1 ms.
  - Embeddings: `--embeddings` (1M) random unit vectors of 512 dimensions (ViT-B-32's)
    in EmbeddingIndex (an inverted file above 100k vectors, exhaustive below; `base` says
    which): p50/p99 of one frame's lookup, RSS, build time, and how many of 100
    near-duplicates (cosine ~0.95) found their original (the IVF is approximate).
    Target: p99 < 5 ms. Exhaustive search read all 2 GB per query (p50 81 ms), so
    faiss IndexHNSWFlat (inner product; `--hnsw` vectors, M=32, efConstruction=40,
    efSearch=64) is measured beside it: build time, p50/p99, and recall of a stored
    vector's near-duplicate (cosine ~0.95) among its top 10. Random 512-dimensional
    vectors are HNSW's worst case to build (about a second per thousand on one loaded
    core here), so a 1M build does not fit a run on this 2-core machine: pass a smaller
    --hnsw and read the figure as a lower bound (HNSW search grows ~log N).
PDQ hashing itself (pdq_hash of a 512x512 frame) is timed too: it is the per-frame cost
the request pays before any lookup.

Run from the repository root: .venv/bin/python -m bench.banks [--pdq 1000000] [--embeddings 1000000] [--hnsw 1000000]
Results: bench/results/banks.json
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import faiss
import numpy as np
import typer
from PIL import Image

from moderation.signals.banks.hashing import PdqHash, pdq_hash
from moderation.signals.banks.index import EmbeddingIndex, PdqIndex
from moderation.signals.banks.matcher import BankConfig, BankEntry, BankMatcher, ContentHashes

ROOT = Path(__file__).resolve().parent.parent
DIM = 512


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4), "max_ms": round(float(ms.max()), 4)}


def timed(calls: list, repeat: int = 1) -> dict[str, float]:
    seconds = []
    for _ in range(repeat):
        for call in calls:
            start = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - start)
    return {**percentiles(seconds), "lookups": len(seconds)}


def pdq_queries(codes: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """Half near-duplicates of stored hashes (16 bits flipped), half random."""
    near = codes[rng.choice(len(codes), count // 2, replace=False)].copy()
    bits = np.unpackbits(near, axis=1)
    for row in bits:
        row[rng.choice(256, 16, replace=False)] ^= 1
    return np.concatenate([np.packbits(bits, axis=1), rng.integers(0, 256, (count - count // 2, 32), dtype=np.uint8)])


def bench_pdq(size: int, rng: np.random.Generator) -> dict:
    codes = rng.integers(0, 256, (size, 32), dtype=np.uint8)
    before = rss_bytes()
    start = time.perf_counter()
    index = PdqIndex(31, np.arange(size), codes)
    build_s = time.perf_counter() - start
    index_bytes = rss_bytes() - before
    queries = pdq_queries(codes, rng, 2000)
    hits = sum(len(found) for found in index.search(queries))
    result = {
        "hashes": size,
        "build_seconds": round(build_s, 2),
        "rss_bytes_per_million": int(index_bytes * 1_000_000 / size),
        "codes_bytes_per_million": 32 * 1_000_000,
        "hits_of_2000_queries": hits,
        "index_search": timed([lambda q=q: index.search(q[None]) for q in queries]),
    }
    # The bank step of a request: one frame's hash through BankMatcher (entries built cheaply:
    # BankEntry per hash is what a real bank holds, so its RSS is part of the figure below).
    entries = [BankEntry("bank", f"c{i}", "pdq", code.tobytes().hex(), quality=100) for i, code in enumerate(codes)]
    before = rss_bytes()
    matcher = BankMatcher([BankConfig("bank", embedding_min_cosine=0.9)], entries)
    result["matcher_rss_bytes_per_million_with_entries"] = int((rss_bytes() - before) * 1_000_000 / size)
    hashes = [ContentHashes("0" * 64, "0" * 32, (PdqHash(q.tobytes(), 100),)) for q in queries]
    result["matcher_match_hashes"] = timed([lambda h=h: matcher.match_hashes(h) for h in hashes])
    # Worst case between compactions: MAX_PENDING changes sit in the exhaustive layers.
    pending = PdqIndex.MAX_PENDING // 2
    layered = index.with_changes(
        np.arange(size, size + pending), rng.integers(0, 256, (pending, 32), dtype=np.uint8), removed=range(pending)
    )
    result["index_search_with_full_layers"] = {**timed([lambda q=q: layered.search(q[None]) for q in queries]), "pending": layered._layers.pending}
    start = time.perf_counter()
    index.with_changes(np.arange(size, size + PdqIndex.MAX_PENDING + 1), rng.integers(0, 256, (PdqIndex.MAX_PENDING + 1, 32), dtype=np.uint8))
    result["compaction_seconds"] = round(time.perf_counter() - start, 2)
    return result


def unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.standard_normal((count, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def near_duplicates(vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = unit_vectors(rng, len(vectors))
    mixed = vectors + 0.33 * noise  # cosine ~0.95 to the original
    return mixed / np.linalg.norm(mixed, axis=1, keepdims=True)


def bench_embeddings(size: int, rng: np.random.Generator) -> dict:
    vectors = unit_vectors(rng, size)
    before = rss_bytes()
    start = time.perf_counter()
    index = EmbeddingIndex(DIM, 0.9, np.arange(size), vectors)
    build_s = time.perf_counter() - start
    added = rss_bytes() - before
    picked = rng.choice(size, 100, replace=False)
    queries = np.concatenate([near_duplicates(vectors[picked], rng), unit_vectors(rng, 100)])
    del vectors
    results = index.search(queries)
    hits = sum(len(found) for found in results)
    found_originals = sum(int(picked[i]) in [entry for entry, _ in results[i]] for i in range(100))
    return {
        "vectors": size,
        "dim": DIM,
        "build_seconds": round(build_s, 2),
        "rss_bytes_per_million": int(added * 1_000_000 / size),
        "base": type(index._base).__name__,
        "near_duplicates_found_of_100": found_originals,
        "hits_of_200_queries": hits,
        "index_search": timed([lambda q=q: index.search(q[None]) for q in queries]),
    }


def bench_hnsw(size: int, rng: np.random.Generator) -> dict:
    vectors = unit_vectors(rng, size)
    before = rss_bytes()
    hnsw = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 40
    start = time.perf_counter()
    hnsw.add(vectors)
    build_s = time.perf_counter() - start
    added = rss_bytes() - before
    hnsw.hnsw.efSearch = 64
    picked = rng.choice(size, 200, replace=False)
    queries = near_duplicates(vectors[picked], rng)
    del vectors
    _, found = hnsw.search(queries, 10)
    recall = float(np.mean([picked[i] in found[i] for i in range(len(picked))]))
    return {
        "vectors": size,
        "dim": DIM,
        "M": 32,
        "ef_construction": 40,
        "ef_search": 64,
        "build_seconds": round(build_s, 1),
        "rss_bytes_per_million": int(added * 1_000_000 / size),
        "near_duplicate_recall_at_10": recall,
        "search_top10": timed([lambda q=q: hnsw.search(q[None], 10) for q in queries]),
    }


def bench_hashing(rng: np.random.Generator) -> dict:
    frame = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    large = Image.fromarray(rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8))
    return {
        "pdq_hash_512x512": timed([lambda: pdq_hash(frame)] * 30),
        "pdq_hash_1920x1080": timed([lambda: pdq_hash(large)] * 30),
    }


def main(
    pdq: Annotated[int, typer.Option(min=1000, help="PDQ hashes in the bank")] = 1_000_000,
    embeddings: Annotated[int, typer.Option(min=0, help="embeddings in the exhaustive index (0: skip)")] = 1_000_000,
    hnsw: Annotated[int, typer.Option(min=0, help="embeddings in the HNSW index (0: skip)")] = 1_000_000,
    threads: Annotated[int, typer.Option(min=1, help="faiss (OpenMP) threads")] = 1,
    output: Annotated[Path, typer.Option(help="results JSON")] = ROOT / "bench" / "results" / "banks.json",
) -> None:
    rng = np.random.default_rng(20)
    # One lookup is one query: faiss parallelises over queries, so a second thread buys a
    # single lookup nothing, and OpenMP spinning on a shared, loaded machine costs a lot.
    faiss.omp_set_num_threads(threads)
    results: dict = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(), "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads()},
        # This machine is shared: the 1-minute load average beside each figure says how contended it was.
        "load_average_at_start": round(os.getloadavg()[0], 1),
        "targets": {"pdq_p99_ms": 1.0, "embedding_p99_ms": 5.0},
    }
    results["hashing"] = bench_hashing(rng)
    print(f"hashing: {results['hashing']}", flush=True)
    results["pdq"] = {**bench_pdq(pdq, rng), "load_average": round(os.getloadavg()[0], 1)}
    print(f"pdq: {results['pdq']}", flush=True)
    if embeddings:
        results["embeddings"] = {**bench_embeddings(embeddings, rng), "load_average": round(os.getloadavg()[0], 1)}
        print(f"embeddings: {results['embeddings']}", flush=True)
    if hnsw:
        results["embeddings_hnsw"] = {**bench_hnsw(hnsw, rng), "load_average": round(os.getloadavg()[0], 1)}
        print(f"embeddings hnsw: {results['embeddings_hnsw']}", flush=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    typer.run(main)
