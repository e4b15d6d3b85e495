"""Bank state benchmark: importing a million PDQ lines into the store, reading them back, and a replica's poll.

One run, on this machine, for each backend (a SQLite file; a throwaway PostgreSQL started
as in the tests, tests/postgres.py, durable: fsync on):
  - import: `--lines` (1M) CSV lines `content_id,pdq,<64 hex>` into an empty bank, one
    transaction (PostgreSQL: COPY into a temporary table, then one INSERT ... SELECT;
    SQLite: one executemany), wall time and the process's peak RSS after it;
  - reimport: the same file again: every line a duplicate, skipped and counted;
  - rejected: the same file with its last line bad: checked, rolled back, nothing applied;
  - load: `load_bank_entries` over the whole bank (pages of 10,000), what a replica pays at start;
  - poll: `current_version()` (what every replica runs every few seconds), the mean of 1000.

Run from the repository root: .venv/bin/python -m bench.bank_store [--lines 1000000]
Results: bench/results/bank_store.json
"""

from __future__ import annotations

import json
import os
import platform
import resource
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from moderation.state.banks import BankStore, ImportRejected
from moderation.state.store import open_store
from tests.postgres import running_postgres

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def write_lines(path: Path, count: int, bad_last: bool = False) -> None:
    with path.open("w") as out:
        out.write("content_id,signal_type,value\n")
        for i in range(count - 1):
            out.write(f"case-{i},pdq,{(i * 0x9E3779B97F4A7C15) % (1 << 256):064x}\n")
        out.write("case-last,pdq," + ("zz" if bad_last else f"{(1 << 255) + 1:064x}") + "\n")


def measure(location: str, lines: Path, bad: Path, count: int) -> dict:
    result: dict = {}
    with open_store(location) as store:
        banks = BankStore(store)
        banks.create_bank("bench", by="bench")
        started = time.perf_counter()
        imported = banks.import_entries("bench", lines, by="bench")
        result["import_seconds"] = round(time.perf_counter() - started, 2)
        result["lines_per_second"] = round(count / result["import_seconds"])
        result["peak_rss_mb_after_import"] = peak_rss_mb()
        assert imported.added == count, imported

        started = time.perf_counter()
        again = banks.import_entries("bench", lines, by="bench")
        result["reimport_seconds"] = round(time.perf_counter() - started, 2)
        assert (again.added, again.skipped) == (0, count), again

        started = time.perf_counter()
        try:
            banks.import_entries("bench", bad, by="bench")
        except ImportRejected as error:
            assert error.errors[0][0] == count + 1, error.errors  # the header is line 1
        result["rejected_seconds"] = round(time.perf_counter() - started, 2)

        started = time.perf_counter()
        loaded = sum(1 for _ in banks.load_bank_entries("bench"))
        result["load_seconds"] = round(time.perf_counter() - started, 2)
        result["peak_rss_mb_after_load"] = peak_rss_mb()
        assert loaded == count

        started = time.perf_counter()
        for _ in range(1000):
            banks.current_version()
        result["poll_ms"] = round(time.perf_counter() - started, 3)  # seconds for 1000 polls = ms per poll
    return result


def main(
    lines: Annotated[int, typer.Option(min=1000, help="PDQ lines in the imported file")] = 1_000_000,
    output: Annotated[Path, typer.Option(help="results JSON")] = ROOT / "bench" / "results" / "bank_store.json",
) -> None:
    results: dict = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "load_average_at_start": round(os.getloadavg()[0], 1),
        "lines": lines,
    }
    with running_postgres(durable=True) as postgres, tempfile.TemporaryDirectory(prefix="bench-banks-") as directory:
        results["postgresql_version"] = postgres.bin_dir.parent.name
        good, bad = Path(directory) / "pdq.csv", Path(directory) / "pdq-bad.csv"
        write_lines(good, lines)
        write_lines(bad, lines, bad_last=True)
        results["file_mb"] = round(good.stat().st_size / 1e6, 1)
        for backend, location in {"sqlite": str(Path(directory) / "banks.db"), "postgresql": postgres.create_database("bench_banks")}.items():
            results[backend] = {**measure(location, good, bad, lines), "load_average": round(os.getloadavg()[0], 1)}
            print(f"{backend}: {results[backend]}", flush=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    typer.run(main)
