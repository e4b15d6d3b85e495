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


# Admission (moderation/serving/admission.py, docs/architecture.md "request slots"): boundaries and
# combinations the tests above leave open, found by the mutation run (docs/testing.md). "At once"
# below means within a few event-loop turns, no time passing: the task is done after `settle()`.


async def test_a_new_admission_is_not_loaded_nor_draining_and_takes_at_least_one_slot() -> None:
    admission = Admission(limit=1)
    assert admission.loaded is False and admission.draining is False
    assert admission.held == 0 and admission.waiting == 0 and admission.max_waiting_unary == 1
    with pytest.raises(ValueError, match="at least 1, not 0"):
        Admission(limit=0)


async def test_acquire_takes_a_free_slot_at_once_whatever_the_timeout() -> None:
    admission = Admission(limit=3)
    for timeout in (None, 0, 0.5):
        task = asyncio.create_task(admission.acquire("a", UNARY, timeout=timeout))
        await settle()
        assert task.done() and task.result() is not None, timeout
    assert admission.held == 3 and admission.waiting == 0


async def test_a_unary_call_refused_for_a_full_queue_is_refused_at_once() -> None:
    admission = Admission(limit=1, max_waiting_unary=1)
    holder = admission.try_acquire("a")
    assert holder is not None
    waiting = asyncio.create_task(admission.acquire("b", UNARY, timeout=5))
    await settle()
    assert not waiting.done() and admission.waiting == 1
    refused = asyncio.create_task(admission.acquire("c", UNARY, timeout=5))
    await settle()
    assert refused.done() and refused.result() is None  # at once, not after its 5 s
    assert admission.waiting == 1
    holder.release()
    await settle()
    slot = waiting.result()
    assert slot is not None and slot.caller == "b"
    slot.release()


async def test_a_unary_wait_shorter_than_a_second_still_gets_a_freed_slot() -> None:
    admission = Admission(limit=1)
    holder = admission.try_acquire("a")
    assert holder is not None
    waiting = asyncio.create_task(admission.acquire("b", UNARY, timeout=0.9))
    await settle()
    assert not waiting.done()
    holder.release()
    await settle()
    assert waiting.done() and waiting.result() is not None and admission.held == 1


async def test_stream_items_waiting_do_not_fill_the_unary_queue_and_a_unary_waiter_that_left_frees_its_place() -> None:
    admission = Admission(limit=2, max_waiting_unary=1)
    holder, kept = admission.try_acquire("a", STREAM), admission.try_acquire("a", STREAM)
    assert holder is not None and kept is not None
    streams = [asyncio.create_task(admission.acquire("a", STREAM)) for _ in range(3)]
    await settle()
    first = asyncio.create_task(admission.acquire("b", UNARY, timeout=5))
    await settle()
    assert not first.done() and admission.waiting == 4  # three items and one unary call
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert admission.waiting == 3
    second = asyncio.create_task(admission.acquire("c", UNARY, timeout=5))  # the unary queue has room again
    await settle()
    assert not second.done() and admission.waiting == 4
    holder.release()  # caller c holds nothing, a still holds one: c first
    await settle()
    assert second.done() and second.result() is not None and not any(task.done() for task in streams)
    for task in streams:
        task.cancel()
    await asyncio.gather(*streams, return_exceptions=True)
    assert admission.waiting == 0
    # Stream items that left gave back no place in the unary queue they never took: it holds one.
    third = asyncio.create_task(admission.acquire("d", UNARY, timeout=5))
    fourth = asyncio.create_task(admission.acquire("e", UNARY, timeout=5))
    await settle()
    assert not third.done() and fourth.done() and fourth.result() is None
    # ... and a full unary queue does not refuse a stream item: it waits for its slot.
    item = asyncio.create_task(admission.acquire("f", STREAM))
    await settle()
    assert not item.done() and admission.waiting == 2
    for task in (third, item):
        task.cancel()
    await asyncio.gather(third, item, return_exceptions=True)


async def test_the_fairest_of_three_waiting_callers_is_served_wherever_it_stands() -> None:
    admission = Admission(limit=3)
    holders = {caller: admission.try_acquire(caller, STREAM) for caller in ("a", "c", "z")}
    tasks = {caller: asyncio.create_task(admission.acquire(caller, STREAM)) for caller in ("a", "b", "c")}
    await settle()
    holders["z"].release()  # a and c hold one slot each, b none: b, the second in line
    await settle()
    assert tasks["b"].done() and not tasks["a"].done() and not tasks["c"].done()
    holders["a"].release()  # a holds none now, c one: a, though c came later
    await settle()
    assert tasks["a"].done() and not tasks["c"].done()
    tasks["c"].cancel()
    await asyncio.gather(tasks["c"], return_exceptions=True)


async def test_slots_given_back_leave_no_count_behind_for_their_kind() -> None:
    admission = Admission(limit=1)
    earlier = admission.try_acquire("a", STREAM)
    assert earlier is not None
    earlier.release()  # caller a holds nothing now, of either kind
    holder = admission.try_acquire("z", UNARY)
    stream_item = asyncio.create_task(admission.acquire("a", STREAM))
    await settle()
    unary = asyncio.create_task(admission.acquire("a", UNARY, timeout=5))
    await settle()
    holder.release()  # a's two kinds both hold none: the older waiter, the stream item, goes first
    await settle()
    assert stream_item.done() and not unary.done()
    stream_item.result().release()
    await settle()
    assert unary.done() and unary.result() is not None


async def test_a_slot_handed_to_a_waiter_that_is_cancelled_at_that_moment_passes_on() -> None:
    admission = Admission(limit=1)
    holder = admission.try_acquire("a")
    assert holder is not None
    gives_up = asyncio.create_task(admission.acquire("b", STREAM))
    next_in_line = asyncio.create_task(admission.acquire("c", STREAM))
    await settle()
    holder.release()  # handed to b's waiter ...
    gives_up.cancel()  # ... which is cancelled before it could wake up
    await settle()
    assert gives_up.cancelled()
    assert next_in_line.done() and next_in_line.result() is not None and admission.held == 1
    next_in_line.result().release()
    assert admission.held == 0 and admission.waiting == 0 and admission.held_by("b") == 0


async def test_drain_waits_for_the_last_slot_and_says_whether_all_came_back() -> None:
    admission = Admission(limit=2)
    assert await admission.drain(5) is True and admission.draining  # nothing held: at once
    slots = [admission.try_acquire("a"), admission.try_acquire("b")]
    draining = asyncio.create_task(admission.drain(5))
    await settle()
    slots[0].release()
    await settle()
    assert not draining.done()  # one slot still held
    slots[1].release()
    await settle()
    assert draining.done() and draining.result() is True
    held = admission.try_acquire("a")
    assert await admission.drain(0.01) is False  # a slot still held when the time is up
    held.release()
    assert await admission.drain(5) is True
