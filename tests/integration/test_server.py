"""The real server on loopback, called through the generated client."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from moderation.policy import load_policy_file
from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests import images
from tests.conftest import POLICIES
from tests.integration.server import RunningServer

pytestmark = pytest.mark.integration

DEFAULT_POLICY, _ = load_policy_file(POLICIES / "default.yaml")


def check_consistent(response: pb.ModerateResponse) -> None:
    """A response must explain itself: bands follow scores, action follows bands."""
    assert response.policy_id == DEFAULT_POLICY.id
    assert response.policy_version == DEFAULT_POLICY.version
    assert response.model.endswith("/random")
    assert [c.id for c in response.categories] == [c.id for c in DEFAULT_POLICY.categories]
    for result, category in zip(response.categories, DEFAULT_POLICY.categories, strict=True):
        assert 0.0 <= result.score <= 1.0
        assert result.review_threshold == pytest.approx(category.thresholds.review)
        assert result.block_threshold == pytest.approx(category.thresholds.block)
        assert result.clause_id == category.clause.id
        expected_band = (
            pb.BAND_ABOVE if result.score >= result.block_threshold
            else pb.BAND_BORDERLINE if result.score >= result.review_threshold
            else pb.BAND_BELOW
        )  # fmt: skip
        assert result.band == expected_band
    assert response.action == max(c.action for c in response.categories)
    assert response.reasons
    borderline = any(c.band == pb.BAND_BORDERLINE for c in response.categories)
    assert response.escalation.status == (pb.ESCALATION_STATUS_DISABLED if borderline else pb.ESCALATION_STATUS_NOT_NEEDED)
    assert response.timings.total_ms >= response.timings.embed_ms > 0
    assert response.timings.decode_ms > 0


def test_health_reports_serving_for_the_service(server: RunningServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "moderation.v1.ModerationService"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("encoded", [images.astronaut_jpeg, images.coffee_png, images.camera_grayscale_png])
def test_moderate_real_images(stub: pb_grpc.ModerationServiceStub, encoded) -> None:  # noqa: ANN001
    response = stub.Moderate(pb.ModerateRequest(request_id="req-1", image=encoded()), timeout=30)
    assert response.request_id == "req-1"
    check_consistent(response)


def test_server_generates_request_ids(stub: pb_grpc.ModerationServiceStub) -> None:
    first = stub.Moderate(pb.ModerateRequest(image=images.astronaut_jpeg()), timeout=30)
    second = stub.Moderate(pb.ModerateRequest(image=images.astronaut_jpeg()), timeout=30)
    assert first.request_id and first.request_id != second.request_id
    assert [c.score for c in first.categories] == [c.score for c in second.categories], "scoring is deterministic"


def test_corrupt_image_is_invalid_argument_and_the_next_request_succeeds(stub: pb_grpc.ModerationServiceStub) -> None:
    jpeg = images.astronaut_jpeg()
    for bad, sentence in [
        (jpeg[: len(jpeg) // 2], "invalid image: the image data is truncated or corrupt"),
        (images.coffee_png()[:5000], "invalid image: the image data is truncated or corrupt"),
        (b"definitely not an image", "not an image in an accepted format"),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Moderate(pb.ModerateRequest(image=bad), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert sentence in caught.value.details()
    check_consistent(stub.Moderate(pb.ModerateRequest(image=jpeg), timeout=30))


def test_missing_image_field(stub: pb_grpc.ModerationServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Moderate(pb.ModerateRequest(policy_id="default"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "the image field is empty; send the encoded image bytes"


def test_unknown_policy_is_not_found(stub: pb_grpc.ModerationServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Moderate(pb.ModerateRequest(image=images.astronaut_jpeg(), policy_id="nope"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "no policy 'nope' is served; served policies: default"


def test_expired_deadline_and_server_stays_up(stub: pb_grpc.ModerationServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Moderate(pb.ModerateRequest(image=images.astronaut_jpeg()), timeout=0.001)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    check_consistent(stub.Moderate(pb.ModerateRequest(image=images.astronaut_jpeg()), timeout=30))


def test_stream_answers_every_request_by_id(stub: pb_grpc.ModerationServiceStub) -> None:
    payloads = {f"s{i}": images.astronaut_jpeg() for i in range(6)}
    payloads["bad"] = b"not an image"
    requests = [pb.ModerateStreamRequest(request=pb.ModerateRequest(request_id=rid, image=data)) for rid, data in payloads.items()]
    responses = {r.request_id: r for r in stub.ModerateStream(iter(requests), timeout=60)}
    assert set(responses) == set(payloads)
    assert responses["bad"].WhichOneof("result") == "error"
    assert responses["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "not an image" in responses["bad"].error.message
    for rid in payloads.keys() - {"bad"}:
        assert responses[rid].WhichOneof("result") == "response"
        assert responses[rid].response.request_id == rid
        check_consistent(responses[rid].response)


def test_list_and_get_policy(stub: pb_grpc.ModerationServiceStub) -> None:
    listed = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=10)
    assert [(p.id, p.version, p.is_default) for p in listed.policies] == [("default", DEFAULT_POLICY.version, True)]
    policy = stub.GetPolicy(pb.GetPolicyRequest(), timeout=10)
    assert policy.id == "default" and policy.is_default
    assert {c.clause.id for c in policy.categories} == {c.clause.id for c in DEFAULT_POLICY.categories}
    assert "version:" in policy.source_yaml
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetPolicy(pb.GetPolicyRequest(policy_id="nope"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_metrics_expose_histograms_and_counts(server: RunningServer, stub: pb_grpc.ModerationServiceStub) -> None:
    stub.Moderate(pb.ModerateRequest(image=images.astronaut_jpeg()), timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.Moderate(pb.ModerateRequest(image=b"junk"), timeout=30)
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}

    stages = {s.labels["stage"]: s.value for s in families["moderation_stage_seconds"].samples if s.name.endswith("_count")}
    assert set(stages) == {"decode", "embed", "decide", "total"} and min(stages.values()) >= 1

    scored = {s.labels["category"] for s in families["moderation_category_score"].samples if s.name.endswith("_count")}
    assert scored == {c.id for c in DEFAULT_POLICY.categories}

    requests = {(s.labels["policy"], s.labels["code"]): s.value for s in families["moderation_requests"].samples if s.name.endswith("_total")}
    assert requests[("default", "OK")] >= 1 and requests[("default", "INVALID_ARGUMENT")] >= 1

    bands = {s.labels["band"] for s in families["moderation_category_decisions"].samples}
    assert bands <= {"BELOW", "BORDERLINE", "ABOVE"} and bands

    info = [s.labels for s in families["moderation_policy_info"].samples]
    assert {"policy": "default", "version": DEFAULT_POLICY.version, "model": info[0]["model"]} in info
    thresholds = {(s.labels["category"], s.labels["threshold"]): s.value for s in families["moderation_category_threshold"].samples}
    assert thresholds[("weapons", "block")] == pytest.approx(DEFAULT_POLICY.category("weapons").thresholds.block)


def test_animation_takes_the_most_severe_sampled_frame(stub: pb_grpc.ModerationServiceStub) -> None:
    import io

    import skimage.data
    from PIL import Image

    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    frames = [Image.fromarray(sources[i % 3]).resize((96, 96)) for i in range(12)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    response = stub.Moderate(pb.ModerateRequest(image=buffer.getvalue()), timeout=30)
    assert (response.frames_scored, response.frames_total) == (8, 12)

    # Each sampled frame on its own, losslessly: the animation's score per category
    # must be the highest of them, and name the frame it came from.
    gif = Image.open(io.BytesIO(buffer.getvalue()))
    sampled = sorted({round(i * 11 / 7) for i in range(8)})
    per_frame = {}
    for index in sampled:
        gif.seek(index)
        still = stub.Moderate(pb.ModerateRequest(image=images.encode(gif.convert("RGB"), "PNG")), timeout=30)
        per_frame[index] = {c.id: c.score for c in still.categories}
    for category in response.categories:
        best = max(sampled, key=lambda i: per_frame[i][category.id])
        assert category.score == pytest.approx(per_frame[best][category.id], abs=1e-4)
        assert category.frame_index == best
