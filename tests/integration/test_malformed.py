"""Bytes that are no protobuf message (issue 18, item 4), against the real server.

Before: UNKNOWN "Unexpected <class 'DecodeError'>", an ERROR line with a traceback per
call, before auth and without a rate limit. Now: auth first, then INVALID_ARGUMENT with
a sentence, and at most `MALFORMED_REQUEST_LOGS_PER_MINUTE` warnings a minute.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from moderation.serving.builder import MALFORMED_REQUEST_LOGS_PER_MINUTE
from moderation.v1 import moderation_pb2 as pb
from tests import images
from tests.conftest import POLICIES, TINY_CLIP
from tests.integration.server import RunningServer, free_port, open_channel, running_server

pytestmark = pytest.mark.integration

TOKEN = "s3cr3t-token-for-malformed-tests"
TINY = ("--policies", str(POLICIES), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random")
MODERATE = "/moderation.v1.ModerationService/Moderate"
STREAM = "/moderation.v1.ModerationService/ModerateStream"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
GARBAGE = b"\xff\xff\xff"  # field 31, wire type 7: no valid wire type, so no message parses it
WARNING = "refused a request that is not a valid protobuf message"


def raw_unary(channel: grpc.Channel, payload: bytes, metadata: tuple = (), method: str = MODERATE) -> grpc.RpcError:
    # No serializers: the bytes go on the wire exactly as given.
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as caught:
        call(payload, metadata=metadata, timeout=30)
    return caught.value


def raw_stream(channel: grpc.Channel, items: list[bytes], metadata: tuple = ()) -> tuple[list[bytes], grpc.RpcError]:
    call = channel.stream_stream(STREAM, request_serializer=None, response_deserializer=None)
    replies: list[bytes] = []
    with pytest.raises(grpc.RpcError) as caught:
        for reply in call(iter(items), metadata=metadata, timeout=30):
            replies.append(reply)
    return replies, caught.value


def log_entries(server: RunningServer) -> list[dict]:
    return [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]


def assert_quiet_log(server: RunningServer) -> None:
    text = server.log_text()
    assert "Traceback" not in text and "DecodeError" not in text
    assert [e for e in log_entries(server) if e["level"] in ("error", "critical")] == []


def test_malformed_requests_without_auth_are_invalid_argument_and_rate_limited(tmp_path: Path) -> None:
    health_port = free_port()
    with running_server(tmp_path, *TINY, env={"MODERATION_HEALTH_PORT": str(health_port)}) as server, server.channel() as channel:
        err = raw_unary(channel, GARBAGE)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == "the request is not a valid moderation.v1.ModerateRequest message"

        # Health is open to anyone, on the main port and on the health port: Check (unary) and Watch (server stream).
        health_message = "the request is not a valid grpc.health.v1.HealthCheckRequest message"
        with open_channel(f"127.0.0.1:{health_port}") as health_channel:
            for target_channel in (channel, health_channel):
                err = raw_unary(target_channel, GARBAGE, method=HEALTH_CHECK)
                assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, health_message)
                watch = target_channel.unary_stream(HEALTH_WATCH, request_serializer=None, response_deserializer=None)
                with pytest.raises(grpc.RpcError) as caught:
                    list(watch(GARBAGE, timeout=30))
                assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, health_message)

        # A stream: the valid item before the malformed one is answered, then the call ends.
        valid = pb.ModerateStreamRequest(request=pb.ModerateRequest(request_id="ok-1", image=images.astronaut_jpeg())).SerializeToString()
        replies, err = raw_stream(channel, [valid, GARBAGE])
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == "the request is not a valid moderation.v1.ModerateStreamRequest message"
        assert len(replies) <= 1 and all(pb.ModerateStreamResponse.FromString(r).request_id == "ok-1" for r in replies)

        started = time.monotonic()
        codes = {raw_unary(channel, GARBAGE).code() for _ in range(300)}
        elapsed = time.monotonic() - started
        assert codes == {grpc.StatusCode.INVALID_ARGUMENT}
        # The server still serves well-formed calls.
        good = channel.unary_unary(MODERATE, request_serializer=None, response_deserializer=None)
        assert pb.ModerateResponse.FromString(
            good(pb.ModerateRequest(request_id="ok-2", image=images.astronaut_jpeg()).SerializeToString(), timeout=60)
        ).request_id == "ok-2"
        time.sleep(0.5)  # the last lines are flushed

    warnings = [e for e in log_entries(server) if e["msg"] == WARNING]
    # 302 malformed calls in (usually) well under a minute: one minute's quota of lines, plus one per further minute.
    assert 1 <= len(warnings) <= MALFORMED_REQUEST_LOGS_PER_MINUTE * (1 + int(elapsed // 60))
    assert all(e["level"] == "warning" for e in warnings)
    assert_quiet_log(server)


def test_malformed_requests_with_auth_are_unauthenticated_first(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"upstream-a:{TOKEN}\n")
    with running_server(tmp_path, *TINY, env={"MODERATION_AUTH_TOKENS_FILE": str(tokens)}) as server, server.channel() as channel:
        for metadata in ((), (("authorization", "Bearer wrong-token-0000000000"),)):
            err = raw_unary(channel, GARBAGE, metadata)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
            _, err = raw_stream(channel, [GARBAGE], metadata)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()

        bearer = (("authorization", f"Bearer {TOKEN}"),)
        err = raw_unary(channel, GARBAGE, bearer)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == "the request is not a valid moderation.v1.ModerateRequest message"
        _, err = raw_stream(channel, [GARBAGE], bearer)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == "the request is not a valid moderation.v1.ModerateStreamRequest message"
        time.sleep(0.5)

    # Only the authenticated caller's malformed calls are reported as such.
    assert len([e for e in log_entries(server) if e["msg"] == WARNING]) == 2
    assert_quiet_log(server)
