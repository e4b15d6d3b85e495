"""The mixed abuse run (bench/abuse.py), bounded to 60 s: every attack of issue 12 at once.

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
    assert figures["valid_requests"]["ok"] > 0
