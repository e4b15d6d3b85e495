"""Two real servers sharing one real PostgreSQL: the issue's "state that outlives a pod".

- decisions from both servers appear in one `policy diff --store URL` and `case show`;
- a server killed with SIGKILL loses nothing already flushed ("acknowledged": a flush
  that included the decision committed; the flush interval bounds what a kill can lose);
- the database stopping and starting again while requests flow fails no request, every
  decision of the outage is either stored or counted in moderation_store_dropped_total,
  and decisions made after the restart arrive.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from moderation.cli import app
from moderation.state.store import open_store
from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests import images
from tests.conftest import POLICIES, TINY_CLIP
from tests.integration.server import RunningServer, running_server
from tests.postgres import PASSWORD, PostgresServer, postgres_for_test

pytestmark = pytest.mark.integration

TINY = f"local-dir:{TINY_CLIP}"
DEFAULT_TEXT = (POLICIES / "default.yaml").read_text()
# Every review threshold at zero: the shadow flags every image, so every case keeps a thumbnail.
STRICT_SHADOW = re.sub(
    r"review: 0\.\d+",
    "review: 0.0",
    DEFAULT_TEXT.replace("id: default\n", "id: default_strict\n", 1).replace("default: true\n", "mode: shadow\nshadow_of: default\n", 1),
)
FLUSH_INTERVAL_S = 0.3
MAX_BUFFERED = 4  # small, so an outage of a few requests overflows it and the drop path runs for real
IMAGES = [images.astronaut_jpeg, images.coffee_png, images.camera_grayscale_png]


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    """A server of this test's own: it is stopped and started again mid-test."""
    yield from postgres_for_test()


def stored_ids(url: str) -> set[str]:
    with open_store(url, read_only=True) as store:
        return {r for batch in store.read_decisions(since=0) for r in batch.request_ids}


def wait_for_ids(url: str, wanted: set[str], timeout_s: float = 30.0) -> set[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        have = stored_ids(url)
        if wanted <= have or time.monotonic() > deadline:
            return have
        time.sleep(0.1)


def moderate(server: RunningServer, request_ids: list[str]) -> list[pb.ModerateResponse]:
    with server.channel() as channel:
        stub = pb_grpc.ModerationServiceStub(channel)
        return [stub.Moderate(pb.ModerateRequest(request_id=r, image=IMAGES[i % len(IMAGES)]()), timeout=30) for i, r in enumerate(request_ids)]


def dropped_decisions(server: RunningServer) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return sum(s.value for s in families["moderation_store_dropped"].samples if s.name.endswith("_total") and s.labels["kind"] == "decision")


def test_two_servers_share_one_postgres_through_a_kill_and_a_database_restart(tmp_path: Path, postgres: PostgresServer) -> None:
    url = postgres.create_database("shared")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "default.yaml").write_text(DEFAULT_TEXT)
    (policies / "default_strict.yaml").write_text(STRICT_SHADOW)
    env = {
        "MODERATION_DATABASE_URL": url,
        "MODERATION_KEEP_THUMBNAILS": "true",
        "MODERATION_EMBEDDING_FLUSH_INTERVAL_S": str(FLUSH_INTERVAL_S),
        "MODERATION_STORE_MAX_BUFFERED": str(MAX_BUFFERED),
    }
    args = ("--policies", str(policies), "--model", TINY, "--weights", "random")
    with running_server(tmp_path, *args, env=env) as first, running_server(tmp_path, *args, env=env) as second:
        from_first, from_second = [f"first-{i}" for i in range(3)], [f"second-{i}" for i in range(3)]
        answered = moderate(first, from_first) + moderate(second, from_second)
        assert len(answered) == 6
        # Acknowledged: within the flush interval both servers' decisions are in the one database.
        assert wait_for_ids(url, {*from_first, *from_second}) >= {*from_first, *from_second}

        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=30)
        assert stored_ids(url) >= {*from_first, *from_second}, "a killed server lost decisions already flushed"

        # One `policy diff` sees the traffic of both servers (the killed one's included).
        diff = subprocess.run(
            [sys.executable, "-m", "moderation", "policy", "diff", str(policies / "default.yaml"), str(policies / "default_strict.yaml"),
             "--store", url, "--since", "1d", "--model", TINY, "--weights", "random", "--json"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert diff.returncode == 0, diff.stderr
        document = json.loads(diff.stdout)
        assert document["decisions"] == 6 and document["freshness"]["in_window"] == 6
        assert PASSWORD not in diff.stdout + diff.stderr and document["store"].startswith("postgresql://moderation:***@")

        # `case show` finds a case of each server, with its thumbnail (a row of the same database).
        for request_id in ("first-1", "second-2"):
            copy = tmp_path / f"{request_id}.jpg"
            shown = CliRunner().invoke(app, ["case", "show", request_id, "--store", url, "--out", str(copy), "--json"])
            assert shown.exit_code == 0, shown.output
            case = json.loads(shown.stdout)
            assert [d["policy_id"] for d in case["decisions"]] == ["default"]
            assert case["thumbnail"] and PASSWORD not in case["thumbnail"]
            assert copy.read_bytes()[:2] == b"\xff\xd8" and copy.stat().st_mode & 0o777 == 0o600

        # The database goes away while requests flow, and comes back.
        failures: list[BaseException] = []
        during: list[str] = []
        stop_sending = threading.Event()

        def keep_sending() -> None:
            i = 0
            while not stop_sending.is_set():
                request_id = f"during-{i}"
                try:
                    moderate(second, [request_id])
                    during.append(request_id)
                except BaseException as error:  # noqa: BLE001 - every failure is reported below
                    failures.append(error)
                i += 1
                time.sleep(0.05)

        sender = threading.Thread(target=keep_sending)
        sender.start()
        try:
            time.sleep(0.5)
            postgres.stop()
            time.sleep(3.0)  # long enough for more decisions than the buffer holds
            postgres.start()
            time.sleep(1.0)
        finally:
            stop_sending.set()
            sender.join(timeout=60)
        assert not failures, f"requests failed while the database was away: {failures[:3]}"
        assert len(during) > MAX_BUFFERED

        after = [f"after-{i}" for i in range(3)]
        moderate(second, after)
        have = wait_for_ids(url, set(after))
        assert set(after) <= have, "decisions made after the database came back never arrived"
        # Every decision of the outage is accounted for: stored, or dropped and counted.
        stored_during = len(have & set(during))
        dropped = dropped_decisions(second)
        assert dropped > 0 and stored_during + dropped == len(during), (stored_during, dropped, len(during))
        log = second.log_text()
        assert "stay buffered" in log and "dropped meanwhile" in log
        assert PASSWORD not in log + first.log_text()
        assert not re.search(r"[A-Za-z0-9+/=]{200,}", log), "no image data (base64 or otherwise) in the logs"
