"""Shadow policies on live traffic, and the embedding store feeding `moderation policy diff`."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests import images
from tests.conftest import POLICIES, TINY_CLIP
from tests.integration.server import running_server

pytestmark = pytest.mark.integration

DEFAULT_TEXT = (POLICIES / "default.yaml").read_text()
# Every threshold at zero: the shadow sends everything to at least REVIEW, so it disagrees with ALLOWs.
STRICT_SHADOW = re.sub(
    r"review: 0\.\d+",
    "review: 0.0",
    DEFAULT_TEXT.replace("id: default\n", "id: default_strict\n", 1).replace("default: true\n", "mode: shadow\nshadow_of: default\n", 1),
)


def test_shadow_decisions_go_to_metrics_and_audit_and_store_feeds_diff(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "default.yaml").write_text(DEFAULT_TEXT)
    (policies / "default_strict.yaml").write_text(STRICT_SHADOW)
    store = tmp_path / "embeddings.sqlite"
    tiny = f"local-dir:{TINY_CLIP}"
    with running_server(
        tmp_path, "--policies", str(policies), "--model", tiny, "--weights", "random", env={"MODERATION_EMBEDDING_STORE": str(store)}
    ) as server, server.channel() as channel:  # fmt: skip
        stub = pb_grpc.ModerationServiceStub(channel)
        listed = {p.id: (p.mode, p.shadow_of) for p in stub.ListPolicies(pb.ListPoliciesRequest(), timeout=10).policies}
        assert listed == {"default": ("active", ""), "default_strict": ("shadow", "default")}
        responses = [stub.Moderate(pb.ModerateRequest(request_id=f"r{i}", image=data()), timeout=30)
                     for i, data in enumerate([images.astronaut_jpeg, images.coffee_png, images.camera_grayscale_png] * 2)]  # fmt: skip
        assert all(r.policy_id == "default" for r in responses), "the shadow never answers"
        metrics = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0

    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    shadow_total = sum(s.value for s in families["moderation_shadow_decisions"].samples if s.name.endswith("_total"))
    assert shadow_total == len(responses)
    below = sum(1 for r in responses for c in r.categories if c.band == pb.BAND_BELOW)
    disagreements = sum(s.value for s in families["moderation_shadow_disagreements"].samples if s.name.endswith("_total"))
    assert disagreements == below > 0

    shadow_lines = [json.loads(line) for line in server.log_text().splitlines() if '"moderation.audit.shadow"' in line]
    assert {line["request_id"] for line in shadow_lines} == {r.request_id for r in responses}
    assert all(line["shadow_policy_id"] == "default_strict" and line["shadow_action"] != "ALLOW" for line in shadow_lines)

    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT request_id, policy_id, policy_version, action FROM decisions").fetchall()
    assert sorted(r[0] for r in rows) == sorted(r.request_id for r in responses)
    assert {r[1] for r in rows} == {"default"}

    diff = subprocess.run(
        [sys.executable, "-m", "moderation", "policy", "diff", str(policies / "default.yaml"), str(policies / "default_strict.yaml"),
         "--store", str(store), "--since", "1d", "--model", tiny, "--weights", "random"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert diff.returncode == 0, diff.stderr
    assert str(len(responses)) in diff.stdout
