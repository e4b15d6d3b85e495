"""State store benchmark: batched writes on PostgreSQL and SQLite, and `policy diff` over 1M stored decisions.

One run, on this machine:
  - writes: `--writes` decisions (ViT-B-32-sized embeddings, 512 float32) recorded by
    4 threads through the store's buffered writer, batches of 256 (the server's
    default), until every row is committed: decisions per second, PostgreSQL (COPY
    per batch, fsync on) beside SQLite (WAL, synchronous=NORMAL);
  - diff: `--decisions` (1M) stored decisions, then the real `moderation policy diff`
    command over all of them (policies/default.yaml against a variant with every
    review threshold at 0, so every decision is re-scored and many flip): wall time
    and the command's peak RSS. The embeddings are the tiny test model's (32
    dimensions; its text tower scores them) with random weights: the figure measures
    reading, scoring and deciding 1M rows, not a model's quality. A real model's text
    tower is loaded once, so its size adds a constant (load time, weights' RSS). The
    same command over 1000 decisions gives that constant on this machine (importing
    torch and open_clip is most of the peak RSS).

PostgreSQL is a throwaway cluster started here as in the tests (tests/postgres.py:
initdb + pg_ctl on a free loopback port), durable (fsync on) so the write figure is
what a production database pays on this disk.

Run from the repository root: .venv/bin/python -m bench.store [--writes 100000] [--decisions 1000000]
Results: bench/results/store.json
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from moderation.state.store import open_store
from tests.postgres import running_postgres  # the same throwaway PostgreSQL the store tests start

ROOT = Path(__file__).resolve().parent.parent
TINY_CLIP = ROOT / "tests" / "fixtures" / "tiny-clip"
WRITER_THREADS = 4


def unit_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def measure_writes(location: str, count: int) -> dict:
    """Decisions per second through record() -> buffer -> batched transactions, until all are committed."""
    pool = unit_vectors(1024, 512, seed=1)  # a pool reused round-robin: generating 2 KB per row is not what is measured
    store = open_store(location, batch_size=256, max_buffered=100_000, max_delay_s=1.0)
    now = time.time()

    def write(thread: int) -> None:
        for i in range(thread, count, WRITER_THREADS):
            store.record(f"w{i}", now, "default", "1", "ALLOW", pool[i % len(pool)], "ViT-B-32/bench")

    started = time.perf_counter()
    threads = [threading.Thread(target=write, args=(t,)) for t in range(WRITER_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()  # writes the rest: the clock stops when every row is committed
    seconds = time.perf_counter() - started
    with open_store(location, read_only=True) as reader:
        stored = reader.count_decisions()
    assert stored == count and store.dropped == 0, (stored, store.dropped)
    return {"decisions": count, "seconds": round(seconds, 2), "decisions_per_s": round(count / seconds), "batch_size": 256, "threads": WRITER_THREADS}


def measure_batch_inserts(location: str, count: int, batch_size: int = 256) -> dict:
    """The database side alone: prebuilt rows written in transactions of `batch_size` (PostgreSQL: one COPY each).

    What the backend can absorb, without the per-row checks and the GIL of record(): the
    ceiling a server's writer thread could reach.
    """
    pool = unit_vectors(1024, 512, seed=3)
    now = time.time()
    rows = [(f"b{i}", now, "default", "1", "ALLOW", "ViT-B-32/bench", pool[i % len(pool)].tobytes()) for i in range(count)]
    store = open_store(location, batch_size=batch_size, max_buffered=max(batch_size, 10_000))
    started = time.perf_counter()
    for start in range(0, count, batch_size):
        store._write(rows[start : start + batch_size], [])  # the backend's one-transaction batch write
    seconds = time.perf_counter() - started
    store.close()
    return {"decisions": count, "seconds": round(seconds, 2), "decisions_per_s": round(count / seconds), "batch_size": batch_size}


def fill(location: str, count: int, model_id: str, dim: int) -> float:
    """Store `count` decisions over the last 12 hours through the same writer, in big batches."""
    pool = unit_vectors(4096, dim, seed=2)
    store = open_store(location, batch_size=10_000, max_buffered=20_000, max_delay_s=3600)
    start = time.time() - 12 * 3600
    step = 12 * 3600 / count
    actions = ("ALLOW", "REVIEW", "BLOCK")
    started = time.perf_counter()
    for i in range(count):
        store.record(f"d{i}", start + i * step, "default", "1", actions[i % 3], pool[i % len(pool)], model_id)
    store.close()
    return time.perf_counter() - started


def measure_diff(location: str, policies: Path, tiny: str) -> dict:
    """The real `moderation policy diff` as a child process: wall time and its peak RSS (wait4's ru_maxrss)."""
    command = [
        sys.executable, "-m", "moderation", "policy", "diff", str(policies / "default.yaml"), str(policies / "strict.yaml"),
        "--store", location, "--since", "1d", "--model", tiny, "--weights", "random", "--json",
    ]  # fmt: skip
    with tempfile.TemporaryFile() as output, tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=output, stderr=errors, env={**os.environ, "OMP_NUM_THREADS": "1"})
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        errors.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"policy diff failed ({process.returncode}): {errors.read().decode()[-2000:]}")
        document = json.loads(output.read())
    return {
        "decisions": document["decisions"],
        "changed": document["changed"],
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),  # Linux: kilobytes
    }


def main(
    writes: Annotated[int, typer.Option(min=1000, help="decisions recorded for the write rate, per backend")] = 100_000,
    decisions: Annotated[int, typer.Option(min=1000, help="decisions stored for the policy diff figure")] = 1_000_000,
    skip_sqlite_diff: Annotated[bool, typer.Option(help="diff on PostgreSQL only (halves the run)")] = False,
    output: Annotated[Path, typer.Option(help="results JSON")] = ROOT / "bench" / "results" / "store.json",
) -> None:
    from moderation.runtime import load_scorer
    from moderation.signals.clip import ClipModelSpec

    tiny = f"local-dir:{TINY_CLIP}"
    scorer = load_scorer(ClipModelSpec(model=tiny, weights="random"))
    from moderation.policy import load_policy_text

    # The stored dimension must be the model's, or the diff refuses the store: ask the model.
    dim = int(scorer.index_policy(load_policy_text((ROOT / "policies" / "default.yaml").read_text())).embeddings.shape[1])
    model_id = scorer.model_id
    del scorer

    policies = Path(tempfile.mkdtemp(prefix="bench-store-policies-"))
    default_text = (ROOT / "policies" / "default.yaml").read_text()
    (policies / "default.yaml").write_text(default_text)
    (policies / "strict.yaml").write_text(re.sub(r"review: 0\.\d+", "review: 0.0", default_text))

    results: dict = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        # This machine is shared: the 1-minute load average beside each figure says how contended it was.
        "load_average_at_start": round(os.getloadavg()[0], 1),
        "writes": {},
        "diff": {},
    }
    with running_postgres(durable=True) as postgres, tempfile.TemporaryDirectory(prefix="bench-store-") as directory:
        results["postgresql_version"] = postgres.bin_dir.parent.name
        targets = {"postgresql": postgres.create_database("bench_writes"), "sqlite": str(Path(directory) / "writes.db")}
        for backend, location in targets.items():
            results["writes"][backend] = {**measure_writes(location, writes), "load_average": round(os.getloadavg()[0], 1)}
            print(f"writes {backend}: {results['writes'][backend]}", flush=True)
        inserts = {"postgresql": postgres.create_database("bench_inserts"), "sqlite": str(Path(directory) / "inserts.db")}
        results["batch_inserts"] = {}
        for backend, location in inserts.items():
            results["batch_inserts"][backend] = {**measure_batch_inserts(location, writes), "load_average": round(os.getloadavg()[0], 1)}
            print(f"batch inserts {backend}: {results['batch_inserts'][backend]}", flush=True)
        diff_targets = {"postgresql": postgres.create_database("bench_diff"), "sqlite": str(Path(directory) / "diff.db")}
        if skip_sqlite_diff:
            del diff_targets["sqlite"]
        # The command's fixed cost (importing torch and open_clip, loading the model, embedding two policies'
        # prompts) measured on a store of 1000 decisions: what the 1M figure adds to it is the streaming.
        small = postgres.create_database("bench_diff_small")
        fill(small, 1000, model_id, dim)
        results["diff"]["postgresql_1000_decisions"] = measure_diff(small, policies, tiny)
        print(f"diff baseline: {results['diff']['postgresql_1000_decisions']}", flush=True)
        for backend, location in diff_targets.items():
            fill_s = fill(location, decisions, model_id, dim)
            measured = measure_diff(location, policies, tiny)
            results["diff"][backend] = {**measured, "embedding_dim": dim, "fill_seconds": round(fill_s, 1), "load_average": round(os.getloadavg()[0], 1)}
            print(f"diff {backend}: {results['diff'][backend]}", flush=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    typer.run(main)
