"""CLIP-tier benchmark: the real server under concurrent gRPC load, beside the ceilings that bound it.

One run measures, on the same machine and model (ViT-B-32 with random weights by
default: real FLOPs, meaningless scores):
  - the real `moderation serve` process driven over gRPC by N concurrent clients
    (spread over several client processes, so the load generator is not the
    bottleneck) with real JPEGs of 640x480 to 1920x1080: throughput, p50/p95/p99
    latency, and the mean batch the server formed;
  - (a) the raw batched forward pass on preprocessed tensors at the batch size the
    server uses (its max_batch: 16 on CPU, 256 on CUDA), through the encoder as the
    server calls it: the model's ceiling; on CUDA also on device-resident fp16 input
    (the figure issue 11 quotes: no host-to-device copy);
  - (h) decode + preprocess on all the host's cores (bench/host.py): the
    host's ceiling, which binds on a GPU;
  - (b) a naive baseline: one image per call with the label prompts re-encoded per
    call with one template, as a generic zero-shot pipeline does (full decode,
    no draft mode);
  - (c) decode + single-image forward: the floor for one request's latency.
Ratios between them are what to compare across machines and commits; absolute
numbers depend on the machine and how busy it is.

Run from the repository root: .venv/bin/python -m bench.clip [--device cuda] [--soak-seconds 600]
`--workers 1,2` measures `serve --workers 1` and then `--workers 2` in the same run (the
figures of each under `workers` in the JSON, against the same ceilings); `--name` names the
results file (bench/results/host_bound.json: the host-bound model, README "On a GPU").
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

# Sizes upstream services send: VGA phone shots to full-HD screenshots.
IMAGE_SIZES = ((640, 480), (1024, 768), (1280, 720), (1920, 1080))


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    errors: dict[str, int]
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    client_processes: int = 1
    client_cpu_s: float = 0.0  # CPU time the load generator itself used
    mean_batch: float | None = None  # images per forward pass in the server meanwhile
    server_cpu_s: float | None = None  # CPU the server used meanwhile, all threads
    server_loop_cpu_s: float | None = None  # of which its main thread (the event loop, serialised)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict[str, float | int | dict[str, int]]:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 2),
            "throughput_per_s": round(self.throughput, 3),
            "p50_ms": round(self.percentile(50), 1),
            "p95_ms": round(self.percentile(95), 1),
            "p99_ms": round(self.percentile(99), 1),
            "client_processes": self.client_processes,
            # Cores the load generator took from the machine the server runs on.
            "client_cpu_cores": round(self.client_cpu_s / self.seconds, 2) if self.seconds else 0.0,
            "mean_batch": None if self.mean_batch is None else round(self.mean_batch, 1),
            # CPU per answered request: steadier than wall time on a shared machine, and what
            # bounds the served rate when the model is not the bottleneck (a GPU).
            "server_cpu_ms_per_request": self._per_request(self.server_cpu_s),
            "server_loop_cpu_ms_per_request": self._per_request(self.server_loop_cpu_s),
        }

    def _per_request(self, cpu_s: float | None) -> float | None:
        return round(cpu_s * 1e3 / self.requests, 2) if cpu_s is not None and self.requests else None


def realistic_jpegs() -> list[bytes]:
    """Real photographs (scikit-image's samples) at realistic upload sizes."""
    import io

    import skimage.data
    from PIL import Image

    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    jpegs = []
    for i, (width, height) in enumerate(IMAGE_SIZES * 2):
        image = Image.fromarray(sources[i % len(sources)]).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        jpegs.append(buffer.getvalue())
    return jpegs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _cpu_s(pid: int, thread: int | None = None) -> float:
    """CPU seconds (user + system) a process, or one of its threads, has used, from /proc."""
    path = Path(f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat")
    fields = path.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """`pid` and its children (a `serve --workers N` supervisor and its worker processes), from /proc."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return [pid, *children]


def server_cpu_s(pid: int) -> tuple[float, float]:
    """(CPU seconds of the server's processes, of which their main threads: the event loops) from /proc.

    With workers the supervisor's own CPU counts too (scrapes, health checks); its main thread is
    not an event loop that serves requests, so only the workers' main threads are the loops.
    """
    pids = _tree(pid)
    workers = pids[1:] or pids
    total, loops = 0.0, 0.0
    for each in pids:
        try:
            total += _cpu_s(each)
            if each in workers:
                loops += _cpu_s(each, each)
        except OSError:  # exited meanwhile
            pass
    return total, loops


class ServerProcess:
    def __init__(
        self,
        model: str,
        device: str,
        policies: Path,
        extra_args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
        log_path: Path | None = None,
        model_dir: Path | None = None,
        log_format: str = "text",
    ):
        self.port, self.metrics_port = _free_port(), _free_port()
        self.target = f"127.0.0.1:{self.port}"
        # An exported folder (`moderation export`) names its own model and weights: served as a user would, `--model-dir`.
        model_args = ["--model-dir", str(model_dir)] if model_dir is not None else ["--model", model, "--weights", "random"]
        command = [
            sys.executable, "-m", "moderation", "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--metrics-port", str(self.metrics_port), "--policies", str(policies), *model_args,
            "--device", device, "--log-format", log_format, *extra_args,
        ]  # fmt: skip
        # The CLIP tier alone: the default explainer_mode (auto) could load SmolVLM2 beside it.
        env = {**os.environ, "MODERATION_LOG_LEVEL": "WARNING", "MODERATION_EXPLAINER_MODE": "off", **(extra_env or {})}
        # The log goes to a file when one is given (a pipe nobody reads would fill up and stall the server).
        self.log_path = log_path
        stderr = log_path.open("w") if log_path else subprocess.PIPE
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env, text=True)
        if log_path:
            stderr.close()

    def wait_serving(self, timeout_s: float = 300) -> float:
        """Seconds from the process start until its health check said SERVING (polled every 0.1 s)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited: {self.log_tail()}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - self.started
                    time.sleep(0.1)
                except grpc.RpcError:
                    time.sleep(0.1)
        raise TimeoutError("server did not become SERVING")

    def log_tail(self, chars: int = 2000) -> str:
        if self.log_path:
            return self.log_path.read_text(errors="replace")[-chars:]
        return self.process.stderr.read()[-chars:] if self.process.stderr else ""

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


# Client connections per load-generator process at most: the clients share them round robin. A
# connection stays with one server process, so `serve --workers N` needs several to be spread.
MAX_CONNECTIONS = 8


async def drive(target: str, jpegs: list[bytes], concurrency: int, seconds: float, connections: int = 1) -> LoadResult:
    """`concurrency` clients, each sending one request after the other for `seconds`, over `connections` connections."""
    import grpc

    from moderation.v1 import moderation_pb2 as pb
    from moderation.v1 import moderation_pb2_grpc as pb_grpc

    latencies: list[float] = []
    errors: dict[str, int] = {}
    cpu_started = time.process_time()
    # Each channel its own connection (grpc shares subchannels between channels to one target otherwise).
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(max(1, min(connections, concurrency)))]
    try:
        stubs = [pb_grpc.ModerationServiceStub(channel) for channel in channels]
        requests = [pb.ModerateRequest(image=jpeg) for jpeg in jpegs]
        started = time.perf_counter()
        stop_at = started + seconds

        async def client(offset: int) -> None:
            i = offset
            stub = stubs[offset % len(stubs)]
            while time.perf_counter() < stop_at:
                sent = time.perf_counter()
                try:
                    await stub.Moderate(requests[i % len(requests)], timeout=60)
                    latencies.append((time.perf_counter() - sent) * 1e3)
                except grpc.aio.AioRpcError as err:
                    errors[err.code().name] = errors.get(err.code().name, 0) + 1
                i += 1

        await asyncio.gather(*(client(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close()
    return LoadResult(concurrency, len(latencies), errors, elapsed, latencies, client_cpu_s=time.process_time() - cpu_started)


def _client_process(target: str, jpegs: list[bytes], concurrency: int, seconds: float, start_at: float, offset: int, results, connections: int = 1) -> None:  # noqa: ANN001
    """One load-generator process: waits for the common start, then drives its share of the clients."""
    time.sleep(max(0.0, start_at - time.time()))
    rotated = jpegs[offset % len(jpegs) :] + jpegs[: offset % len(jpegs)]
    result = asyncio.run(drive(target, rotated, concurrency, seconds, connections))
    results.put((result.requests, result.errors, result.seconds, result.latencies_ms, result.client_cpu_s))


def drive_processes(target: str, jpegs: list[bytes], concurrency: int, seconds: float, processes: int, connections: int = 1) -> LoadResult:
    """`concurrency` clients spread over `processes` processes (one asyncio loop each), started together.

    One Python process tops out at a few thousand requests per second; several keep
    the load generator from being what is measured. With one process this is `drive`.
    """
    processes = max(1, min(processes, concurrency))
    if processes == 1:
        return asyncio.run(drive(target, jpegs, concurrency, seconds, connections))
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    shares = [concurrency // processes + (1 if k < concurrency % processes else 0) for k in range(processes)]
    start_at = time.time() + 3.0  # every process imported and connected by then
    workers = [
        context.Process(target=_client_process, args=(target, jpegs, share, seconds, start_at, k, results, connections), daemon=True)
        for k, share in enumerate(shares)
    ]
    for worker in workers:
        worker.start()
    gathered = [results.get(timeout=seconds + 120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    errors: dict[str, int] = {}
    for _, worker_errors, _, _, _ in gathered:
        for code, count in worker_errors.items():
            errors[code] = errors.get(code, 0) + count
    return LoadResult(
        concurrency,
        sum(g[0] for g in gathered),
        errors,
        max(g[2] for g in gathered),
        [latency for g in gathered for latency in g[3]],
        client_processes=processes,
        client_cpu_s=sum(g[4] for g in gathered),
    )


def _batch_histogram(metrics_port: int) -> tuple[float, float]:
    """(sum, count) of the server's moderation_batch_size histogram."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    values = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for key in values:
            if line.startswith(f"moderation_batch_size_{key} "):
                values[key] = float(line.split()[1])
    return values["sum"], values["count"]


def _median_time(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def eager_fp32_forward(model: str, jpegs: list[bytes], batch: int, repeats: int) -> float:
    """Images/s of eager PyTorch fp32 on the CPU at `batch`: the reference a faster CPU backend is measured against."""
    import torch

    from moderation.ops.config import Settings
    from moderation.runtime import build_core, load_scorer
    from moderation.signals.clip import ClipModelSpec

    scorer = load_scorer(ClipModelSpec(model=model, weights="random", device="cpu", backend="torch", precision="fp32"))
    core = build_core(Settings(), scorer)
    pixels = torch.cat([core.decode(jpegs[i % len(jpegs)]).pixels for i in range(batch)])
    scorer.embed_images(pixels)  # warm-up
    return batch / _median_time(lambda: scorer.embed_images(pixels), repeats)


def measure_in_process(
    model: str,
    device: str,
    policies: Path,
    jpegs: list[bytes],
    batch: int,
    repeats: int,
    host_seconds: float = 10.0,
    backend: str = "torch",
    model_dir: Path | None = None,
) -> dict[str, float]:
    """The ceilings and floors without gRPC: (a) forward, (h) host decode, (b) naive baseline, (c) single request.

    With `model_dir`, through the folder's encoder (backend 'onnx-folder') as the server runs it."""
    import torch

    from bench.host import decode_rate
    from moderation.offline.scoring import offline_policy
    from moderation.ops.config import Settings
    from moderation.policy.registry import load_policy_dir
    from moderation.runtime import build_core, host_cpus, load_scorer
    from moderation.signals.clip import ClipModelSpec, arrays

    scorer = load_scorer(ClipModelSpec(model=model, weights="random", device=device, backend=backend, model_dir=model_dir))
    policy = next(p for p, _, _ in load_policy_dir(policies) if p.default)
    # The server's core (its decode limits, JPEG draft mode, signals), and the same without draft mode for the naive baseline.
    settings = Settings()
    core = build_core(settings, scorer)
    full_decode_core = build_core(settings.model_copy(update={"jpeg_draft": False}), scorer)

    def decode_one(jpeg: bytes):  # noqa: ANN202 - torch tensor, or numpy from a model folder
        return core.decode(jpeg).pixels

    # (a) As the server runs it: a batch stacked in the buffer the batcher uses (pinned
    # on CUDA), through the encoder, embeddings back on the host.
    prepared = arrays.concat([decode_one(jpegs[i % len(jpegs)]) for i in range(batch)])
    pixels = scorer.batch_buffer(tuple(prepared.shape))
    pixels[...] = prepared
    scorer.embed_images(pixels)  # warm-up
    forward_s = _median_time(lambda: scorer.embed_images(pixels), repeats)
    numbers = {"raw_forward_images_per_s": batch / forward_s, "raw_forward_batch": batch}
    encoder = scorer.encoder
    if encoder.device.type == "cuda" and hasattr(encoder, "_model"):
        # The model alone on device-resident input (no copies): comparable with issue 11's figures.
        resident = pixels.to(encoder.device, encoder.dtype)

        def resident_forward() -> None:
            with torch.inference_mode():
                encoder._model.encode_image(resident)
            torch.cuda.synchronize(encoder.device)

        resident_forward()
        numbers["device_forward_images_per_s"] = batch / _median_time(resident_forward, repeats)

    # (h) The host's ceiling: decode + preprocess on every core, as the server's decode pool does.
    workers = host_cpus()
    stats: dict = {}
    numbers["host_decode_images_per_s"] = decode_rate(jpegs, core, workers, "thread", host_seconds, torch_threads=1, stats=stats)
    numbers["host_decode_cpu_ms_per_image"] = stats["cpu_ms_per_image"]
    # The same work in a process pool, for comparison (the server runs threads): on many
    # cores the GIL may favour processes even though they pay for pickling.
    numbers["host_decode_process_pool_images_per_s"] = decode_rate(jpegs, core, workers, "process", host_seconds, torch_threads=1)
    numbers["host_decode_workers"] = workers

    # A generic zero-shot pipeline (e.g. transformers' zero-shot-image-classification)
    # encodes each candidate label once per call with one hypothesis template.
    naive_policy = policy.model_copy(update={"templates": ["This is a photo of {}."]})

    def naive_one(jpeg: bytes) -> None:
        served = offline_policy(scorer, naive_policy)  # every label re-encoded for every call
        full_decode_core.judge_images([jpeg], served)

    naive_s = _median_time(lambda: naive_one(jpegs[0]), max(3, repeats // 2))

    decode_s = statistics.median(_median_time(lambda j=j: decode_one(j), 3) for j in jpegs)
    single = decode_one(jpegs[0])
    single_forward_s = _median_time(lambda: scorer.embed_images(single), repeats)
    numbers.update(
        naive_images_per_s=1.0 / naive_s,
        decode_ms=decode_s * 1e3,
        single_forward_ms=single_forward_s * 1e3,
    )
    return numbers


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # a GPU box may lack it: the JSON is the result, the PNG a picture of it
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    load = results["load"]
    concurrency = [r["concurrency"] for r in load]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(concurrency, [r["throughput_per_s"] for r in load], "o-", label="server over gRPC")
    batch = results["model"]["raw_forward_batch"]
    left.axhline(results["model"]["raw_forward_images_per_s"], color="green", ls="--", label=f"raw batched forward at {batch} (ceiling)")
    left.axhline(results["model"]["host_decode_images_per_s"], color="purple", ls="-.", label="decode + preprocess, all cores (ceiling)")
    if results["model"].get("eager_fp32_forward_images_per_s"):
        left.axhline(results["model"]["eager_fp32_forward_images_per_s"], color="orange", ls="--", label=f"eager fp32 forward at {batch}")
    left.axhline(results["model"]["naive_images_per_s"], color="red", ls=":", label="naive: 1 image/call, prompts re-encoded")
    left.set(xlabel="concurrent clients", ylabel="images / s", title="Throughput", xscale="log", xticks=concurrency)
    left.set_xticklabels([str(c) for c in concurrency])
    left.legend(fontsize=8)
    for q in ("p50", "p95", "p99"):
        right.plot(concurrency, [r[f"{q}_ms"] for r in load], "o-", label=q)
    floor = results["model"]["decode_ms"] + results["model"]["single_forward_ms"]
    right.axhline(floor, color="gray", ls="--", label="decode + single forward")
    right.set(xlabel="concurrent clients", ylabel="ms", title="Latency", xscale="log", xticks=concurrency)
    right.set_xticklabels([str(c) for c in concurrency])
    right.legend(fontsize=8)
    where = results["machine"].get("gpu") or results["machine"]["device"]
    fig.suptitle(f"{results['model_name']} (random weights, {results['backend']}) on {where}, {results['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# Per device: the concurrency levels, and the client processes driving them.
DEFAULT_LEVELS = {"cpu": (1, 4, 16), "cuda": (1, 16, 64, 256)}
DEFAULT_CLIENT_PROCESSES = {"cpu": 1, "cuda": 4}


def _device_type(device: str) -> str:
    return device.partition(":")[0]


def _machine(device: str) -> dict:
    machine = {"device": device, "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        import torch

        machine["torch"] = torch.__version__
        if _device_type(device) == "cuda":
            machine["gpu"] = torch.cuda.get_device_name(torch.device(device))
    except Exception as error:  # noqa: BLE001 - a description, never a reason to fail the bench
        machine["gpu"] = f"unknown ({type(error).__name__})"
    return machine


def run_clip_bench(
    model: str = "ViT-B-32",
    device: str = "cpu",
    concurrency: tuple[int, ...] | None = None,
    seconds: float = 20.0,
    soak_seconds: float = 0.0,
    policies: Path = Path("policies"),
    out_dir: Path = Path("bench/results"),
    progress: Callable[[str], None] = print,
    client_processes: int | None = None,
    host_seconds: float = 10.0,
    backend: str | None = None,
    worker_counts: tuple[int, ...] = (1,),
    results_name: str = "clip",
    model_dir: Path | None = None,
) -> dict:
    from moderation.ops.config import Settings
    from moderation.runtime import clip_backend, max_batch

    load_average_start = os.getloadavg()
    folder_manifest = None
    if model_dir is not None:
        if _device_type(device) != "cpu":
            raise ValueError("an exported model folder serves on the CPU only")
        folder_manifest = json.loads((model_dir / "manifest.json").read_text())
        model, backend = folder_manifest["model"], "onnx-folder"
    kind = _device_type(device)
    levels = concurrency or DEFAULT_LEVELS.get(kind, DEFAULT_LEVELS["cpu"])
    processes = client_processes or DEFAULT_CLIENT_PROCESSES.get(kind, 1)
    server_batch = max_batch(Settings(), device)
    backend = backend or clip_backend(Settings(), device)  # what the server would run: auto by default
    jpegs = realistic_jpegs()
    progress(f"{len(jpegs)} JPEGs, {min(len(j) for j in jpegs) // 1024}-{max(len(j) for j in jpegs) // 1024} kB")

    # The server's defaults, except that every level is admitted: the in-flight and
    # queue bounds (64) would shed the clients beyond them, not measure them.
    admitted = max(64, *levels)
    server_env = {"MODERATION_MAX_CONCURRENT_REQUESTS": str(admitted), "MODERATION_MAX_QUEUE": str(admitted)}
    if model_dir is None:  # a folder picks its own backend (onnx-folder)
        server_env["MODERATION_CLIP_BACKEND"] = backend
    starts: dict = {}
    text_cache: Path | None = None
    try:
        if model_dir is not None:
            import tempfile

            # As a new user would: a first start with nothing cached (it compiles every policy's
            # prompts with the folder's text tower and keeps the embeddings), then the restart
            # that is measured (text embeddings read from MODERATION_CLIP_EXPORT_DIR).
            text_cache = Path(tempfile.mkdtemp(prefix="clip-bench-text-cache-"))
            server_env["MODERATION_CLIP_EXPORT_DIR"] = str(text_cache)
            first_log = Path(tempfile.mkstemp(prefix="clip-bench-server-", suffix=".log")[1])
            starts = first_start(model_dir, device, policies, server_env, first_log, progress)
        runs = {
            count: _serve_levels(
                model, device, policies, jpegs, levels, seconds, processes, server_env, count, soak_seconds, progress,
                model_dir=model_dir, starts=starts if count == worker_counts[0] else None,
            )
            for count in worker_counts
        }  # fmt: skip
    finally:
        if text_cache is not None:
            import shutil

            shutil.rmtree(text_cache, ignore_errors=True)
    load, soak, rss_now_mb, peak_rss_mb, exit_code = runs[worker_counts[0]]

    progress(f"measuring in-process: forward at batch {server_batch}, host decode on all cores, naive baseline, single-request floor")
    model_numbers = measure_in_process(
        model, device, policies, jpegs, batch=server_batch, repeats=5, host_seconds=host_seconds, backend=backend, model_dir=model_dir
    )
    if kind == "cpu" and backend != "torch":
        progress(f"measuring eager PyTorch fp32 at batch {server_batch}: the reference for the {backend} backend")
        model_numbers["eager_fp32_forward_images_per_s"] = eager_fp32_forward(model, jpegs, server_batch, repeats=5)

    by_level = {r.concurrency: r for r in load}
    top, one = by_level[max(levels)], by_level[min(levels)]
    best = max(load, key=lambda r: r.throughput)
    forward_cap, host_cap = model_numbers["raw_forward_images_per_s"], model_numbers["host_decode_images_per_s"]
    results = {
        "model_name": model,
        "backend": backend,
        "machine": {
            **_machine(device),
            # Other work on this shared machine: compare ratios measured in the same run, not absolute rates.
            "load_average_1_5_15_min": {"start": [round(v, 2) for v in load_average_start], "end": [round(v, 2) for v in os.getloadavg()]},
        },
        "seconds_per_level": seconds,
        "server_settings": {"max_batch": server_batch, "max_concurrent_requests": admitted, "max_queue": admitted},
        "load": [r.summary() for r in load],
        "model": {k: round(v, 3) for k, v in model_numbers.items()},
        "throughput_vs_forward": round(top.throughput / forward_cap, 3),
        # What binds: the model on a CPU, decode + preprocess on a GPU.
        "throughput_vs_host_decode": round(best.throughput / host_cap, 3),
        "bound_by": "forward" if forward_cap <= host_cap else "host decode",
        "peak_throughput_per_s": round(best.throughput, 2),
        "peak_at_concurrency": best.concurrency,
        # Machine-load-independent view of the host-bound regime, from CPU time: the share
        # of the decode pool's rate all cores could serve if the server's own CPU per
        # request were the only cost, and the rate its event loop thread alone allows.
        "served_cpu_efficiency": _ratio(model_numbers["host_decode_cpu_ms_per_image"], best.summary()["server_cpu_ms_per_request"]),
        "event_loop_ceiling_per_s": _ratio(1e3, best.summary()["server_loop_cpu_ms_per_request"]),
        "speedup_vs_naive": round(top.throughput / model_numbers["naive_images_per_s"], 3),
        # Issue 14: the served rate with the faster CPU backend against eager fp32's raw forward.
        "throughput_vs_eager_fp32_forward": _ratio(top.throughput, model_numbers.get("eager_fp32_forward_images_per_s")),
        # Defined at one client only: with more, queueing is part of the latency by design.
        "p50_latency_vs_single_forward": round(one.percentile(50) / (model_numbers["decode_ms"] + model_numbers["single_forward_ms"]), 3)
        if one.concurrency == 1
        else None,
        "peak_rss_mb": round(peak_rss_mb, 1),
        "rss_after_load_mb": round(rss_now_mb, 1),
        "server_exit_code": exit_code,
        "targets": _targets(kind, model_dir is not None),
    }
    if worker_counts != (1,):
        # `serve --workers N` side by side in this run: the figures of the host-bound targets (issue 19) per count.
        results["workers"] = {
            str(count): _workers_summary(runs[count], model_numbers, count) for count in worker_counts
        }
    if model_dir is not None:
        results["model_folder"] = _folder_summary(model_dir, folder_manifest)
        results["start"] = starts
    if soak:
        first, last = soak[0]["rss_mb"], soak[-1]["rss_mb"]
        results["soak"] = {"seconds": soak_seconds, "samples": soak, "rss_growth": round(last / first - 1, 4)}
    out_dir.mkdir(parents=True, exist_ok=True)
    if model_dir is not None and results_name == "clip":
        results_name = "clip-folder"
    suffix = "" if kind == "cpu" else f"-{kind}"
    (out_dir / f"{results_name}{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out_dir / f"{results_name}{suffix}.png")
    return results


def _serve_levels(
    model: str, device: str, policies: Path, jpegs: list[bytes], levels: tuple[int, ...], seconds: float, processes: int,
    server_env: dict[str, str], workers: int, soak_seconds: float, progress: Callable[[str], None],
    model_dir: Path | None = None, starts: dict | None = None,
) -> tuple[list[LoadResult], list[dict[str, float]], float, float, int]:
    """The real server (`workers` processes) at each concurrency level: (results, soak, RSS now, peak RSS, exit code).

    `starts` (a dict) gets the seconds to SERVING and the server's RSS then and after the warm-up."""
    import tempfile

    server_log = Path(tempfile.mkstemp(prefix="clip-bench-server-", suffix=".log")[1])
    server = ServerProcess(
        model, device, policies, extra_env={**server_env, "MODERATION_WORKERS": str(workers)}, log_path=server_log, model_dir=model_dir
    )
    load: list[LoadResult] = []
    soak: list[dict[str, float]] = []
    # Several connections, so that the kernel spreads them over the workers; the same for every worker count.
    connections = MAX_CONNECTIONS
    try:
        serving_s = server.wait_serving()
        rss_loaded_mb = sum(_rss_mb(each)[0] for each in _tree(server.process.pid))
        if starts is not None:
            starts.update(serving_s=round(serving_s, 2), rss_at_serving_mb=round(rss_loaded_mb, 1))
        progress(f"server SERVING ({workers} worker{'s' if workers > 1 else ''}) after {serving_s:.1f} s, {rss_loaded_mb:.0f} MB RSS; warming up")
        asyncio.run(drive(server.target, jpegs, 2 * workers, 5.0, connections))
        if starts is not None:
            starts["rss_after_warm_up_mb"] = round(sum(_rss_mb(each)[0] for each in _tree(server.process.pid)), 1)
        for level in levels:
            batches_before = _batch_histogram(server.metrics_port)
            pid = server.process.pid
            cpu_before, loop_before = server_cpu_s(pid)
            result = drive_processes(server.target, jpegs, level, seconds, processes, connections)
            cpu_after, loop_after = server_cpu_s(pid)
            result.server_cpu_s, result.server_loop_cpu_s = cpu_after - cpu_before, loop_after - loop_before
            batches_after = _batch_histogram(server.metrics_port)
            forwards = batches_after[1] - batches_before[1]
            result.mean_batch = (batches_after[0] - batches_before[0]) / forwards if forwards else None
            progress(
                f"{workers} worker(s), concurrency {level}: {result.throughput:.2f}/s p50 {result.percentile(50):.0f} ms "
                f"mean batch {result.mean_batch or 0:.1f} CPU/request {result.summary()['server_cpu_ms_per_request']} ms errors {result.errors}"
            )
            load.append(result)
        if soak_seconds:
            soak = _soak(server, jpegs, max(levels), soak_seconds, progress)
        rss = [_rss_mb(each) for each in _tree(server.process.pid)]
        rss_now_mb, peak_rss_mb = sum(r[0] for r in rss), sum(r[1] for r in rss)
    finally:
        exit_code = server.stop()
    return load, soak, rss_now_mb, peak_rss_mb, exit_code


def _workers_summary(run: tuple, model_numbers: dict[str, float], workers: int) -> dict:
    """One worker count's load and the host-bound figures at its top concurrency (issue 19's targets)."""
    load, _, _, peak_rss_mb, exit_code = run
    top = max(load, key=lambda r: r.concurrency).summary()
    host_rate, host_cpu = model_numbers["host_decode_images_per_s"], model_numbers["host_decode_cpu_ms_per_image"]
    return {
        "load": [r.summary() for r in load],
        "top_concurrency": top["concurrency"],
        # Target: >= 0.9 at 64 clients.
        "throughput_vs_host_decode_at_top": _ratio(top["throughput_per_s"], host_rate),
        # Target: <= 1.3 (the server's CPU per request against decode + preprocess alone).
        "server_cpu_vs_decode_cpu_at_top": _ratio(top["server_cpu_ms_per_request"], host_cpu),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "server_exit_code": exit_code,
    }


def _ratio(numerator: float, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def first_start(model_dir: Path, device: str, policies: Path, env: dict[str, str], log_path: Path, progress: Callable[[str], None]) -> dict:
    """A first start from the folder with an empty text-embedding cache: time to SERVING, and the
    policy compile inside it (from the server's JSON log: the first 'computing text embeddings'
    line to the 'serving policies' line), then stopped."""
    server = ServerProcess("", device, policies, extra_env={**env, "MODERATION_LOG_LEVEL": "INFO"}, log_path=log_path, model_dir=model_dir, log_format="json")
    try:
        serving_s = server.wait_serving()
        rss_mb, peak_mb = _rss_mb(server.process.pid)
    finally:
        server.stop()
    stamps: dict[str, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = str(entry.get("msg", ""))
        for key, prefix in (("compile_from", "computing text embeddings"), ("compile_to", "serving policies")):
            if message.startswith(prefix) and key not in stamps:
                stamps[key] = _log_seconds(entry["ts"])
    compile_s = stamps["compile_to"] - stamps["compile_from"] if len(stamps) == 2 else None
    progress(f"first start (no text embeddings cached): SERVING after {serving_s:.1f} s, policy compile {compile_s} s, {rss_mb:.0f} MB RSS")
    return {
        "first_start_serving_s": round(serving_s, 2),
        "first_start_policy_compile_s": None if compile_s is None else round(compile_s, 2),
        "first_start_rss_mb": round(rss_mb, 1),
        "first_start_peak_rss_mb": round(peak_mb, 1),
    }


def _log_seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def _folder_summary(model_dir: Path, manifest: dict) -> dict:
    accuracy, guard = manifest.get("accuracy", {}), manifest.get("int8", {})
    return {
        "path": str(model_dir),
        "model_id": manifest["model_id"],
        "image_variant": manifest["image_variant"],
        "int8_verdict": guard.get("reason"),
        "int8_max_score_diff_vs_fp32": guard.get("max_score_diff_vs_fp32"),
        # Measured by `moderation export` on its probe set, at the model's own logit scale.
        "fp32_max_score_diff_vs_eager_open_clip": accuracy.get("fp32_max_score_diff_vs_torch"),
        "fp32_min_image_cosine_vs_eager_open_clip": accuracy.get("fp32_min_image_cosine_vs_torch"),
        "export_seconds": manifest.get("export_seconds"),
        "files_mb": {name: round((model_dir / name).stat().st_size / 2**20, 1) for name in manifest["files"]},
    }


def _targets(kind: str, folder: bool = False) -> dict[str, str]:
    if folder:  # issue 19: served from an exported folder without torch
        return {
            "start.serving_s": "<= 5 s for a restart (text embeddings cached)",
            "start.rss_at_serving_mb": "<= 400 MB loaded",
            "peak_rss_mb": "<= 600 MB under load at 16 clients",
            "throughput_vs_eager_fp32_forward": ">= 2.4 (aim 3): served rate at 16 clients against eager PyTorch fp32's raw forward",
            "throughput_vs_forward": ">= 0.85 at the highest concurrency (forward of the served backend)",
            "p50_latency_vs_single_forward": "<= 1.25 at concurrency 1",
        }
    if kind == "cuda":
        return {
            "throughput_vs_host_decode": ">= 0.8 at the best concurrency (the host's decode + preprocess binds on a GPU)",
            "peak_throughput_per_s": "> 800 on one H200-class GPU",
            "p50_latency_vs_single_forward": "<= 1.25 at concurrency 1",
        }
    return {
        "throughput_vs_forward": ">= 0.85 at the highest concurrency (forward of the served backend)",
        "throughput_vs_eager_fp32_forward": ">= 2 (served rate against eager PyTorch fp32's raw forward)",
        "speedup_vs_naive": ">= 2.5",
        "p50_latency_vs_single_forward": "<= 1.25 at concurrency 1",
        "peak_rss_mb": "<= 1500",
    }


def _soak(server: ServerProcess, jpegs: list[bytes], concurrency: int, seconds: float, progress: Callable[[str], None]) -> list[dict[str, float]]:
    samples = []
    window = 30.0
    elapsed = 0.0
    while elapsed < seconds:
        result = asyncio.run(drive(server.target, jpegs, concurrency, min(window, seconds - elapsed)))
        elapsed += result.seconds
        rss, _ = _rss_mb(server.process.pid)
        samples.append({"t_s": round(elapsed, 1), "rss_mb": round(rss, 1), "throughput_per_s": round(result.throughput, 2)})
        progress(f"soak {elapsed:.0f}/{seconds:.0f} s: rss {rss:.0f} MB, {result.throughput:.2f}/s")
    return samples


def print_bench(results: dict, model: str, device: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{model} ({results.get('backend', 'torch')}) on {device}: server over gRPC", title_justify="left")
    for column in ("clients", "images/s", "p50 ms", "p95 ms", "p99 ms", "errors"):
        table.add_column(column, justify="right")
    for row in results["load"]:
        table.add_row(
            str(row["concurrency"]), f"{row['throughput_per_s']:.2f}", f"{row['p50_ms']:.0f}", f"{row['p95_ms']:.0f}",
            f"{row['p99_ms']:.0f}", str(sum(row["errors"].values())),
        )  # fmt: skip
    console.print(table)
    for key in results["targets"]:
        section, _, field_name = key.partition(".")
        value = results.get(section, {}).get(field_name) if field_name else results.get(key)
        value = value if value is not None else "not measured"
        console.print(f"{key}: {value}  (target {results['targets'][key]})", highlight=False)



def main(
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    model: Annotated[str, typer.Option(help="open_clip architecture (random weights)")] = "ViT-B-32",
    concurrency: Annotated[str, typer.Option(help="comma-separated client counts (default: 1,4,16 on cpu, 1,16,64,256 on cuda)")] = "",
    seconds: Annotated[float, typer.Option(help="load duration per concurrency level")] = 20.0,
    soak_seconds: Annotated[float, typer.Option(help="extra soak at the top concurrency, sampling memory; 600 for the 10-minute soak")] = 0.0,
    policies: Annotated[Path, typer.Option(help="policy directory the server loads")] = Path("policies"),
    results_dir: Annotated[Path, typer.Option("--out", help="where the JSON and PNG go")] = Path("bench/results"),
    client_processes: Annotated[int, typer.Option(help="load-generator processes (default: 1 on cpu, 4 on cuda)")] = 0,
    host_seconds: Annotated[float, typer.Option(help="duration of the host decode + preprocess ceiling")] = 10.0,
    backend: Annotated[str, typer.Option(help="CLIP backend the server runs (default: what clip_backend auto picks for the device)")] = "",
    workers: Annotated[str, typer.Option(help="comma-separated server process counts (serve --workers) measured one after the other, e.g. 1,2")] = "1",
    name: Annotated[str, typer.Option(help="results file name, without .json (default: clip, or clip-folder with --model-dir)")] = "clip",
    model_dir: Annotated[
        Optional[Path],
        typer.Option(help="serve an exported model folder (`moderation export`) with `serve --model-dir`: a first start, then the measured restart"),
    ] = None,
) -> None:
    """Benchmark the real server over gRPC against the model's own ceiling (random weights)."""
    levels = tuple(int(c) for c in concurrency.split(",")) if concurrency else None
    results = run_clip_bench(
        model, device, levels, seconds, soak_seconds, policies, results_dir, progress=lambda m: print(m, file=sys.stderr, flush=True),
        client_processes=client_processes or None, host_seconds=host_seconds, backend=backend or None,
        worker_counts=tuple(int(w) for w in workers.split(",")), results_name=name, model_dir=model_dir,
    )  # fmt: skip
    print_bench(results, model, device)


if __name__ == "__main__":
    typer.run(main)
