"""The escalation tier end to end: in-process and remote SmolVLM2 (tiny, random weights)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from moderation.policy import load_policy_file
from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests import images
from tests.conftest import POLICIES, TINY_CLIP
from tests.integration.server import running_server
from tests.policies import one_category_yaml

pytestmark = pytest.mark.integration

POLICY, _ = load_policy_file(POLICIES / "default.yaml")
CLAUSES = {c.id: c.clause.id for c in POLICY.categories}
TINY = ("--policies", str(POLICIES), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random")
EXPLAINER = ("--explainer-model", "tiny-smolvlm", "--explainer-weights", "random")


def check_completed(response: pb.ModerateResponse) -> None:
    escalation = response.escalation
    assert escalation.status == pb.ESCALATION_STATUS_COMPLETED, escalation.reason
    assert CLAUSES[escalation.category_id] == escalation.clause_id, "the verdict cites the clause of its category"
    assert 0.0 <= escalation.confidence <= 1.0
    assert len(escalation.rationale) <= 120
    assert escalation.model.startswith("tiny-smolvlm/random") or escalation.model.endswith("random")
    assert escalation.generated_tokens > 0 and escalation.latency_ms > 0
    assert response.timings.escalation_ms > 0


def test_in_process_forced_escalation_and_timeout(tmp_path: Path) -> None:
    with running_server(tmp_path, *TINY, "--explainer", "in-process", *EXPLAINER) as server, server.channel() as channel:
        stub = pb_grpc.ModerationServiceStub(channel)
        response = stub.Moderate(pb.ModerateRequest(image=images.astronaut_jpeg(), force_escalation=True), timeout=120)
        check_completed(response)
        metrics = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    outcomes = {s.labels["outcome"]: s.value for s in families["moderation_escalations"].samples if s.name.endswith("_total")}
    assert outcomes.get("COMPLETED", 0) >= 1
    agreement = sum(s.value for s in families["moderation_tier_agreement"].samples if s.name.endswith("_total"))
    assert agreement >= 1

    # The default mode, auto, runs the explainer in-process when its weights are available (random ones here) and says why.
    env = {"MODERATION_EXPLAINER_TIMEOUT_S": "0.001", "MODERATION_EXPLAINER_MODE": "auto"}
    with running_server(tmp_path, *TINY, *EXPLAINER, env=env) as server, server.channel() as channel:
        stub = pb_grpc.ModerationServiceStub(channel)
        response = stub.Moderate(pb.ModerateRequest(image=images.astronaut_jpeg(), force_escalation=True), timeout=120)
    assert "escalation tier in-process, SmolVLM2 tiny-smolvlm/random: explainer_mode auto: random weights built from" in server.log_text()
    assert response.escalation.status == pb.ESCALATION_STATUS_TIMED_OUT
    assert response.action in (pb.ACTION_REVIEW, pb.ACTION_BLOCK), "an explainer that cannot answer never lets an image through"
    assert any("Escalation TIMED_OUT" in reason for reason in response.reasons)


def test_remote_explainer_over_loopback_and_circuit_breaker(tmp_path: Path) -> None:
    with running_server(tmp_path, "--policies", str(POLICIES), *EXPLAINER, command="explain-serve") as explainer:
        args = (*TINY, "--explainer", "remote", "--explainer-target", explainer.target)
        env = {"MODERATION_EXPLAINER_FAILURE_THRESHOLD": "2", "MODERATION_EXPLAINER_COOLDOWN_S": "300"}
        with running_server(tmp_path, *args, env=env) as server, server.channel() as channel:
            stub = pb_grpc.ModerationServiceStub(channel)
            response = stub.Moderate(pb.ModerateRequest(image=images.astronaut_jpeg(), force_escalation=True), timeout=120)
            check_completed(response)

            explainer.process.terminate()  # the explainer goes away: FAILED twice, then the breaker opens
            explainer.process.wait(timeout=60)
            statuses = []
            for _ in range(4):
                reply = stub.Moderate(pb.ModerateRequest(image=images.astronaut_jpeg(), force_escalation=True), timeout=60)
                statuses.append(reply.escalation.status)
                assert reply.action in (pb.ACTION_REVIEW, pb.ACTION_BLOCK)
            assert statuses[:2] == [pb.ESCALATION_STATUS_FAILED] * 2
            assert statuses[2:] == [pb.ESCALATION_STATUS_SHED] * 2
            assert "not calling it for now" in reply.escalation.reason


def test_explain_request_for_a_stale_policy_version_is_refused(tmp_path: Path) -> None:
    with running_server(tmp_path, "--policies", str(POLICIES), *EXPLAINER, command="explain-serve") as explainer:
        with explainer.channel() as channel:
            stub = pb_grpc.ExplainerServiceStub(channel)
            request = pb.ExplainRequest(image=images.astronaut_jpeg(), policy_id="default", policy_version="old", category_ids=["weapons"])
            with pytest.raises(grpc.RpcError) as caught:
                stub.Explain(request, timeout=60)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            request.policy_version = POLICY.version
            reply = stub.Explain(request, timeout=120)
            assert (reply.category_id, reply.clause_id) == ("weapons", "W-1")
            json.dumps({"rationale": reply.rationale})


def test_compare_prints_both_tiers_per_category(tmp_path: Path) -> None:
    image = tmp_path / "astronaut.jpg"
    image.write_bytes(images.astronaut_jpeg())
    result = subprocess.run(
        [sys.executable, "-m", "moderation", "compare", str(image), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random", *EXPLAINER],
        capture_output=True, text=True, timeout=300, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    for category in POLICY.categories:
        assert category.id in result.stdout and category.clause.id in result.stdout
    assert "CLIP leans" in result.stdout and "agree" in result.stdout
    assert "random weights: these outputs mean nothing" in result.stdout


# Frame 0 of an animation ------------------------------------------------------------------------


def two_frame_gifs() -> tuple[bytes, bytes]:
    """The same two frames as GIFs in both orders.

    Whatever the random weights score, one order puts the frame that sets the
    category's score second: there the explainer must judge frame 1, not frame 0.
    """
    import io

    import skimage.data
    from PIL import Image

    sources = [Image.fromarray(skimage.data.astronaut()).resize((96, 96)), Image.fromarray(skimage.data.coffee()).resize((96, 96))]
    gifs = []
    for order in (sources, sources[::-1]):
        buffer = io.BytesIO()
        order[0].save(buffer, format="GIF", save_all=True, append_images=order[1:], duration=50)
        gifs.append(buffer.getvalue())
    return gifs[0], gifs[1]


def frames_as_stills(gif: bytes) -> list[bytes]:
    """Each frame of `gif` as the decoder sees it (GIF quantises colours), alone, as a lossless PNG."""
    import io

    from PIL import Image

    animation = Image.open(io.BytesIO(gif))
    stills = []
    for index in range(animation.n_frames):
        animation.seek(index)
        stills.append(images.encode(animation.convert("RGB"), "PNG"))
    return stills


def one_category_policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "p.yaml").write_text(one_category_yaml("1"))
    return directory


def verdict_of(escalation: pb.Escalation) -> tuple:
    return (escalation.violates, escalation.rationale, round(escalation.confidence, 4), escalation.generated_tokens)


def check_the_deciding_frame_was_judged(stub: pb_grpc.ModerationServiceStub) -> pb.ModerateResponse:
    """Moderate both orders; in the one whose deciding frame is 1, the explainer judged frame 1's pixels."""
    gifs = two_frame_gifs()
    responses = [stub.Moderate(pb.ModerateRequest(image=gif, force_escalation=True), timeout=120) for gif in gifs]
    for response in responses:
        check_completed_one_category(response)
        (category,) = response.categories
        assert response.escalation.frame_index == category.frame_index, "the explainer judged the frame that set the score"
    late = [r for r in responses if r.categories[0].frame_index == 1]
    assert late, "one of the two orders puts the deciding frame second"
    (response,) = late
    # The tiny explainer is deterministic: judging frame 1 of the animation answers what
    # judging that frame alone answers, and not what the first frame alone answers.
    stills = frames_as_stills(gifs[responses.index(response)])
    on_its_own = [stub.Moderate(pb.ModerateRequest(image=still, force_escalation=True), timeout=120).escalation for still in stills]
    assert verdict_of(response.escalation) == verdict_of(on_its_own[1])
    assert verdict_of(on_its_own[0]) != verdict_of(on_its_own[1]), "the two frames draw different verdicts: the check can tell them apart"
    return response


def check_completed_one_category(response: pb.ModerateResponse) -> None:
    escalation = response.escalation
    assert escalation.status == pb.ESCALATION_STATUS_COMPLETED, escalation.reason
    assert (escalation.category_id, escalation.clause_id) == ("weapons", "W-1")


def test_in_process_explainer_judges_the_deciding_frame_of_an_animation(tmp_path: Path) -> None:
    policies = one_category_policies(tmp_path)
    args = ("--policies", str(policies), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random", "--explainer", "in-process", *EXPLAINER)
    with running_server(tmp_path, *args) as server, server.channel() as channel:
        check_the_deciding_frame_was_judged(pb_grpc.ModerationServiceStub(channel))


def test_remote_explainer_judges_the_deciding_frame_of_an_animation(tmp_path: Path) -> None:
    policies = one_category_policies(tmp_path)
    with running_server(tmp_path, "--policies", str(policies), *EXPLAINER, command="explain-serve") as explainer:
        args = ("--policies", str(policies), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random")
        args += ("--explainer", "remote", "--explainer-target", explainer.target)
        with running_server(tmp_path, *args) as server, server.channel() as channel:
            response = check_the_deciding_frame_was_judged(pb_grpc.ModerationServiceStub(channel))
        assert f"explaining request {response.request_id}: frame 1" in explainer.log_text(), "explain-serve decoded frame 1 itself"

        # Frames the image does not have are refused with a sentence; the explainer stays up.
        gifs = two_frame_gifs()
        stills = frames_as_stills(gifs[0])
        with explainer.channel() as channel:
            stub = pb_grpc.ExplainerServiceStub(channel)
            fields = {"policy_id": "p", "policy_version": "1", "category_ids": ["weapons"]}
            for image, index, says in [
                (gifs[0], 2, "frame_index 2 is not a frame of this image: it is an animation of 2 frames (0 to 1)"),
                (gifs[0], -1, "frame_index -1 is not a frame of this image"),
                (stills[0], 1, "frame_index 1 is not a frame of this image: it is a still image (frame 0 only)"),
            ]:
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Explain(pb.ExplainRequest(image=image, frame_index=index, **fields), timeout=60)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert says in caught.value.details()
            reply = stub.Explain(pb.ExplainRequest(image=gifs[0], frame_index=1, **fields), timeout=120)
            assert reply.frame_index == 1 and reply.category_id == "weapons"


# A failed escalation never ALLOWs ----------------------------------------------------------------

# Every score in [0, 1) is borderline (review 0, block 1) under `borderline`, whose explainer is
# decisive (its verdict could ALLOW); under `clear` every score is below review (CLIP alone: ALLOW).
FAILING_EXPLAINER_POLICIES = {
    "borderline.yaml": """\
id: borderline
version: "1"
default: true
benign: ["a cat"]
categories:
  - id: weapons
    clause: {id: W-1, text: "No threatening display of firearms."}
    positive: ["a gun"]
    thresholds: {review: 0.0, block: 1.0}
    explainer: decisive
""",
    "clear.yaml": """\
id: clear
version: "1"
benign: ["a cat"]
categories:
  - id: weapons
    clause: {id: W-1, text: "No threatening display of firearms."}
    positive: ["a gun"]
    thresholds: {review: 1.0, block: 1.0}
""",
}


def test_an_explainer_that_cannot_answer_never_lets_an_image_through(tmp_path: Path) -> None:
    """docs/architecture.md, step 6: any escalation failure -> at least REVIEW, never ALLOW.

    The explainer is remote at an address where nothing listens, so every escalation fails
    (FAILED, then SHED once the circuit opens), whatever the random models would say. Forced
    thresholds put every image in the band that is escalated: borderline under a decisive
    explainer (its "no violation" would have ALLOWed), and below review with
    force_escalation (CLIP alone ALLOWs). Nothing is at or above block, so the action is
    exactly REVIEW, for each image.
    """
    import numpy as np

    from tests.integration.server import free_port

    policies = tmp_path / "policies"
    policies.mkdir()
    for name, text in FAILING_EXPLAINER_POLICIES.items():
        (policies / name).write_text(text)
    nowhere = f"127.0.0.1:{free_port()}"
    args = ("--policies", str(policies), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random")
    args += ("--explainer", "remote", "--explainer-target", nowhere)
    gray = images.encode(np.full((64, 64, 3), 128, dtype=np.uint8), "PNG")
    corpus = {
        "astronaut": images.astronaut_jpeg(),
        "coffee": images.coffee_png(),
        "camera": images.camera_grayscale_png(),
        "gray": gray,
        "animation": two_frame_gifs()[1],
    }
    with running_server(tmp_path, *args) as server, server.channel() as channel:
        stub = pb_grpc.ModerationServiceStub(channel)
        statuses = []
        for policy_id, forced in (("borderline", False), ("clear", True)):
            for name, image in corpus.items():
                reply = stub.Moderate(pb.ModerateRequest(image=image, policy_id=policy_id, force_escalation=forced), timeout=60)
                (category,) = reply.categories
                expected_band = pb.BAND_BORDERLINE if policy_id == "borderline" else pb.BAND_BELOW
                assert category.band == expected_band, (policy_id, name, category.score)
                assert reply.escalation.status in (pb.ESCALATION_STATUS_FAILED, pb.ESCALATION_STATUS_SHED), (policy_id, name, reply.escalation)
                assert reply.action == pb.ACTION_REVIEW, f"{policy_id}/{name}: {pb.Action.Name(reply.action)} after {reply.escalation.reason}"
                statuses.append(reply.escalation.status)
    assert statuses[0] == pb.ESCALATION_STATUS_FAILED, "the explainer was really called, and failed"


def test_a_reviewers_question_is_answered_by_explain_serve_and_through_the_tier(tmp_path: Path) -> None:
    """ExplainerService.Ask: an advisory answer within the schema's bounds; bad questions refused with a sentence."""
    import asyncio

    from moderation.escalation.backends import RemoteExplainer
    from moderation.escalation.tier import EscalationStatus, EscalationTier, ReviewerQuestion

    with running_server(tmp_path, "--policies", str(POLICIES), *EXPLAINER, command="explain-serve") as explainer:
        with explainer.channel() as channel:
            stub = pb_grpc.ExplainerServiceStub(channel)
            fields = {"case_id": "case-1", "image": images.astronaut_jpeg(), "policy_id": "default", "policy_version": POLICY.version}
            reply = stub.Ask(pb.AskRequest(category_id="weapons", question="Is the knife being sold?", **fields), timeout=120)
            assert reply.answer and reply.generated_tokens > 0 and reply.model.endswith("random")
            # One to three sentences of the documented characters, joined by single spaces.
            assert re.fullmatch(r"[?!A-Za-z0-9 ,.;:'()-]{1,362}", reply.answer), reply.answer
            for changes, code, says in [
                ({"question": "x" * 301}, grpc.StatusCode.INVALID_ARGUMENT, "the question is 301 characters; at most 300"),
                ({"question": "   "}, grpc.StatusCode.INVALID_ARGUMENT, "the question is empty"),
                ({"question": "two\nlines"}, grpc.StatusCode.INVALID_ARGUMENT, "ask it on one line"),
                ({"question": "ok?", "category_id": "knives"}, grpc.StatusCode.INVALID_ARGUMENT, "category_id 'knives' is not a category of default"),
                ({"question": "ok?", "policy_version": "old"}, grpc.StatusCode.FAILED_PRECONDITION, "not version 'old'"),
                ({"question": "ok?", "image": b"not an image"}, grpc.StatusCode.INVALID_ARGUMENT, "invalid image"),
            ]:
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Ask(pb.AskRequest(**{**fields, **changes}), timeout=60)
                assert caught.value.code() == code and says in caught.value.details(), caught.value.details()

        async def through_the_tier() -> tuple:
            from PIL import Image

            tier = EscalationTier(RemoteExplainer(explainer.target), timeout_s=120)
            frame = Image.open(__import__("io").BytesIO(images.astronaut_jpeg()))
            question = ReviewerQuestion("case-2", images.astronaut_jpeg(), frame, POLICY, "weapons", "<script>alert(1)</script> sold?")
            try:
                return await tier.ask(question, 120), await tier.ask(ReviewerQuestion("case-3", b"", frame, POLICY, None, "x" * 400), 120)
            finally:
                await tier.close()

        answered, refused = asyncio.run(through_the_tier())
    assert answered.status is EscalationStatus.COMPLETED and answered.answer.text, answered.reason
    assert "<" not in answered.answer.text and ">" not in answered.answer.text, "answers carry no markup"
    assert refused.status is EscalationStatus.FAILED and "at most 300" in refused.reason
    assert "answering a reviewer's question on case case-1" in explainer.log_text()
    assert "alert(1)" not in explainer.log_text(), "questions are not logged"
