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


def test_an_animation_is_judged_on_its_evenly_spread_sample_and_names_the_frame_that_decided(tiny_scorer) -> None:  # noqa: ANN001
    """20 distinct frames, 8 sampled (docs: "sampled evenly from first to last"): each category's
    score is the highest among the sampled frames only, and the deciding frame is named by its
    index in the animation, not by its row in the sample."""
    import numpy as np

    core = build_core(Settings(), tiny_scorer)
    served = offline_policy(tiny_scorer, load_policy_file(POLICIES / "default.yaml")[0])
    pictures = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    # 4 pictures x 5 turns (the fifth a flip): 20 different frames.
    turned = [np.rot90(p, k) if k < 4 else np.fliplr(p) for k in range(5) for p in pictures]
    frames = [Image.fromarray(np.ascontiguousarray(t)).resize((96, 96)) for t in turned]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    gif = Image.open(io.BytesIO(buffer.getvalue()))
    stills = []
    for i in range(20):
        gif.seek(i)
        out = io.BytesIO()
        gif.convert("RGB").save(out, format="PNG")
        stills.append(out.getvalue())
    # The documented sample, computed here from its definition: 8 frames spread from 0 to 19.
    sampled = sorted({round(i * 19 / 7) for i in range(8)})
    assert sampled == [0, 3, 5, 8, 11, 14, 16, 19]

    animation, *per_frame = core.judge_images([buffer.getvalue(), *stills], served)
    assert animation.frames.decoded.frame_indices == tuple(sampled)
    rows_differ = False
    for category, score in ((c.category_id, c.score) for c in animation.decision.categories):
        sampled_scores = {i: next(c.score for c in per_frame[i].decision.categories if c.category_id == category) for i in sampled}
        best = max(sampled_scores, key=sampled_scores.__getitem__)
        assert score == pytest.approx(sampled_scores[best], abs=1e-4)
        assert animation.deciding[category] == best, (category, animation.deciding[category], sampled_scores)
        rows_differ |= sampled.index(best) != best
    assert rows_differ, "some category must be decided by a frame whose index differs from its row in the sample"
