"""A bounded load test on loopback: overload is answered with RESOURCE_EXHAUSTED only, memory stays bounded."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bench.clip import _rss_mb, drive, realistic_jpegs
from tests.conftest import POLICIES, TINY_CLIP
from tests.integration.server import running_server

pytestmark = pytest.mark.integration


def test_overload_is_rejected_fast_and_memory_stays_bounded(tmp_path: Path) -> None:
    env = {"MODERATION_MAX_QUEUE": "4", "MODERATION_MAX_CONCURRENT_REQUESTS": "12", "MODERATION_MAX_BATCH": "4"}
    jpegs = realistic_jpegs()
    with running_server(tmp_path, "--policies", str(POLICIES), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random", env=env) as server:
        warm = asyncio.run(drive(server.target, jpegs, 2, 3.0))
        rss_before, _ = _rss_mb(server.process.pid)
        rounds = [asyncio.run(drive(server.target, jpegs, 48, 8.0)) for _ in range(3)]
        rss_after, peak = _rss_mb(server.process.pid)
        calm = asyncio.run(drive(server.target, jpegs, 1, 2.0))

    assert warm.requests > 0 and not warm.errors
    served = sum(r.requests for r in rounds)
    errors: dict[str, int] = {}
    for r in rounds:
        for code, count in r.errors.items():
            errors[code] = errors.get(code, 0) + count
    print(f"served {served}, rejected {errors}, rss {rss_before:.0f} -> {rss_after:.0f} MB (peak {peak:.0f})")
    assert served > 0
    assert set(errors) <= {"RESOURCE_EXHAUSTED"}, errors
    assert errors.get("RESOURCE_EXHAUSTED", 0) > 0, "48 clients against 12 slots must be shed"
    assert rss_after < rss_before * 1.3 + 100, (rss_before, rss_after)
    assert calm.requests > 0 and not calm.errors, "the server recovers once the spike is over"


def test_with_every_request_slot_held_each_unary_call_is_refused_and_none_once_they_are_free(tmp_path: Path) -> None:
    """The exact count the limit implies (docs/security.md: `max_concurrent_requests`; a unary call waits at most
    `admission_wait_s`, then RESOURCE_EXHAUSTED naming the limit).

    A ModerateVideo call holds one request slot for the whole call, from its start: 12 of them
    that have not sent their first chunk hold all 12 slots, and nothing else can free one. So
    each of 24 unary calls at once is refused, all 24; once the videos end, 12 at once are all served.
    """
    import threading
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from prometheus_client.parser import text_string_to_metric_families

    from moderation.v1 import moderation_pb2 as pb
    from moderation.v1 import moderation_pb2_grpc as pb_grpc

    limit = 12
    env = {"MODERATION_MAX_CONCURRENT_REQUESTS": str(limit), "MODERATION_ADMISSION_WAIT_S": "0.2"}
    jpeg = realistic_jpegs()[0]
    with running_server(tmp_path, "--policies", str(POLICIES), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random", env=env) as server:

        def in_flight() -> float:
            text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
            family = next(f for f in text_string_to_metric_families(text) if f.name == "moderation_in_flight_requests")
            return family.samples[0].value

        release = threading.Event()

        def nothing_yet():  # noqa: ANN202 - a video upload that has not sent its options yet
            release.wait(60)
            return
            yield

        def unary(stub: pb_grpc.ModerationServiceStub) -> str:
            try:
                stub.Moderate(pb.ModerateRequest(image=jpeg), timeout=30)
                return "OK"
            except grpc.RpcError as err:
                return f"{err.code().name}: {err.details()}"

        with server.channel() as channel:
            stub = pb_grpc.ModerationServiceStub(channel)
            assert unary(stub) == "OK"
            videos = [stub.ModerateVideo.future(nothing_yet(), timeout=90) for _ in range(limit)]
            deadline = time.monotonic() + 30
            while in_flight() < limit and time.monotonic() < deadline:
                time.sleep(0.1)
            assert in_flight() == limit, "the videos hold every request slot"
            with ThreadPoolExecutor(24) as pool:
                held = list(pool.map(lambda _: unary(stub), range(24)))
                release.set()
                for video in videos:
                    with pytest.raises(grpc.RpcError) as ended:
                        video.result(timeout=60)
                    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # no messages: nothing to judge
                deadline = time.monotonic() + 30
                while in_flight() > 0 and time.monotonic() < deadline:
                    time.sleep(0.1)
                free = list(pool.map(lambda _: unary(stub), range(limit)))  # exactly the limit, at once

    assert held == [f"RESOURCE_EXHAUSTED: the server is at its limit of {limit} requests in flight; retry with backoff"] * 24, set(held)
    assert free == ["OK"] * limit, free
