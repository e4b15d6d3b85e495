"""Settings left unset resolve per device and per host (moderation/runtime.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moderation.ops.config import Settings
from moderation.runtime import ConfigurationError, decode_workers, explainer_spec, host_cpus, max_batch


def test_max_batch_defaults_per_device_and_the_setting_wins() -> None:
    assert max_batch(Settings(), "cpu") == 16
    assert max_batch(Settings(), "cuda") == 256
    assert max_batch(Settings(), "cuda:1") == 256
    assert max_batch(Settings(max_batch=32), "cuda") == 32


def test_decode_workers_default_to_the_cores_a_container_may_use(tmp_path: Path) -> None:
    assert decode_workers(Settings()) == host_cpus() >= 1
    assert decode_workers(Settings(decode_workers=3)) == 3
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a 1.5-CPU limit
    assert host_cpus(tmp_path) == min(2, host_cpus())
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert host_cpus(tmp_path) == host_cpus(tmp_path / "missing")


def test_explainer_spec_takes_the_precision_and_refuses_int8_on_cuda() -> None:
    assert str(explainer_spec(Settings(explainer_precision="bf16"), "cpu").torch_dtype) == "torch.bfloat16"
    with pytest.raises(ConfigurationError, match="explainer_quantize"):
        explainer_spec(Settings(explainer_quantize=True), "cuda")
