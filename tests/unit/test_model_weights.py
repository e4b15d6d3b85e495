"""`moderation weights list|prefetch` against a Hugging Face Hub stand-in on loopback (tests/fake_hub.py).

What matters is the air-gapped start: after `prefetch`, with the hub gone and downloads
off, the server's own loaders find every file in the cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY_CLIP
from tests.fake_hub import fake_hub

CLIP_REPO = "example-org/tiny-clip"
EXPLAINER_REPO = "example-org/tiny-smolvlm"


@pytest.fixture(scope="module")
def hub_repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two model repositories as the hub would hold them: a tiny open_clip model and a tiny SmolVLM2."""
    import torch
    from safetensors.torch import save_file

    from moderation.escalation.loading import ExplainerSpec, load_explainer
    from moderation.signals.clip import ClipModelSpec
    from moderation.signals.clip.loading import build_open_clip

    root = tmp_path_factory.mktemp("hub")
    clip_repo = root / "clip"
    clip_repo.mkdir()
    shutil.copy(TINY_CLIP / "open_clip_config.json", clip_repo)
    torch.manual_seed(7)
    clip = build_open_clip(ClipModelSpec(model=f"local-dir:{TINY_CLIP}", weights="random"))
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(clip_repo / "open_clip_model.safetensors"))
    (clip_repo / "README.md").write_text("not a weight file: left out of the download\n")

    explainer_repo = root / "explainer"
    loaded = load_explainer(ExplainerSpec(model="tiny-smolvlm", weights="random"))
    loaded.model.save_pretrained(explainer_repo)
    loaded.processor.save_pretrained(explainer_repo)
    (explainer_repo / "onnx").mkdir()
    (explainer_repo / "onnx" / "model.onnx").write_bytes(b"another format: left out of the download")
    return {CLIP_REPO: clip_repo, EXPLAINER_REPO: explainer_repo}


def _moderation(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODERATION_"))}
    full_env = {**inherited, "COLUMNS": "200", **env}
    return subprocess.run(
        [sys.executable, "-m", "moderation", "weights", *args], env=full_env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def _settings(cache: Path | None = None) -> dict[str, str]:
    env = {
        "MODERATION_CLIP_MODEL": f"hf-hub:{CLIP_REPO}",
        "MODERATION_EXPLAINER_MODEL": EXPLAINER_REPO,
        "MODERATION_EXPLAINER_WEIGHTS": "pretrained",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    if cache is not None:
        env["MODERATION_WEIGHTS_CACHE"] = str(cache)
    return env


def test_prefetch_fills_a_cache_the_loaders_then_read_with_the_hub_gone(hub_repos: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "models"
    with fake_hub(hub_repos) as hub:
        fetched = _moderation(["prefetch", str(cache), "--json"], {**_settings(), "HF_ENDPOINT": hub.endpoint})
        assert fetched.returncode == 0, fetched.stderr
        requested = list(hub.requests)
    document = json.loads(fetched.stdout)
    by_component = {source["component"]: source for source in document["sources"]}
    assert set(by_component) == {"clip", "explainer"}
    assert all(source["complete"] for source in by_component.values())
    clip_names = {Path(p).name for p in by_component["clip"]["cached_files"]}
    assert clip_names == {"open_clip_config.json", "open_clip_model.safetensors"}  # README.md is not a model file
    explainer_names = {Path(p).name for p in by_component["explainer"]["cached_files"]}
    assert {"config.json", "model.safetensors"} <= explainer_names
    assert "model.onnx" not in explainer_names and not any("onnx/" in r for r in requested)
    assert any(r == f"GET /{CLIP_REPO}/resolve/{'0123456789abcdef0123456789abcdef01234567'}/open_clip_model.safetensors" for r in requested)

    # The hub is gone: list --check reads the cache as serve does with downloads off.
    offline = {**_settings(cache), "HF_ENDPOINT": "http://127.0.0.1:9", "MODERATION_ALLOW_DOWNLOADS": "false"}
    listed = _moderation(["list", "--check"], offline)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "cached: 2 files" in listed.stdout

    # And the server's own loaders start from it: CLIP scores, the explainer loads.
    from moderation.escalation.loading import ExplainerSpec, load_explainer
    from moderation.runtime import load_scorer
    from moderation.signals.clip import ClipModelSpec

    scorer = load_scorer(ClipModelSpec(model=f"hf-hub:{CLIP_REPO}", weights="pretrained-tag-ignored", cache_dir=cache, allow_downloads=False))
    assert scorer is not None
    loaded = load_explainer(ExplainerSpec(model=EXPLAINER_REPO, cache_dir=cache, allow_downloads=False))
    assert loaded.model.config.text_config.vocab_size == json.loads((hub_repos[EXPLAINER_REPO] / "config.json").read_text())["text_config"]["vocab_size"]


def test_the_prefetched_clip_weights_are_the_hubs_not_a_fresh_random_model(hub_repos: dict[str, Path], tmp_path: Path) -> None:
    """A loader that quietly fell back to random initialisation would still 'start': compare the tensors."""
    import torch
    from safetensors.torch import load_file

    from moderation.signals.clip import ClipModelSpec
    from moderation.signals.clip.loading import build_open_clip

    cache = tmp_path / "models"
    with fake_hub(hub_repos) as hub:
        fetched = _moderation(["prefetch", str(cache), "--only", "clip"], {**_settings(), "HF_ENDPOINT": hub.endpoint})
    assert fetched.returncode == 0, fetched.stderr
    assert "ready: serve with MODERATION_WEIGHTS_CACHE=" in fetched.stdout
    built = build_open_clip(ClipModelSpec(model=f"hf-hub:{CLIP_REPO}", cache_dir=cache, allow_downloads=False))
    published = load_file(str(hub_repos[CLIP_REPO] / "open_clip_model.safetensors"))
    state = built.model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in published.items())


def test_list_check_fails_on_an_empty_cache_and_says_what_is_missing(tmp_path: Path) -> None:
    offline = {**_settings(tmp_path / "empty"), "HF_ENDPOINT": "http://127.0.0.1:9", "MODERATION_ALLOW_DOWNLOADS": "false"}
    listed = _moderation(["list", "--check"], offline)
    assert listed.returncode == 1
    assert f"hub repository {CLIP_REPO}" in listed.stdout and f"hub repository {EXPLAINER_REPO}" in listed.stdout
    assert listed.stdout.count("missing:") == 2
    # Without --check it only reports.
    assert _moderation(["list"], offline).returncode == 0


def test_random_weights_and_an_exported_folder_need_nothing(tmp_path: Path) -> None:
    listed = _moderation(
        ["list", "--check", "--json", "--weights", "random", "--explainer-weights", "random"], {"MODERATION_WEIGHTS_CACHE": str(tmp_path)}
    )
    assert listed.returncode == 0, listed.stderr
    kinds = {s["component"]: (s["kind"], s["note"]) for s in json.loads(listed.stdout)["sources"]}
    assert kinds["clip"][0] == "nothing" and "random" in kinds["clip"][1]
    assert kinds["explainer"][0] == "nothing" and "random" in kinds["explainer"][1]


def test_pretrained_tags_name_the_hub_file_open_clip_publishes(tmp_path: Path) -> None:
    listed = _moderation(["list", "--json", "--only", "clip"], {"MODERATION_WEIGHTS_CACHE": str(tmp_path), "MODERATION_ALLOW_DOWNLOADS": "false"})
    assert listed.returncode == 0, listed.stderr
    (clip,) = json.loads(listed.stdout)["sources"]
    # The default model and tag (README: ViT-B-32 / laion2b_s34b_b79k).
    assert (clip["kind"], clip["repo"]) == ("hub-file", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    assert clip["files"][0] == "open_clip_model.safetensors" and not clip["complete"]


def test_prefetch_from_an_unreachable_hub_fails_with_one_sentence(tmp_path: Path) -> None:
    fetched = _moderation(["prefetch", str(tmp_path / "models"), "--only", "explainer"], {**_settings(), "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert fetched.returncode == 2
    assert f"cannot fetch the explainer weights from {EXPLAINER_REPO}" in fetched.stderr
    assert "Traceback" not in fetched.stderr


def test_prefetch_of_a_repository_the_hub_does_not_have(hub_repos: dict[str, Path], tmp_path: Path) -> None:
    with fake_hub(hub_repos) as hub:
        fetched = _moderation(
            ["prefetch", str(tmp_path / "models"), "--only", "clip", "--model", "hf-hub:example-org/no-such-model"],
            {**_settings(), "HF_ENDPOINT": hub.endpoint},
        )
    assert fetched.returncode == 2
    assert "cannot fetch the clip weights from example-org/no-such-model" in fetched.stderr


def test_only_takes_clip_or_explainer(tmp_path: Path) -> None:
    listed = _moderation(["list", "--only", "banks"], {"MODERATION_WEIGHTS_CACHE": str(tmp_path)})
    assert listed.returncode == 2 and "--only must be clip or explainer" in listed.stderr
