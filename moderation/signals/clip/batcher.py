"""Dynamic micro-batching: concurrent requests share one image forward pass.

One forward pass runs at a time, in the model thread. While it runs, the next
batch is already open: requests arriving meanwhile join it (up to `max_batch`
frames) and their pixels are copied into the batch's buffer by a staging thread,
so when the model comes free the next batch is stacked and goes at once; the
host's work on batch k+1 overlaps the device's work on batch k. When the model is
free the batch also takes whatever is queued, optionally waiting up to
`max_wait_ms` (counted from the batch's first request) for more. At low load a
request goes straight through; under load batches grow on their own.

The buffer comes from `allocate` (for the CLIP tier `ClipScorer.batch_buffer`:
page-locked memory when the model runs on CUDA, so the backend's copy to the
device is asynchronous) and is reused: two buffers of `max_batch` frames serve the
running and the open batch. A batch of one request is not staged at all: its
tensor goes to the model as it is, so low load pays no copy and no extra thread hop.

Backpressure: requests waiting for the model (queued or in the open batch) are
bounded by `max_queue`; beyond it `embed` raises `Overloaded` at once rather than
letting latency grow without bound. Requests whose caller has gone (cancelled
future) or whose deadline has passed are dropped when their batch closes, before
compute. Futures are created and completed on the event loop only; a failed
forward pass fails every request in that batch (none hangs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from moderation.signals.clip import arrays

if TYPE_CHECKING:  # batches are torch tensors or numpy arrays, whatever the encoder takes (arrays.py)
    import torch

log = logging.getLogger(__name__)


def _ignore(value: float) -> None:
    pass


@dataclass(frozen=True, slots=True)
class BatcherMetrics:
    """What the batcher reports, as callables: the serving shell wires them to its Prometheus metrics."""

    queue_depth: Callable[[int], None] = _ignore  # requests waiting for the model, after every change
    queue_capacity: Callable[[int], None] = _ignore  # max_queue, once
    batch_wait_s: Callable[[float], None] = _ignore  # per request: enqueued -> its batch closed
    batch_size: Callable[[int], None] = _ignore  # frames per forward pass


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


@dataclass(slots=True)
class _Batch:
    """A batch being assembled: its requests, where each one's frames start, the staged copies."""

    opened: float
    items: list[_Pending] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    frames: int = 0
    copies: list[asyncio.Future[None]] = field(default_factory=list)
    staged: int = 0  # requests whose copies are submitted (none while the batch holds one request)
    buffer: torch.Tensor | None = None  # written by the staging thread only, read once the copies are done


def _empty_like_frames(shape: tuple[int, ...], dtype: torch.dtype | None = None) -> torch.Tensor:
    return arrays.empty(shape, dtype)


class MicroBatcher:
    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        executor: Executor,
        metrics: BatcherMetrics = BatcherMetrics(),
        max_batch: int = 16,
        max_wait_ms: float = 0.0,
        max_queue: int = 128,
        allocate: Callable[[tuple[int, ...], torch.dtype], torch.Tensor] = _empty_like_frames,
    ):
        self._forward = forward
        self._executor = executor
        self._metrics = metrics
        self._allocate = allocate
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1e3
        self.max_queue = max_queue
        self._waiting: deque[_Pending] = deque()
        self._open: _Batch | None = None
        self._running: tuple[asyncio.Future[torch.Tensor], list[_Pending]] | None = None
        self._wakeup = asyncio.Event()  # a request arrived, or the model came free
        self._stager: ThreadPoolExecutor | None = None
        self._spare_buffers: list[torch.Tensor] = []  # at most two: the running batch's and the open one's
        self._worker: asyncio.Task[None] | None = None
        metrics.queue_capacity(max_queue)

    def start(self) -> None:
        if self._worker is None:
            self._stager = ThreadPoolExecutor(1, thread_name_prefix="batch-stager")
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        stopped = Overloaded("the batcher stopped before this request ran")
        pending = list(self._waiting) + (self._open.items if self._open else []) + (self._running[1] if self._running else [])
        for item in pending:
            if not item.future.done():
                item.future.set_exception(stopped)
        self._waiting.clear()
        self._open = None
        if self._stager is not None:
            self._stager.shutdown(wait=False, cancel_futures=True)
            self._stager = None

    @property
    def depth(self) -> int:
        """Requests waiting for the model: queued, or in the batch that runs next."""
        return len(self._waiting) + (len(self._open.items) if self._open else 0)

    async def embed(self, pixels: torch.Tensor, deadline: float) -> torch.Tensor:
        """Embeddings for `pixels` ([frames, 3, H, W]) computed in a shared batch."""
        if self.depth >= self.max_queue:
            raise Overloaded(f"the inference queue is full ({self.max_queue} requests waiting); retry with backoff")
        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Pending(pixels, future, deadline, time.monotonic()))
        self._metrics.queue_depth(self.depth)
        self._wakeup.set()
        return await future

    def _model_busy(self) -> bool:
        return self._running is not None and not self._running[0].done()

    async def _until(self, ready: Callable[[], bool], timeout_s: float | None = None) -> None:
        """Wait until `ready()` (checked at every wake-up) or `timeout_s` has passed."""
        give_up = None if timeout_s is None else time.monotonic() + timeout_s
        while not ready():
            self._wakeup.clear()
            if give_up is None:
                await self._wakeup.wait()
                continue
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _admit(self, batch: _Batch) -> None:
        """Move queued requests into the open batch, up to max_batch frames, and stage their pixels."""
        admitted = len(batch.items)
        while self._waiting and batch.frames < self.max_batch:
            item = self._waiting.popleft()
            batch.items.append(item)
            batch.offsets.append(batch.frames)
            batch.frames += item.pixels.shape[0]
        if len(batch.items) > admitted:
            self._metrics.queue_depth(self.depth)
        # Staging starts with the second request (a batch of one goes as it is).
        if len(batch.items) > 1 and batch.staged < len(batch.items):
            copies = [(batch.offsets[i], batch.items[i].pixels) for i in range(batch.staged, len(batch.items))]
            filled = batch.offsets[batch.staged]
            spare = self._spare_buffers.pop() if batch.staged == 0 and self._spare_buffers else None
            loop = asyncio.get_running_loop()
            batch.copies.append(loop.run_in_executor(self._stager, self._stage, batch, filled, copies, spare))
            batch.staged = len(batch.items)

    def _stage(self, batch: _Batch, filled: int, copies: list[tuple[int, torch.Tensor]], spare: torch.Tensor | None) -> None:
        """Staging thread: copy frames into the batch buffer, growing it when an item overshoots."""
        needed = copies[-1][0] + copies[-1][1].shape[0]
        first = copies[0][1]
        if batch.buffer is None and spare is not None and spare.shape[1:] == first.shape[1:] and spare.dtype == first.dtype:
            batch.buffer = spare
        if batch.buffer is None or batch.buffer.shape[0] < needed:
            grown = self._allocate((max(needed, self.max_batch), *first.shape[1:]), first.dtype)
            if batch.buffer is not None:
                grown[:filled] = batch.buffer[:filled]
            batch.buffer = grown
        for offset, pixels in copies:
            batch.buffer[offset : offset + pixels.shape[0]] = pixels

    def _release(self, buffer: torch.Tensor | None) -> None:
        """A batch buffer the model no longer reads: kept for the next batches (two at most)."""
        if buffer is not None and len(self._spare_buffers) < 2:
            self._spare_buffers.append(buffer)

    async def _assemble(self) -> _Batch:
        """The next batch: opened by the first queued request, closed when the model is free (or it is full)."""
        await self._until(lambda: bool(self._waiting))
        batch = self._open = _Batch(opened=time.monotonic())
        self._admit(batch)
        # The model is busy with the previous batch: this one stays open meanwhile.
        while batch.frames < self.max_batch and self._model_busy():
            await self._until(lambda: bool(self._waiting) or not self._model_busy())
            self._admit(batch)
        # The model is free: take what is queued, and wait up to max_wait for more.
        while batch.frames < self.max_batch:
            self._admit(batch)
            remaining = batch.opened + self.max_wait_s - time.monotonic()
            if batch.frames >= self.max_batch or remaining <= 0:
                break
            await self._until(lambda: bool(self._waiting), remaining)
        # Full while the model still runs: nothing more to do until it is free.
        await self._until(lambda: not self._model_busy())
        return batch

    def _live(self, batch: _Batch) -> list[tuple[_Pending, int]]:
        now = time.monotonic()
        live = []
        for pending, offset in zip(batch.items, batch.offsets, strict=True):
            if pending.future.done():  # caller cancelled
                continue
            if now >= pending.deadline:
                pending.future.set_exception(DeadlinePassed("the deadline passed while the request waited for the model"))
                continue
            live.append((pending, offset))
            self._metrics.batch_wait_s(now - pending.enqueued)
        return live

    async def _close(self, batch: _Batch) -> tuple[list[_Pending], torch.Tensor, torch.Tensor | None] | None:
        """Wait for the staged copies, drop requests that are gone: the live requests, their pixels, the buffer used."""
        try:
            await asyncio.gather(*batch.copies)
        except Exception as err:  # noqa: BLE001 - delivered to every waiting caller
            log.exception("stacking a batch of %d failed", len(batch.items))
            self._fail(batch.items, err)
            return None
        live = self._live(batch)
        if not live:
            self._release(batch.buffer)
            return None
        if batch.buffer is None:  # one request: its own tensor
            return [live[0][0]], live[0][0].pixels, None
        if len(live) == len(batch.items):
            return [p for p, _ in live], batch.buffer[: batch.frames], batch.buffer
        # Some left while waiting: their rows go (rare; a copy of the rest).
        rows = [batch.buffer[offset : offset + p.pixels.shape[0]] for p, offset in live]
        pixels = await asyncio.get_running_loop().run_in_executor(self._stager, arrays.concat, rows)
        self._release(batch.buffer)
        return [p for p, _ in live], pixels, None

    def _dispatch(self, live: list[_Pending], pixels: torch.Tensor, buffer: torch.Tensor | None) -> None:
        self._metrics.batch_size(pixels.shape[0])
        running = asyncio.get_running_loop().run_in_executor(self._executor, self._forward, pixels)
        self._running = (running, live)
        running.add_done_callback(lambda done: self._deliver(done, live, buffer))

    def _deliver(self, done: asyncio.Future[torch.Tensor], batch: list[_Pending], buffer: torch.Tensor | None = None) -> None:
        self._wakeup.set()  # the model is free
        if not done.cancelled():
            self._release(buffer)  # the forward pass has read it (on CUDA: the copy to the device is complete)
        if done.cancelled():
            self._fail(batch, Overloaded("the batcher stopped while this request ran"))
            return
        error = done.exception()
        if error is not None:
            log.error("image forward pass failed for a batch of %d", len(batch), exc_info=error)
            self._fail(batch, error)
            return
        embeddings = done.result()
        start = 0
        for pending in batch:
            count = pending.pixels.shape[0]
            if not pending.future.done():
                pending.future.set_result(embeddings[start : start + count])
            start += count

    @staticmethod
    def _fail(batch: list[_Pending], error: BaseException) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)

    async def _run(self) -> None:
        while True:
            batch = await self._assemble()
            closed = await self._close(batch)
            self._open = None
            self._metrics.queue_depth(self.depth)
            if closed is not None:
                self._dispatch(*closed)
