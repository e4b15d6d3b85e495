"""Video moderation speed as a multiple of real time: sampled decoding vs decoding every frame, in one run.

A 60 s 1280x720 H.264 clip (30 fps, a keyframe every 2 s, x264's default B-frames; a
moving texture made here) is moderated at 1 frame per second under policies/default.yaml
with ViT-B-32 (random weights: real FLOPs, meaningless scores), the server's settings
otherwise. Two pipelines, alternated over the rounds so both see the same machine:

  sampled  what ModerateVideo does: moderation/video/decode.py (packet index, only the
           keyframe groups holding a sampled time, each decoded up to its sampled frame,
           non-reference frames skipped) -> core.prepare -> embed -> judge -> segments
  naive    decode every frame and convert each to RGB, keep one a second, then the same
           prepare -> embed -> judge -> segments

Each reports seconds per clip (median of the rounds) and the multiple of real time
(60 s / that). Run nice'd, with 2 torch threads and the machine's 2 cores:

    nice python -m bench.video [--rounds 3] [--output bench/results/video.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "video.json"
SECONDS, FPS, SIZE, GOP = 60, 30, (1280, 720), 60


def make_clip(seconds: int = SECONDS, fps: int = FPS, size: tuple[int, int] = SIZE, gop: int = GOP) -> bytes:
    """A moving texture: detail everywhere (so frames cost what real ones do), smooth motion (a real bitrate)."""
    import av

    width, height = size
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, size=(height // 8 + 64, width // 8 + 64, 3), dtype=np.uint8)
    texture = np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        for i in range(seconds * fps):
            dx, dy = (2 * i) % 256, i % 200
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[dy : dy + height, dx : dx + width]), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the bench's 2 cores)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    import torch

    from moderation.core.decode import DecodedImage
    from moderation.offline.scoring import offline_policy
    from moderation.ops.config import Settings
    from moderation.policy import load_policy_file
    from moderation.runtime import build_core, clip_spec, load_scorer, video_limits
    from moderation.video.decode import decode_video, naive_decode
    from moderation.video.segments import video_answer

    torch.set_num_threads(args.threads)
    settings = Settings(clip_model="ViT-B-32", clip_weights="random", device="cpu")
    scorer = load_scorer(clip_spec(settings))
    core = build_core(settings, scorer)
    served = offline_policy(scorer, load_policy_file(REPO_ROOT / "policies" / "default.yaml")[0])
    limits = video_limits(settings)

    started = time.perf_counter()
    clip = make_clip()
    print(f"clip: {len(clip) / 1e6:.1f} MB, {SECONDS} s {SIZE[0]}x{SIZE[1]} H.264 at {FPS} fps, made in {time.perf_counter() - started:.0f} s")

    def judge(data: bytes, decoded: DecodedImage, times: tuple[int, ...], info: Any) -> tuple[float, float, int]:
        t0 = time.perf_counter()
        sample = core.prepare(data, decoded)
        [embeddings] = core.embed([sample])
        judgement = core.judge(sample, embeddings, served)
        if info is not None:
            video_answer(judgement.evidence, served.policy, decoded.frame_indices, times, info)
        return time.perf_counter() - t0, float(judgement.decision.categories[0].score), len(decoded.frames)

    def sampled() -> dict[str, float]:
        t0 = time.perf_counter()
        video = decode_video(clip, limits, 1.0)
        decode_s = time.perf_counter() - t0
        judge_s, _, frames = judge(clip, video.image, video.times_ms, video.info)
        return {"decode_s": decode_s, "judge_s": judge_s, "total_s": decode_s + judge_s, "frames_scored": frames, "frames_decoded": video.info.frames_decoded}

    def naive() -> dict[str, float]:
        t0 = time.perf_counter()
        frames = naive_decode(clip, 1.0)
        decode_s = time.perf_counter() - t0
        decoded = DecodedImage(tuple(frames), tuple(range(len(frames))), SECONDS * FPS)
        judge_s, _, count = judge(clip, decoded, (), None)
        return {"decode_s": decode_s, "judge_s": judge_s, "total_s": decode_s + judge_s, "frames_scored": count, "frames_decoded": SECONDS * FPS}

    runs: dict[str, list[dict[str, float]]] = {"sampled": [], "naive": []}
    sampled()  # warm-up: the model's first forward passes, FFmpeg's first open
    for round_ in range(args.rounds):
        for name, pipeline in (("sampled", sampled), ("naive", naive)) if round_ % 2 == 0 else (("naive", naive), ("sampled", sampled)):
            result = pipeline()
            runs[name].append(result)
            print(f"round {round_ + 1} {name}: {result['total_s']:.2f} s (decode {result['decode_s']:.2f}, judge {result['judge_s']:.2f})")

    def summary(results: list[dict[str, float]]) -> dict[str, float]:
        total = statistics.median(r["total_s"] for r in results)
        return {
            "seconds_per_clip": round(total, 3),
            "decode_s": round(statistics.median(r["decode_s"] for r in results), 3),
            "judge_s": round(statistics.median(r["judge_s"] for r in results), 3),
            "times_real_time": round(SECONDS / total, 2),
            "frames_decoded": int(results[0]["frames_decoded"]),
            "frames_scored": int(results[0]["frames_scored"]),
        }

    report = {
        "clip": {"seconds": SECONDS, "fps": FPS, "size": list(SIZE), "codec": "h264 (libx264 veryfast crf 23)", "keyframe_every_s": GOP / FPS, "bytes": len(clip)},
        "sample_fps": 1.0,
        "model": "ViT-B-32 (random weights)",
        "torch_threads": args.threads,
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg()[0],
        "platform": platform.platform(),
        "rounds": args.rounds,
        "sampled": summary(runs["sampled"]),
        "naive": summary(runs["naive"]),
    }
    report["speedup_sampled_over_naive"] = round(report["naive"]["seconds_per_clip"] / report["sampled"]["seconds_per_clip"], 2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
