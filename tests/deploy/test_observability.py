"""Prometheus rules and the Grafana dashboard, checked with promtool and against the server's metrics."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from tests.conftest import ROOT
from tests.deploy.conftest import DASHBOARD_FILE, RULES_FILE, RULES_TEST_FILE

pytestmark = pytest.mark.deploy

# Metrics the explainer tier adds (escalation outcomes, micro-batcher, queue,
# tier agreement). The rules and the dashboard use them already; until
# moderation/ops/metrics.py defines them they are accepted from this list.
EXPLAINER_TIER_METRICS = {
    "moderation_escalations_total",
    "moderation_queue_depth",
    "moderation_queue_capacity",
    "moderation_tier_agreement_total",
    "moderation_batch_size",
}
HISTOGRAM_SERIES_SUFFIXES = ("_bucket", "_sum", "_count")


def promtool_run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES_FILE.read_text())["groups"] for rule in group["rules"]]


def alert_names() -> set[str]:
    return {rule["alert"] for rule in rules() if "alert" in rule}


def server_metric_names() -> set[str]:
    """Names moderation/ops/metrics.py registers."""
    return set(re.findall(r'"(moderation_[a-z_]+)"', (ROOT / "moderation" / "ops" / "metrics.py").read_text()))


def metric_names_in(expr: str) -> set[str]:
    """moderation_* metric names a PromQL expression reads (recording-rule names, which contain ':', excluded)."""
    names = set()
    for token in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if token.startswith("moderation_") and ":" not in token:
            for suffix in HISTOGRAM_SERIES_SUFFIXES:
                if token.endswith(suffix) and token.removesuffix(suffix) in server_metric_names() | EXPLAINER_TIER_METRICS:
                    token = token.removesuffix(suffix)
            names.add(token)
    return names


def dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text())


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard()["panels"] if p["type"] != "row" for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]
    exprs += [a["expr"] for a in dashboard()["annotations"]["list"]]
    return exprs


def test_promtool_checks_the_rules(promtool: str) -> None:
    checked = promtool_run(promtool, "check", "rules", str(RULES_FILE))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    tested = promtool_run(promtool, "test", "rules", str(RULES_TEST_FILE))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    firing, silent = set(), set()
    for case in yaml.safe_load(RULES_TEST_FILE.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert alert_names() - firing == set(), "alerts without a test where they fire"
    assert alert_names() - silent == set(), "alerts without a test where they stay silent"


def test_alerts_carry_severity_and_text() -> None:
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_queries_read_only_metrics_the_service_exports(source: str) -> None:
    exprs = [rule["expr"] for rule in rules()] if source == "rules" else dashboard_exprs()
    read = set().union(*(metric_names_in(expr) for expr in exprs))
    unknown = read - server_metric_names() - EXPLAINER_TIER_METRICS
    assert not unknown, f"{source} read metrics that neither moderation/ops/metrics.py nor the explainer tier define"


def test_dashboard_covers_what_operators_watch() -> None:
    read = set().union(*(metric_names_in(expr) for expr in dashboard_exprs()))
    assert {
        "moderation_stage_seconds",  # latency per stage
        "moderation_requests_total",  # decisions by action, errors
        "moderation_category_decisions_total",  # decisions by category
        "moderation_category_score",  # score histograms
        "moderation_category_threshold",  # ... against their thresholds
        "moderation_escalations_total",
        "moderation_tier_agreement_total",
        "moderation_batch_size",
        "moderation_shadow_disagreements_total",  # a shadow policy against the active one (issue 22)
        "moderation_shadow_decisions_total",
        "moderation_auth_failures_total",  # refused credentials, by reason
        "moderation_review_queue_depth",  # the review queue (issue 22): depth, oldest case, decisions, agreement
        "moderation_review_oldest_open_case_age_seconds",
        "moderation_review_decisions_total",
        "moderation_review_agreement_total",
    } <= read


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for panel in panels:
        assert 0 <= panel["gridPos"]["x"] and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "policy", "category"} <= variables
