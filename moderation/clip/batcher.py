"""Dynamic micro-batching: concurrent requests share one image forward pass.

While the model thread runs one batch, new requests queue up; when it is free,
the worker takes everything queued (up to `max_batch`), optionally waiting up to
`max_wait_ms` for more, and runs them as one batch. At low load a request goes
straight through; under load batches grow on their own.

Backpressure: the queue is bounded, and `submit` raises `Overloaded` at once
when it is full rather than letting latency grow without bound. Requests whose
caller has gone (cancelled future) or whose deadline has passed are dropped
before compute. Futures are created and completed on the event loop only; a
failed forward pass fails every request in that batch (none hangs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import torch

from moderation.metrics import ModerationMetrics

log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """The batch queue is full; the caller should get RESOURCE_EXHAUSTED."""


class DeadlinePassed(TimeoutError):
    """The request's deadline passed while it waited for a batch."""


@dataclass(slots=True)
class _Pending:
    pixels: torch.Tensor  # [frames, 3, H, W]
    future: asyncio.Future[torch.Tensor]
    deadline: float  # time.monotonic() seconds
    enqueued: float


class MicroBatcher:
    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        executor: Executor,
        metrics: ModerationMetrics,
        max_batch: int = 16,
        max_wait_ms: float = 0.0,
        max_queue: int = 128,
    ):
        self._forward = forward
        self._executor = executor
        self._metrics = metrics
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1e3
        self.max_queue = max_queue
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queue)
        self._worker: asyncio.Task[None] | None = None
        metrics.queue_capacity.set(max_queue)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(Overloaded("the batcher stopped before this request ran"))

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def embed(self, pixels: torch.Tensor, deadline: float) -> torch.Tensor:
        """Embeddings for `pixels` ([frames, 3, H, W]) computed in a shared batch."""
        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(pixels, future, deadline, time.monotonic()))
        except asyncio.QueueFull:
            raise Overloaded(f"the inference queue is full ({self.max_queue} requests waiting); retry with backoff") from None
        self._metrics.queue_depth.set(self._queue.qsize())
        return await future

    async def _collect(self) -> list[_Pending]:
        batch = [await self._queue.get()]
        frames = batch[0].pixels.shape[0]
        wait_until = time.monotonic() + self.max_wait_s
        while frames < self.max_batch:
            if self._queue.empty():
                remaining = wait_until - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                item = self._queue.get_nowait()
            batch.append(item)
            frames += item.pixels.shape[0]
        self._metrics.queue_depth.set(self._queue.qsize())
        return batch

    def _live(self, batch: list[_Pending]) -> list[_Pending]:
        now = time.monotonic()
        live = []
        for pending in batch:
            if pending.future.done():  # caller cancelled
                continue
            if now >= pending.deadline:
                pending.future.set_exception(DeadlinePassed("the deadline passed while the request waited for the model"))
                continue
            live.append(pending)
            self._metrics.batch_wait_seconds.observe(now - pending.enqueued)
        return live

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = self._live(await self._collect())
            if not batch:
                continue
            pixels = torch.cat([p.pixels for p in batch]) if len(batch) > 1 else batch[0].pixels
            self._metrics.batch_size.observe(pixels.shape[0])
            try:
                embeddings = await loop.run_in_executor(self._executor, self._forward, pixels)
            except asyncio.CancelledError:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(Overloaded("the batcher stopped while this request ran"))
                raise
            except Exception as err:  # noqa: BLE001 - delivered to every waiting caller
                log.exception("image forward pass failed for a batch of %d", len(batch))
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(err)
                continue
            start = 0
            for pending in batch:
                count = pending.pixels.shape[0]
                if not pending.future.done():
                    pending.future.set_result(embeddings[start : start + count])
                start += count
