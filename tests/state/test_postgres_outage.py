"""PostgreSQL going away and coming back under a writing store: buffered, bounded, counted, reconnected."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone

import numpy as np
import pytest

from moderation.state.embeddings import read_decisions
from moderation.state.records import StoreError
from moderation.state.store import open_store
from tests.postgres import PASSWORD, PostgresServer, postgres_for_test

NOW = datetime.now(timezone.utc)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own: it is stopped and started again, which the session's must not be."""
    yield from postgres_for_test()


def stored_ids(url: str) -> list[str]:
    return [r for b in read_decisions(url, since=0) for r in b.request_ids]


def test_an_outage_buffers_then_drops_and_counts_and_the_store_reconnects(own_postgres: PostgresServer, caplog: pytest.LogCaptureFixture) -> None:
    url = own_postgres.create_database("outage")
    dropped: Counter[str] = Counter()
    store = open_store(
        url, batch_size=2, max_buffered=4, max_buffered_thumbnails=1, max_delay_s=0.2, flush_interval_s=0.1,
        warn_every_s=3600, on_dropped=lambda kind, n: dropped.update({kind: n}),
    )  # fmt: skip
    vector = np.ones(4, np.float32)
    store.record("before", NOW, "p", "1", "ALLOW", vector, "m")
    store.flush()
    assert stored_ids(url) == ["before"]

    own_postgres.stop()
    caplog.set_level(logging.WARNING, logger="moderation.state.store")
    started = time.monotonic()
    for i in range(10):
        store.record(f"during{i}", NOW, "p", "1", "ALLOW", vector, "m")  # never raises, never waits long
        store.save_thumbnail(f"during{i}", b"\xff\xd8" + os.urandom(64))
    time.sleep(0.5)  # the flusher tries (and fails) meanwhile
    assert time.monotonic() - started < 10, "recording must not wait for the database"
    assert store.dropped == 6 and dropped == {"decision": 6, "thumbnail": 9}  # bounded: the oldest went
    with pytest.raises(StoreError, match=r"cannot (connect to|write to) state store postgresql://moderation:\*\*\*@"):
        store.flush()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one warning per warn_every_s, not one per failed attempt"
    assert "stay buffered" in warnings[0] and PASSWORD not in warnings[0]

    own_postgres.start()
    deadline = time.monotonic() + 20
    while len(stored_ids(url)) < 5 and time.monotonic() < deadline:  # the flusher reconnects on its own
        time.sleep(0.1)
    store.record("after", NOW, "p", "1", "ALLOW", vector, "m")
    store.flush()
    # The four newest buffered decisions survived the outage, and the one recorded after it arrived.
    assert stored_ids(url) == ["before", "during6", "during7", "during8", "during9", "after"]
    assert store.load_thumbnail("during9") is not None
    recovered = [r.getMessage() for r in caplog.records if "writable again" in r.getMessage()]
    assert len(recovered) == 1 and "6 decisions and 9 thumbnails were dropped meanwhile" in recovered[0]
    store.close()
