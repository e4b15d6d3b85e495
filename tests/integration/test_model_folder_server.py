"""`moderation serve --model-dir` from a folder `moderation export` wrote: it serves, picks up a
policy edit, and the server process never imports torch, open_clip or transformers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests import images
from tests.conftest import POLICIES, ROOT, TINY_CLIP
from tests.integration.server import RunningServer, running_server
from tests.integration.test_policy_reload import wait_for, with_version

pytestmark = pytest.mark.integration

HEAVY = ("torch", "open_clip", "transformers")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exported the way an operator would: the CLI, in its own process."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    done = subprocess.run(
        [sys.executable, "-m", "moderation", "export", str(out), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random",
         "--policies", str(POLICIES)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exported" in done.stdout and (out / "manifest.json").is_file()
    return out


def loaded_modules(server: RunningServer) -> dict[str, float]:
    """What the server process reports of sys.modules, read at scrape time (moderation_python_module_loaded)."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    family = next(f for f in text_string_to_metric_families(text) if f.name == "moderation_python_module_loaded")
    return {s.labels["module"]: s.value for s in family.samples}


def mapped_libraries(pid: int) -> set[str]:
    """Shared objects mapped into the process (Linux /proc): `import torch` maps libtorch*.so, whatever imported it."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {Path(line.split()[-1]).name for line in lines if ".so" in line.split()[-1]}


# Installed in the server process through PYTHONPATH: importing these fails as if they were not installed,
# so the test shows the lean install (`pip install moderation`, no torch extra) serves a folder.
BLOCKER = """
import importlib.abc, sys
class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {names!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test: the lean install has no torch)")
        return None
sys.meta_path.insert(0, _NotInstalled())
"""


def without_heavy_packages(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "blocker"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(names=set(HEAVY) | {"torchvision"}))
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps")
def test_serves_from_folder_without_torch(model_dir: Path, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "default.yaml").write_text(with_version("v1", (POLICIES / "default.yaml").read_text()))
    with running_server(tmp_path, "--policies", str(policies), "--model-dir", str(model_dir), env=without_heavy_packages(tmp_path)) as server:
        log = server.log_text()
        assert re.search(r"CLIP model folder .*image tower (int8-static|int8|fp32) \(.*int8.* (accepted|refused)", log), log[-3000:]
        assert "onnx-folder backend" in log
        with server.channel() as channel:
            stub = pb_grpc.ModerationServiceStub(channel)
            first = stub.Moderate(pb.ModerateRequest(image=images.astronaut_jpeg()), timeout=60)
            assert first.policy_version == "v1" and first.model.endswith("tiny-clip/random")
            assert first.categories and all(0.0 <= c.score <= 1.0 for c in first.categories)

            # A policy edit: its prompts compile through the ONNX text tower, still without torch.
            edited = with_version("v2", (POLICIES / "default.yaml").read_text())
            edited = edited.replace("benign:", "benign:\n  - a photo of a lighthouse at dusk", 1)
            assert edited.count("a photo of a lighthouse at dusk") == 1
            (policies / "default.yaml").write_text(edited)
            wait_for(lambda: stub.Moderate(pb.ModerateRequest(image=images.coffee_png()), timeout=60).policy_version == "v2", 120)

        modules = loaded_modules(server)
        assert set(modules) == set(HEAVY)
        assert modules == dict.fromkeys(HEAVY, 0.0), modules
        libraries = mapped_libraries(server.process.pid)
        assert any(name.startswith("libonnxruntime") for name in libraries), "the check must see the libraries the server does load"
        assert not [name for name in libraries if name.startswith(("libtorch", "libc10"))], sorted(libraries)


def test_torch_backend_is_seen_by_the_same_checks(tmp_path: Path) -> None:
    """The checks above can fail: a server on the torch backend reports torch and maps libtorch."""
    args = ("--policies", str(POLICIES), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random")
    with running_server(tmp_path, *args, env={"MODERATION_CLIP_BACKEND": "torch"}) as server:
        assert loaded_modules(server)["torch"] == 1.0 and loaded_modules(server)["open_clip"] == 1.0
        if Path("/proc/self/maps").exists():
            assert any(name.startswith("libtorch") for name in mapped_libraries(server.process.pid))


def test_a_missing_or_damaged_folder_stops_the_start_with_one_line(model_dir: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for item in model_dir.iterdir():
        if item.is_file():
            (damaged / item.name).write_bytes(item.read_bytes())
    cases = {
        tmp_path / "absent": "has no manifest.json: it is not a `moderation export` folder",
        damaged: "lacks tokenizer/bpe_simple_vocab_16e6.txt.gz",
    }
    for folder, expected in cases.items():
        done = subprocess.run(
            [sys.executable, "-m", "moderation", "serve", "--model-dir", str(folder), "--port", "0", "--metrics-port", "0",
             "--policies", str(POLICIES), "--explainer", "off"],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr[-2000:]
        assert expected in done.stderr and f"moderation export {folder}" in done.stderr, done.stderr[-2000:]
