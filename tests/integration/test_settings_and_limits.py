"""Settings from a config file and the environment; size limits; clean shutdown."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest

from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests import images
from tests.conftest import POLICIES, TINY_CLIP
from tests.integration.server import running_server

pytestmark = pytest.mark.integration


def test_limits_from_config_file_and_env_and_clean_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(f"policies: {POLICIES}\nclip_model: local-dir:{TINY_CLIP}\nclip_weights: random\nmax_image_bytes: 200000\nmax_message_bytes: 1000000\n")
    with running_server(tmp_path, "--config", str(config), env={"MODERATION_MAX_IMAGE_PIXELS": "300000"}) as server:
        with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 16 * 1024 * 1024)]) as channel:
            stub = pb_grpc.ModerationServiceStub(channel)
            png = images.coffee_png()  # 400x600 = 240,000 pixels, ~400 kB
            assert len(png) > 200_000

            with pytest.raises(grpc.RpcError) as caught:
                stub.Moderate(pb.ModerateRequest(image=png), timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "the limit is 200,000 bytes (setting max_image_bytes)" in caught.value.details()

            with pytest.raises(grpc.RpcError) as caught:
                stub.Moderate(pb.ModerateRequest(image=b"x" * 2_000_000), timeout=30)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in caught.value.details()

            big = images.encode(images_array(700, 500), "JPEG", quality=30)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Moderate(pb.ModerateRequest(image=big), timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "700x500 = 350,000 pixels; the limit is 300,000 (setting max_image_pixels)" in caught.value.details()

            assert stub.Moderate(pb.ModerateRequest(image=images.astronaut_jpeg()), timeout=30).categories
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
    assert '"msg": "stopped"' in server.log_text()


def images_array(width: int, height: int):  # noqa: ANN201
    import numpy as np

    return np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)


def test_missing_weights_fail_at_start_with_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "moderation", "serve", "--port", "0", "--metrics-port", "0", "--policies", str(POLICIES),
         "--log-format", "text"],
        env={"MODERATION_ALLOW_DOWNLOADS": "false", "MODERATION_WEIGHTS_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert "cannot load CLIP model 'ViT-B-32' with weights 'laion2b_s34b_b79k'" in errors[0]
    assert "MODERATION_CLIP_WEIGHTS" in errors[0]


def test_invalid_policy_directory_refuses_to_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "broken.yaml").write_text("id: broken\nversion: 1\nbenign: [a]\ncategories: []\n")
    result = subprocess.run(
        [sys.executable, "-m", "moderation", "serve", "--port", "0", "--metrics-port", "0", "--policies", str(tmp_path),
         "--model", f"local-dir:{TINY_CLIP}", "--weights", "random", "--log-format", "text"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "invalid policy: " in result.stderr and "broken.yaml:4: categories: must not be empty" in result.stderr


def test_a_second_server_on_ports_in_use_refuses_to_start_naming_the_setting(tmp_path: Path) -> None:
    """grpc-core's default SO_REUSEPORT let a second server bind a port in use and take half its
    connections; a metrics port in use crashed the start with a traceback. Both now exit 2 with
    a sentence naming the setting."""
    import subprocess
    import sys
    import urllib.parse

    from tests.integration.server import free_port

    tiny = ("--policies", str(POLICIES), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random")
    with running_server(tmp_path, *tiny) as server:
        grpc_port = server.target.rsplit(":", 1)[1]
        metrics_port = str(urllib.parse.urlparse(server.metrics_url).port)
        for port, metrics, setting in ((grpc_port, str(free_port()), "MODERATION_PORT"), (str(free_port()), metrics_port, "MODERATION_METRICS_PORT")):
            second = subprocess.run(
                [sys.executable, "-m", "moderation", "serve", "--host", "127.0.0.1", "--port", port, "--metrics-port", metrics, *tiny],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            output = second.stdout + second.stderr
            assert second.returncode == 2, output[-2000:]
            assert setting in output and "Traceback" not in output and "│" not in output, output[-2000:]
        with server.channel() as channel:  # the first server still serves, alone
            assert pb_grpc.ModerationServiceStub(channel).Moderate(pb.ModerateRequest(image=images.astronaut_jpeg()), timeout=30).categories
