"""The pieces behind the resource bounds (issue 12), without a server: escaping, cutting, rate limits, slots, tokens, store mode."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from moderation.ops.logs import RateLimitedLog, TextFormatter, escape_control
from moderation.serving.auth import TokenAuth
from moderation.serving.admission import STREAM, UNARY, Admission, Slot
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


async def settle() -> None:
    """Let every ready task run (a handed-over slot wakes its waiter through a few callbacks)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_request_slots_refuse_unary_calls_and_queue_stream_items_in_order() -> None:
    admission = Admission(limit=2)
    held = [admission.try_acquire("a"), admission.try_acquire("a")]
    assert all(held) and admission.try_acquire("a") is None
    order: list[str] = []
    slots: list[Slot] = []

    async def item(name: str) -> None:
        slot = await admission.acquire("a", STREAM)
        assert slot is not None
        slots.append(slot)
        order.append(name)

    first, second = asyncio.create_task(item("first")), asyncio.create_task(item("second"))
    cancelled = asyncio.create_task(item("cancelled"))
    await settle()
    cancelled.cancel()
    await settle()
    assert admission.waiting == 2
    held[0].release()  # handed to the first waiter: a unary call cannot jump the queue
    held[0].release()  # a second release of one slot gives nothing back
    assert admission.try_acquire("a") is None
    await first
    held[1].release()
    await second
    assert order == ["first", "second"] and admission.held == 2 and admission.waiting == 0
    for slot in slots:
        slot.release()
    assert admission.held == 0 and admission.try_acquire("a") is not None


async def test_a_freed_slot_goes_to_the_waiting_caller_holding_the_fewest() -> None:
    # One caller's busy streams hold every slot and always have items waiting; another
    # caller's unary call, last to come, is served at the next release.
    admission = Admission(limit=3)
    busy = [admission.try_acquire("token:streams", STREAM) for _ in range(3)]
    streams = [asyncio.create_task(admission.acquire("token:streams", STREAM)) for _ in range(3)]
    await settle()
    unary = asyncio.create_task(admission.acquire("token:unary", UNARY, timeout=5))
    await settle()
    busy[0].release()
    await settle()
    assert unary.done() and not any(task.done() for task in streams)
    slot = unary.result()
    assert slot is not None and slot.caller == "token:unary" and admission.held_by("token:unary") == 1
    # Held 2 to 1: the streams' caller holds more, but it is the only one waiting now.
    busy[1].release()
    await settle()
    assert streams[0].done() and admission.held_by("token:streams") == 2
    # A second unary caller comes while the first still holds its slot: it ranks with the
    # first (one slot each would be fair), ahead of the streams' caller holding two.
    second = asyncio.create_task(admission.acquire("token:other", UNARY, timeout=5))
    await settle()
    busy[2].release()
    await settle()
    assert second.done() and not streams[1].done()
    assert admission.held == 3
    for task in streams[1:]:
        task.cancel()
    await asyncio.gather(*streams[1:], return_exceptions=True)
    assert admission.waiting == 0


async def test_within_one_caller_the_kind_holding_fewer_slots_goes_first() -> None:
    admission = Admission(limit=2)
    held = [admission.try_acquire("a", STREAM), admission.try_acquire("a", STREAM)]
    stream_item = asyncio.create_task(admission.acquire("a", STREAM))
    await settle()
    unary = asyncio.create_task(admission.acquire("a", UNARY, timeout=5))
    await settle()
    held[0].release()
    await settle()
    assert unary.done() and not stream_item.done()
    held[1].release()
    await settle()
    assert stream_item.done()


async def test_a_unary_wait_is_bounded_in_time_and_in_number() -> None:
    admission = Admission(limit=1, max_waiting_unary=1)
    holder = admission.try_acquire("a")
    assert await admission.acquire("b", UNARY, timeout=0) is None  # 0: refused at once
    waiting = asyncio.create_task(admission.acquire("b", UNARY, timeout=0.05))
    await settle()
    assert await admission.acquire("c", UNARY, timeout=5) is None  # the unary queue is full: refused at once
    assert await waiting is None and admission.waiting == 0  # timed out, and left no waiter behind
    holder.release()
    assert admission.held == 0


async def test_the_exported_gauge_is_the_count_the_limit_applies_to() -> None:
    from prometheus_client import CollectorRegistry

    from moderation.ops.metrics import ModerationMetrics

    metrics = ModerationMetrics(CollectorRegistry())
    admission = Admission(3, metrics.in_flight, metrics.in_flight_limit, metrics.admission_waiting)

    def exported(name: str) -> float | None:
        return metrics.registry.get_sample_value(name)

    assert (exported("moderation_in_flight_requests"), exported("moderation_in_flight_limit")) == (0, 3)
    slots: list[Slot] = []
    waiting = []
    for expected in (1, 2, 3, 3, 3):  # unary calls, then stream items waiting for a slot: held never passes the limit
        slot = admission.try_acquire()
        if slot is None:
            waiting.append(asyncio.create_task(admission.acquire()))
            await settle()
        else:
            slots.append(slot)
        assert exported("moderation_in_flight_requests") == admission.held == expected
    assert exported("moderation_admission_waiting_requests") == 2
    draining = asyncio.create_task(admission.drain(5))
    for slot in slots:  # the first releases go to the waiting items
        slot.release()
        await settle()
    assert all(task.done() for task in waiting) and exported("moderation_admission_waiting_requests") == 0
    assert exported("moderation_in_flight_requests") == admission.held == 2
    for task in waiting:
        task.result().release()
    assert exported("moderation_in_flight_requests") == admission.held == 0
    assert await draining is True and admission.draining


def test_embedding_store_is_created_owner_only(tmp_path: Path) -> None:
    from moderation.state.store import open_store

    with open_store(tmp_path / "store.db"):
        pass
    assert (tmp_path / "store.db").stat().st_mode & 0o777 == 0o600
