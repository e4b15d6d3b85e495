"""A bounded load test on loopback: overload is answered with RESOURCE_EXHAUSTED only, memory stays bounded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.clip import _rss_mb, drive, realistic_jpegs
from tests.conftest import POLICIES, TINY_CLIP
from tests.integration.server import running_server

pytestmark = pytest.mark.integration


def test_overload_is_rejected_fast_and_memory_stays_bounded(tmp_path: Path) -> None:
    env = {"MODERATION_MAX_QUEUE": "4", "MODERATION_MAX_CONCURRENT_REQUESTS": "12", "MODERATION_MAX_BATCH": "4"}
    jpegs = realistic_jpegs()
    with running_server(tmp_path, "--policies", str(POLICIES), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random", env=env) as server:
        warm = asyncio.run(drive(server.target, jpegs, 2, 3.0))
        rss_before, _ = _rss_mb(server.process.pid)
        rounds = [asyncio.run(drive(server.target, jpegs, 48, 8.0)) for _ in range(3)]
        rss_after, peak = _rss_mb(server.process.pid)
        calm = asyncio.run(drive(server.target, jpegs, 1, 2.0))

    assert warm.requests > 0 and not warm.errors
    served = sum(r.requests for r in rounds)
    errors: dict[str, int] = {}
    for r in rounds:
        for code, count in r.errors.items():
            errors[code] = errors.get(code, 0) + count
    print(f"served {served}, rejected {errors}, rss {rss_before:.0f} -> {rss_after:.0f} MB (peak {peak:.0f})")
    assert served > 0
    assert set(errors) <= {"RESOURCE_EXHAUSTED"}, errors
    assert errors.get("RESOURCE_EXHAUSTED", 0) > 0, "48 clients against 12 slots must be shed"
    assert rss_after < rss_before * 1.3 + 100, (rss_before, rss_after)
    assert calm.requests > 0 and not calm.errors, "the server recovers once the spike is over"
