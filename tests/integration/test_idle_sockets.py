"""Idle sockets holding the connection cap (issue 18, item 5), against the real server.

Before: sockets that sent nothing or only the HTTP/2 preface held `max_connections`
slots for grpc-core's 120 s handshake timeout, and every new connection, health checks
included, got UNAVAILABLE. Now: the handshake has `handshake_timeout_s`, a connection
that opens no call is closed after `max_connection_idle_s`, and the health port has its
own server object and so its own cap.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests import images
from tests.conftest import POLICIES, TINY_CLIP
from tests.http2 import EMPTY_SETTINGS, PREFACE, closed_by_server, open_sockets
from tests.integration.server import free_port, open_channel, running_server

pytestmark = pytest.mark.integration

TINY = ("--policies", str(POLICIES), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random")
CAP = 20  # the test's max_connections: 2 x CAP sockets fill it, a bounded number on loopback


def health_ok(target: str, timeout_s: float = 2.0) -> bool:
    # A fresh connection each time (local subchannel pool): a pooled one would hide the cap.
    with open_channel(target, use_local_subchannel_pool=1) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
        except grpc.RpcError:
            return False


def moderate_ok(target: str) -> bool:
    with open_channel(target, use_local_subchannel_pool=1) as channel:
        try:
            return bool(pb_grpc.ModerationServiceStub(channel).Moderate(pb.ModerateRequest(image=images.astronaut_jpeg()), timeout=10).categories)
        except grpc.RpcError:
            return False


def wait_for_main_port(target: str, since: float, within_s: float) -> float | None:
    """Seconds from `since` until a health check and a Moderate call on fresh connections both succeed; None if not within `within_s`."""
    while time.monotonic() - since < within_s:
        if health_ok(target) and moderate_ok(target):
            return time.monotonic() - since
        time.sleep(0.25)
    return None


def test_idle_sockets_release_the_connection_cap_and_health_keeps_its_own(tmp_path: Path) -> None:
    health_port = free_port()
    # The handshake bound is well above the probe's deadline below: a probe still waiting
    # when the first silent sockets are dropped would get a slot and pass (seen in CI).
    handshake_s, idle_s = 4.0, 8.0
    env = {
        "MODERATION_MAX_CONNECTIONS": str(CAP),
        "MODERATION_HANDSHAKE_TIMEOUT_S": str(handshake_s),
        # Longer than the handshake timeout, so the first phase shows the handshake bound
        # at work (on main, only this idle timeout freed the slots).
        "MODERATION_MAX_CONNECTION_IDLE_S": str(idle_s),
        "MODERATION_HEALTH_PORT": str(health_port),
    }
    with running_server(tmp_path, *TINY, env=env) as server:
        assert moderate_ok(server.target)  # warm

        # 1. The attack as found: twice the cap of sockets that send nothing or only the preface.
        sockets = open_sockets(server.target, [[b"", PREFACE][i % 2] for i in range(2 * CAP)])
        flooded_at = time.monotonic()
        try:
            time.sleep(0.3)  # grpc-core accepts them
            # The main port is full now: a fresh connection is refused. Probes until one is
            # refused, for at most 60% of the handshake bound (so before any flood socket is
            # dropped): on a loaded machine grpc-core may not have accepted the whole flood by
            # the first probe, and a client retrying inside its deadline could slip into a slot
            # a closing socket just freed. Any one refusal shows the cap full.
            probes: list[bool] = []
            while time.monotonic() - flooded_at < 0.6 * handshake_s and (not probes or probes[-1]):
                probes.append(health_ok(server.target, timeout_s=0.3))
            assert probes and not probes[-1], f"every probe of the full main port was answered: {probes}"
            assert time.monotonic() - flooded_at < handshake_s, "the probes outlived the flood; the machine is too slow to tell"
            # ...the health port is another server object with its own cap: it answers throughout.
            assert health_ok(f"127.0.0.1:{health_port}")
            recovered = wait_for_main_port(server.target, flooded_at, within_s=handshake_s + 3)
            assert recovered is not None, f"the main port did not answer within {handshake_s + 3} s of the flood"
            print(f"main port answered again {recovered:.1f} s after {2 * CAP} silent or preface-only sockets")
            deadline = flooded_at + handshake_s + 3
            assert all(closed_by_server(sock, deadline) for sock in sockets), "each one is closed at its handshake timeout"
        finally:
            for sock in sockets:
                sock.close()

        # 2. Complete HTTP/2 connections (preface and SETTINGS) that never open a call: past
        # the handshake, they are closed when idle for max_connection_idle_s.
        sockets = open_sockets(server.target, [PREFACE + EMPTY_SETTINGS] * (2 * CAP))
        flooded_at = time.monotonic()
        try:
            time.sleep(0.3)
            assert health_ok(f"127.0.0.1:{health_port}")
            recovered = wait_for_main_port(server.target, flooded_at, within_s=idle_s + 4)
            assert recovered is not None, f"the main port did not answer within {idle_s + 4} s of the flood"
            print(f"main port answered again {recovered:.1f} s after {2 * CAP} sockets that sent SETTINGS and no call")
            deadline = flooded_at + idle_s + 4
            assert all(closed_by_server(sock, deadline) for sock in sockets), "each one is closed when idle"
        finally:
            for sock in sockets:
                sock.close()
        assert health_ok(f"127.0.0.1:{health_port}")
