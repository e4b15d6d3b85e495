"""Policy edits while serving: valid edits swap in atomically, broken ones are refused."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path

import yaml
from typer.testing import CliRunner

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests import images
from moderation.cli import app
from moderation.policy import load_policy_file
from moderation.policy.schema import MAX_CATEGORY_PROMPTS, MAX_TEMPLATES, MAX_TEXTS, content_sha256
from tests.policies import one_category_yaml
from tests.conftest import POLICIES, ROOT, TINY_CLIP
from tests.integration.server import RunningServer, running_server

pytestmark = pytest.mark.integration

DEFAULT_TEXT = (POLICIES / "default.yaml").read_text()


def with_version(version: str, text: str = DEFAULT_TEXT) -> str:
    return re.sub(r'^version: .*$', f'version: "{version}"', text, count=1, flags=re.M)


class ConfigMapDir:
    """The layout the kubelet gives a mounted ConfigMap, updated the way it updates it."""

    def __init__(self, root: Path):
        self.root = root
        self.generation = 0

    def publish(self, files: dict[str, str]) -> None:
        self.generation += 1
        data = self.root / f"..2026_11_23_{self.generation:04d}"
        data.mkdir()
        for name, text in files.items():
            (data / name).write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(data.name)
        os.replace(tmp, self.root / "..data")  # the atomic swap
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(Path("..data") / name)


class Load:
    """Requests sent back to back from two threads; every outcome recorded."""

    def __init__(self, target: str):
        self.target = target
        self.versions: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        jpeg = images.astronaut_jpeg()
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.ModerationServiceStub(channel)
            while not self._stop.is_set():
                try:
                    self.versions.append(stub.Moderate(pb.ModerateRequest(image=jpeg), timeout=30).policy_version)
                except grpc.RpcError as err:
                    self.failures.append(f"{err.code().name}: {err.details()}")

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def wait_for(predicate, timeout_s: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def reload_counts(server: RunningServer) -> dict[str, float]:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    family = next(f for f in text_string_to_metric_families(text) if f.name == "moderation_policy_reload")
    return {s.labels["result"]: s.value for s in family.samples if s.name.endswith("_total")}


def test_configmap_edits_under_load(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    configmap = ConfigMapDir(policies)
    configmap.publish({"default.yaml": with_version("v1")})

    with running_server(tmp_path, "--policies", str(policies), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random") as server:
        with Load(server.target) as load:
            wait_for(lambda: len(load.versions) >= 5)

            # 1. A valid edit with a new version reaches the running server.
            configmap.publish({"default.yaml": with_version("v2")})
            wait_for(lambda: load.versions[-1] == "v2")
            assert reload_counts(server)["ok"] >= 2

            # 2. A broken edit is refused; v2 keeps serving; the log names file and line.
            broken = with_version("v3").replace("review: 0.35, block: 0.70", "review: 0.35, block: 7.0", 1)
            errors_before = reload_counts(server).get("error", 0)
            configmap.publish({"default.yaml": broken})
            wait_for(lambda: reload_counts(server).get("error", 0) > errors_before)
            seen = len(load.versions)
            wait_for(lambda: len(load.versions) >= seen + 5)
            assert set(load.versions[seen:]) == {"v2"}
            assert re.search(r"policy edit rejected.*default\.yaml:\d+: categories\[sexual_content\]\.thresholds\.block", server.log_text())

            # 3. Changing rules without bumping the version is refused too.
            errors_before = reload_counts(server)["error"]
            configmap.publish({"default.yaml": with_version("v2").replace("review: 0.35, block: 0.70", "review: 0.2, block: 0.70", 1)})
            wait_for(lambda: reload_counts(server)["error"] > errors_before)
            assert "changed but its version is still 'v2'" in server.log_text()

            # 4. Fixed and bumped: served again.
            configmap.publish({"default.yaml": with_version("v4")})
            wait_for(lambda: load.versions[-1] == "v4")

        assert load.failures == [], load.failures[:5]
        assert {"v1", "v2", "v4"} <= set(load.versions) and "v3" not in load.versions


# ViT-B-32's text tower (12 layers, width 512) behind a tiny image tower: compiling
# a policy costs what it costs in production, about 20-40 ms a text on 2 CPU cores.
WIDE_TEXT_CLIP = ROOT / "tests" / "fixtures" / "wide-text-clip"


def small_policy(version: str) -> str:
    return one_category_yaml(version)


def heavy_policy(version: str) -> str:
    """Valid, at the limits: MAX_TEXTS texts, tens of seconds to compile with this text tower."""
    data = yaml.safe_load(small_policy(version))
    data["templates"] = [f"picture {i}: {{}}." for i in range(MAX_TEMPLATES)]
    data["benign"] = [f"an ordinary scene number {i}" for i in range(MAX_TEXTS // MAX_TEMPLATES - MAX_CATEGORY_PROMPTS)]
    data["categories"][0]["positive"] = [f"a weapon of kind {i}" for i in range(MAX_CATEGORY_PROMPTS)]
    return yaml.safe_dump(data)


def served_version(server: RunningServer) -> str:
    with server.channel() as channel:
        return pb_grpc.ModerationServiceStub(channel).GetPolicy(pb.GetPolicyRequest(), timeout=10).version


def test_heavy_reload_is_superseded_by_a_newer_edit_and_stops_at_sigterm(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(small_policy("v1"))
    with running_server(tmp_path, "--policies", str(policies), "--model", f"local-dir:{WIDE_TEXT_CLIP}", "--weights", "random") as server:
        # 1. A heavy (valid) edit starts compiling; a fix written meanwhile is served
        #    at once instead of waiting the tens of seconds the heavy compile takes.
        (policies / "p.yaml").write_text(heavy_policy("v2"))
        wait_for(lambda: f"computing text embeddings for p@v2 ({MAX_TEXTS} texts)" in server.log_text())
        (policies / "p.yaml").write_text(small_policy("v3"))
        wait_for(lambda: served_version(server) == "v3", timeout_s=20)
        assert "policy reload stopped, previous versions keep serving: p@v2: a newer edit" in server.log_text()

        # 2. SIGTERM during a heavy compile: the process exits promptly, cleanly.
        (policies / "p.yaml").write_text(heavy_policy("v4"))
        wait_for(lambda: "computing text embeddings for p@v4" in server.log_text())
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        assert time.monotonic() - started < 15, f"exit took {time.monotonic() - started:.0f} s"
        assert "stopped" in server.log_text().splitlines()[-1]


def test_validate_against_the_running_server(server: RunningServer, tmp_path: Path) -> None:
    policy, text = load_policy_file(POLICIES / "default.yaml")
    with server.channel() as channel:
        listed = pb_grpc.ModerationServiceStub(channel).ListPolicies(pb.ListPoliciesRequest(), timeout=10)
    (summary,) = listed.policies
    assert summary.content_sha256 == content_sha256(policy)
    assert listed.model.endswith("/random") and listed.random_weights

    def validate(edited: str):  # noqa: ANN202
        (tmp_path / "default.yaml").write_text(edited)
        return CliRunner().invoke(app, ["policy", "validate", str(tmp_path), "--served", server.target])

    assert validate("# only a comment changed\n" + text).exit_code == 0
    result = validate(text.replace("a city street", "a busy city street"))
    assert result.exit_code == 1
    assert f"version: policy 'default' changed but its version is still '{policy.version}' (as served at {server.target})" in result.output
    assert validate(with_version("2099-01-01.1", text.replace("a city street", "a busy city street"))).exit_code == 0
    # The server runs random weights: a model mismatch is reported as it would be, a warning.
    result = validate(with_version("2099-01-01.1", text.replace("model: ViT-B-32/laion2b_s34b_b79k", "model: ViT-L-14/openai")))
    assert result.exit_code == 0 and "calibrated for model 'ViT-L-14/openai'" in result.output and "ignored" in result.output


def test_series_of_renamed_categories_and_deleted_policies_go_away(tmp_path: Path) -> None:
    """Issue 18: each edit renaming 40 categories added ~960 series; none were removed, even after the policy was deleted."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "default.yaml").write_text(one_category_yaml("1", "default") + "default: true\n")
    (policies / "other.yaml").write_text(one_category_yaml("1", "other"))
    category = yaml.safe_load(one_category_yaml("1", "x"))["categories"][0]["id"]

    def per_category_series(server: RunningServer) -> list[str]:
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        return [line for line in text.splitlines() if line.startswith(("moderation_category_", "moderation_requests_total")) and "policy=" in line]

    with running_server(tmp_path, "--model", f"local-dir:{TINY_CLIP}", "--weights", "random", "--policies", str(policies)) as server:
        with server.channel() as channel:
            stub = pb_grpc.ModerationServiceStub(channel)
            for policy_id in ("default", "other"):
                stub.Moderate(pb.ModerateRequest(image=images.astronaut_jpeg(), policy_id=policy_id), timeout=60)
        assert [line for line in per_category_series(server) if f'category="{category}"' in line and 'policy="other"' in line]

        renamed = (one_category_yaml("2", "default") + "default: true\n").replace(f"id: {category}", "id: renamed")
        assert "id: renamed" in renamed
        (policies / "default.yaml").write_text(renamed)
        (policies / "other.yaml").unlink()
        wait_for(lambda: reload_counts(server).get("ok", 0) >= 2, timeout_s=120)
        left = per_category_series(server)
        assert not [line for line in left if 'policy="other"' in line], left
        assert not [line for line in left if f'category="{category}"' in line], left
        assert [line for line in left if 'category="renamed"' in line and "moderation_category_threshold" in line]
