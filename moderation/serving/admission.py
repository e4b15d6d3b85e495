"""The one admission count: request slots, shared by unary calls and stream items.

A server has one `Admission`, built with its limit and handed to both the
admission interceptor (unary calls, loading and draining) and the servicer
(each ModerateStream item). Nothing else counts work in flight: the limit, the
exported gauge and the drain all read the same number.
"""

from __future__ import annotations

import asyncio
from collections import deque

from prometheus_client import Gauge


class Admission:
    """Request slots held, at most `limit`; whether the server takes new calls.

    A unary call that finds no free slot is refused at once (`try_acquire`); a
    stream's next item waits for one (`acquire`: the stream stops being read),
    and a freed slot goes to the longest-waiting item first, so a burst of unary
    calls cannot starve a stream. An open stream between items holds no slot:
    open RPCs are bounded by gRPC (max_concurrent_rpcs, streams per connection).

    `held` is exported through `gauge` (moderation_in_flight_requests) and
    `limit` through `limit_gauge`, so what operators see is what admission
    compares.
    """

    def __init__(self, limit: int, gauge: Gauge | None = None, limit_gauge: Gauge | None = None):
        if limit < 1:
            raise ValueError(f"the admission limit must be at least 1, not {limit}")
        self.limit = limit
        self.loaded = False  # set once models and policies are loaded: calls before are UNAVAILABLE
        self.draining = False  # set by drain(): new calls are UNAVAILABLE
        self._held = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._idle = asyncio.Event()
        self._idle.set()
        if gauge is not None:
            gauge.set_function(lambda: self._held)  # read at scrape time: never stale
        if limit_gauge is not None:
            limit_gauge.set(limit)

    @property
    def held(self) -> int:
        return self._held

    def try_acquire(self) -> bool:
        """Take a free slot now, or False (items waiting for a slot come first)."""
        if self._held >= self.limit or self._waiting:
            return False
        self._take()
        return True

    async def acquire(self) -> None:
        """Take a slot, waiting for one if need be."""
        if self.try_acquire():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter  # a releasing holder hands its slot over: `held` stays as it is
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over just as we were cancelled: pass it on
            elif waiter in self._waiting:
                self._waiting.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back: to the longest-waiting stream item if there is one."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._held -= 1
        if self._held == 0:
            self._idle.set()

    def _take(self) -> None:
        self._held += 1
        self._idle.clear()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new calls, then wait for every slot to be given back; False if some are still held."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
