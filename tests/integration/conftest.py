from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests.conftest import POLICIES, TINY_CLIP
from tests.integration.server import RunningServer, running_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One real server for the session: tiny random open_clip model, the shipped policies."""
    with running_server(
        tmp_path_factory.mktemp("server"),
        "--policies", str(POLICIES), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random",
    ) as running:  # fmt: skip
        yield running


@pytest.fixture
def stub(server: RunningServer) -> Iterator[pb_grpc.ModerationServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.ModerationServiceStub(channel)
