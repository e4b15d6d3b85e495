"""Shadow counters carry the shadow's version, and only served versions keep series."""

from __future__ import annotations

from prometheus_client import generate_latest

from moderation.ops.metrics import ModerationMetrics


def series(metrics: ModerationMetrics) -> list[str]:
    return [line for line in generate_latest(metrics.registry).decode().splitlines() if line.startswith("moderation_shadow_")]


def test_shadow_series_are_labelled_with_the_version_and_dropped_when_it_is_no_longer_served() -> None:
    metrics = ModerationMetrics()
    metrics.publish_policies([("default", "1", []), ("default_next", "2", [])], "m")
    metrics.count_shadow_decision("default", "default_next", "2", "REVIEW")
    metrics.count_shadow_disagreement("default", "default_next", "2", "weapons")
    assert 'moderation_shadow_decisions_total{action="REVIEW",policy="default",shadow="default_next",shadow_version="2"} 1.0' in series(metrics)
    assert any('shadow_version="2"' in line and 'category="weapons"' in line for line in series(metrics))

    metrics.publish_policies([("default", "1", []), ("default_next", "3", [])], "m")  # the shadow was edited
    assert series(metrics) == [], "version 2 is no longer served: its series are gone"
    metrics.count_shadow_decision("default", "default_next", "3", "ALLOW")
    assert [line for line in series(metrics) if 'shadow_version="3"' in line]
    metrics.publish_policies([("default", "1", []), ("default_next", "3", [])], "m")  # a reload that changes nothing
    assert [line for line in series(metrics) if 'shadow_version="3"' in line], "served versions keep their counts"
