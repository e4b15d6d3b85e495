"""Served rate with banks on against banks off, side by side in one run (issue 20).

Two real servers (ViT-B-32, random weights, the CPU backend `clip_backend=auto` picks),
each with its own SQLite state store and the shipped default policy plus a `banks:` rule:
  - on:  the store holds one bank with `--pdq` random PDQ hashes (1M by default), `--exact`
         MD5 and as many SHA-256, and `--embeddings` random 512-dimensional unit vectors,
         so every request hashes the bytes and each sampled frame (PDQ) and looks all of
         them up, embeddings included;
  - off: an empty store: the same policy, no entries, nothing hashed.
Both are started before any load (the second waits for the first, so one exports the image
tower for both), then driven in alternating rounds (`--rounds` x `--seconds` each, the same
realistic JPEGs of 640x480 to 1920x1080 as bench.clip, `--concurrency` clients), so a noisy
machine's slow minute hits both. The ratio of the summed rates is the figure; the target
is >= 0.9. One banked JPEG is checked to come back BLOCKed by its bank (the path is real).
Also recorded: each server's RSS (the difference is what the banks' indexes cost) and
the time to load the banks at start.

Run from the repository root: .venv/bin/python -m bench.banks_served
Results: bench/results/banks_served.json
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from bench.clip import ServerProcess, _rss_mb, drive, realistic_jpegs

RULE = """
banks:
  - bank: bench-known
    category: {category}
    action: BLOCK
"""


def _policy_dir(root: Path) -> Path:
    policies = root / "policies"
    policies.mkdir()
    text = Path("policies/default.yaml").read_text()
    category = re.search(r"^\s*- id: (\w+)", text[text.index("categories:") :], re.MULTILINE).group(1)  # type: ignore[union-attr]
    (policies / "default.yaml").write_text(text.rstrip() + "\n" + RULE.format(category=category))
    return policies


def _fill(state: Path, pdq: int, exact: int, embeddings: int, banked_jpeg: bytes) -> float:
    """One bank with random entries plus the SHA-256 of one real JPEG; seconds it took."""
    from moderation.signals.banks.hashing import sha256_hex
    from moderation.state.banks import BankStore, NewEntry
    from moderation.state.store import open_store

    started = time.perf_counter()
    rng = np.random.default_rng(20)
    with open_store(state) as store:
        banks = BankStore(store)
        banks.create_bank("bench-known", by="bench", embedding_min_cosine=0.95)

        def lines():  # noqa: ANN202
            for i, code in enumerate(rng.integers(0, 256, size=(pdq, 32), dtype=np.uint8)):
                yield f"p{i},pdq,{code.tobytes().hex()},100\n"
            for i, code in enumerate(rng.integers(0, 256, size=(exact, 16), dtype=np.uint8)):
                yield f"m{i},md5,{code.tobytes().hex()}\n"
            for i, code in enumerate(rng.integers(0, 256, size=(exact, 32), dtype=np.uint8)):
                yield f"s{i},sha256,{code.tobytes().hex()}\n"

        banks.import_entries("bench-known", lines(), by="bench", name="random")
        vectors = rng.standard_normal((embeddings, 512)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for chunk in range(0, embeddings, 10_000):
            banks.add_entries(
                "bench-known", [NewEntry(f"e{chunk + i}", "embedding", v) for i, v in enumerate(vectors[chunk : chunk + 10_000])], by="bench"
            )
        banks.add_entries("bench-known", NewEntry("the-banked-jpeg", "sha256", sha256_hex(banked_jpeg)), by="bench")
    return time.perf_counter() - started


def _empty(state: Path) -> None:
    from moderation.state.store import open_store

    with open_store(state):
        pass


def _banks_loaded_s(server: ServerProcess) -> float | None:
    found = re.search(r"entries indexed, loaded in ([\d.]+) s", server.log_tail(10_000_000))
    return float(found.group(1)) if found else None


def _check_banked(target: str, jpeg: bytes) -> dict:
    import grpc

    from moderation.v1 import moderation_pb2 as pb
    from moderation.v1 import moderation_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        response = pb_grpc.ModerationServiceStub(channel).Moderate(pb.ModerateRequest(image=jpeg), timeout=60)
    return {
        "action": pb.Action.Name(response.action),
        "matches": [f"{m.bank}/{m.content_id}/{pb.BankSignalType.Name(m.signal_type)}" for m in response.bank_matches],
    }


def main(
    pdq: Annotated[int, typer.Option(help="random PDQ hashes in the bank")] = 1_000_000,
    exact: Annotated[int, typer.Option(help="random MD5 hashes, and as many SHA-256")] = 100_000,
    embeddings: Annotated[int, typer.Option(help="random 512-d embeddings (looked up exhaustively per frame)")] = 10_000,
    concurrency: Annotated[int, typer.Option(help="concurrent clients")] = 16,
    seconds: Annotated[float, typer.Option(help="seconds per round per server")] = 30.0,
    rounds: Annotated[int, typer.Option(help="alternating rounds")] = 3,
    out: Annotated[Path, typer.Option(help="results file")] = Path("bench/results/banks_served.json"),
) -> None:
    jpegs = realistic_jpegs()
    banked = jpegs[0]
    root = Path(tempfile.mkdtemp(prefix="banks-served-"))
    policies = _policy_dir(root)
    fill_s = _fill(root / "on.db", pdq, exact, embeddings, banked)
    _empty(root / "off.db")
    typer.echo(f"banks filled in {fill_s:.1f} s; starting servers")
    servers = {}
    for name in ("on", "off"):
        server = ServerProcess(
            "ViT-B-32", "cpu", policies, extra_env={"MODERATION_EMBEDDING_STORE": str(root / f"{name}.db"), "MODERATION_LOG_LEVEL": "INFO"}, log_path=root / f"{name}.log"
        )
        server.wait_serving(timeout_s=900)
        servers[name] = server
    results: dict = {"rounds": []}
    try:
        results["banked_jpeg"] = _check_banked(servers["on"].target, banked)
        results["unbanked_jpeg"] = _check_banked(servers["on"].target, jpegs[1])
        asyncio.run(drive(servers["on"].target, jpegs, concurrency, 5.0))  # warm-up, both
        asyncio.run(drive(servers["off"].target, jpegs, concurrency, 5.0))
        totals = {"on": [0, 0.0], "off": [0, 0.0]}
        for number in range(rounds):
            for name in ("on", "off") if number % 2 == 0 else ("off", "on"):
                load = asyncio.run(drive(servers[name].target, jpegs, concurrency, seconds))
                totals[name][0] += load.requests
                totals[name][1] += load.seconds
                latencies = np.array(load.latencies_ms)
                row = {
                    "round": number, "server": name, "requests": load.requests, "errors": load.errors,
                    "rate": round(load.requests / load.seconds, 2),
                    "p50_ms": round(float(np.percentile(latencies, 50)), 1), "p99_ms": round(float(np.percentile(latencies, 99)), 1),
                    "load_average": round(os.getloadavg()[0], 1),
                }  # fmt: skip
                results["rounds"].append(row)
                typer.echo(json.dumps(row))
        rates = {name: requests / elapsed for name, (requests, elapsed) in totals.items()}
        results["rate_on"], results["rate_off"] = round(rates["on"], 2), round(rates["off"], 2)
        results["ratio_on_to_off"] = round(rates["on"] / rates["off"], 3)
        results["rss_mb"] = {name: round(_rss_mb(s.process.pid)[0]) for name, s in servers.items()}
        results["banks_loaded_s"] = _banks_loaded_s(servers["on"])
        signal_seconds = urllib.request.urlopen(f"http://127.0.0.1:{servers['on'].metrics_port}/metrics", timeout=10).read().decode()
        results["signal_seconds_mean_ms"] = {
            signal: round(1e3 * float(re.search(rf'moderation_signal_seconds_sum{{signal="{signal}"}} (\S+)', signal_seconds).group(1))  # type: ignore[union-attr]
            / float(re.search(rf'moderation_signal_seconds_count{{signal="{signal}"}} (\S+)', signal_seconds).group(1)), 3)  # type: ignore[union-attr]
            for signal in ("clip", "banks", "banks_prepare")
        }  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
    results.update(
        when=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        host={"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        bank={"pdq": pdq, "md5": exact, "sha256": exact + 1, "embeddings": embeddings},
        fill_seconds=round(fill_s, 1), concurrency=concurrency, seconds_per_round=seconds, target_ratio=0.9,
    )  # fmt: skip
    out.write_text(json.dumps(results, indent=2) + "\n")
    typer.echo(f"on {results['rate_on']} img/s, off {results['rate_off']} img/s: ratio {results['ratio_on_to_off']} (target >= 0.9)")


if __name__ == "__main__":
    typer.run(main)
