"""Policy hot reload: watch the policy directory, swap valid edits in, refuse broken ones.

Kubernetes updates a mounted ConfigMap by writing a new `..<timestamp>` folder and
renaming the `..data` symlink over the old one; watching the directory sees that
swap like any edit. Every change triggers a full validation of the directory: a
broken file anywhere rejects the whole edit, the previous versions keep serving,
and each problem is logged with file and line.

Compiling a changed policy (its text embeddings) can take tens of seconds on a
CPU, so a compile is stoppable (policy/compile.py):
  - a newer edit cancels the compile in progress, which starts over on the newest files;
  - a compile that runs past its budget is refused like a broken file;
  - shutdown cancels it, and the thread it runs on never holds the process at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import watchfiles

from moderation.policy.compile import COMPILE_BUDGET_S, CompileCancelled, CompileControl
from moderation.policy.loader import PolicyFileError
from moderation.policy.registry import LoadSummary, PolicyRegistry, ServedPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

SUPERSEDED = "a newer edit of the policy directory replaces it"
SHUTTING_DOWN = "the server is shutting down"
# How long close() waits for a cancelled compile to reach its next check (one
# chunk of text encoding: about 64 texts).
CLOSE_WAIT_S = 10.0


class PolicyReloader:
    """Loads the policy directory into `registry`, now and on every change.

    It reports through two narrow callbacks rather than the metrics object:
    `count_outcome("ok" | "error")` once per load, and `publish_served(policies)`
    with every served policy after a load that swapped a snapshot in.
    """

    def __init__(
        self,
        registry: PolicyRegistry,
        directory: Path,
        count_outcome: Callable[[str], None] = lambda outcome: None,
        publish_served: Callable[[Sequence[ServedPolicy[Any]]], None] = lambda served: None,
        compile_budget_s: float | None = COMPILE_BUDGET_S,
    ):
        self.registry = registry
        self.directory = directory
        self._count_outcome = count_outcome
        self._publish_served = publish_served
        self.compile_budget_s = compile_budget_s
        self._lock = threading.Lock()
        self._control: CompileControl | None = None  # the load in progress, to cancel
        self._thread: threading.Thread | None = None  # the reload thread in progress, to wait for
        self._closed = False

    def load_now(self, budget_s: float | None = None) -> LoadSummary:
        """Load synchronously (startup: no budget). Raises PolicyFileError or CompileCancelled; counts the outcome."""
        control = CompileControl(budget_s)
        with self._lock:
            if self._closed:
                raise CompileCancelled(SHUTTING_DOWN)
            self._control = control
        try:
            summary = self.registry.load_directory(self.directory, control)
        except PolicyFileError:
            self._count_outcome("error")
            raise
        except CompileCancelled as err:
            if err.over_budget:
                self._count_outcome("error")
            raise
        finally:
            with self._lock:
                if self._control is control:
                    self._control = None
        self._count_outcome("ok")
        self._publish_served(self.registry.all())
        return summary

    def cancel(self, reason: str) -> None:
        """Stop the compile in progress, if any, at its next check; what serves keeps serving."""
        with self._lock:
            control = self._control
        if control is not None:
            control.cancel(reason)

    async def reload(self) -> bool:
        """Reload after a change; on failure keep serving what was loaded before."""
        try:
            summary = await self._in_thread(lambda: self.load_now(self.compile_budget_s))
        except PolicyFileError as err:
            for problem in err.problems:
                log.error("policy edit rejected, previous versions keep serving: %s", problem, extra={"fields": {"file": problem.path, "line": problem.line}})
            for warning in err.warnings:
                log.warning("%s", warning)
            return False
        except CompileCancelled as err:
            if err.over_budget:
                log.error(
                    "policy edit rejected, previous versions keep serving: %s; use fewer templates or prompts "
                    "(docs/policies.md#limits)", err,
                )  # fmt: skip
            else:
                log.info("policy reload stopped, previous versions keep serving: %s", err)
            return False
        except Exception:  # noqa: BLE001 - a reload bug must not take the server down
            self._count_outcome("error")
            log.exception("policy reload failed; previous versions keep serving")
            return False
        if summary.compiled or summary.removed:
            log.info(
                "policies reloaded: serving %s (compiled %s, removed %s)",
                ", ".join(summary.served), ", ".join(summary.compiled) or "none", ", ".join(summary.removed) or "none",
            )
        return True

    async def watch(self, stop: asyncio.Event, force_polling: bool = False) -> None:
        """Reload on every change under the directory until `stop` is set.

        A change seen while a reload compiles cancels that compile: the next reload
        reads the newest files, so a fix never waits behind the edit it fixes.
        """
        changed = asyncio.Event()

        async def reload_when_changed() -> None:
            while True:
                await changed.wait()
                changed.clear()
                await self.reload()

        reloading = asyncio.create_task(reload_when_changed())
        try:
            async for _changes in watchfiles.awatch(
                self.directory, stop_event=stop, watch_filter=None, debounce=400, force_polling=force_polling, recursive=True
            ):
                self.cancel(SUPERSEDED)
                changed.set()
        finally:
            self.cancel(SHUTTING_DOWN)
            reloading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reloading

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Cancel a compile in progress and refuse new loads; wait briefly for the reload thread to end."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self.cancel(SHUTTING_DOWN)
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait_s)
            if thread.is_alive():
                # A daemon thread: it cannot hold the process at exit.
                log.warning("policy reload thread still running after %.0f s; exiting without it", wait_s)

    def _in_thread(self, work: Callable[[], T]) -> asyncio.Future[T]:
        """Run `work` on a daemon thread (never joined at interpreter exit, unlike an executor's)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: T | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        def run() -> None:
            result, error = None, None
            try:
                result = work()
            except BaseException as err:  # noqa: BLE001 - handed to the awaiting coroutine
                error = err
            with contextlib.suppress(RuntimeError):  # the loop closed while this thread ran
                loop.call_soon_threadsafe(settle, result, error)

        thread = threading.Thread(target=run, name="policy-reload", daemon=True)
        with self._lock:
            self._thread = thread
        thread.start()
        return future
