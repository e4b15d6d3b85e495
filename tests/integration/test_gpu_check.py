"""scripts/gpu-check.sh runs end to end: its CPU dry run, so the GPU check is not untested code."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_gpu_check_dry_run_on_the_cpu_prints_one_passing_json_summary(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--device", "cpu", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout)  # one JSON document and nothing else on stdout
    assert summary["pass"] is True and summary["dry_run"] is True
    checks = summary["checks"]
    assert {name for name, check in checks.items() if check["pass"] is None} == {"served_vs_host_decode", "served_images_per_s"}
    assert checks["forced_escalation_completed"]["value"] == "2/2"
    assert summary["bench"]["host_decode_images_per_s"] > 0 and summary["bench"]["raw_forward_batch"] == 16
    assert summary["escalation_bench"]["new_tokens"] > 0
    assert (tmp_path / "clip.json").is_file() and (tmp_path / "escalation-dry-cpu.json").is_file()
