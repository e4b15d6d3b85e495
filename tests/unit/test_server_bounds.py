"""The pieces behind the resource bounds (issue 12), without a server: escaping, cutting, rate limits, slots, tokens, store mode."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from moderation.ops.logs import RateLimitedLog, TextFormatter, escape_control
from moderation.serving.auth import TokenAuth
from moderation.serving.admission import Admission
from moderation.serving.limits import cut, cut_utf8, echo

TOKEN = b"0123456789abcdef-token"


def test_escape_control_keeps_one_line_and_no_terminal_escapes() -> None:
    assert escape_control("a\nb\rc\td\x1b[31m\x7f\x85\u2028é") == "a\\nb\\rc\\td\\x1b[31m\\x7f\\x85\\u2028é"


def test_text_formatter_quotes_values_that_could_pose_as_fields() -> None:
    record = logging.LogRecord("moderation.audit", logging.INFO, "x", 1, "decision\nforged", (), None)
    record.fields = {"request_id": "a caller=token:admin", "plain": "ok-1", "meta": {"k": "v\x1b"}}
    line = TextFormatter().format(record)
    assert "\n" not in line and "\x1b" not in line
    assert 'decision\\nforged request_id="a caller=token:admin" plain=ok-1 meta="{\\"k\\": \\"v\\\\u001b\\"}"' in line


def test_no_text_log_value_or_message_lets_a_logfmt_parser_read_a_forged_field() -> None:
    """Issue 18: a metadata mapping and a thumbnail-failure message each carried `caller=token:admin` past the real caller."""
    import shlex

    record = logging.LogRecord("moderation.audit", logging.WARNING, "x", 1, "could not write a thumbnail: x caller=token:admin", (), None)
    record.fields = {"caller": "token:alice", "metadata": {"tenant": "t caller=token:admin"}, "n": 3, "ids": ["a b", "c=d"]}
    line = TextFormatter().format(record)
    words = shlex.split(line.split(": ", 1)[1])  # logfmt-style: quoted strings are one word
    pairs = [word.split("=", 1) for word in words if "=" in word]
    assert [key for key, _ in pairs].count("caller") == 1 and dict(pairs)["caller"] == "token:alice"
    assert dict(pairs)["n"] == "3"


def test_audit_values_are_cut_by_bytes_at_a_character_boundary() -> None:
    assert cut_utf8("abc", 3) == "abc"
    assert cut_utf8("\U0001F600" * 100, 10) == "\U0001F600\U0001F600…[392 more bytes]"
    assert cut_utf8("é" * 10, 5) == "éé…[16 more bytes]"


def test_cut_marks_what_it_leaves_out() -> None:
    assert cut("abc", 3) == "abc"
    assert cut("abcdef", 3) == "abc…[3 more characters]"
    assert len(echo("x" * 100_000)) < 160


def test_rate_limited_log_says_how_many_lines_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("test.limited"), per_interval=2, interval_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.limited"):
        written = [limited.log(logging.WARNING, "refused", fields={"peer": "p"}) for _ in range(5)]
        now[0] = 61.0
        written.append(limited.log(logging.WARNING, "refused"))
    assert written == [True, True, False, False, False, True]
    assert [r.fields["left_out_before"] for r in caplog.records] == [0, 0, 3]


def test_token_check_refuses_duplicate_headers_whichever_comes_last() -> None:
    auth = TokenAuth({"a": TOKEN})
    good, bad = ("authorization", "Bearer " + TOKEN.decode()), ("authorization", "Bearer nope-nope-nope-nope")
    assert auth.check((good,)) == ("a", "")
    assert auth.check((bad, good)) == (None, "duplicate")
    assert auth.check((good, bad)) == (None, "duplicate")
    assert auth.check(()) == (None, "missing")
    assert auth.check((("authorization", TOKEN.decode()),)) == (None, "malformed")
    assert auth.check((bad,)) == (None, "invalid")


async def test_request_slots_refuse_unary_calls_and_queue_stream_items_in_order() -> None:
    admission = Admission(limit=2)
    assert admission.try_acquire() and admission.try_acquire()
    assert not admission.try_acquire()
    order: list[str] = []

    async def item(name: str) -> None:
        await admission.acquire()
        order.append(name)

    first, second = asyncio.create_task(item("first")), asyncio.create_task(item("second"))
    cancelled = asyncio.create_task(item("cancelled"))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    admission.release()  # handed to the first waiter: a unary call cannot jump the queue
    assert not admission.try_acquire()
    await first
    admission.release()
    await second
    assert order == ["first", "second"] and admission.held == 2
    admission.release()
    admission.release()
    assert admission.held == 0 and admission.try_acquire()


async def test_the_exported_gauge_is_the_count_the_limit_applies_to() -> None:
    from prometheus_client import CollectorRegistry

    from moderation.ops.metrics import ModerationMetrics

    metrics = ModerationMetrics(CollectorRegistry())
    admission = Admission(3, metrics.in_flight, metrics.in_flight_limit)

    def exported(name: str) -> float | None:
        return metrics.registry.get_sample_value(name)

    assert (exported("moderation_in_flight_requests"), exported("moderation_in_flight_limit")) == (0, 3)
    waiting = []
    for expected in (1, 2, 3, 3, 3):  # unary calls, then stream items waiting for a slot: held never passes the limit
        if not admission.try_acquire():
            waiting.append(asyncio.create_task(admission.acquire()))
            await asyncio.sleep(0)
        assert exported("moderation_in_flight_requests") == admission.held == expected
    draining = asyncio.create_task(admission.drain(5))
    for expected in (3, 3, 2, 1, 0):  # the first releases go to the waiting items
        admission.release()
        await asyncio.sleep(0)
        assert exported("moderation_in_flight_requests") == admission.held == expected
    assert all(task.done() for task in waiting)
    assert await draining is True and admission.draining


def test_embedding_store_is_created_owner_only(tmp_path: Path) -> None:
    from moderation.state.store import open_store

    with open_store(tmp_path / "store.db"):
        pass
    assert (tmp_path / "store.db").stat().st_mode & 0o777 == 0o600
