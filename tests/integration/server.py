"""Start the real `moderation serve` process on free loopback ports and wait for SERVING."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    target: str
    metrics_url: str
    process: subprocess.Popen
    log_path: Path
    credentials: grpc.ChannelCredentials | None = None

    def channel(self, **options: object) -> grpc.Channel:
        return open_channel(self.target, self.credentials, **options)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def open_channel(target: str, credentials: grpc.ChannelCredentials | None = None, **options: object) -> grpc.Channel:
    pairs = [(f"grpc.{k}", v) for k, v in options.items()]
    if credentials is None:
        return grpc.insecure_channel(target, options=pairs)
    return grpc.secure_channel(target, credentials, options=pairs)


def wait_until_serving(
    target: str, process: subprocess.Popen, log_path: Path, timeout_s: float = 180.0, credentials: grpc.ChannelCredentials | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    with open_channel(target, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"server not SERVING after {timeout_s} s:\n{log_path.read_text()[-4000:]}")


@contextlib.contextmanager
def running_server(
    log_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    command: str = "serve",
) -> Iterator[RunningServer]:
    """`moderation serve` (or `command`: explain-serve) until the block ends, then SIGTERM."""
    port, metrics_port = free_port(), free_port()
    log_path = log_dir / f"{command}-{port}.log"
    argv = [
        sys.executable, "-m", "moderation", command,
        "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port), *args,
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        # Escalation off unless a test asks for it: `auto` would load (or probe the hub for) SmolVLM2 weights.
        defaults = {"MODERATION_EXPLAINER_MODE": "off"}
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **defaults, **(env or {})})
    # With TLS the certificate names localhost, so the client must too.
    target = f"{'localhost' if credentials else '127.0.0.1'}:{port}"
    try:
        wait_until_serving(target, process, log_path, credentials=credentials)
        yield RunningServer(target, f"http://127.0.0.1:{metrics_port}/metrics", process, log_path, credentials)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
