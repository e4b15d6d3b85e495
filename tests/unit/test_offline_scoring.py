"""Offline scoring (policy test, calibrate) judges a file the way the server does."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import skimage.data
from PIL import Image

from moderation.offline.scoring import offline_policy, score_image_files
from moderation.ops.config import Settings
from moderation.policy import load_policy_file
from moderation.runtime import build_core
from tests.conftest import POLICIES


def test_animation_scores_as_its_most_severe_sampled_frame(tmp_path: Path, tiny_scorer) -> None:  # noqa: ANN001
    scorer = tiny_scorer
    core = build_core(Settings(), scorer)
    served = offline_policy(scorer, load_policy_file(POLICIES / "default.yaml")[0])
    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    frames = [Image.fromarray(sources[i]).resize((96, 96)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    (tmp_path / "anim.gif").write_bytes(buffer.getvalue())
    stills = []
    gif = Image.open(io.BytesIO(buffer.getvalue()))
    for i in range(3):
        gif.seek(i)
        stills.append(tmp_path / f"frame{i}.png")
        gif.convert("RGB").save(stills[-1])

    animation, *per_frame = score_image_files(core, served, [tmp_path / "anim.gif", *stills])
    for category, score in animation.scores.items():
        assert score == pytest.approx(max(f.scores[category] for f in per_frame), abs=1e-4)
