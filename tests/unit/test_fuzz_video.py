"""Runs the atheris fuzzer over the video demux and decode path, bounded in time, from clips made here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.videos import MP4, WEBM, make_audio_only, make_video, scene_between

FUZZ_SECONDS = 30


@pytest.mark.fuzz
def test_fuzz_video_path_finds_no_uncaught_exception(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds = {
        "mp4": make_video(2, fps=5, kind=MP4, frame_at=scene_between(1, 2), size=(32, 24)),
        "webm": make_video(2, fps=5, kind=WEBM, size=(32, 24)),
        "mp4-keyframes": make_video(2, fps=5, kind=MP4, gop=1, size=(32, 24)),
        "audio": make_audio_only(0.5),
    }
    for name, data in seeds.items():
        (corpus / name).write_bytes(data)
    for found in (ROOT / "tests" / "fixtures" / "fuzz-video").iterdir():  # earlier findings stay in the corpus
        (corpus / found.name).write_bytes(found.read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.fuzz_video", str(corpus), f"-max_total_time={FUZZ_SECONDS}", "-rss_limit_mb=3000",
         "-timeout=20", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=FUZZ_SECONDS * 4,
    )  # fmt: skip
    tail = result.stderr[-3000:]
    assert result.returncode == 0, f"the fuzzer found a crash:\n{tail}"
    runs = [line for line in result.stderr.splitlines() if line.startswith("stat::number_of_executed_units")]
    assert runs and int(runs[0].split(":")[-1]) > 300, tail
    print(runs[0])
