"""Without the torch extra (the lean install, the scorer image): what needs torch says so in one line.

The scorer image (deploy/Containerfile, target scorer) has no torch, open_clip or transformers.
A None entry in sys.modules is how Python marks a module as not importable: find_spec answers
None and `import` raises, as in that image.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moderation.cli import app
from moderation.ops.config import Device
from moderation.runtime import ConfigurationError, resolve_device


@pytest.mark.parametrize(
    ("command", "absent"),
    [
        (["export", "OUT", "--weights", "random"], "torch"),
        (["export", "OUT"], "open_clip"),
        (["explain-serve"], "transformers"),
        (["weights", "list"], "open_clip"),
        (["weights", "prefetch", "OUT"], "torch"),
    ],
)
def test_torch_commands_exit_2_naming_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], absent: str) -> None:
    monkeypatch.setitem(sys.modules, absent, None)
    args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"`moderation {command[0]}` needs the torch extra, and {absent} is not installed here" in message, message
    assert "target torch" in message
    assert not (tmp_path / "out").exists()


def test_serving_without_a_folder_needs_torch_and_says_what_to_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ConfigurationError, match=r"set MODERATION_CLIP_MODEL_DIR \(--model-dir\) to a folder `moderation export` wrote"):
        resolve_device(Device.AUTO)
    # With a folder, the device is the CPU and torch is never asked for.
    assert resolve_device(Device.AUTO, tmp_path) == "cpu"
