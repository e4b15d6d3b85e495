"""SIGTERM: NOT_SERVING, new calls refused, in-flight calls finish, exit code 0."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests import images
from tests.conftest import POLICIES, TINY_CLIP
from tests.integration.server import running_server

pytestmark = pytest.mark.integration


def test_sigterm_loses_no_in_flight_call(tmp_path: Path) -> None:
    # Full-HD PNGs take tens of milliseconds to decode: plenty of calls are in flight at any moment.
    rng = np.random.default_rng(1)
    payload = images.encode(rng.integers(0, 255, (1080, 1920, 3), dtype=np.uint8), "PNG")
    outcomes: list[tuple[float, float, str, str]] = []  # (sent, finished, code, details)
    lock = threading.Lock()
    stop = threading.Event()

    with running_server(tmp_path, "--policies", str(POLICIES), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random") as server:
        def client() -> None:
            with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
                stub = pb_grpc.ModerationServiceStub(channel)
                while not stop.is_set():
                    sent = time.monotonic()
                    try:
                        stub.Moderate(pb.ModerateRequest(image=payload), timeout=60)
                        code, details = "OK", ""
                    except grpc.RpcError as err:
                        code, details = err.code().name, err.details() or ""
                    with lock:
                        outcomes.append((sent, time.monotonic(), code, details))
                    if code != "OK":
                        return

        threads = [threading.Thread(target=client) for _ in range(12)]
        for thread in threads:
            thread.start()
        time.sleep(3)
        terminated_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    codes = {code for _, _, code, _ in outcomes}
    assert codes <= {"OK", "UNAVAILABLE"}, f"calls lost during shutdown: {[o for o in outcomes if o[2] != 'OK']}"
    # A call sent well before SIGTERM had reached the server: it must have completed.
    settled = [o for o in outcomes if o[0] < terminated_at - 0.5]
    assert settled and all(o[2] == "OK" for o in settled), [o for o in settled if o[2] != "OK"]
    drained = [o for o in outcomes if o[0] < terminated_at < o[1] and o[2] == "OK"]
    assert drained, "some calls were in flight at SIGTERM and must have completed"
    log = server.log_text()
    assert "draining: NOT_SERVING" in log and '"msg": "stopped"' in log


def test_sigterm_lets_an_open_stream_finish(tmp_path: Path) -> None:
    """A stream holds no request slot between items: the drain does not wait for it, the transport's stop does (grace period)."""
    with running_server(tmp_path, "--policies", str(POLICIES), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random") as server:
        terminated_at = []

        def items():  # noqa: ANN202
            for i in range(6):
                if i == 3:
                    server.process.send_signal(signal.SIGTERM)
                    terminated_at.append(time.monotonic())
                    time.sleep(2.0)  # past the drain and its linger: the transport is stopping
                yield pb.ModerateStreamRequest(request=pb.ModerateRequest(request_id=str(i), image=images.astronaut_jpeg()))
                time.sleep(0.2)

        with server.channel() as channel:
            responses = list(pb_grpc.ModerationServiceStub(channel).ModerateStream(items(), timeout=60))
        assert server.process.wait(timeout=30) == 0
    assert sorted(r.request_id for r in responses) == [str(i) for i in range(6)]
    assert all(r.HasField("response") for r in responses), [r.error for r in responses if r.HasField("error")]
    assert time.monotonic() - terminated_at[0] < 15


def test_sigterm_while_models_load_exits_at_once(tmp_path: Path) -> None:
    """ViT-B-32 with the default policy takes tens of seconds to load here; SIGTERM must not wait for it."""
    import os
    import subprocess
    import sys

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.integration.server import free_port

    port = free_port()
    log_path = tmp_path / "server.log"
    command = [sys.executable, "-m", "moderation", "serve", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
               "--policies", str(POLICIES), "--model", "ViT-B-32", "--weights", "random"]  # fmt: skip
    # The torch backend: an ONNX backend's first start exports the image tower (about 15 s
    # here), which is not cancellable; what is cancellable is the policy compile.
    env = {**os.environ, "MODERATION_CLIP_BACKEND": "torch"}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            while True:  # up and NOT_SERVING: the models are loading
                assert time.monotonic() < deadline, log_path.read_text()
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    assert status == health_pb2.HealthCheckResponse.NOT_SERVING, "loaded before SIGTERM: the test proves nothing"
                    break
                except grpc.RpcError:
                    time.sleep(0.1)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log_path.read_text()
        assert time.monotonic() - sent < 10, f"exit took {time.monotonic() - sent:.1f} s:\n{log_path.read_text()}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
