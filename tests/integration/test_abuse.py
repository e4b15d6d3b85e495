"""The mixed abuse run (bench/abuse.py), bounded to 60 s: every attack of issues 12 and 18 at once.

The 10-minute run is `python -m bench.abuse --seconds 600` (figures in bench/results/abuse.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.abuse import abuse, passed

pytestmark = [pytest.mark.integration, pytest.mark.abuse]


def test_mixed_abuse_for_a_minute(tmp_path: Path) -> None:
    figures = abuse(60, tmp_path)
    print(json.dumps({k: v for k, v in figures.items() if k != "rss_samples_every_10s"}, indent=2))
    assert passed(figures) == []
    attacks = figures["attacks"]
    # Every attack actually ran and met its bound.
    assert attacks["large-messages"].get("RESOURCE_EXHAUSTED", 0) > 0
    assert attacks["bad-tokens"].get("UNAUTHENTICATED", 0) > 0 and figures["auth_failures_counted"] > 0
    assert attacks["connections"].get("UNAVAILABLE", 0) > 0, "connections beyond max_connections are closed"
    assert attacks["long-ids"].get("NOT_FOUND", 0) > 0
    assert attacks["gif-canvas"].get("INVALID_ARGUMENT", 0) > 0, "the canvas-growing GIF reached the server and was refused"
    assert attacks["idle-sockets"].get("closed by the server", 0) > 0
    assert attacks["malformed-protobuf"].get("no token: UNAUTHENTICATED", 0) > 0
    assert attacks["malformed-protobuf"].get("token: INVALID_ARGUMENT", 0) > 0
    assert attacks["busy-streams"].get("answered", 0) > 0, "the other caller's streams were busy"
    # The well-behaved client (its own token) is served in every 10 s window: passed() checks
    # that; each window's counts are in figures["valid_requests"]["windows_of_10s"].
    assert figures["valid_requests"]["ok"] > 0
