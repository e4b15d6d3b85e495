"""The host's side of the CLIP tier: how fast all cores decode and preprocess images.

`decode_rate` measures what the server's host pool does per request before the
model sees it, `JudgingCore.decode`: bounded decode with the server's limits (JPEG
draft mode) + preprocess (the model's own transform), over a set of encoded images, with
`workers` threads (what the server runs: PIL decodes and resizes, and torch converts,
without holding the GIL) or `workers` processes (the alternative it was measured
against). Each image is one task submitted from this process and its result comes
back to it, as a server's would, so a process pool pays for pickling too.

On a GPU this rate, not the forward pass, bounds what the server can serve: the
benchmark reports the served rate against it (`host_decode_images_per_s`).

    python -m bench.host [--workers N] [--seconds S]   # threads vs processes
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moderation.core.decode import DecodeLimits
    from moderation.core.judge import JudgingCore

# Per process of a process pool: set by _init_process.
_process_core: Any = None


class _TransformEncoder:
    """The encoder's preprocessing without the model: all JudgingCore.decode needs, in a worker process (which never embeds)."""

    model_id = "preprocess-only"

    def __init__(self, transform: Callable):
        self._transform = transform

    def prepare(self, decoded):  # noqa: ANN001, ANN201 - DecodedImage -> pixels (torch, or numpy from a model folder)
        from moderation.signals.clip import arrays

        return arrays.stack([self._transform(frame) for frame in decoded.frames])


def _init_process(transform: Callable, limits: DecodeLimits, torch_threads: int) -> None:
    import torch

    from moderation.core.judge import JudgingCore

    global _process_core
    torch.set_num_threads(torch_threads)
    # The server's decode step, with its limits, around the picklable transform (the whole model would not travel).
    _process_core = JudgingCore(limits, _TransformEncoder(transform), signals=())


def _prepare_in_process(data: bytes):  # noqa: ANN202 - (pixels, DecodedImage), pickled back
    sample = _process_core.decode(data)
    return sample.pixels, sample.decoded


def _drive(executor: Executor, call: Callable, jpegs: list[bytes], window: int, seconds: float, stats: dict | None) -> float:
    """Images/s: keep `window` tasks in flight for `seconds` after a warm-up round.

    `stats` gets `cpu_ms_per_image`: this process's CPU time per image in the timed part
    (all of the work for a thread pool; only the submitting side for a process pool).
    """
    for future in [executor.submit(call, jpegs[i % len(jpegs)]) for i in range(window)]:
        future.result()
    done_count, i = 0, 0
    pending: set[Future] = set()
    started, cpu_started = time.perf_counter(), time.process_time()
    stop_at = started + seconds
    while True:
        now = time.perf_counter()
        while now < stop_at and len(pending) < window:
            pending.add(executor.submit(call, jpegs[i % len(jpegs)]))
            i += 1
        if not pending:
            break
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            future.result()
            done_count += 1
    if stats is not None:
        stats["cpu_ms_per_image"] = (time.process_time() - cpu_started) * 1e3 / max(1, done_count)
    return done_count / (time.perf_counter() - started)


def decode_rate(
    jpegs: list[bytes],
    core: JudgingCore,
    workers: int,
    kind: str = "thread",
    seconds: float = 5.0,
    torch_threads: int = 1,
    stats: dict | None = None,
) -> float:
    """Images/s through `core.decode` in `workers` threads or processes (see the module docstring).

    `stats`, if given, gets `cpu_ms_per_image` (see `_drive`).
    """
    import torch

    window = 2 * workers
    if kind == "thread":
        threads_before = torch.get_num_threads()
        torch.set_num_threads(torch_threads)
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="host-bench") as pool:
                return _drive(pool, core.decode, jpegs, window, seconds, stats)
        finally:
            torch.set_num_threads(threads_before)
    if kind == "process":
        import multiprocessing

        # The transform object itself (picklable), not the encoder's bound method, which
        # would carry the whole model into every worker process.
        encoder = core.encoder.encoder
        transform = getattr(encoder, "_preprocess", encoder.preprocess)
        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_process, initargs=(transform, core.limits, torch_threads)
        ) as pool:
            return _drive(pool, _prepare_in_process, jpegs, window, seconds, stats)
    raise ValueError(f"kind must be 'thread' or 'process', not {kind!r}")


def main() -> None:
    from bench.clip import realistic_jpegs
    from moderation.ops.config import Settings
    from moderation.runtime import build_core, host_cpus, load_scorer
    from moderation.signals.clip import ClipModelSpec

    parser = argparse.ArgumentParser(description="decode + preprocess rate: a thread pool against a process pool")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--workers", type=int, default=host_cpus())
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    args = parser.parse_args()
    core = build_core(Settings(), load_scorer(ClipModelSpec(model=args.model, weights="random")))
    jpegs = realistic_jpegs()
    configurations = {
        "thread_1": ("thread", 1, 1),
        f"thread_{args.workers}": ("thread", args.workers, 1),
        f"thread_{args.workers}_torch_threads_{args.workers}": ("thread", args.workers, args.workers),
        f"process_{args.workers}": ("process", args.workers, 1),
    }
    rates: dict[str, list[float]] = {name: [] for name in configurations}
    for _ in range(args.rounds):
        for name, (kind, workers, torch_threads) in configurations.items():
            rates[name].append(
                decode_rate(jpegs, core, workers, kind, args.seconds, torch_threads)
            )
    medians = {name: round(sorted(values)[len(values) // 2], 1) for name, values in rates.items()}
    print(json.dumps({"images_per_s": medians, "all_rounds": rates, "cpus": os.cpu_count(), "load_average": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
