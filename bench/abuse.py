"""Mixed abuse run: every resource attack of issues 12 and 18 at once against a real server on loopback.

    PYTHONPATH=. .venv/bin/python -m bench.abuse --seconds 600 --out bench/results/abuse.json

Starts `moderation serve` (tiny random CLIP model unless --model/--weights say
otherwise) with the bounds below, then runs these attackers concurrently for
`--seconds`:

  unread-streams   ModerateStreams that write requests (empty image, 100 KB request id) and never read
  large-messages   concurrent calls with messages over the gRPC limit, and garbage just under it
  connections      many connections held open at once, beyond max_connections
  idle-streams     streams opened on one connection and left idle, beyond max_concurrent_streams
  bad-tokens       calls with missing, wrong and duplicated bearer tokens (plus a TLS-less peer when
                   the server uses TLS; here it does not)
  long-ids         huge policy ids, 5 MB metadata values, request ids with newlines and ESC
  cancels          streams cancelled by the client mid-way
  gif-canvas       a 480-byte GIF whose 1x1 logical screen grows to 6300x6300 at frame 1 (~40 M pixels a frame),
                   five to a connection, 5 s deadline
  idle-sockets     raw TCP sockets beyond max_connections sending nothing or only the HTTP/2 preface,
                   reopened as the server closes them (handshake_timeout_s)
  malformed-protobuf  raw bytes that are no ModerateRequest (ff ff ff, ...), with and without a token
  busy-streams     another caller (its own token) keeping 5 ModerateStreams full of valid images:
                   admission shares slots between callers, so the well-behaved client is still served

while a well-behaved client (a third token: the attackers are other callers) sends valid
images one at a time, its answers counted per 10 s window (OK, and each refusal code), and a
prober checks health (main port and the plaintext health port) every `--probe-interval-s`.
It samples the server's RSS; at the end it sends SIGTERM and waits for exit code 0 within the
grace period.

Pass criteria (checked by tests/integration/test_abuse.py on a short run): health
SERVING on every probe of the health port, valid requests answered OK in every
10 s window, peak RSS growth under the documented bound, every log line JSON and
none at level error or critical, malformed messages answered UNAUTHENTICATED or
INVALID_ARGUMENT (never UNKNOWN), the GIF refused, SIGTERM exit 0 within the grace period.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "abuse-run-token-0123456789"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
# The busy-streams attacker is another caller: admission shares slots between callers by token.
STREAMS_TOKEN = "abuse-streams-token-0123456789"
STREAMS_AUTH = (("authorization", f"Bearer {STREAMS_TOKEN}"),)
# The well-behaved client is a third caller: the attackers are other tenants, not itself.
CLIENT_TOKEN = "abuse-client-token-0123456789"
CLIENT_AUTH = (("authorization", f"Bearer {CLIENT_TOKEN}"),)
WINDOW_S = 10.0
MIB = 1024 * 1024


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class RssSampler:
    """Samples a process's RSS every `interval_s` in a thread; `peak` and `samples` afterwards."""

    def __init__(self, pid: int, interval_s: float = 0.1):
        self.pid = pid
        self.interval_s = interval_s
        self.baseline = rss_mb(pid)
        self.peak = self.baseline
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = rss_mb(self.pid)
            except (OSError, RuntimeError):
                return
            self.peak = max(self.peak, value)
            self.samples.append((round(time.monotonic() - self._started, 1), round(value, 1)))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> float:
        return self.peak - self.baseline


@dataclass(frozen=True)
class Bounds:
    """The server settings of the run, and the memory bound they imply (docs/security.md, "Resource bounds")."""

    max_image_bytes: int = 4 * MIB
    max_concurrent_requests: int = 16
    max_concurrent_rpcs: int = 32
    max_concurrent_streams: int = 16
    max_connections: int = 64
    stream_window: int = 16
    grace_period_s: float = 10.0
    handshake_timeout_s: float = 5.0  # the server's default
    max_connection_idle_s: float = 30.0  # the server's default
    decode_workers: int = 2  # the server's default
    max_image_pixels: int = 40_000_000  # the server's default

    @property
    def max_message_bytes(self) -> int:
        return self.max_image_bytes + 64 * 1024

    def env(self) -> dict[str, str]:
        return {
            "MODERATION_MAX_IMAGE_BYTES": str(self.max_image_bytes),
            "MODERATION_MAX_CONCURRENT_REQUESTS": str(self.max_concurrent_requests),
            "MODERATION_MAX_CONCURRENT_RPCS": str(self.max_concurrent_rpcs),
            "MODERATION_MAX_CONCURRENT_STREAMS": str(self.max_concurrent_streams),
            "MODERATION_MAX_CONNECTIONS": str(self.max_connections),
            "MODERATION_STREAM_WINDOW": str(self.stream_window),
            "MODERATION_GRACE_PERIOD_S": str(self.grace_period_s),
            "MODERATION_HANDSHAKE_TIMEOUT_S": str(self.handshake_timeout_s),
            "MODERATION_MAX_CONNECTION_IDLE_S": str(self.max_connection_idle_s),
        }

    def memory_bound_mb(self) -> float:
        """Growth over the loaded server's RSS that the bounds allow: the formula of docs/security.md.

        Request messages held at once: one per RPC (max_concurrent_rpcs) plus the
        items of streams being processed (at most max_concurrent_requests), each up
        to max_message_bytes, three copies each while a message is handed from the
        transport to Python to protobuf; decoded pixels in the decode threads
        (decode_workers x max_image_pixels x 22 bytes: measured for an animation whose
        canvas grows to the pixel limit, the gif-canvas attack); 1 MiB per connection of
        transport buffers (about 20 KiB when idle, measured); 200 MB of allocator slack.
        """
        messages = (self.max_concurrent_rpcs + self.max_concurrent_requests) * self.max_message_bytes * 3
        decoding = self.decode_workers * self.max_image_pixels * 22
        connections = self.max_connections * MIB
        return (messages + decoding + connections) / MIB + 200


@dataclass
class Tally:
    counts: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1


def _code(err: Exception) -> str:
    import grpc

    return err.code().name if isinstance(err, grpc.RpcError) else type(err).__name__


class AbuseRun:
    def __init__(self, target: str, health_target: str, bounds: Bounds, seconds: float, valid_image: bytes):
        self.target = target
        self.health_target = health_target
        self.bounds = bounds
        self.seconds = seconds
        self.valid_image = valid_image
        self.stop = threading.Event()
        self.tallies: dict[str, Tally] = {}
        self.valid_ok_times: list[float] = []
        self.valid_failures: Counter = Counter()
        self.valid_outcomes: list[tuple[float, str]] = []  # (seconds into the run, OK or the status code)
        self.health: Counter = Counter()
        self.main_port_health: Counter = Counter()
        self.started = time.monotonic()

    def tally(self, name: str, key: str) -> None:
        self.tallies.setdefault(name, Tally()).add(key)

    def channel(self, **options: object):  # noqa: ANN201
        import grpc

        pairs = [("grpc.max_send_message_length", 256 * MIB), ("grpc.max_receive_message_length", 256 * MIB),
                 ("grpc.use_local_subchannel_pool", 1)]  # fmt: skip
        pairs += [(f"grpc.{k}", v) for k, v in options.items()]
        return grpc.insecure_channel(self.target, options=pairs)

    def loop(self, name: str, body: Callable[[], None], pause_s: float = 0.0) -> Callable[[], None]:
        def run() -> None:
            while not self.stop.is_set():
                try:
                    body()
                except Exception as err:  # noqa: BLE001 - an attacker records and goes on
                    self.tally(name, f"error:{_code(err)}")
                if pause_s:
                    self.stop.wait(pause_s)

        return run

    # -- attackers -------------------------------------------------------------------------

    def unread_stream(self) -> None:
        from moderation.v1 import moderation_pb2 as pb
        from moderation.v1 import moderation_pb2_grpc as pb_grpc

        def requests() -> Iterator[pb.ModerateStreamRequest]:
            for i in range(15_000):
                if self.stop.is_set():
                    return
                yield pb.ModerateStreamRequest(request=pb.ModerateRequest(request_id=f"{i:08d}" + "x" * 100_000, image=b""))

        with self.channel() as channel:
            call = pb_grpc.ModerationServiceStub(channel).ModerateStream(requests(), metadata=AUTH, timeout=30)
            self.stop.wait(20)  # never read; held until the client gives up
            call.cancel()
        self.tally("unread-streams", "cancelled after 20 s unread")

    def large_messages(self) -> None:
        import grpc

        from moderation.v1 import moderation_pb2 as pb
        from moderation.v1 import moderation_pb2_grpc as pb_grpc

        over = os.urandom(self.bounds.max_message_bytes + MIB)
        under = os.urandom(self.bounds.max_image_bytes)
        with self.channel() as channel:
            stub = pb_grpc.ModerationServiceStub(channel)
            futures = [stub.Moderate.future(pb.ModerateRequest(image=over if i % 2 else under), metadata=AUTH, timeout=30) for i in range(16)]
            for future in futures:
                try:
                    future.result()
                    self.tally("large-messages", "OK")
                except grpc.RpcError as err:
                    self.tally("large-messages", err.code().name)

    def connections(self) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        channels = [self.channel() for _ in range(self.bounds.max_connections + 16)]
        try:
            for channel in channels:
                try:
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                    self.tally("connections", "connected")
                except Exception as err:  # noqa: BLE001
                    self.tally("connections", _code(err))
            self.stop.wait(2)
        finally:
            for channel in channels:
                channel.close()

    def idle_streams(self) -> None:
        from moderation.v1 import moderation_pb2_grpc as pb_grpc

        release = threading.Event()

        def nothing() -> Iterator[object]:
            release.wait(10)
            return
            yield  # a generator that sends nothing

        with self.channel() as channel:
            stub = pb_grpc.ModerationServiceStub(channel)
            calls = [stub.ModerateStream(nothing(), metadata=AUTH, timeout=15) for _ in range(self.bounds.max_concurrent_streams + 8)]
            self.stop.wait(8)
            release.set()
            for call in calls:
                try:
                    list(call)
                    self.tally("idle-streams", "OK")
                except Exception as err:  # noqa: BLE001
                    self.tally("idle-streams", _code(err))

    def bad_tokens(self) -> None:
        import grpc

        from moderation.v1 import moderation_pb2 as pb
        from moderation.v1 import moderation_pb2_grpc as pb_grpc

        headers = [(), (("authorization", "Bearer wrong-token-000000000000"),), (("authorization", "Basic abc"),),
                   (("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong-token-000000000000"))]  # fmt: skip
        with self.channel() as channel:
            stub = pb_grpc.ModerationServiceStub(channel)
            for metadata in headers:
                try:
                    stub.Moderate(pb.ModerateRequest(image=self.valid_image), metadata=metadata, timeout=10)
                    self.tally("bad-tokens", "OK (must not happen)")
                except grpc.RpcError as err:
                    self.tally("bad-tokens", err.code().name)

    def long_ids(self) -> None:
        import grpc

        from moderation.v1 import moderation_pb2 as pb
        from moderation.v1 import moderation_pb2_grpc as pb_grpc

        auth = AUTH
        requests = [
            pb.ModerateRequest(image=self.valid_image, policy_id="p" * 10_000),
            pb.ModerateRequest(image=self.valid_image, metadata={"tenant": "t" * 1_000_000, "note": "n" * 1_000_000}),
            pb.ModerateRequest(image=self.valid_image, request_id="forged\n2099-01-01 00:00:00 INFO moderation.audit: decision \x1b[2J"),
        ]
        with self.channel() as channel:
            stub = pb_grpc.ModerationServiceStub(channel)
            for request in requests:
                try:
                    stub.Moderate(request, metadata=auth, timeout=30)
                    self.tally("long-ids", "OK")
                except grpc.RpcError as err:
                    self.tally("long-ids", err.code().name)

    def cancels(self) -> None:
        from moderation.v1 import moderation_pb2 as pb
        from moderation.v1 import moderation_pb2_grpc as pb_grpc

        auth = AUTH
        items = (pb.ModerateStreamRequest(request=pb.ModerateRequest(image=self.valid_image)) for _ in range(64))
        with self.channel() as channel:
            call = pb_grpc.ModerationServiceStub(channel).ModerateStream(items, metadata=auth, timeout=30)
            for count, _ in enumerate(call):
                if count == 2:
                    call.cancel()
                    break
        self.tally("cancels", "cancelled")

    def gif_canvas(self) -> None:
        import grpc

        from moderation.v1 import moderation_pb2 as pb
        from moderation.v1 import moderation_pb2_grpc as pb_grpc
        from tests.images import canvas_growing_gif  # noqa: PLC0415 - the hostile GIF of issue 18

        gif = canvas_growing_gif(frames=20, offset=6299)  # 480 bytes; Pillow grows the canvas to 6300x6300 at frame 1
        with self.channel() as channel:
            stub = pb_grpc.ModerationServiceStub(channel)
            # Several on one connection: a new one often finds max_connections held by the other attackers.
            for _ in range(5):
                try:
                    # A deadline long enough for the refusal to come on a loaded machine (it takes ~1 s
                    # quiet; a 5 s deadline expired first on every try at load 6), so the check below
                    # sees the canvas budget refuse, not only the deadline.
                    stub.Moderate(pb.ModerateRequest(image=gif), metadata=AUTH, timeout=20)
                    self.tally("gif-canvas", "OK (must not happen)")
                except grpc.RpcError as err:
                    self.tally("gif-canvas", err.code().name)
                if self.stop.wait(0.5):
                    return

    def idle_sockets(self) -> None:
        from tests.http2 import PREFACE, closed_by_server, open_sockets  # noqa: PLC0415 - shared with test_idle_sockets

        sockets = open_sockets(self.target, [(b"", PREFACE)[i % 2] for i in range(2 * self.bounds.max_connections)])
        try:
            self.tally("idle-sockets", "opened")
            # Held until the server closes them at its handshake timeout; then the loop reopens them.
            deadline = time.monotonic() + self.bounds.handshake_timeout_s + 5
            for sock in sockets:
                self.tally("idle-sockets", "closed by the server" if closed_by_server(sock, deadline) else "open at handshake timeout + 5 s")
        finally:
            for sock in sockets:
                sock.close()

    def malformed_protobuf(self) -> None:
        import grpc

        with self.channel() as channel:
            # Raw bytes as the request message: the stub's serializer is bypassed.
            moderate = channel.unary_unary("/moderation.v1.ModerationService/Moderate")
            for payload in (b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", os.urandom(64)):
                for metadata, who in (((), "no token"), (AUTH, "token")):
                    try:
                        moderate(payload, metadata=metadata, timeout=10)
                        self.tally("malformed-protobuf", f"{who}: OK")
                    except grpc.RpcError as err:
                        self.tally("malformed-protobuf", f"{who}: {err.code().name}")

    def busy_streams(self) -> None:
        from moderation.v1 import moderation_pb2 as pb
        from moderation.v1 import moderation_pb2_grpc as pb_grpc

        def items() -> Iterator[pb.ModerateStreamRequest]:
            deadline = time.monotonic() + 20
            while not self.stop.is_set() and time.monotonic() < deadline:
                yield pb.ModerateStreamRequest(request=pb.ModerateRequest(image=self.valid_image))

        with self.channel() as channel:
            for response in pb_grpc.ModerationServiceStub(channel).ModerateStream(items(), metadata=STREAMS_AUTH, timeout=60):
                self.tally("busy-streams", "answered" if response.HasField("response") else f"error {response.error.code}")

    # -- the well-behaved side -------------------------------------------------------------

    def valid_client(self) -> None:
        import grpc

        from moderation.v1 import moderation_pb2 as pb
        from moderation.v1 import moderation_pb2_grpc as pb_grpc

        with self.channel() as channel:
            stub = pb_grpc.ModerationServiceStub(channel)
            while not self.stop.is_set():
                try:
                    stub.Moderate(pb.ModerateRequest(image=self.valid_image), metadata=CLIENT_AUTH, timeout=20)
                    outcome = "OK"
                    self.valid_ok_times.append(time.monotonic() - self.started)
                except grpc.RpcError as err:
                    outcome = err.code().name
                    self.valid_failures[outcome] += 1
                self.valid_outcomes.append((time.monotonic() - self.started, outcome))
                self.stop.wait(0.2)

    def prober(self, interval_s: float) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.health_target) as health_channel, self.channel() as main_channel:
            while not self.stop.is_set():
                for channel, counts in ((health_channel, self.health), (main_channel, self.main_port_health)):
                    try:
                        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
                        counts[health_pb2.HealthCheckResponse.ServingStatus.Name(status)] += 1
                    except grpc.RpcError as err:
                        counts[err.code().name] += 1
                self.stop.wait(interval_s)

    def run(self, probe_interval_s: float = 1.0, only: Sequence[str] = ()) -> None:
        attackers = {
            "unread-streams": (self.unread_stream, 0.5, 2),
            "large-messages": (self.large_messages, 0.5, 2),
            "connections": (self.connections, 8.0, 1),
            "idle-streams": (self.idle_streams, 1.0, 1),
            "bad-tokens": (self.bad_tokens, 0.05, 1),
            "long-ids": (self.long_ids, 0.2, 1),
            "cancels": (self.cancels, 0.2, 1),
            "gif-canvas": (self.gif_canvas, 1.0, 1),
            "idle-sockets": (self.idle_sockets, 0.5, 1),
            "malformed-protobuf": (self.malformed_protobuf, 0.2, 1),
            "busy-streams": (self.busy_streams, 0.0, 5),
        }
        unknown = set(only) - attackers.keys()
        if unknown:
            raise ValueError(f"unknown attacks {sorted(unknown)}; known: {sorted(attackers)}")
        if only:
            attackers = {name: attacker for name, attacker in attackers.items() if name in only}
        threads = [threading.Thread(target=self.valid_client, daemon=True), threading.Thread(target=self.prober, args=(probe_interval_s,), daemon=True)]
        for name, (body, pause_s, copies) in attackers.items():
            threads += [threading.Thread(target=self.loop(name, body, pause_s), daemon=True, name=name) for _ in range(copies)]
        self.started = time.monotonic()  # windows count from here, not from the warm-up
        for thread in threads:
            thread.start()
        self.stop.wait(self.seconds)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=60)

    def valid_gaps(self, window_s: float = WINDOW_S) -> list[float]:
        """Start times of `window_s` windows (after the first) in which no valid request was answered OK."""
        gaps = []
        start = window_s
        while start + window_s <= self.seconds:
            if not any(start <= t < start + window_s for t in self.valid_ok_times):
                gaps.append(start)
            start += window_s
        return gaps

    def valid_windows(self, window_s: float = WINDOW_S) -> list[dict[str, float | int]]:
        """The well-behaved client's answers per `window_s` window of the run: OK and each refusal code, by when they came."""
        windows: list[Counter] = [Counter() for _ in range(max(1, int(-(-self.seconds // window_s))))]
        for at, outcome in self.valid_outcomes:
            windows[min(int(at // window_s), len(windows) - 1)][outcome] += 1  # a call answered after the stop counts in the last
        return [{"start_s": index * window_s, "OK": counts.pop("OK", 0), **dict(counts)} for index, counts in enumerate(windows)]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_serving(target: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                if health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError("server not SERVING")


def abuse(
    seconds: float,
    workdir: Path,
    bounds: Bounds = Bounds(),
    model: str | None = None,
    weights: str = "random",
    only: Sequence[str] = (),
    probe_interval_s: float = 1.0,
) -> dict:
    """Run the mixed abuse against a fresh server; return the figures (see the module docstring)."""
    from tests import images  # noqa: PLC0415 - the test images (scikit-image samples)

    model = model or f"local-dir:{ROOT / 'tests' / 'fixtures' / 'tiny-clip'}"
    workdir.mkdir(parents=True, exist_ok=True)
    tokens = workdir / "tokens"
    tokens.write_text(f"abuse:{TOKEN}\nstreams:{STREAMS_TOKEN}\nclient:{CLIENT_TOKEN}\n")
    port, health_port, metrics_port = free_port(), free_port(), free_port()
    log_path = workdir / "server.log"
    env = {
        **os.environ,
        **bounds.env(),
        "MODERATION_AUTH_TOKENS_FILE": str(tokens),
        "MODERATION_AUDIT_METADATA_KEYS": '["tenant", "note"]',
        "MODERATION_HEALTH_PORT": str(health_port),
        "MODERATION_AUTH_FAILURE_LOGS_PER_MINUTE": "10",
    }
    command = [sys.executable, "-m", "moderation", "serve", "--host", "127.0.0.1", "--port", str(port), "--metrics-port",
               str(metrics_port), "--policies", str(ROOT / "policies"), "--model", model, "--weights", weights]  # fmt: skip
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        wait_serving(f"127.0.0.1:{port}", process)
        run = AbuseRun(f"127.0.0.1:{port}", f"127.0.0.1:{health_port}", bounds, seconds, images.astronaut_jpeg())
        # Warm up (first forward passes, allocator) before the baseline.
        for _ in range(3):
            _valid_once(run)
        with RssSampler(process.pid, interval_s=0.2) as sampler:
            run.run(probe_interval_s=probe_interval_s, only=only)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        terminated = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            exit_code = process.wait(timeout=bounds.grace_period_s + 10)
        except subprocess.TimeoutExpired:
            exit_code = None
        exit_s = time.monotonic() - terminated
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log_lines = log_path.read_text(errors="replace").splitlines()
    non_json = [line for line in log_lines if not _is_json(line)]
    levels = Counter(json.loads(line).get("level") for line in log_lines if _is_json(line))
    auth_failures = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("moderation_auth_failures_total{"))
    return {
        "seconds": seconds,
        "settings": {**asdict(bounds), "max_message_bytes": bounds.max_message_bytes},
        "rss_mb": {
            "baseline": round(sampler.baseline, 1),
            "peak": round(sampler.peak, 1),
            "growth": round(sampler.growth, 1),
            "bound_growth": round(bounds.memory_bound_mb(), 1),
        },
        "rss_samples_every_10s": sampler.samples[:: max(1, int(10 / sampler.interval_s))],
        "valid_requests": {
            "ok": len(run.valid_ok_times),
            "failures": dict(run.valid_failures),
            "windows_of_10s_without_ok": run.valid_gaps(),
            "windows_of_10s": run.valid_windows(),
        },
        "health_port": dict(run.health),
        "main_port_health": dict(run.main_port_health),
        "attacks": {name: dict(tally.counts) for name, tally in sorted(run.tallies.items())},
        "auth_failures_counted": auth_failures,
        "log": {"lines": len(log_lines), "non_json": non_json[:5], "levels": dict(levels)},
        "sigterm": {"exit_code": exit_code, "exit_s": round(exit_s, 2), "grace_period_s": bounds.grace_period_s},
    }


def _valid_once(run: AbuseRun) -> None:
    from moderation.v1 import moderation_pb2 as pb
    from moderation.v1 import moderation_pb2_grpc as pb_grpc

    with run.channel() as channel:
        pb_grpc.ModerationServiceStub(channel).Moderate(pb.ModerateRequest(image=run.valid_image), metadata=CLIENT_AUTH, timeout=60)


def _is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def passed(figures: dict) -> list[str]:
    """The run's failures against the pass criteria (empty: passed)."""
    problems = []
    if set(figures["health_port"]) != {"SERVING"}:
        problems.append(f"health port answered {figures['health_port']}")
    if figures["valid_requests"]["windows_of_10s_without_ok"]:
        problems.append(f"no valid request answered OK in windows starting at {figures['valid_requests']['windows_of_10s_without_ok']} s")
    if figures["rss_mb"]["growth"] >= figures["rss_mb"]["bound_growth"]:
        problems.append(f"RSS grew {figures['rss_mb']['growth']} MB, over the bound {figures['rss_mb']['bound_growth']} MB")
    if figures["log"]["non_json"]:
        problems.append(f"non-JSON log lines: {figures['log']['non_json']}")
    sigterm = figures["sigterm"]
    if sigterm["exit_code"] != 0 or sigterm["exit_s"] > sigterm["grace_period_s"] + 2:
        problems.append(f"SIGTERM: {sigterm}")
    if figures["attacks"].get("bad-tokens", {}).get("OK (must not happen)"):
        problems.append("a bad token was accepted")
    errors = {level: n for level, n in figures["log"]["levels"].items() if level in ("error", "critical")}
    if errors:
        problems.append(f"log lines at {errors}")
    # Refusals before a message is read (the connections attacker fills max_connections:
    # UNAVAILABLE; the RPC cap: RESOURCE_EXHAUSTED) are the bounds at work, not answers.
    transport = {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}
    malformed = figures["attacks"].get("malformed-protobuf")
    expected = {f"no token: {c}" for c in {"UNAUTHENTICATED", *transport}} | {f"token: {c}" for c in {"INVALID_ARGUMENT", *transport}}
    if malformed is not None and (set(malformed) - expected or not malformed.get("token: INVALID_ARGUMENT")):
        problems.append(f"malformed messages answered {malformed}")
    gif = figures["attacks"].get("gif-canvas")
    # Refused by the per-frame canvas budget; on a loaded machine the deadline may come first,
    # and decoding then stops between frames (never an answer, never unbounded work).
    if gif is not None and (set(gif) - {"INVALID_ARGUMENT", "DEADLINE_EXCEEDED", *transport} or not gif.get("INVALID_ARGUMENT")):
        problems.append(f"the canvas-growing GIF answered {gif}")
    sockets = figures["attacks"].get("idle-sockets", {})
    if sockets.get("open at handshake timeout + 5 s"):
        problems.append(f"idle sockets outlived handshake_timeout_s: {sockets}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "abuse.json")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/moderation-abuse"))
    parser.add_argument("--model")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--probe-interval-s", type=float, default=1.0, help="seconds between health probes")
    parser.add_argument("--only", nargs="*", default=(), metavar="ATTACK", help="run only these attacks (to find which one a problem follows)")
    args = parser.parse_args()
    figures = abuse(args.seconds, args.workdir, model=args.model, weights=args.weights, only=args.only, probe_interval_s=args.probe_interval_s)
    figures["problems"] = passed(figures)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "rss_samples_every_10s"}, indent=2))
    sys.exit(1 if figures["problems"] else 0)


if __name__ == "__main__":
    main()
