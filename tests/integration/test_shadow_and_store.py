"""Shadow policies on live traffic, and the embedding store feeding `moderation policy diff`."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from moderation.cli import app
from moderation.state.thumbnails import thumbnail_path

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


def stored_count(store: Path) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(store) as db:
        return db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]


def test_shadow_decisions_go_to_metrics_and_audit_and_store_feeds_diff(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "default.yaml").write_text(DEFAULT_TEXT)
    (policies / "default_strict.yaml").write_text(STRICT_SHADOW)
    store = tmp_path / "embeddings.sqlite"
    thumbnails = tmp_path / "thumbnails"
    tiny = f"local-dir:{TINY_CLIP}"
    env = {"MODERATION_EMBEDDING_STORE": str(store), "MODERATION_THUMBNAIL_STORE": str(thumbnails), "MODERATION_EMBEDDING_FLUSH_INTERVAL_S": "0.5"}
    with running_server(
        tmp_path, "--policies", str(policies), "--model", tiny, "--weights", "random", env=env
    ) as server, server.channel() as channel:  # fmt: skip
        stub = pb_grpc.ModerationServiceStub(channel)
        listed = {p.id: (p.mode, p.shadow_of) for p in stub.ListPolicies(pb.ListPoliciesRequest(), timeout=10).policies}
        assert listed == {"default": ("active", ""), "default_strict": ("shadow", "default")}
        responses = [stub.Moderate(pb.ModerateRequest(request_id=f"r{i}", image=data()), timeout=30)
                     for i, data in enumerate([images.astronaut_jpeg, images.coffee_png, images.camera_grayscale_png] * 2)]  # fmt: skip
        assert all(r.policy_id == "default" for r in responses), "the shadow never answers"
        # Shadow comparisons run in their listener's thread after each response: wait for the last one.
        deadline = time.monotonic() + 20
        while True:
            metrics = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
            counted = sum(s.value for f in text_string_to_metric_families(metrics) if f.name == "moderation_shadow_decisions" for s in f.samples)
            if counted >= len(responses) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        # No more requests come, yet the store catches up within the flush interval (not at shutdown only).
        deadline = time.monotonic() + 20
        while stored_count(store) < len(responses) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stored_count(store) == len(responses), "decisions stayed buffered while the server was idle"
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0

    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    shadow_total = sum(s.value for s in families["moderation_shadow_decisions"].samples if s.name.endswith("_total"))
    assert shadow_total == len(responses)
    below = sum(1 for r in responses for c in r.categories if c.band == pb.BAND_BELOW)
    disagreements = sum(s.value for s in families["moderation_shadow_disagreements"].samples if s.name.endswith("_total"))
    assert disagreements == below > 0

    versions = {s.labels["shadow_version"] for s in families["moderation_shadow_decisions"].samples}
    assert versions == {yaml.safe_load(STRICT_SHADOW)["version"]}

    shadow_lines = [json.loads(line) for line in server.log_text().splitlines() if '"moderation.audit.shadow"' in line]
    assert {line["request_id"] for line in shadow_lines} == {r.request_id for r in responses}
    assert all(line["shadow_policy_id"] == "default_strict" and line["shadow_action"] != "ALLOW" for line in shadow_lines)
    by_id = {r.request_id: r for r in responses}
    for line in shadow_lines:
        active = {c.id: c.score for c in by_id[line["request_id"]].categories}
        assert set(line["scores"]) == set(active)
        for category_id, (score, shadow_score) in line["scores"].items():
            assert score == pytest.approx(active[category_id], abs=1e-4) and shadow_score == pytest.approx(score, abs=1e-4)
        assert {cid for cid, (a, b) in line["actions"].items() if a != b} == set(line["disagreements"])
        assert line["shadow_policy_version"] and line["policy_version"]

    # The shadow flags every image, so every case kept a private thumbnail, and `case show` finds it.
    assert stat.S_IMODE(thumbnails.stat().st_mode) == 0o700
    kept = sorted(thumbnails.glob("*/*.jpg"))
    assert len(kept) == len(set(by_id)) and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in kept)
    copy = tmp_path / "case.jpg"
    shown = CliRunner().invoke(app, ["case", "show", "r1", "--store", str(store), "--thumbnails", str(thumbnails), "--out", str(copy), "--json"])
    assert shown.exit_code == 0, shown.output
    case = json.loads(shown.stdout)
    assert [(d["policy_id"], d["action"]) for d in case["decisions"]] == [("default", pb.Action.Name(by_id["r1"].action).removeprefix("ACTION_"))]
    assert case["thumbnail"] == str(thumbnail_path(thumbnails, "r1"))
    # What decided it, as the server stored it (issue 22): scores against thresholds, reasons, the shadow's action.
    (stored,) = case["decisions"]
    details, answered = stored["details"], by_id["r1"]
    assert [(c["id"], c["band"]) for c in details["categories"]] == [(c.id, pb.Band.Name(c.band).removeprefix("BAND_")) for c in answered.categories]
    for c, sent in zip(details["categories"], answered.categories, strict=True):
        assert c["score"] == pytest.approx(sent.score, abs=1e-5) and c["review"] == pytest.approx(sent.review_threshold)
        assert c["block"] == pytest.approx(sent.block_threshold) and c["clause"] == sent.clause_id
    assert details["reasons"] == list(answered.reasons)
    (shadow,) = details["shadows"]
    assert shadow["policy_id"] == "default_strict" and shadow["action"] != "ALLOW"
    assert set(shadow["disagree"]) == {c.id for c in answered.categories if c.band == pb.BAND_BELOW}
    readable = CliRunner().invoke(app, ["case", "show", "r1", "--store", str(store), "--thumbnails", str(thumbnails)], env={"COLUMNS": "80"})
    assert readable.exit_code == 0 and "scores against thresholds" in readable.output
    assert f"shadow default_strict@{shadow['version']}: {shadow['action']}" in " ".join(readable.output.split())
    with Image.open(copy) as thumbnail:
        assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 256
    assert not re.search(r"[A-Za-z0-9+/=]{200,}", server.log_text()), "no image data (base64 or otherwise) in the logs"

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
    assert f"store: {len(responses)} decisions in the window" in diff.stdout


def test_a_second_caller_reusing_a_request_id_keeps_its_own_case(tmp_path: Path) -> None:
    """Issue 18, item 3: cases were keyed by request id alone, so a second caller sending the first
    caller's request id replaced the first caller's thumbnail. Now a case is (caller, request id)."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "default.yaml").write_text(DEFAULT_TEXT)
    (policies / "default_strict.yaml").write_text(STRICT_SHADOW)  # flags everything: every case keeps a thumbnail
    store, thumbnails, tokens = tmp_path / "store.sqlite", tmp_path / "thumbnails", tmp_path / "tokens"
    tokens.write_text("alice:alice-token-0123456789\nmallory:mallory-token-0123456789\n")
    env = {
        "MODERATION_EMBEDDING_STORE": str(store),
        "MODERATION_THUMBNAIL_STORE": str(thumbnails),
        "MODERATION_EMBEDDING_FLUSH_INTERVAL_S": "0.5",
        "MODERATION_AUTH_TOKENS_FILE": str(tokens),
    }
    with running_server(
        tmp_path, "--policies", str(policies), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random", env=env
    ) as server, server.channel() as channel:  # fmt: skip
        stub = pb_grpc.ModerationServiceStub(channel)
        for name, picture in (("alice", images.astronaut_jpeg()), ("mallory", images.coffee_png())):
            metadata = (("authorization", f"Bearer {name}-token-0123456789"),)
            stub.Moderate(pb.ModerateRequest(request_id="shared-id", image=picture), timeout=30, metadata=metadata)
        deadline = time.monotonic() + 20
        while (stored_count(store) < 2 or len(list(thumbnails.glob("*/*.jpg"))) < 2) and time.monotonic() < deadline:
            time.sleep(0.2)
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
    kept = sum(p.stat().st_size for p in thumbnails.glob("*/*.jpg"))
    assert [s.value for s in families["moderation_thumbnails_bytes"].samples] == [kept]
    assert [s.value for s in families["moderation_thumbnails_evicted"].samples if s.name.endswith("_total")] == [0]
    alice, mallory = thumbnail_path(thumbnails, "shared-id", "token:alice"), thumbnail_path(thumbnails, "shared-id", "token:mallory")
    assert alice.is_file() and mallory.is_file() and alice.read_bytes() != mallory.read_bytes()

    def show(*options: str) -> dict:
        shown = CliRunner().invoke(app, ["case", "show", "shared-id", "--store", str(store), "--thumbnails", str(thumbnails), "--json", *options])
        assert shown.exit_code == 0, shown.output
        return json.loads(shown.stdout)

    both = show()
    assert sorted(d["caller"] for d in both["decisions"]) == ["token:alice", "token:mallory"]
    assert both["thumbnail"] is None  # two cases under this id: which one is asked for with --caller
    assert sorted((t["caller"], t["thumbnail"]) for t in both["thumbnails"]) == [("token:alice", str(alice)), ("token:mallory", str(mallory))]
    ambiguous = CliRunner().invoke(app, ["case", "show", "shared-id", "--store", str(store), "--thumbnails", str(thumbnails), "--out", str(tmp_path / "x.jpg")])
    assert ambiguous.exit_code != 0 and "pass --caller" in ambiguous.output and not (tmp_path / "x.jpg").exists()
    mine = show("--caller", "token:alice")
    assert [d["caller"] for d in mine["decisions"]] == ["token:alice"] and mine["thumbnail"] == str(alice)
    assert mine["thumbnails"] == [{"caller": "token:alice", "thumbnail": str(alice)}]
