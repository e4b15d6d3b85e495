"""Policy edits while serving: valid edits swap in atomically, broken ones are refused."""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests import images
from tests.conftest import POLICIES, TINY_CLIP
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
            assert re.search(r"policy edit rejected.*default\.yaml:\d+: categories\[0\]\.thresholds\.block", server.log_text())

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
