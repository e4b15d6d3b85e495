"""Several server processes in one pod (`serve --workers N`, setting `workers`).

One Python process serialises part of every request on its event loop and its GIL
(README, "On a GPU"); a GPU host's cores are then left idle. With `workers` > 1 the
`serve` command becomes a small supervisor that runs N ordinary server processes:

- **One port.** The supervisor reserves the gRPC port with SO_REUSEPORT (resolving
  port 0 to a free one) and keeps that socket bound, never listening, so no other program
  can take the port meanwhile; each worker binds the same port with `grpc.so_reuseport`
  once its models and policies are loaded, and the kernel spreads new connections over
  the workers that listen. A connection stays with its worker: one client connection
  is served by one process, many connections by all of them.
- **One /metrics.** Each worker serves its own registry on a private loopback port; the
  supervisor's /metrics (on `metrics_port`) scrapes them all at each scrape and merges
  them: counters and histograms add up, gauges by GAUGE_MODES (a sum by default; the
  same-everywhere ones such as thresholds and model info the maximum). Chosen over
  prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR), which would lose
  what this service relies on: series retired when a policy is no longer served
  (`remove`/`clear` do not reach its files), gauges read at scrape time (`set_function`:
  requests in flight, bank refresh age, loaded modules) and the process collectors.
- **One health.** `health_port` (the probes' port) is the supervisor's: SERVING only
  while every worker reports SERVING on its own private health port; a worker binds the
  gRPC port only once it serves, so a connection never lands on a worker still loading.
- **Stopping.** SIGTERM (or SIGINT) is passed to every worker, which drains as a single
  server does; the supervisor exits 0 when all of them exit 0. A worker that exits on
  its own (a crash, the OOM killer) stops the pod: the supervisor drains the others and
  exits 1 (2 when the worker exited 2, a configuration error), so Kubernetes restarts
  the container rather than the pod serving on with fewer workers unnoticed.

Each worker gets cores // workers decode threads (`decode_workers`) and, on the CPU, torch
intra-op threads (`torch_threads`; 1 on CUDA as for one server) unless they are set, so the
workers' threads together match the host's cores. Everything a worker
holds is its own: its model copy (on a GPU, N copies in device memory), its batcher,
its admission count (`max_concurrent_requests` is per worker), its bank indexes and its
state-store connection. The review console (`console_port`) runs in worker 0 only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from moderation.ops.config import Settings
from moderation.runtime import ConfigurationError, host_cpus

log = logging.getLogger(__name__)

SERVICE_NAME = "moderation.v1.ModerationService"  # as serving/app.py names it, without importing the server here

MAX_WORKERS = 64
# How often the supervisor asks each worker whether it serves.
HEALTH_POLL_S = 0.5
# How long a worker may take to drain beyond the grace period before it is killed.
STOP_MARGIN_S = 10.0
# Merging of a gauge family over the workers; families not listed are summed.
GAUGE_MODES = {
    # The same in every worker (read from the policies, the model, the shared store): one value.
    "moderation_category_threshold": "max",
    "moderation_policy_info": "max",
    "moderation_model_info": "max",
    "moderation_python_module_loaded": "max",
    "moderation_bank_entries": "max",
    "moderation_thumbnails_bytes": "max",
    "moderation_review_queue_depth": "max",
    "moderation_review_leased_cases": "max",
    "moderation_review_oldest_open_case_age_seconds": "max",
    "python_info": "max",
    # The stalest worker is the pod's view.
    "moderation_bank_version": "min",
    "moderation_bank_refresh_age_seconds": "max",
    "process_start_time_seconds": "min",
    "process_max_fds": "min",
}


def worker_settings(settings: Settings, index: int, port: int, metrics_port: int, health_port: int) -> Settings:
    """Worker `index`'s settings: the pod's, on the reserved port, with private metrics and health ports and its share of the cores."""
    share = max(1, host_cpus() // settings.workers)
    return settings.model_copy(
        update={
            "workers": 1,
            "port": port,
            "metrics_port": metrics_port,
            "metrics_host": "127.0.0.1",
            "health_port": health_port,
            "decode_workers": settings.decode_workers or share,
            "console_port": settings.console_port if index == 0 else 0,
        }
    )


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT, not listening: the port is the workers' until it closes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigurationError(f"cannot bind gRPC port {host}:{port} ({error.strerror or error}); set MODERATION_PORT (--port) to a free port") from None
    return sock


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- /metrics: the workers' registries, merged -------------------------------------------------


def merge_families(scraped: Sequence[Iterable]) -> list:
    """The metric families of every worker (prometheus_client parser output) as one set of families."""
    from prometheus_client.metrics_core import Metric

    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple, list[float]]] = {}
    for families in scraped:
        for family in families:
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            series = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                series.setdefault(key, []).append(sample.value)
    for name, family in merged.items():
        mode = GAUGE_MODES.get(name, "sum") if family.type == "gauge" else ("max" if family.type in ("info", "stateset") else "sum")
        combine = {"sum": sum, "max": max, "min": min}[mode]
        for (sample_name, labels), found in values[name].items():
            family.add_sample(sample_name, dict(labels), float(combine(found)))
    return list(merged.values())


class WorkersCollector:
    """A prometheus_client collector: at each scrape, every worker's /metrics merged, plus the supervisor's own gauges."""

    def __init__(self, metrics_ports: Sequence[int], own: object, timeout_s: float = 5.0):
        self._urls = [f"http://127.0.0.1:{port}/metrics" for port in metrics_ports]
        self._own = own
        self._timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max(1, len(self._urls)), thread_name_prefix="scrape")

    def _scrape(self, url: str) -> list:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(url, timeout=self._timeout_s) as response:  # noqa: S310 - our own loopback workers
                return list(text_string_to_metric_families(response.read().decode()))
        except (OSError, ValueError) as error:  # a worker starting or gone: the others still count
            log.debug("could not scrape worker %s: %s", url, error)
            return []

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        yield from merge_families(list(self._pool.map(self._scrape, self._urls)))
        yield from self._own.collect()


# --- the supervisor --------------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    health_port: int
    serving: bool = False


async def _serving(stub: object) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2

    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)  # type: ignore[attr-defined]
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


async def _start_worker(settings: Settings, index: int, cpu_share: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moderation.serving.workers", str(index), str(cpu_share), stdin=asyncio.subprocess.PIPE
    )
    # The resolved settings (flags, environment and config file together) go through a pipe: not every
    # setting has a flag, and a file would leave a database URL with its password on disk.
    assert process.stdin is not None
    process.stdin.write(settings.model_dump_json().encode())
    await process.stdin.drain()
    process.stdin.close()
    return process


async def supervise(settings: Settings) -> int:
    """Run `settings.workers` server processes on one port until SIGTERM; the exit code for the command."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from prometheus_client import CollectorRegistry, start_http_server

    from moderation.ops.metrics import WorkerMetrics
    from moderation.serving.lifecycle import transport_options

    count = settings.workers
    cores = host_cpus()
    if count > cores:
        log.warning("%d workers on %d cores: more processes than cores only adds contention", count, cores)
    reserved = reserve_port(settings.host, settings.port)
    port = reserved.getsockname()[1]
    metrics_ports = [_free_loopback_port() for _ in range(count)]
    health_ports = [_free_loopback_port() for _ in range(count)]
    own = WorkerMetrics(CollectorRegistry(auto_describe=False))
    own.workers.set(count)
    health_server = None
    workers: list[_Worker] = []
    try:
        if settings.metrics_port:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(WorkersCollector(metrics_ports, own.registry))
            try:
                start_http_server(settings.metrics_port, addr=settings.metrics_bind_host, registry=registry)
            except OSError as error:
                raise ConfigurationError(
                    f"cannot serve metrics on {settings.metrics_bind_host}:{settings.metrics_port}: {error.strerror or error}; "
                    "set MODERATION_METRICS_PORT (--metrics-port) to a free port"
                ) from None
        health_servicer = health.aio.HealthServicer()
        if settings.health_port:
            health_server = grpc.aio.server(options=[*transport_options(settings), ("grpc.max_receive_message_length", 4096)], maximum_concurrent_rpcs=64)
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
            if health_server.add_insecure_port(f"{settings.host}:{settings.health_port}") == 0:
                raise ConfigurationError(f"cannot bind health port {settings.health_port}; set MODERATION_HEALTH_PORT to a free port")
            await health_server.start()

        async def set_health(serving: bool) -> None:
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE_NAME):
                await health_servicer.set(name, status)

        await set_health(False)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        for index in range(count):
            process = await _start_worker(
                worker_settings(settings, index, port, metrics_ports[index], health_ports[index]), index, max(1, cores // count)
            )
            workers.append(_Worker(index, process, health_ports[index]))
        log.info(
            "%d server workers on %s:%d (pids %s), %d decode threads each; /metrics and health for all of them here",
            count, settings.host, port, ", ".join(str(w.process.pid) for w in workers),
            settings.decode_workers or max(1, cores // count),
        )  # fmt: skip

        all_serving = False

        # One channel per worker's private health port, kept for the supervisor's life.
        health_channels = [grpc.aio.insecure_channel(f"127.0.0.1:{w.health_port}") for w in workers]
        stubs = [health_pb2_grpc.HealthStub(channel) for channel in health_channels]

        async def watch_health() -> None:
            nonlocal all_serving
            while True:
                for worker, stub in zip(workers, stubs, strict=True):
                    worker.serving = await _serving(stub)
                serving = sum(w.serving for w in workers)
                own.serving.set(serving)
                if (serving == count) != all_serving:
                    all_serving = serving == count
                    await set_health(all_serving)
                    log.info("all %d workers SERVING" if all_serving else "%d of %d workers serving: NOT_SERVING", *((count,) if all_serving else (serving, count)))
                await asyncio.sleep(HEALTH_POLL_S)

        health_task = asyncio.create_task(watch_health())
        exits = {asyncio.create_task(w.process.wait()): w for w in workers}
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopping, *exits}, return_when=asyncio.FIRST_COMPLETED)
        died = [exits[task] for task in done if task in exits]
        health_task.cancel()
        await set_health(False)
        code = 0
        if died:
            worker = died[0]
            returncode = worker.process.returncode
            code = 2 if returncode == 2 else 1
            log.error(
                "server worker %d (pid %d) exited with code %s; stopping the other workers (exit %d)",
                worker.index, worker.process.pid, returncode, code,
            )  # fmt: skip
        else:
            log.info("stopping: SIGTERM to %d workers, each drains for up to %.0f s", count, settings.grace_period_s)
        code = max(code, await _stop_all(workers, settings.grace_period_s + STOP_MARGIN_S))
        stopping.cancel()
        for channel in health_channels:
            await channel.close()
        return code
    finally:
        for worker in workers:
            if worker.process.returncode is None:
                worker.process.kill()
        if health_server is not None:
            await health_server.stop(None)
        reserved.close()


async def _stop_all(workers: list[_Worker], wait_s: float) -> int:
    """SIGTERM to every live worker, SIGKILL to those still running after `wait_s`; 0 when all exited 0, else 1."""
    for worker in workers:
        if worker.process.returncode is None:
            worker.process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*(w.process.wait() for w in workers)), wait_s)
    except TimeoutError:
        for worker in workers:
            if worker.process.returncode is None:
                log.error("server worker %d (pid %d) did not stop within %.0f s; killing it", worker.index, worker.process.pid, wait_s)
                worker.process.kill()
        await asyncio.gather(*(w.process.wait() for w in workers))
        return 1
    failed = [w for w in workers if w.process.returncode != 0]
    return 1 if failed else 0


def worker_main(index: int, cpu_share: int) -> None:
    """A worker process: its settings from stdin, then an ordinary server that binds the shared port with SO_REUSEPORT.

    `cpu_share` (cores // workers) is torch's thread count on the CPU when `torch_threads` is unset
    (on CUDA it stays 1, as for one server).
    """
    import functools

    import typer

    from moderation.cli.serve import run_logged
    from moderation.serving.app import serve

    settings = Settings(**json.loads(sys.stdin.read()))
    try:
        run_logged(settings, functools.partial(serve, worker=index, cpu_share=cpu_share))
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)


if __name__ == "__main__":
    worker_main(int(sys.argv[1]), int(sys.argv[2]))
