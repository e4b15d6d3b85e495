"""explainer_mode auto: which escalation tier runs, why, and which explainer settings have no effect."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from moderation.ops.config import ExplainerMode, load_settings
from moderation.escalation.availability import explainer_available
from moderation.runtime import choose_explainer, explainer_setting_warnings


def test_auto_is_the_default_and_runs_in_process_when_weights_are_available(tmp_path: Path) -> None:
    settings = load_settings(explainer_model="tiny-smolvlm", explainer_weights="random")
    assert settings.explainer_mode is ExplainerMode.AUTO
    choice = choose_explainer(settings)
    assert choice.mode is ExplainerMode.IN_PROCESS and "random weights built from the tiny-smolvlm architecture" in choice.reason
    assert explainer_setting_warnings(settings, choice) == []

    folder = tmp_path / "smolvlm"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert choose_explainer(load_settings(explainer_model=str(folder))).mode is ExplainerMode.IN_PROCESS


def test_auto_without_weights_is_off_quickly_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    offline = load_settings(allow_downloads=False, weights_cache=tmp_path / "empty-cache")
    choice = choose_explainer(offline)
    assert choice.mode is ExplainerMode.OFF
    assert "not in the weights cache and downloads are off" in choice.reason and "--explainer off" in choice.reason

    # With downloads allowed, an unreachable hub is given up on within the probe timeout.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    started = time.monotonic()
    available, why = explainer_available("HuggingFaceTB/SmolVLM2-256M-Video-Instruct", "pretrained", tmp_path / "empty-cache", True)
    assert time.monotonic() - started < 3
    assert not available and "http://127.0.0.1:9 did not answer within 1.5 s" in why


@pytest.mark.parametrize("absent", ["torch", "transformers", "huggingface_hub"])
def test_auto_without_the_torch_extra_is_off_and_says_why(monkeypatch: pytest.MonkeyPatch, absent: str) -> None:
    """The scorer image (no torch extra) serves with explainer_mode auto: off, with the reason, even for random weights."""
    # A None entry in sys.modules is how Python marks a module as not importable: find_spec answers None.
    monkeypatch.setitem(sys.modules, absent, None)
    choice = choose_explainer(load_settings(explainer_model="tiny-smolvlm", explainer_weights="random"))
    assert choice.mode is ExplainerMode.OFF
    assert f"needs the torch extra, and {absent} is not installed here" in choice.reason, choice.reason
    # explainer_target still selects the remote tier, which needs none of them.
    assert choose_explainer(load_settings(explainer_target="explainer:50052")).mode is ExplainerMode.REMOTE


def test_explicit_modes_and_settings_without_effect() -> None:
    off = load_settings(explainer_mode="off", explainer_weights="random")
    choice = choose_explainer(off)
    assert choice.mode is ExplainerMode.OFF
    assert explainer_setting_warnings(off, choice) == ["explainer_weights=random has no effect: escalation is off"]

    remote = load_settings(explainer_target="explainer:50052", explainer_quantize=True)
    choice = choose_explainer(remote)
    assert choice.mode is ExplainerMode.REMOTE and "explainer_target is set" in choice.reason
    assert explainer_setting_warnings(remote, choice) == ["explainer_quantize=True has no effect: the explainer runs remotely (set it on explain-serve)"]

    local = load_settings(explainer_mode="in-process", explainer_target="explainer:50052")
    choice = choose_explainer(local)
    assert choice.mode is ExplainerMode.IN_PROCESS
    assert "explainer_target=explainer:50052 has no effect: the explainer runs in-process" in explainer_setting_warnings(local, choice)[0]
