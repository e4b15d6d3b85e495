"""Listeners: what happens to a moderation result after the caller has it, each behind its own bounded queue.

A listener (category metrics, shadow comparisons, the embedding store, thumbnails) runs
in its own thread and takes results from its own queue of `capacity` results. The
request only offers its result: when a queue is full the result is dropped for that
listener and counted (moderation_listener_dropped_total{listener}), so a slow or stuck
listener costs the requests nothing but its own records. Drops and listener failures are
logged at most once per `log_every_s` per listener, with how many there were.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from moderation.serving.result import ModerationResult

log = logging.getLogger(__name__)

# Results one listener may have waiting. At ~1 ms per result a listener catches up on a
# full queue within a second or two; each result holds a request's frames and embeddings.
LISTENER_QUEUE = 1024
# How long close() lets a listener drain what it has queued before giving up on it.
DRAIN_TIMEOUT_S = 10.0


class Listener(Protocol):
    name: str  # the `listener` label of the drop counter and the thread's name

    def handle(self, result: ModerationResult) -> None: ...

    def close(self) -> None: ...


class _RateLimitedWarning:
    """A warning at most once per `every_s`, saying how many occurrences it stands for."""

    def __init__(self, every_s: float):
        self._every_s = every_s
        self._lock = threading.Lock()
        self._last = -every_s
        self._unlogged = 0

    def __call__(self, message: str, *args: object, exc_info: BaseException | None = None) -> None:
        with self._lock:
            self._unlogged += 1
            now = time.monotonic()
            if now - self._last < self._every_s:
                return
            count, self._unlogged, self._last = self._unlogged, 0, now
        log.warning(message + " (%d times since the last such line)", *args, count, exc_info=exc_info)


_STOP = object()


class ListenerQueue:
    def __init__(self, listener: Listener, dropped: Callable[[], None], capacity: int = LISTENER_QUEUE, log_every_s: float = 60.0):
        self.listener = listener
        self._dropped = dropped
        self._queue: queue.Queue[object] = queue.Queue(capacity)
        self._warn_dropped = _RateLimitedWarning(log_every_s)
        self._warn_failed = _RateLimitedWarning(log_every_s)
        self._thread = threading.Thread(target=self._run, name=f"listener-{listener.name}", daemon=True)
        self._thread.start()

    def offer(self, result: ModerationResult) -> None:
        """Queue `result` for the listener, or drop and count it when its queue is full; never blocks."""
        try:
            self._queue.put_nowait(result)
        except queue.Full:
            self._dropped()
            self._warn_dropped("listener %s is behind: its queue of %d results is full, results dropped", self.listener.name, self._queue.maxsize)

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            try:
                self.listener.handle(item)  # type: ignore[arg-type]
            except Exception as error:  # noqa: BLE001 - a listener's failure is its own: the next result still comes
                self._warn_failed("listener %s failed on a result: %s", self.listener.name, error, exc_info=error)

    def close(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Let the listener finish what is queued (up to `timeout_s`), then close it."""
        deadline = time.monotonic() + timeout_s
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            log.warning("listener %s did not drain its queue within %.0f s; its queued results are lost", self.listener.name, timeout_s)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("listener %s is still busy after %.0f s; closing it anyway", self.listener.name, timeout_s)
        self.listener.close()


class Listeners:
    """Every listener's queue: the shell offers each result to all of them."""

    def __init__(self, queues: Sequence[ListenerQueue]):
        self._queues = tuple(queues)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(q.listener.name for q in self._queues)

    def offer(self, result: ModerationResult) -> None:
        for listener_queue in self._queues:
            listener_queue.offer(result)

    def close(self) -> None:
        for listener_queue in self._queues:
            listener_queue.close()
