"""Stopping a policy compile: on shutdown, when a newer edit supersedes it, or over its time budget.

Compiling a policy version means encoding every text (templates x prompts) with
the CLIP text tower: seconds to tens of seconds on a CPU. The registry hands the
compile callable a `should_stop` check; the callable calls it between chunks of
work and raises CompileCancelled when it returns True. Nothing is swapped in by
a cancelled load: the versions already served keep serving.

No torch here: the scorer imports this module, not the other way round.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# How long one reload may spend computing text embeddings before it is refused.
# A policy at the limits (MAX_TEXTS texts) compiles in 40-45 s with ViT-B-32's
# text tower on this project's 2 CPU cores when they are otherwise idle, and was
# measured 3x slower with the cores shared (130 ms a text): the budget leaves 2x
# over that, so a valid policy is not refused live. It is a backstop against
# burning the cores: the limits in schema.py keep compiles short, and a newer
# edit or shutdown cancels a compile at once whatever the budget.
COMPILE_BUDGET_S = 300.0

ShouldStop = Callable[[], bool]


def never_stop() -> bool:
    return False


class CompileCancelled(Exception):
    """A compile stopped before it finished; `over_budget` when it ran out of time rather than being cancelled."""

    def __init__(self, reason: str, over_budget: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.over_budget = over_budget


class CompileControl:
    """One load's stop signal: cancelled from another thread, or past its deadline.

    `should_stop` is cheap and thread-safe: call it between chunks of work.
    """

    def __init__(self, budget_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.budget_s = budget_s
        self._deadline = clock() + budget_s if budget_s is not None else None
        self._stopped = threading.Event()
        self._reason: str | None = None
        self._over_budget = False
        self._lock = threading.Lock()

    def cancel(self, reason: str) -> None:
        """Ask the compile to stop at its next check; the first reason given is kept."""
        with self._lock:
            if self._reason is None:
                self._reason = reason
            self._stopped.set()

    def should_stop(self) -> bool:
        if self._stopped.is_set():
            return True
        if self._deadline is not None and self._clock() >= self._deadline:
            with self._lock:
                if self._reason is None:
                    self._reason = f"computing text embeddings took longer than the {self.budget_s:g} s compile budget"
                    self._over_budget = True
                self._stopped.set()
            return True
        return False

    def cancelled(self, what: str) -> CompileCancelled:
        """The exception to raise for a stopped compile of `what` (e.g. 'default@v3')."""
        with self._lock:
            reason, over_budget = self._reason or "cancelled", self._over_budget
        return CompileCancelled(f"{what}: {reason}", over_budget=over_budget)
