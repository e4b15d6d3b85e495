"""`policy test` and `compare` judge an image as the server does, with the same non-default settings.

The settings file changes frame sampling (3 frames instead of 8) and turns JPEG draft
mode off. The animation's frames 0, 6 and 11 (the three a 3-frame sample takes) show one
picture and every other frame another, so the default 8-frame sample sees a different
image; the large JPEG decodes to different pixels with and without draft mode. The
offline commands, given the server's settings file, must report the server's scores,
and without it they must not: that is what makes this test able to fail.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import skimage.data
from PIL import Image
from typer.testing import CliRunner

from moderation.cli import app
from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests.conftest import POLICIES, TINY_CLIP
from tests.integration.server import running_server

pytestmark = pytest.mark.integration

TINY = ["--model", f"local-dir:{TINY_CLIP}", "--weights", "random"]
SETTINGS = "sample_frames: 3\njpeg_draft: false\n"


def animation() -> bytes:
    shown, hidden = (Image.fromarray(source).convert("RGB").resize((96, 96)) for source in (skimage.data.astronaut(), skimage.data.coffee()))
    frames = [shown if i in (0, 6, 11) else hidden for i in range(12)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return buffer.getvalue()


def large_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).resize((1800, 1200)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def offline_scores(*args: str) -> dict[str, dict[str, float]]:
    """image name -> category -> score, from `policy test --json`."""
    result = CliRunner().invoke(app, ["policy", "test", *args, *TINY, "--json"])
    assert result.exit_code == 0, result.output
    (policy,) = json.loads(result.stdout)["policies"]
    return {case["image"]: {cid: c["score"] for cid, c in case["categories"].items()} for case in policy["cases"]}


def test_policy_test_and_compare_decide_as_the_server_with_its_settings(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(POLICIES / "default.yaml", policies / "default.yaml")
    config = tmp_path / "settings.yaml"
    config.write_text(SETTINGS)
    images = {"animation.gif": animation(), "large.jpg": large_jpeg()}
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
    cases = tmp_path / "cases.yaml"
    cases.write_text("policy: default\ncases:\n" + "".join(f"  - {{image: {name}, expect: ALLOW}}\n" for name in images))

    with running_server(tmp_path, "--policies", str(policies), "--config", str(config), *TINY) as server, server.channel() as channel:
        stub = pb_grpc.ModerationServiceStub(channel)
        served = {name: stub.Moderate(pb.ModerateRequest(request_id=name, image=data), timeout=60) for name, data in images.items()}
    assert served["animation.gif"].frames_scored == 3
    server_scores = {name: {c.id: c.score for c in response.categories} for name, response in served.items()}

    policy_file = str(policies / "default.yaml")
    same_settings = offline_scores(policy_file, "--cases", str(cases), "--config", str(config))
    default_settings = offline_scores(policy_file, "--cases", str(cases))
    for name in images:
        # float32 on the wire: equal to the protobuf's precision.
        assert same_settings[name] == pytest.approx(server_scores[name], abs=1e-6), name
        assert default_settings[name] != pytest.approx(server_scores[name], abs=1e-6), f"{name}: the settings must matter"

    compared = CliRunner().invoke(app, ["compare", *map(str, (tmp_path / name for name in images)), "--policy", policy_file,
                                        "--config", str(config), "--no-explainer", "--json", *TINY])  # fmt: skip
    assert compared.exit_code == 0, compared.output
    for document in json.loads(compared.stdout)["images"]:
        name = Path(document["image"]).name
        assert {c["id"]: c["clip_score"] for c in document["categories"]} == pytest.approx(server_scores[name], abs=1e-6)
        assert document["action"] == pb.Action.Name(served[name].action).removeprefix("ACTION_")
    # Decisions too, not only scores.
    result = CliRunner().invoke(app, ["policy", "test", policy_file, "--cases", str(cases), "--config", str(config), *TINY, "--json"])
    actions = {case["image"]: case["action"] for case in json.loads(result.stdout)["policies"][0]["cases"]}
    assert actions == {name: pb.Action.Name(r.action).removeprefix("ACTION_") for name, r in served.items()}
