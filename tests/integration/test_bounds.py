"""Resource bounds against the real server (issue 12): what a caller can make it hold, echo or log.

Memory cases sample the server's RSS while the abuse runs and assert its growth
stays under a stated bound; on the code before these bounds each of them grew
well past it (docs/security.md, "Resource bounds").
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.abuse import RssSampler
from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests import images
from tests.conftest import POLICIES, TINY_CLIP
from tests.integration.server import RunningServer, open_channel, running_server

pytestmark = pytest.mark.integration

TINY = ("--policies", str(POLICIES), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random")
MIB = 1024 * 1024
# Growth of the server's RSS the memory cases allow (the loaded tiny server sits near 1.1 GB).
RSS_BOUND_MB = 300


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Default bounds; metadata keys 'tenant' and 'note' allow-listed for the audit log."""
    env = {"MODERATION_AUDIT_METADATA_KEYS": '["tenant", "note"]'}
    with running_server(tmp_path_factory.mktemp("bounded"), *TINY, env=env) as server:
        yield server


def metric_samples(server: RunningServer, family_name: str) -> list:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    family = next((f for f in text_string_to_metric_families(text) if f.name == family_name), None)
    return list(family.samples) if family else []


def valid_call(channel: grpc.Channel, **fields: object) -> pb.ModerateResponse:
    return pb_grpc.ModerationServiceStub(channel).Moderate(pb.ModerateRequest(image=images.astronaut_jpeg(), **fields), timeout=60)


def error_lines(log_text: str) -> list[str]:
    return [line for line in log_text.splitlines() if '"level": "error"' in line or '"level": "critical"' in line]


# 1 ---------------------------------------------------------------------------------------------


def test_a_stream_that_is_never_read_holds_bounded_memory(bounded: RunningServer) -> None:
    with bounded.channel() as channel:
        valid_call(channel)  # warm
    sent = 0

    def requests() -> Iterator[pb.ModerateStreamRequest]:
        nonlocal sent
        for i in range(6000):
            sent += 1
            yield pb.ModerateStreamRequest(request=pb.ModerateRequest(request_id=f"{i:08d}" + "x" * 100_000, image=b""))

    errors_before = len(error_lines(bounded.log_text()))
    with RssSampler(bounded.process.pid) as rss, bounded.channel() as channel:
        call = pb_grpc.ModerationServiceStub(channel).ModerateStream(requests(), timeout=120)
        time.sleep(6)  # writing, never reading
        with bounded.channel() as other:
            assert valid_call(other).categories, "other callers are served meanwhile"
        call.cancel()
    print(f"sent {sent} requests of 100 KB; server RSS {rss.baseline:.0f} -> peak {rss.peak:.0f} MB")
    assert rss.growth < RSS_BOUND_MB, f"RSS grew {rss.growth:.0f} MB (bound {RSS_BOUND_MB} MB)"
    # 9: the client cancelling its stream is no error of the server's.
    time.sleep(1)
    assert error_lines(bounded.log_text())[errors_before:] == []


def handled_requests(server: RunningServer) -> float:
    """Requests the server has read and answered (or refused), from moderation_requests_total."""
    return sum(s.value for s in metric_samples(server, "moderation_requests") if s.name.endswith("_total"))


def test_a_stream_that_is_never_read_stops_being_read_once_its_window_of_answers_is_unsent(tmp_path: Path) -> None:
    """A stream's window slot is freed when its answer has been sent, not when its request is done.

    docs/security.md, "stream window": a client that writes and never reads holds
    `stream_window` answers on the server and no more; beyond, reading stops. Here the
    window is 2 and the client's own HTTP/2 receive window for the stream is 1 KiB (BDP
    probing off, so it never grows): the transport can take only the answers that fit in
    1 KiB, so the server may read at most 2 + those (+2 being written) requests, however
    many the client writes. Freeing the slot when the request is done (the answer merely
    queued) lets the server read, answer and queue every request: all 1,000 of them.

    Two counts: the server's own (moderation_requests_total, which counts every request it
    read) and what gRPC pulled from the client's generator, which adds what the server's
    HTTP/2 receive window buffers: BDP probing grows it on loopback (4 to 9 MiB seen with
    grpcio 1.85), so the requests are 64 KiB and the allowance 16 MiB. Neither bound
    depends on timing: a slow machine can only make the test wait longer for the counts
    to settle.
    """
    window, client_window, request_bytes, total = 2, 1024, 64 * 1024, 1000
    answer_bytes = 128 + 60  # at least: the request id echoed cut to 128 characters, and the error sentence
    handled_bound = window + client_window // answer_bytes + 2
    pulled_bound = handled_bound + 16 * MIB // request_bytes + 4  # the server's receive buffering, with room to spare

    pulled = 0

    def requests() -> Iterator[pb.ModerateStreamRequest]:
        nonlocal pulled
        for i in range(total):
            pulled += 1
            # An empty image and an over-long id: answered at once, with an error entry echoing the id cut.
            yield pb.ModerateStreamRequest(request=pb.ModerateRequest(request_id=f"{i:08d}".ljust(request_bytes, "x"), image=b""))

    env = {"MODERATION_STREAM_WINDOW": str(window)}
    with running_server(tmp_path, *TINY, env=env) as server:
        before = handled_requests(server)
        with server.channel(**{"http2.bdp_probe": 0, "http2.lookahead_bytes": client_window}) as channel:
            call = pb_grpc.ModerationServiceStub(channel).ModerateStream(requests(), timeout=120)
            # Writing, never reading: wait until both counts stop moving (or pass the bound).
            history: list[tuple[int, float]] = []
            started = time.monotonic()
            while time.monotonic() - started < 30:
                time.sleep(0.25)
                history.append((pulled, handled_requests(server) - before))
                if history[-1][1] > handled_bound or pulled == total:
                    break
                settled = len(history) >= 8 and len(set(history[-8:])) == 1  # unchanged for 2 s
                if settled and time.monotonic() - started > 3:
                    break
            held_pulled, held_handled = history[-1]
            print(f"never read: gRPC pulled {held_pulled} requests, the server read {held_handled:.0f} (of {total})")
            assert held_handled <= handled_bound, f"the server read {held_handled:.0f} requests of a stream nobody reads (bound {handled_bound})"
            assert held_pulled <= pulled_bound, f"gRPC pulled {held_pulled} of {total} requests (bound {pulled_bound})"
            assert held_handled >= window, "the server answered the window's requests before it stopped reading"

            # Reading resumes the stream: every request answered, in order, none lost or failed.
            answers = list(call)
    assert len(answers) == total
    assert all(a.request_id.startswith(f"{i:08d}") and a.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for i, a in enumerate(answers))


def test_stream_error_entries_echo_a_cut_request_id(bounded: RunningServer) -> None:
    long_id = "r" * 100_000
    with bounded.channel() as channel:
        items = iter([pb.ModerateStreamRequest(request=pb.ModerateRequest(request_id=long_id, image=images.astronaut_jpeg()))])
        (reply,) = list(pb_grpc.ModerationServiceStub(channel).ModerateStream(items, timeout=60))
    assert reply.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "request_id is longer than 128 characters" in reply.error.message
    assert reply.request_id.startswith("r" * 128) and reply.request_id.endswith("…[99872 more characters]")


# 2 ---------------------------------------------------------------------------------------------


def test_concurrent_large_messages_hold_bounded_memory(tmp_path: Path) -> None:
    # 4 MiB images, at most 2 RPCs handled at once: what a flood of large messages may hold is
    # bounded by 2 x (4 MiB + 64 KiB), three copies each (docs/security.md), plus allocator slack.
    env = {"MODERATION_MAX_IMAGE_BYTES": str(4 * MIB), "MODERATION_MAX_CONCURRENT_RPCS": "2"}
    with running_server(tmp_path, *TINY, env=env) as server:
        with server.channel(max_send_message_length=64 * MIB) as warm:
            valid_call(warm)

        def send(payload: bytes) -> str:
            # A connection each, as many callers would: nothing but the server's bounds limits them.
            with server.channel(max_send_message_length=64 * MIB, use_local_subchannel_pool=1) as channel:
                try:
                    pb_grpc.ModerationServiceStub(channel).Moderate(pb.ModerateRequest(image=payload), timeout=60)
                    return "OK"
                except grpc.RpcError as err:
                    return f"{err.code().name}: {err.details()}"

        over, under = os.urandom(6 * MIB), os.urandom(4 * MIB)
        with RssSampler(server.process.pid, interval_s=0.05) as rss, ThreadPoolExecutor(48) as pool:
            over_outcomes = list(pool.map(send, [over] * 32))
            under_outcomes = list(pool.map(send, [under] * 48))

            # The same flood with both RPC slots held by two open, idle streams: every one of the
            # 48 calls is refused, before its message is read; none waits, none is served.
            release = threading.Event()

            def idle() -> Iterator[pb.ModerateStreamRequest]:
                release.wait(60)
                return
                yield

            with server.channel() as holder:
                streams = [pb_grpc.ModerationServiceStub(holder).ModerateStream(idle(), timeout=90) for _ in range(2)]
                # Both slots are held once a quick call (an empty image) is refused for the RPC limit.
                deadline = time.monotonic() + 30
                while not send(b"").startswith("RESOURCE_EXHAUSTED") and time.monotonic() < deadline:
                    time.sleep(0.1)
                held_outcomes = list(pool.map(send, [under] * 48))
                release.set()
                assert [list(call) for call in streams] == [[], []]
            after_outcomes = [send(under) for _ in range(3)]  # one at a time: each is read and judged
        with server.channel() as channel:
            assert valid_call(channel).categories, "the server still answers"

    print(f"server RSS {rss.baseline:.0f} -> peak {rss.peak:.0f} MB")
    # Over the message limit (image limit + 64 KiB): refused by gRPC before it is buffered whole.
    assert all(o.startswith("RESOURCE_EXHAUSTED: ") and "Received message larger than max" in o for o in over_outcomes), set(over_outcomes)
    # Under it but more than 2 at once: refused before their messages are read; the rest are no images.
    kinds = {o.split(":")[0] + (": limit" if "Concurrent RPC limit exceeded" in o else "") for o in under_outcomes}
    assert kinds <= {"RESOURCE_EXHAUSTED: limit", "INVALID_ARGUMENT"}, set(under_outcomes)
    # With both slots held, exactly all 48 are refused for the limit (docs/security.md: max_concurrent_rpcs).
    assert held_outcomes == ["RESOURCE_EXHAUSTED: Concurrent RPC limit exceeded!"] * 48, set(held_outcomes)
    # Once the slots are free again, each call under the limit is read: random bytes are no image.
    assert [o.split(":")[0] for o in after_outcomes] == ["INVALID_ARGUMENT"] * 3, after_outcomes
    assert rss.growth < RSS_BOUND_MB, f"RSS grew {rss.growth:.0f} MB (bound {RSS_BOUND_MB} MB)"


def test_connections_and_streams_per_connection_are_capped(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    env = {"MODERATION_MAX_CONNECTIONS": "3", "MODERATION_MAX_CONCURRENT_STREAMS": "4"}
    with running_server(tmp_path, *TINY, env=env) as server:
        # Connections: the fourth and fifth are closed as they arrive. (The probe connection
        # that waited for SERVING may take a moment to go: try again until it has.)
        def connect(count: int) -> tuple[list[str], list[grpc.Channel]]:
            channels = [open_channel(server.target, use_local_subchannel_pool=1) for _ in range(count)]
            outcomes = []
            for channel in channels:
                try:
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                    outcomes.append("OK")
                except grpc.RpcError as err:
                    outcomes.append(err.code().name)
            return outcomes, channels

        for _ in range(10):
            held, channels = connect(3)
            if held == ["OK"] * 3:
                break
            for channel in channels:
                channel.close()
            time.sleep(1)
        try:
            assert held == ["OK"] * 3
            beyond, more = connect(2)
            channels += more
            assert beyond == ["UNAVAILABLE"] * 2
        finally:
            for channel in channels:
                channel.close()
        time.sleep(2)  # those connections are gone

        # Streams: six calls opened on one connection, only four reach the server at once.
        # Each sends one request (an empty image: answered at once with an error entry)
        # and then stays open: a stream the server has not taken gets no answer.
        release = threading.Event()

        def one_then_idle() -> Iterator[pb.ModerateStreamRequest]:
            yield pb.ModerateStreamRequest(request=pb.ModerateRequest(request_id="probe", image=b""))
            release.wait(60)

        with server.channel() as channel:
            # Connected first, so the client knows the server's limit (on a fresh connection the
            # streams beyond it may be refused with REFUSED_STREAM: UNAVAILABLE, safe to retry).
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            stub = pb_grpc.ModerationServiceStub(channel)
            calls = [stub.ModerateStream(one_then_idle(), timeout=90) for _ in range(6)]
            with ThreadPoolExecutor(6) as pool:
                first_answers = [pool.submit(next, call) for call in calls]
                time.sleep(5)
                reached = sum(answer.done() for answer in first_answers)
                release.set()
                assert all(answer.result(timeout=60).error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for answer in first_answers)
            for call in calls:
                assert list(call) == []
        assert reached == 4


def test_the_exported_gauge_is_the_admission_count_under_load(tmp_path: Path) -> None:
    """moderation_in_flight_requests counts request slots (unary calls and stream items), reaches the limit, never passes it."""
    import numpy as np

    env = {"MODERATION_MAX_CONCURRENT_REQUESTS": "3"}
    # Full-HD PNGs take tens of milliseconds to decode: calls overlap.
    payload = images.encode(np.random.default_rng(1).integers(0, 255, (1080, 1920, 3), dtype=np.uint8), "PNG")
    with running_server(tmp_path, *TINY, env=env) as server:

        def gauge(name: str = "moderation_in_flight_requests") -> float:
            (value,) = [s.value for s in metric_samples(server, name)]
            return value

        assert (gauge(), gauge("moderation_in_flight_limit")) == (0, 3)
        release = threading.Event()

        def idle() -> Iterator[pb.ModerateStreamRequest]:
            release.wait(60)
            return
            yield

        with server.channel(max_send_message_length=64 * MIB) as channel:
            stub = pb_grpc.ModerationServiceStub(channel)
            idle_streams = [stub.ModerateStream(idle(), timeout=90) for _ in range(4)]
            time.sleep(1)
            assert gauge() == 0, "open streams without a request in flight hold no request slot"

            done = threading.Event()
            refusals: list[str] = []

            def unary_client() -> None:
                while not done.is_set():
                    try:
                        stub.Moderate(pb.ModerateRequest(image=payload), timeout=60)
                    except grpc.RpcError as err:
                        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
                        refusals.append(err.details())
                        time.sleep(0.02)  # back off, as the message asks

            def stream_client() -> list[pb.ModerateStreamResponse]:
                items = (pb.ModerateStreamRequest(request=pb.ModerateRequest(request_id=str(i), image=payload)) for i in range(12))
                return list(stub.ModerateStream(items, timeout=120))

            samples = []
            with ThreadPoolExecutor(10) as pool:
                unary = [pool.submit(unary_client) for _ in range(8)]
                streams = [pool.submit(stream_client) for _ in range(2)]
                while not all(s.done() for s in streams):
                    samples.append(gauge())
                    time.sleep(0.05)
                done.set()
                for future in unary:
                    future.result(timeout=60)
                answered = [r for s in streams for r in s.result()]
            release.set()
            for call in idle_streams:
                assert list(call) == []
        assert max(samples) == 3 and min(samples) >= 0, sorted(set(samples))
        # Stream items wait for a slot rather than fail; unary calls beyond the limit are refused, naming it.
        assert len(answered) == 24 and all(r.HasField("response") for r in answered)
        assert refusals and all("limit of 3 requests in flight" in r for r in refusals)
        deadline = time.monotonic() + 10
        while gauge() != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gauge() == 0


# 5 ---------------------------------------------------------------------------------------------


def audit_entries(log_text: str, request_id: str) -> list[dict]:
    return [json.loads(line) for line in log_text.splitlines() if '"logger": "moderation.audit"' in line and request_id in line]


def test_audit_metadata_values_are_cut(bounded: RunningServer) -> None:
    with bounded.channel(max_send_message_length=64 * MIB) as channel:
        valid_call(channel, request_id="big-metadata", metadata={"tenant": "t" * 5_000_000, "note": "n" * 5_000_000, "other": "o" * 100})
        # Issue 18: cut by characters, 256 emoji made a 3.5 KB line (12 bytes each as JSON's \\ud83d\\ude00).
        valid_call(channel, request_id="emoji-metadata", metadata={"tenant": "\U0001F600" * 5000, "note": "\U0001F600" * 5000})
    time.sleep(0.5)
    log_text = bounded.log_text()
    (line,) = [line for line in log_text.splitlines() if '"logger": "moderation.audit"' in line and "big-metadata" in line]
    assert len(line.encode()) < 2048, f"the audit line is {len(line.encode())} bytes"
    metadata = json.loads(line)["metadata"]
    assert metadata == {"tenant": "t" * 256 + "…[4999744 more bytes]", "note": "n" * 256 + "…[4999744 more bytes]"}
    (line,) = [line for line in log_text.splitlines() if '"logger": "moderation.audit"' in line and "emoji-metadata" in line]
    assert len(line.encode()) < 2048, f"the audit line is {len(line.encode())} bytes"
    assert json.loads(line)["metadata"]["tenant"] == "\U0001F600" * 64 + "…[19744 more bytes]"


# 6 ---------------------------------------------------------------------------------------------


def test_text_log_format_cannot_be_forged(tmp_path: Path) -> None:
    forged = "x\n2030-01-01 00:00:00,000 INFO moderation.audit: decision request_id=fake caller=token:admin action=ALLOW"
    with running_server(tmp_path, *TINY, "--log-format", "text") as server, server.channel() as channel:
        valid_call(channel, request_id=forged)
        valid_call(channel, request_id="esc-\x1b[2J-\x1b]0;owned\x07-\u2028-end")
        time.sleep(0.5)
        log = server.log_text()
    lines = log.splitlines()
    assert not [line for line in lines if line.startswith("2030-01-01")], "a request id wrote a line of its own"
    assert "\x1b" not in log and "\x07" not in log and "\u2028" not in log
    (decision,) = [line for line in lines if "moderation.audit: decision" in line and "fake" in line]
    assert 'request_id="x\\n2030-01-01 00:00:00,000 INFO moderation.audit: decision request_id=fake' in decision
    (escaped,) = [line for line in lines if "esc-" in line]
    # Quoted and escaped (the U+2028 makes it quote the value, which then uses JSON's \u001b escapes).
    assert 'request_id="esc-\\u001b[2J-\\u001b]0;owned\\u0007-\\u2028-end"' in escaped


# 8 ---------------------------------------------------------------------------------------------


def test_long_policy_ids_are_not_found_with_a_short_message(bounded: RunningServer) -> None:
    long_id = "p" * 10_000
    with bounded.channel() as channel:
        stub = pb_grpc.ModerationServiceStub(channel)
        for call in (
            lambda: stub.Moderate(pb.ModerateRequest(image=images.astronaut_jpeg(), policy_id=long_id), timeout=30),
            lambda: stub.GetPolicy(pb.GetPolicyRequest(policy_id=long_id), timeout=30),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert len(caught.value.details()) < 400 and "policy ids are at most 128 characters" in caught.value.details()
        item = pb.ModerateStreamRequest(request=pb.ModerateRequest(image=images.astronaut_jpeg(), policy_id=long_id))
        (reply,) = list(stub.ModerateStream(iter([item]), timeout=30))
        assert reply.error.code == grpc.StatusCode.NOT_FOUND.value[0] and len(reply.error.message) < 400


# 9 ---------------------------------------------------------------------------------------------


def listening_address(pid: int, port: int) -> str:
    """The local address a process's TCP socket listens on for `port`, from /proc/<pid>/net/tcp."""
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:  # LISTEN
            return ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0))
    raise AssertionError(f"nothing listens on {port}")


def test_metrics_port_binds_the_grpc_host(bounded: RunningServer) -> None:
    metrics_port = int(re.search(r":(\d+)/metrics$", bounded.metrics_url).group(1))
    assert listening_address(bounded.process.pid, metrics_port) == "127.0.0.1"


def test_reflection_v1_and_v1alpha(bounded: RunningServer) -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with bounded.channel() as channel:
        for version in ("v1", "v1alpha"):
            call = channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            (reply,) = list(call(iter([request]), timeout=30))
            names = {service.name for service in reply.list_services_response.service}
            assert {"moderation.v1.ModerationService", "grpc.reflection.v1.ServerReflection"} <= names, version


def test_embedding_store_is_private_to_its_owner(tmp_path: Path) -> None:
    store = tmp_path / "store" / "embeddings.db"
    store.parent.mkdir()
    with running_server(tmp_path, *TINY, env={"MODERATION_EMBEDDING_STORE": str(store)}) as server, server.channel() as channel:
        valid_call(channel)
    for path in store.parent.iterdir():
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} is {oct(path.stat().st_mode & 0o777)}"
    assert store.exists()


# Issue 18, item 6 ---------------------------------------------------------------------------------


def test_busy_streams_of_one_caller_leave_another_callers_unary_calls_served(tmp_path: Path) -> None:
    """Five ModerateStreams kept full by one caller; another caller's unary calls are still served.

    Before: a freed slot always went to the waiting stream items and a unary call was
    refused whenever anything waited, so the unary caller got 1 OK in 94 over 20 s.
    """
    import numpy as np

    tokens = tmp_path / "tokens"
    streams_token, unary_token = "streams-token-0123456789", "unary-token-0123456789"
    tokens.write_text(f"streams:{streams_token}\nunary:{unary_token}\n")
    env = {"MODERATION_AUTH_TOKENS_FILE": str(tokens), "MODERATION_MAX_CONCURRENT_REQUESTS": "4"}
    # Full-HD PNGs take tens of milliseconds each to decode: the streams keep every slot busy.
    payload = images.encode(np.random.default_rng(2).integers(0, 255, (1080, 1920, 3), dtype=np.uint8), "PNG")
    stop = threading.Event()

    def items() -> Iterator[pb.ModerateStreamRequest]:
        while not stop.is_set():
            yield pb.ModerateStreamRequest(request=pb.ModerateRequest(image=payload))

    with running_server(tmp_path, *TINY, env=env) as server, server.channel(max_send_message_length=64 * MIB) as channel:
        stub = pb_grpc.ModerationServiceStub(channel)
        as_streams = (("authorization", f"Bearer {streams_token}"),)
        as_unary = (("authorization", f"Bearer {unary_token}"),)

        def stream_client() -> int:
            return sum(r.HasField("response") for r in stub.ModerateStream(items(), timeout=120, metadata=as_streams))

        with ThreadPoolExecutor(5) as pool:
            streams = [pool.submit(stream_client) for _ in range(5)]
            time.sleep(2)  # the streams fill every slot and queue items behind them
            waiting = [s.value for s in metric_samples(server, "moderation_admission_waiting_requests")]
            codes: list[grpc.StatusCode] = []
            until = time.monotonic() + 8
            while time.monotonic() < until:
                try:
                    stub.Moderate(pb.ModerateRequest(image=payload), timeout=10, metadata=as_unary)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
                    codes.append(err.code())
                    time.sleep(0.05)  # back off, as the message asks
            stop.set()
            answered = [s.result(timeout=120) for s in streams]
    ok = codes.count(grpc.StatusCode.OK)
    print(f"unary caller: {ok} OK of {len(codes)} under 5 busy streams; stream items answered: {answered}; waiting: {waiting}")
    assert waiting and waiting[0] > 0, "the streams did not saturate the server: the test shows nothing"
    assert ok >= 0.8 * len(codes) and ok >= 5
    assert all(n > 0 for n in answered), "fair, not starved: every stream kept being served"


def test_refused_canvas_growing_gifs_do_not_accumulate_memory(tmp_path: Path) -> None:
    """Issue 18, item 1, found again by the abuse run: each refused GIF left its decoded canvases
    (~40 M pixels a frame) alive in the exception's traceback, a reference cycle the cyclic GC
    frees late (it counts objects, not bytes): +380 MB a call, 10 calls +3.8 GB. Now the growth
    stays at what the decode threads' allocator keeps (about +0.8 GB for 2 workers)."""
    data = images.canvas_growing_gif(frames=20, offset=6299)
    with running_server(tmp_path, *TINY, env={"MODERATION_DECODE_WORKERS": "2"}) as server, server.channel() as channel:
        stub = pb_grpc.ModerationServiceStub(channel)
        valid_call(channel)
        with RssSampler(server.process.pid, interval_s=0.1) as rss:
            for _ in range(8):
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Moderate(pb.ModerateRequest(image=data), timeout=60)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_animation_pixels" in refused.value.details()
        assert valid_call(channel).categories
    print(f"server RSS {rss.baseline:.0f} -> peak {rss.peak:.0f} MB over 8 refused GIFs")
    assert rss.growth < 1300, f"RSS grew {rss.growth:.0f} MB over 8 refused GIFs"
