"""Runs the atheris fuzzer over the decode path, bounded in time, from a corpus of real images."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moderation.v1 import moderation_pb2 as pb
from tests import images
from tests.conftest import ROOT

FUZZ_SECONDS = 45


def seed_corpus(directory: Path) -> None:
    small = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))
    seeds = {
        "jpeg": images.encode(small, "JPEG"),
        "png": images.encode(small, "PNG"),
        "webp": images.encode(small, "WEBP"),
        "bmp": images.encode(small, "BMP"),
        "tiff": images.encode(small, "TIFF"),
        "gray16": images.encode(Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16)), "PNG"),
        "palette": images.encode(small.convert("P"), "PNG", transparency=0),
    }
    frames = [small.rotate(i * 30) for i in range(5)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    seeds["gif"] = buffer.getvalue()
    seeds["request"] = pb.ModerateRequest(image=seeds["png"], request_id="r").SerializeToString()
    for name, data in seeds.items():
        (directory / name).write_bytes(data)
    for found in (ROOT / "tests" / "fixtures" / "fuzz").iterdir():  # earlier findings stay in the corpus
        (directory / found.name).write_bytes(found.read_bytes())


@pytest.mark.fuzz
def test_fuzz_decode_path_finds_no_uncaught_exception(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seed_corpus(corpus)
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.fuzz_decode", str(corpus), f"-max_total_time={FUZZ_SECONDS}", "-rss_limit_mb=3000",
         f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=FUZZ_SECONDS * 4,
    )  # fmt: skip
    tail = result.stderr[-3000:]
    assert result.returncode == 0, f"the fuzzer found a crash:\n{tail}"
    runs = [line for line in result.stderr.splitlines() if line.startswith("stat::number_of_executed_units")]
    assert runs and int(runs[0].split(":")[-1]) > 1000, tail
    print(runs[0])
