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


def per_category_series(metrics: ModerationMetrics) -> list[str]:
    families = ("moderation_category_score", "moderation_category_decisions_total", "moderation_tier_agreement_total", "moderation_requests_total", "moderation_escalations_total")
    return [line for line in generate_latest(metrics.registry).decode().splitlines() if line.startswith(families)]


def test_series_of_categories_and_policies_no_longer_served_are_removed() -> None:
    """Issue 18: each edit renaming 40 categories added ~960 series; none were removed, even after the policy was deleted."""
    metrics = ModerationMetrics()
    metrics.publish_policies([("default", "1", [("weapons", 0.3, 0.6), ("drugs", 0.3, 0.6)]), ("other", "1", [("spam", 0.3, 0.6)])], "m")
    for policy, category in (("default", "weapons"), ("default", "drugs"), ("other", "spam")):
        metrics.category_score.labels(policy, category).observe(0.5)
        metrics.decisions.labels(policy, category, "BORDERLINE").inc()
        metrics.tier_agreement.labels(policy, category, "agree").inc()
        metrics.requests.labels(policy, "REVIEW", "OK").inc()
        metrics.escalations.labels(policy, "COMPLETED").inc()
    metrics.requests.labels("unknown", "none", "NOT_FOUND").inc()

    # default renames drugs to narcotics; other is deleted.
    metrics.publish_policies([("default", "2", [("weapons", 0.3, 0.6), ("narcotics", 0.3, 0.6)])], "m")
    lines = per_category_series(metrics)
    assert not [line for line in lines if 'category="drugs"' in line or 'policy="other"' in line], lines
    assert [line for line in lines if 'category="weapons"' in line and line.startswith("moderation_category_score_count")]
    assert [line for line in lines if 'policy="unknown"' in line], "unknown stays: it is bounded"
    assert [line for line in lines if line.startswith("moderation_requests_total") and 'policy="default"' in line]
