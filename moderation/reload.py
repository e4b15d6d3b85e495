"""Policy hot reload: watch the policy directory, swap valid edits in, refuse broken ones.

Kubernetes updates a mounted ConfigMap by writing a new `..<timestamp>` folder and
renaming the `..data` symlink over the old one; watching the directory sees that
swap like any edit. Every change triggers a full validation of the directory: a
broken file anywhere rejects the whole edit, the previous versions keep serving,
and each problem is logged with file and line.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import watchfiles

from moderation.metrics import ModerationMetrics
from moderation.policy.loader import PolicyFileError
from moderation.policy.registry import LoadSummary, PolicyRegistry

log = logging.getLogger(__name__)


class PolicyReloader:
    def __init__(self, registry: PolicyRegistry, directory: Path, metrics: ModerationMetrics, model_id: str):
        self.registry = registry
        self.directory = directory
        self.metrics = metrics
        self.model_id = model_id
        # Text encoding of a changed policy runs here, beside (not inside) the
        # model thread, so image batches keep flowing during a reload.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="policy-reload")

    def load_now(self) -> LoadSummary:
        """Load synchronously (startup). Raises PolicyFileError; counts the outcome."""
        try:
            summary = self.registry.load_directory(self.directory)
        except PolicyFileError:
            self.metrics.policy_reloads.labels("error").inc()
            raise
        self.metrics.policy_reloads.labels("ok").inc()
        self.metrics.publish_policies(
            [
                (s.policy.id, s.policy.version, [(c.id, c.thresholds.review, c.thresholds.block) for c in s.policy.categories])
                for s in self.registry.all()
            ],
            self.model_id,
        )
        return summary

    async def reload(self) -> bool:
        """Reload after a change; on failure keep serving what was loaded before."""
        try:
            summary = await asyncio.get_running_loop().run_in_executor(self._pool, self.load_now)
        except PolicyFileError as err:
            for problem in err.problems:
                log.error("policy edit rejected, previous versions keep serving: %s", problem, extra={"fields": {"file": problem.path, "line": problem.line}})
            return False
        except Exception:  # noqa: BLE001 - a reload bug must not take the server down
            self.metrics.policy_reloads.labels("error").inc()
            log.exception("policy reload failed; previous versions keep serving")
            return False
        if summary.compiled or summary.removed:
            log.info(
                "policies reloaded: serving %s (compiled %s, removed %s)",
                ", ".join(summary.served), ", ".join(summary.compiled) or "none", ", ".join(summary.removed) or "none",
            )
        return True

    async def watch(self, stop: asyncio.Event, force_polling: bool = False) -> None:
        """Reload on every change under the directory until `stop` is set."""
        async for _changes in watchfiles.awatch(
            self.directory, stop_event=stop, watch_filter=None, debounce=400, force_polling=force_polling, recursive=True
        ):
            await self.reload()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
