"""The one admission count: request slots, shared by unary calls and stream items, fairly.

A server has one `Admission`, built with its limit and handed to both the
admission interceptor (unary calls, loading and draining) and the servicer
(each ModerateStream item). Nothing else counts work in flight: the limit, the
exported gauge and the drain all read the same number.

Fairness (issue 18, item 6): with five busy streams from one client, unary calls
from another got 1 OK in 94 over 20 s, because a freed slot always went to the
longest-waiting stream item and a unary call was refused whenever anything waited.
Now a unary call also waits, briefly and in a bounded queue, and a freed slot goes
to the waiting caller that holds the fewest slots, and within that caller to the
kind (unary or stream) that holds fewer; first come, first served only among equals.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, deque
from dataclasses import dataclass, field

from prometheus_client import Gauge

UNARY = "unary"
STREAM = "stream"


class Slot:
    """One request slot held by `caller` for a `kind` of work; `release` gives it back (at most once)."""

    __slots__ = ("_admission", "caller", "kind", "_released")

    def __init__(self, admission: Admission, caller: str, kind: str):
        self._admission = admission
        self.caller = caller
        self.kind = kind
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release(self)


@dataclass(order=True)
class _Waiter:
    order: int
    future: asyncio.Future[Slot] = field(compare=False)


class Admission:
    """Request slots held, at most `limit`; whether the server takes new calls.

    `try_acquire` takes a free slot now or returns None; `acquire` waits for one
    (a stream's next item: the stream stops being read; a unary call: up to a
    timeout, in a queue of at most `max_waiting_unary`). A free slot is taken at
    once only when nothing waits; otherwise a releasing holder hands its slot to
    the fairest waiter (module docstring), so `held` never passes `limit`. An
    open stream between items holds no slot: open RPCs are bounded by gRPC
    (max_concurrent_rpcs, streams per connection), so stream waiters are bounded too.

    `held` is exported through `gauge` (moderation_in_flight_requests), `limit`
    through `limit_gauge` and the waiting calls and items through `waiting_gauge`,
    so what operators see is what admission compares.
    """

    def __init__(
        self,
        limit: int,
        gauge: Gauge | None = None,
        limit_gauge: Gauge | None = None,
        waiting_gauge: Gauge | None = None,
        max_waiting_unary: int | None = None,
    ):
        if limit < 1:
            raise ValueError(f"the admission limit must be at least 1, not {limit}")
        self.limit = limit
        self.max_waiting_unary = limit if max_waiting_unary is None else max_waiting_unary
        self.loaded = False  # set once models and policies are loaded: calls before are UNAVAILABLE
        self.draining = False  # set by drain(): new calls are UNAVAILABLE
        self._held = 0
        self._held_by_caller: Counter[str] = Counter()
        self._held_by_kind: Counter[tuple[str, str]] = Counter()
        self._waiting: dict[tuple[str, str], deque[_Waiter]] = {}
        self._waiting_count = 0
        self._waiting_unary = 0
        self._arrivals = itertools.count()
        self._idle = asyncio.Event()
        self._idle.set()
        if gauge is not None:
            gauge.set_function(lambda: self._held)  # read at scrape time: never stale
        if limit_gauge is not None:
            limit_gauge.set(limit)
        if waiting_gauge is not None:
            waiting_gauge.set_function(lambda: self._waiting_count)

    @property
    def held(self) -> int:
        return self._held

    @property
    def waiting(self) -> int:
        return self._waiting_count

    def held_by(self, caller: str) -> int:
        return self._held_by_caller[caller]

    def try_acquire(self, caller: str = "anonymous", kind: str = UNARY) -> Slot | None:
        """A free slot now, or None (when all are held, or others wait for one: they come first)."""
        if self._held >= self.limit or self._waiting_count:
            return None
        self._held += 1
        self._idle.clear()
        return self._grant(caller, kind)

    async def acquire(self, caller: str = "anonymous", kind: str = STREAM, timeout: float | None = None) -> Slot | None:
        """A slot, waiting for one up to `timeout` seconds (None: as long as it takes); None if none came.

        Unary waiters are bounded: beyond `max_waiting_unary` of them, None at once.
        """
        slot = self.try_acquire(caller, kind)
        if slot is not None or (timeout is not None and timeout <= 0):
            return slot
        if kind == UNARY and self._waiting_unary >= self.max_waiting_unary:
            return None
        waiter = _Waiter(next(self._arrivals), asyncio.get_running_loop().create_future())
        self._waiting.setdefault((caller, kind), deque()).append(waiter)
        self._waiting_count += 1
        self._waiting_unary += kind == UNARY
        try:
            # A releasing holder hands its slot over (`held` stays as it is) and removes the waiter.
            return await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except (asyncio.CancelledError, TimeoutError) as err:
            if waiter.future.done() and not waiter.future.cancelled():
                waiter.future.result().release()  # handed over just as we gave up: pass it on
            else:
                waiter.future.cancel()
                self._forget(caller, kind, waiter)
            if isinstance(err, TimeoutError):
                return None
            raise

    def _grant(self, caller: str, kind: str) -> Slot:
        self._held_by_caller[caller] += 1
        self._held_by_kind[caller, kind] += 1
        return Slot(self, caller, kind)

    def _release(self, slot: Slot) -> None:
        for counts, key in ((self._held_by_caller, slot.caller), (self._held_by_kind, (slot.caller, slot.kind))):
            counts[key] -= 1
            if not counts[key]:
                del counts[key]  # callers come and go: keep only those holding slots
        waiter, caller, kind = self._fairest_waiter()
        if waiter is not None:
            self._forget(caller, kind, waiter)
            waiter.future.set_result(self._grant(caller, kind))
            return
        self._held -= 1
        if self._held == 0:
            self._idle.set()

    def _fairest_waiter(self) -> tuple[_Waiter | None, str, str]:
        """The waiter of the caller holding the fewest slots, then of its kind holding fewer, then the oldest."""
        best: tuple[tuple[int, int, int], _Waiter, str, str] | None = None
        for (caller, kind), queue in self._waiting.items():
            waiter = queue[0]  # queues hold live waiters only: _forget removes the others
            rank = (self._held_by_caller[caller], self._held_by_kind[caller, kind], waiter.order)
            if best is None or rank < best[0]:
                best = (rank, waiter, caller, kind)
        return (None, "", "") if best is None else best[1:]

    def _forget(self, caller: str, kind: str, waiter: _Waiter) -> None:
        queue = self._waiting.get((caller, kind))
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        if not queue:
            del self._waiting[caller, kind]
        self._waiting_count -= 1
        self._waiting_unary -= kind == UNARY

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new calls, then wait for every slot to be given back; False if some are still held."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
