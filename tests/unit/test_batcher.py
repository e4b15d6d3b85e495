from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from moderation.signals.clip.batcher import BatcherMetrics, DeadlinePassed, MicroBatcher, Overloaded


class RecordingForward:
    """A real forward function (mean pixel per frame) that records batch sizes."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False):
        self.delay_s = delay_s
        self.fail = fail
        self.batches: list[int] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.release.wait(5)
        self.batches.append(pixels.shape[0])
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("forward exploded")
        return pixels.mean(dim=(1, 2, 3)).unsqueeze(1)


def frame(value: float, frames: int = 1) -> torch.Tensor:
    return torch.full((frames, 3, 4, 4), float(value))


@pytest.fixture
def executor():
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown()


def far() -> float:
    return time.monotonic() + 30


async def test_concurrent_requests_share_batches_and_get_their_own_results(executor) -> None:  # noqa: ANN001
    forward = RecordingForward(delay_s=0.05)
    sizes: list[int] = []
    capacity: list[int] = []
    batcher = MicroBatcher(forward, executor, BatcherMetrics(batch_size=sizes.append, queue_capacity=capacity.append), max_batch=4, max_queue=64)
    batcher.start()
    try:
        results = await asyncio.gather(*(batcher.embed(frame(float(i)), far()) for i in range(10)))
    finally:
        await batcher.stop()
    assert [float(r[0, 0]) for r in results] == [float(i) for i in range(10)]
    assert sum(forward.batches) == 10
    assert sizes == forward.batches and capacity == [64], "the batcher reports through the callables it was given"
    assert max(forward.batches) == 4 and len(forward.batches) < 10


async def test_multi_frame_items_are_sliced_back(executor) -> None:  # noqa: ANN001
    batcher = MicroBatcher(RecordingForward(), executor, max_batch=8)
    batcher.start()
    try:
        a, b = await asyncio.gather(batcher.embed(frame(1.0, frames=3), far()), batcher.embed(frame(2.0, frames=2), far()))
    finally:
        await batcher.stop()
    assert a.shape[0] == 3 and b.shape[0] == 2
    assert a.eq(1.0).all() and b.eq(2.0).all()


async def test_full_queue_is_rejected_at_once(executor) -> None:  # noqa: ANN001
    forward = RecordingForward()
    forward.release.clear()  # hold the model busy
    batcher = MicroBatcher(forward, executor, max_batch=1, max_queue=2)
    batcher.start()
    try:
        first = asyncio.ensure_future(batcher.embed(frame(0), far()))
        await asyncio.sleep(0.05)  # the worker has taken it and waits on the model
        queued = [asyncio.ensure_future(batcher.embed(frame(i), far())) for i in (1, 2)]
        await asyncio.sleep(0)
        started = time.monotonic()
        with pytest.raises(Overloaded, match="queue is full"):
            await batcher.embed(frame(3), far())
        assert time.monotonic() - started < 0.5
        forward.release.set()
        await asyncio.gather(first, *queued)
    finally:
        forward.release.set()
        await batcher.stop()


async def test_forward_failure_reaches_every_caller_in_the_batch(executor) -> None:  # noqa: ANN001
    batcher = MicroBatcher(RecordingForward(fail=True), executor, max_batch=8)
    batcher.start()
    try:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(batcher.embed(frame(i), far()) for i in range(3)), return_exceptions=True), timeout=10
        )
    finally:
        await batcher.stop()
    assert all(isinstance(o, RuntimeError) and "forward exploded" in str(o) for o in outcomes)


async def test_expired_and_cancelled_requests_are_dropped_before_compute(executor) -> None:  # noqa: ANN001
    forward = RecordingForward()
    forward.release.clear()
    batcher = MicroBatcher(forward, executor, max_batch=8)
    batcher.start()
    try:
        busy = asyncio.ensure_future(batcher.embed(frame(0), far()))
        await asyncio.sleep(0.05)
        expired = asyncio.ensure_future(batcher.embed(frame(1), time.monotonic() + 0.01))
        cancelled = asyncio.ensure_future(batcher.embed(frame(2), far()))
        alive = asyncio.ensure_future(batcher.embed(frame(3), far()))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        forward.release.set()
        await busy
        assert float((await alive)[0, 0]) == 3.0
        with pytest.raises(DeadlinePassed):
            await expired
    finally:
        forward.release.set()
        await batcher.stop()
    assert forward.batches == [1, 1], "only the live request ran in the second batch"


async def test_next_batch_is_stacked_while_the_model_runs_the_current_one(executor) -> None:  # noqa: ANN001
    forward = RecordingForward()
    forward.release.clear()  # the model is busy with the first batch
    allocated: list[tuple[torch.Tensor, str]] = []

    def allocate(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        allocated.append((torch.empty(shape, dtype=dtype), threading.current_thread().name))
        return allocated[-1][0]

    batcher = MicroBatcher(forward, executor, max_batch=8, allocate=allocate)
    batcher.start()
    try:
        busy = asyncio.ensure_future(batcher.embed(frame(0), far()))
        await asyncio.sleep(0.05)
        following = [asyncio.ensure_future(batcher.embed(frame(i, frames=2), far())) for i in (1, 2, 3)]
        await asyncio.sleep(0.2)
        # Before the model is free, the three requests are in the next batch, their
        # frames already copied into its buffer by the staging thread.
        assert not busy.done() and batcher.depth == 3
        buffer, thread = allocated[-1]
        assert thread.startswith("batch-stager")
        assert buffer[:6, 0, 0, 0].tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
        forward.release.set()
        await busy
        results = await asyncio.gather(*following)
    finally:
        forward.release.set()
        await batcher.stop()
    assert forward.batches == [1, 6]
    assert [r[:, 0].tolist() for r in results] == [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]


async def test_forward_gets_the_allocated_buffer_and_a_batch_may_overshoot_max_batch(executor) -> None:  # noqa: ANN001
    storages: list[int] = []
    seen: list[int] = []

    def allocate(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        tensor = torch.empty(shape, dtype=dtype)
        storages.append(tensor.untyped_storage().data_ptr())
        return tensor

    class StorageForward(RecordingForward):
        def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
            seen.append(pixels.untyped_storage().data_ptr())
            return super().__call__(pixels)

    forward = StorageForward()
    forward.release.clear()
    batcher = MicroBatcher(forward, executor, max_batch=4, allocate=allocate)
    batcher.start()
    try:
        busy = asyncio.ensure_future(batcher.embed(frame(9), far()))
        await asyncio.sleep(0.05)
        # 3 frames, then 3 more while under max_batch: the buffer grows to 6 and keeps both.
        a, b = (asyncio.ensure_future(batcher.embed(frame(v, frames=3), far())) for v in (1.0, 2.0))
        await asyncio.sleep(0.1)
        forward.release.set()
        await busy
        a, b = await a, await b
    finally:
        forward.release.set()
        await batcher.stop()
    assert forward.batches == [1, 6]
    assert a.eq(1.0).all() and b.eq(2.0).all()
    assert seen[-1] in storages, "the model read the staged buffer, not a fresh copy"


async def test_a_lone_request_goes_as_it_is_and_batch_buffers_are_reused(executor) -> None:  # noqa: ANN001
    allocations: list[tuple[int, ...]] = []

    def allocate(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        allocations.append(shape)
        return torch.empty(shape, dtype=dtype)

    seen: list[torch.Tensor] = []

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        seen.append(pixels)
        time.sleep(0.01)
        return pixels.mean(dim=(1, 2, 3)).unsqueeze(1)

    batcher = MicroBatcher(forward, executor, max_batch=4, allocate=allocate)
    batcher.start()
    try:
        alone = frame(5.0)
        assert float((await batcher.embed(alone, far()))[0, 0]) == 5.0
        assert seen[-1] is alone and not allocations, "one request: no copy, no buffer"
        for _ in range(5):  # bursts: batches of several requests, one after the other
            results = await asyncio.gather(*(batcher.embed(frame(float(i)), far()) for i in range(12)))
            assert [float(r[0, 0]) for r in results] == [float(i) for i in range(12)]
    finally:
        await batcher.stop()
    assert len(seen) > 10 and len(allocations) <= 2, f"{len(allocations)} buffers for {len(seen)} batches"
