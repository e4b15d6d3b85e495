"""The real server with the GPU's dtypes, on the CPU: fp16 CLIP, bf16 explainer, embedding store on.

Issue 11: on CUDA every Moderate failed with INTERNAL (float32 pixels into fp16
weights), forced escalations died in the grammar mask, and the embedding store
would have called .numpy() on a device tensor. The dtype half of that reproduces on
the CPU, so the whole path runs here in half precision.
"""

from __future__ import annotations

import io
import re
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests import images
from tests.integration.server import running_server
from tests.integration.test_escalation_server import EXPLAINER, TINY, check_completed

pytestmark = pytest.mark.integration


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (96, 64), color) for color in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


@pytest.mark.parametrize("clip_precision", ["fp16", "bf16"])
def test_half_precision_server_moderates_escalates_and_stores(tmp_path: Path, clip_precision: str) -> None:
    store = tmp_path / "embeddings.sqlite"
    env = {
        "MODERATION_CLIP_PRECISION": clip_precision,
        "MODERATION_EXPLAINER_PRECISION": "bf16",
        "MODERATION_EMBEDDING_STORE": str(store),
        "MODERATION_LOG_FORMAT": "text",
    }
    with running_server(tmp_path, *TINY, "--explainer", "in-process", *EXPLAINER, env=env) as server, server.channel() as channel:
        stub = pb_grpc.ModerationServiceStub(channel)
        sent = [images.astronaut_jpeg, images.coffee_png, images.camera_grayscale_png, animated_gif]
        responses = [stub.Moderate(pb.ModerateRequest(request_id=f"r{i}", image=data()), timeout=60) for i, data in enumerate(sent)]
        forced = stub.Moderate(pb.ModerateRequest(request_id="forced", image=images.astronaut_jpeg(), force_escalation=True), timeout=120)
        log = server.log_text()
    for response in responses:
        assert response.categories and all(0.0 <= c.score <= 1.0 for c in response.categories)
    check_completed(forced)
    dtype = {"fp16": "float16", "bf16": "bfloat16"}[clip_precision]
    assert re.search(rf"backend, cpu, {dtype}; batches up to 16", log), "the server says what it runs"
    assert "on cpu (bfloat16)" in log
    with sqlite3.connect(store) as db:
        stored = db.execute("SELECT request_id, length(embedding) FROM decisions").fetchall()
    assert sorted(r for r, _ in stored) == sorted([*(f"r{i}" for i in range(len(sent))), "forced"])
    assert {length for _, length in stored} == {32 * 4}, "float32 vectors of the tiny model's 32 dimensions"
