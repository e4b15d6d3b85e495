"""ModerateVideo through the real server (issue 21): segments in time, MP4 and WebM alike, hostile files refused.

One server with a SQLite state store and a bank `known` holding the PDQ hash of the test's
"violating" scene (tests/videos.py: a red checkerboard; benign frames are smooth gradients
whose PDQ quality is under 50, so they are never looked up). The policy's one category has
thresholds no random-weight CLIP score reaches, so every segment here comes from the bank
rule: deterministic, and the known-content path of animations applied to video frames.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from moderation.signals.banks.hashing import pdq_hash
from moderation.state.banks import BankStore, NewEntry
from moderation.state.store import open_store
from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests.integration.server import RunningServer, running_server
from tests.videos import MP4, WEBM, make_audio_only, make_video, scene_between, scene_frame

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TINY_64 = ROOT / "tests" / "fixtures" / "tiny-clip-64"
MAX_VIDEO_BYTES = 200_000

POLICY = """\
id: video
version: "1"
default: true
benign: ["a cat", "a landscape", "a person"]
categories:
  - id: gore
    clause: {id: G-1, text: "No gore or mutilated bodies."}
    positive: ["gore"]
    thresholds: {review: 0.99, block: 0.995}
    on_block: REVIEW
banks:
  - bank: known
    category: gore
    action: BLOCK
"""


def chunks(data: bytes, size: int = 4096, **options: object) -> Iterator[pb.ModerateVideoRequest]:
    yield pb.ModerateVideoRequest(options=pb.VideoOptions(**options))
    for start in range(0, len(data), size):
        yield pb.ModerateVideoRequest(chunk=data[start : start + size])


class Videos:
    def __init__(self, server: RunningServer):
        self.server = server

    def moderate(self, data: bytes, **options: object) -> pb.ModerateVideoResponse:
        with self.server.channel() as channel:
            return pb_grpc.ModerationServiceStub(channel).ModerateVideo(chunks(data, **options), timeout=60)

    def refused(self, data: bytes, **options: object) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as refused:
            self.moderate(data, **options)
        return refused.value

    def metric(self, name: str, **labels: str) -> float:
        text = urllib.request.urlopen(self.server.metrics_url, timeout=5).read().decode()
        total = 0.0
        for line in text.splitlines():
            match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
            if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
                total += float(match.group(2))
        return total


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Videos]:
    root = tmp_path_factory.mktemp("video")
    (root / "policies").mkdir()
    (root / "policies" / "video.yaml").write_text(POLICY)
    state = root / "state.db"
    with open_store(state) as store:
        bank = BankStore(store)
        bank.create_bank("known", by="test-curator", note="the test's violating scene")
        scene = pdq_hash(scene_frame())
        bank.add_entries("known", [NewEntry("scene", "pdq", scene.hex(), quality=scene.quality)], by="test-curator")
        env = {
            "MODERATION_CLIP_MODEL": f"local-dir:{TINY_64}",
            "MODERATION_CLIP_WEIGHTS": "random",
            "MODERATION_POLICIES": str(root / "policies"),
            "MODERATION_EMBEDDING_STORE": str(state),
            "MODERATION_MAX_VIDEO_BYTES": str(MAX_VIDEO_BYTES),
            "MODERATION_MAX_VIDEO_DURATION_S": "30",
            "MODERATION_MAX_VIDEO_FPS": "60",
            "MODERATION_MAX_VIDEO_PIXELS": str(320 * 240),
        }
        with running_server(root, env=env) as server:
            yield Videos(server)


def spans(response: pb.ModerateVideoResponse) -> list[tuple[str, int, int]]:
    return [(s.category_id, s.start_ms, s.end_ms) for s in response.segments]


def test_a_violating_scene_gives_one_segment_in_mp4_and_webm_alike(videos: Videos) -> None:
    answers = {}
    for kind in (MP4, WEBM):
        response = videos.moderate(make_video(25, fps=10, kind=kind, frame_at=scene_between(10, 15)), request_id=f"scene-{kind[2]}")
        [segment] = response.segments
        # Sampled each second: the scene is first seen at 10 s and gone at the 15 s sample.
        assert abs(segment.start_ms - 10_000) <= 1000 and abs(segment.end_ms - 15_000) <= 1000, kind
        assert (segment.category_id, segment.action, segment.clause_id, segment.forced_by) == ("gore", pb.ACTION_BLOCK, "G-1", "banks")
        assert 10_000 <= segment.peak_ms < 15_000
        assert response.action == pb.ACTION_BLOCK and response.request_id == f"scene-{kind[2]}"
        assert list(response.frame_times_ms) == list(range(0, 25_000, 1000))
        [timeline] = response.timeline
        assert timeline.category_id == "gore" and len(timeline.scores) == 25
        assert {response.frame_times_ms[m.frame_index] for m in response.bank_matches} == {10_000, 11_000, 12_000, 13_000, 14_000}
        assert (response.video.duration_ms, response.video.width, response.video.height) == (25_000, 64, 48)
        answers[kind[2]] = spans(response)
    assert answers["mp4"] == answers["webm"] == [("gore", 10_000, 15_000)]
    assert videos.metric("moderation_video_seconds_total", policy="video") >= 50
    assert videos.metric("moderation_video_frames_total", kind="sampled") >= 50


def test_an_all_benign_clip_gives_no_segment_and_a_higher_sample_rate_is_honoured(videos: Videos) -> None:
    response = videos.moderate(make_video(6, fps=10, kind=MP4), sample_fps=2)
    assert not response.segments and not response.bank_matches and response.action == pb.ACTION_ALLOW
    assert list(response.frame_times_ms) == list(range(0, 6000, 500))
    assert response.escalation.status == pb.ESCALATION_STATUS_NOT_NEEDED


@pytest.mark.parametrize(
    ("make", "options", "says"),
    [
        (lambda: make_video(4, fps=10)[:1500], {}, "truncated or corrupt"),
        (make_audio_only, {}, "no video stream"),
        (lambda: b"\x00\x01garbage" * 100, {}, "not a video in an accepted container"),
        (lambda: b"\x00\x00\x00\x18ftypisom" + bytes(MAX_VIDEO_BYTES), {}, "max_video_bytes"),
        (lambda: make_video(31, fps=2), {}, "max_video_duration_s"),
        (lambda: make_video(2, fps=90), {}, "max_video_fps"),
        (lambda: make_video(1, fps=5, size=(640, 480)), {}, "max_video_pixels"),
        (lambda: make_video(2, fps=10), {"sample_fps": 100.0}, "max_video_sample_fps"),
        (lambda: make_video(2, fps=10), {"policy_id": "nope"}, "no policy"),
    ],
    ids=["truncated", "audio-only", "garbage", "too-large", "too-long", "too-many-fps", "too-large-frames", "sample-rate", "policy"],
)
def test_hostile_files_get_a_clear_error_and_the_server_stays_up(videos: Videos, make, options, says) -> None:
    error = videos.refused(make(), **options)
    expected = grpc.StatusCode.NOT_FOUND if "policy_id" in options else grpc.StatusCode.INVALID_ARGUMENT
    assert error.code() == expected and says in error.details(), (error.code(), error.details())
    assert videos.server.process.poll() is None
    assert not videos.moderate(make_video(1, fps=5)).segments  # and still answers


def test_the_stream_must_start_with_options_and_carry_bytes(videos: Videos) -> None:
    with videos.server.channel() as channel:
        stub = pb_grpc.ModerationServiceStub(channel)
        for requests, says in [
            ([pb.ModerateVideoRequest(chunk=b"abc")], "first message must carry options"),
            ([pb.ModerateVideoRequest(options=pb.VideoOptions())], "the video is empty"),
            ([pb.ModerateVideoRequest(options=pb.VideoOptions()), pb.ModerateVideoRequest(options=pb.VideoOptions())], "only the first message"),
        ]:
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModerateVideo(iter(requests), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in refused.value.details()


def test_the_cli_prints_the_segments_and_grpcurl_streams_a_video(videos: Videos, tmp_path: Path) -> None:
    import base64
    import json

    from typer.testing import CliRunner

    from moderation.cli import app
    from tests.integration.test_grpcurl import grpcurl

    data = make_video(25, fps=10, kind=MP4, frame_at=scene_between(10, 15))
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(data)
    printed = CliRunner().invoke(app, ["moderate", str(clip), "--target", videos.server.target], env={"COLUMNS": "200"})
    assert printed.exit_code == 0, printed.output
    assert "BLOCK" in printed.stdout and "1 segment" in printed.stdout
    assert re.search(r"0:10\.000-0:15\.000 .*gore", printed.stdout), printed.stdout

    # grpcurl sends a client stream as several JSON messages: the options, then base64 chunks.
    half = len(data) // 2
    body = "\n".join(
        json.dumps(message)
        for message in (
            {"options": {"request_id": "curl-video"}},
            {"chunk": base64.b64encode(data[:half]).decode()},
            {"chunk": base64.b64encode(data[half:]).decode()},
        )
    )
    called = grpcurl(videos.server, "moderation.v1.ModerationService/ModerateVideo", data=body)
    assert called.returncode == 0, called.stderr
    answer = json.loads(called.stdout)
    assert answer["request_id"] == "curl-video" and answer["action"] == "ACTION_BLOCK"
    assert [(s["start_ms"], s["end_ms"]) for s in answer["segments"]] == [("10000", "15000")]


EDGY = """\
id: edgy
version: "1"
benign: ["a cat", "a landscape", "a person"]
categories:
  - id: gore
    clause: {id: G-1, text: "No gore or mutilated bodies."}
    positive: ["gore"]
    thresholds: {review: 0.001, block: 0.9999}
"""


def test_video_escalation_watches_the_borderline_segment_or_the_frames_around_a_forced_peak(tmp_path: Path) -> None:
    """SmolVLM2 (tiny, random weights, in-process) watches up to 8 sampled frames of the escalated category's
    segment, each after its "Frame from MM:SS" stamp, the peak among them, and answers a verdict citing a clause.

    `edgy` puts every frame in the borderline band (review 0.001, block 0.9999): one segment, the whole clip.
    `video` (thresholds no score reaches) escalates only when forced: then the frames 3 s either side of the peak.
    """
    from tests.conftest import TINY_CLIP

    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "video.yaml").write_text(POLICY.replace("banks:\n  - bank: known\n    category: gore\n    action: BLOCK\n", ""))
    (policies / "edgy.yaml").write_text(EDGY)
    args = ("--policies", str(policies), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random",
            "--explainer", "in-process", "--explainer-model", "tiny-smolvlm", "--explainer-weights", "random")  # fmt: skip
    with running_server(tmp_path, *args) as server:
        videos = Videos(server)
        borderline = videos.moderate(make_video(12, fps=5, kind=MP4, frame_at=scene_between(4, 8)), policy_id="edgy")
        forced = videos.moderate(make_video(10, fps=5, kind=MP4), force_escalation=True)
    for response in (borderline, forced):
        escalation = response.escalation
        assert escalation.status == pb.ESCALATION_STATUS_COMPLETED, escalation.reason
        assert (escalation.category_id, escalation.clause_id) == ("gore", "G-1") and escalation.generated_tokens > 0
        assert escalation.frame_index == response.categories[0].frame_index  # the peak frame

    [segment] = borderline.segments
    assert (segment.start_ms, segment.end_ms, segment.band) == (0, 12_000, pb.BAND_BORDERLINE)
    peak = borderline.frame_times_ms[borderline.escalation.frame_index]
    [note] = [r for r in borderline.reasons if r.startswith("The explainer watched")]
    assert note.startswith("The explainer watched 8 frames of its BORDERLINE segment 0:00.000-0:12.000 for gore, from 0:00.000 to 0:11.000")
    assert note.endswith(f"the peak at {_clock(peak)}."), note

    assert not forced.segments
    peak = forced.frame_times_ms[forced.escalation.frame_index]
    around = [t for t in forced.frame_times_ms if abs(t - peak) <= 3000]
    [note] = [r for r in forced.reasons if r.startswith("The explainer watched")]
    assert note == f"The explainer watched {len(around)} frames for gore, from {_clock(around[0])} to {_clock(around[-1])}, the peak at {_clock(peak)}."


def _clock(ms: int) -> str:
    return f"0:{ms / 1000:06.3f}"


def test_a_remote_explainer_watches_the_segment_too(tmp_path: Path) -> None:
    """explain-serve gets the segment's sampled frames as JPEGs in ExplainRequest.video_frames, each with its time."""
    import io

    from PIL import Image

    from tests import images
    from tests.conftest import TINY_CLIP

    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "edgy.yaml").write_text(EDGY)
    explainer_args = ("--policies", str(policies), "--explainer-model", "tiny-smolvlm", "--explainer-weights", "random")
    with running_server(tmp_path, *explainer_args, command="explain-serve") as explainer:
        args = ("--policies", str(policies), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random",
                "--explainer", "remote", "--explainer-target", explainer.target)  # fmt: skip
        with running_server(tmp_path, *args) as server:
            response = Videos(server).moderate(make_video(12, fps=5, kind=MP4, frame_at=scene_between(4, 8)), policy_id="edgy")
        escalation = response.escalation
        assert escalation.status == pb.ESCALATION_STATUS_COMPLETED, escalation.reason
        assert (escalation.category_id, escalation.clause_id) == ("gore", "G-1")
        [note] = [r for r in response.reasons if r.startswith("The explainer watched")]
        assert note.startswith("The explainer watched 8 frames of its BORDERLINE segment 0:00.000-0:12.000 for gore")
        assert f"explaining request {response.request_id}: 8 video frames" in explainer.log_text()

        # More frames than one explanation watches, or frames out of time order: refused with a sentence.
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (90, 20, 20)).save(buffer, format="JPEG")
        frame = buffer.getvalue()
        fields = {"image": images.astronaut_jpeg(), "policy_id": "edgy", "policy_version": "1", "category_ids": ["gore"]}
        with explainer.channel() as channel:
            stub = pb_grpc.ExplainerServiceStub(channel)
            for times, says in [(range(9), "video_frames holds 9 frames; at most 8"), ([2000, 1000], "in time order")]:
                frames = [pb.ExplainVideoFrame(time_ms=t, image=frame) for t in times]
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Explain(pb.ExplainRequest(video_frames=frames, **fields), timeout=60)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in caught.value.details()
            broken = [pb.ExplainVideoFrame(time_ms=0, image=b"not a jpeg")]
            with pytest.raises(grpc.RpcError) as caught:
                stub.Explain(pb.ExplainRequest(video_frames=broken, **fields), timeout=60)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "invalid image" in caught.value.details()
