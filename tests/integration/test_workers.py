"""`serve --workers 2`: two real server processes on one port, one /metrics, one health, one SIGTERM.

Each worker is found by its pid: the supervisor's children. A client connection stays with
the worker the kernel gave it, so the test opens connections (each its own subchannel)
until both workers have answered.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests.conftest import POLICIES, TINY_CLIP
from tests.integration.server import free_port, running_server

TINY_ARGS = ("--policies", str(POLICIES), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random")


def _jpeg(seed: int) -> bytes:
    image = Image.effect_noise((96, 64), 40 + seed).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def _children(pid: int) -> set[int]:
    children = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children.update(int(child) for child in text)
    return children


def _metric(text: str, line_start: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    assert values, f"no sample starting {line_start!r}"
    return sum(values)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT load spreading and /proc are Linux's")
def test_two_workers_share_port_metrics_health_and_stop(tmp_path: Path) -> None:
    health_port = free_port()
    with running_server(tmp_path, *TINY_ARGS, "--workers", "2", env={"MODERATION_HEALTH_PORT": str(health_port)}) as server:
        supervisor = server.process.pid
        workers = _children(supervisor)
        assert len(workers) == 2, f"expected two worker processes under the supervisor, found {workers}"
        # The probes' port is the supervisor's, and says SERVING once both workers do.
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            deadline = time.monotonic() + 60
            while True:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
                if status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert status == health_pb2.HealthCheckResponse.SERVING

        # Connections until both workers have answered: each request's connection is its own
        # (a local subchannel pool), and the kernel spreads connections over the workers.
        answered_by: set[int] = set()
        requests = 0
        for attempt in range(60):
            with grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                stub = pb_grpc.ModerationServiceStub(channel)
                response = stub.Moderate(pb.ModerateRequest(image=_jpeg(attempt), request_id=f"r{attempt}"), timeout=30)
                requests += 1
                assert response.request_id == f"r{attempt}"
                assert response.categories
                answered_by.update(_worker_with_connection(workers, server.target))
            if answered_by == workers:
                break
        assert answered_by == workers, f"only workers {answered_by} of {workers} answered in {requests} connections"

        # One /metrics for the pod: the requests of both workers, the workers counted and serving.
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        assert _metric(text, 'moderation_requests_total{') == requests
        assert _metric(text, "moderation_workers ") == 2
        assert _metric(text, "moderation_workers_serving ") == 2
        # Gauges the same in every worker are not doubled.
        assert _metric(text, 'moderation_model_info{') == 1
        # Limits add up: each worker admits its own max_concurrent_requests.
        assert _metric(text, "moderation_in_flight_limit ") == 2 * 64

        # SIGTERM drains both workers and the supervisor exits 0.
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    log = server.log_text()
    assert "2 server workers on" in log


def _worker_with_connection(workers: set[int], target: str) -> set[int]:
    """Which workers hold an established connection from this client right now (their sockets, from /proc)."""
    port = int(target.rsplit(":", 1)[1])
    holding = set()
    for pid in workers:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        # grpc-core's sockets may be IPv6 ones (127.0.0.1 as ::ffff:127.0.0.1): both tables.
        table = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:] + Path(f"/proc/{pid}/net/tcp6").read_text().splitlines()[1:]
        for line in table:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:  # ESTABLISHED, this worker's socket
                holding.add(pid)
    return holding


def test_a_worker_that_dies_stops_the_pod_with_a_nonzero_exit(tmp_path: Path) -> None:
    with running_server(tmp_path, *TINY_ARGS, "--workers", "2") as server:
        workers = sorted(_children(server.process.pid))
        os.kill(workers[0], signal.SIGKILL)
        assert server.process.wait(timeout=60) == 1
    log = server.log_text()
    assert f"(pid {workers[0]}) exited with code -9" in log


def test_workers_refuse_a_port_in_use(tmp_path: Path) -> None:
    with running_server(tmp_path, *TINY_ARGS) as single:
        port = single.target.rsplit(":", 1)[1]
        result = subprocess.run(
            [sys.executable, "-m", "moderation", "serve", "--host", "127.0.0.1", "--port", port, "--metrics-port", "0", "--workers", "2", *TINY_ARGS],
            capture_output=True, text=True, timeout=120, env={**os.environ, "MODERATION_EXPLAINER_MODE": "off"},
        )  # fmt: skip
    assert result.returncode == 2
    assert f"cannot bind gRPC port 127.0.0.1:{port}" in result.stderr
