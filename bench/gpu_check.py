"""The GPU acceptance check of issue 11, as one command with one JSON summary.

On a machine with a CUDA GPU (run through scripts/gpu-check.sh, which checks the
Python packages first):
  1. `moderation serve --device cuda` with random weights (ViT-B-32 fp16) and the
     in-process SmolVLM2-256M explainer (random weights, bf16): plain Moderate calls,
     then forced escalations, each of which must come back COMPLETED;
  2. `python -m bench.clip --device cuda`: the served rate at concurrency up to 256 from
     several client processes, beside the raw fp16 forward at the server's batch and
     the host's decode + preprocess rate on all cores, measured in the same run;
  3. `python -m bench.escalation --device cuda`: the explainer's latency beside plain
     `generate`, bf16, same GPU;
then prints one JSON summary: every check with its value, target and pass/fail, and
exits 0 only when all judged checks pass.

`--device cpu` is the dry run: the same steps on the CPU with small models
(bench/models/host-bound-224, tiny-smolvlm) and short durations; the GPU's throughput
targets are reported but not judged (`"pass": null`). CI runs it
(tests/integration/test_gpu_check.py), so the script is not untested code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
POLICIES = REPO_ROOT / "policies"

# What each device runs: the production architectures on CUDA, small ones for the CPU dry run.
MODELS = {
    "cuda": {"clip": "ViT-B-32", "explainer": "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"},
    "cpu": {"clip": f"local-dir:{REPO_ROOT / 'bench' / 'models' / 'host-bound-224'}", "explainer": "tiny-smolvlm"},
}
LEVEL_KEYS = (
    "concurrency", "throughput_per_s", "p50_ms", "p99_ms", "mean_batch", "client_cpu_cores",
    "server_cpu_ms_per_request", "server_loop_cpu_ms_per_request",
)  # fmt: skip
TARGET_VS_HOST_DECODE = 0.8
TARGET_IMAGES_PER_S = 800.0


def _check(value: Any, target: str, passed: bool | None) -> dict[str, Any]:
    return {"value": value, "target": target, "pass": passed}


def _run(command: list[str], log_path: Path, timeout_s: float) -> int:
    with log_path.open("w") as log_file:
        process = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, timeout=timeout_s, check=False)
    return process.returncode


def serve_and_escalate(device: str, out: Path, escalations: int) -> dict[str, Any]:
    """Start the server with the in-process explainer, moderate a few images, force escalations."""
    import grpc

    from bench.clip import ServerProcess, realistic_jpegs
    from moderation.v1 import moderation_pb2 as pb
    from moderation.v1 import moderation_pb2_grpc as pb_grpc

    kind = device.partition(":")[0]
    log_path = out / f"gpu-check-serve-{kind}.log"
    server = ServerProcess(
        MODELS[kind]["clip"],
        device,
        POLICIES,
        extra_args=("--explainer", "in-process", "--explainer-model", MODELS[kind]["explainer"], "--explainer-weights", "random"),
        extra_env={"MODERATION_LOG_LEVEL": "INFO", "MODERATION_EXPLAINER_TIMEOUT_S": "120"},
        log_path=log_path,
    )
    jpegs = realistic_jpegs()
    plain, forced, failures = [], [], []
    try:
        server.wait_serving(timeout_s=900)
        with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]) as channel:
            stub = pb_grpc.ModerationServiceStub(channel)
            for i, jpeg in enumerate(jpegs):
                try:
                    response = stub.Moderate(pb.ModerateRequest(request_id=f"plain-{i}", image=jpeg), timeout=60)
                    plain.append(response.timings.total_ms)
                except grpc.RpcError as err:
                    failures.append(f"Moderate: {err.code().name}: {err.details()}")
            for i in range(escalations):
                request = pb.ModerateRequest(request_id=f"forced-{i}", image=jpegs[i % len(jpegs)], force_escalation=True)
                try:
                    response = stub.Moderate(request, timeout=180)
                except grpc.RpcError as err:
                    failures.append(f"forced escalation: {err.code().name}: {err.details()}")
                    continue
                escalation = response.escalation
                forced.append({
                    "status": pb.EscalationStatus.Name(escalation.status),
                    "latency_ms": round(escalation.latency_ms, 1),
                    "generated_tokens": escalation.generated_tokens,
                    "reason": escalation.reason,
                })  # fmt: skip
    finally:
        exit_code = server.stop()
    stderr = log_path.read_text(errors="replace")
    completed = [f for f in forced if f["status"] == "ESCALATION_STATUS_COMPLETED"]
    serving_line = next((line for line in stderr.splitlines() if "serving policies" in line), "")
    explainer_line = next((line for line in stderr.splitlines() if re.search(r"explainer .* loaded on", line)), "")
    return {
        "plain_requests": len(plain),
        "plain_total_ms_median": round(statistics.median(plain), 1) if plain else None,
        "forced": forced,
        "forced_completed": len(completed),
        "escalation_latency_ms_median": round(statistics.median(f["latency_ms"] for f in completed), 1) if completed else None,
        "failures": failures,
        "server_exit_code": exit_code,
        "server_says": serving_line[-300:],
        "explainer_says": explainer_line[-200:],
        "log": str(log_path),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run with small models)")
    parser.add_argument("--quick", action="store_true", help="short durations (a smoke test of the script itself)")
    parser.add_argument(
        "--out", type=Path, default=None, help="where results and logs go (default: bench/results on cuda, a temporary folder on cpu)"
    )
    parser.add_argument("--escalations", type=int, default=5, help="forced escalations sent to the server")
    parser.add_argument("--clip-model", default=None, help="override the CLIP architecture (random weights)")
    args = parser.parse_args(argv)

    import torch

    device, kind = args.device, args.device.partition(":")[0]
    if kind not in MODELS:
        parser.error("--device must be cuda or cpu")
    if args.clip_model:
        MODELS[kind]["clip"] = args.clip_model
    if args.out is None:
        # A dry run must not overwrite the committed CPU results in bench/results.
        args.out = REPO_ROOT / "bench" / "results" if kind == "cuda" else Path(tempfile.mkdtemp(prefix="gpu-check-dry-"))
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "device": device,
        "out": str(args.out),
        "dry_run": kind == "cpu",
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "cuda_available": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(torch.device(device)) if kind == "cuda" and torch.cuda.is_available() else None,
            "cpus": os.cpu_count(),
        },
        "models": MODELS[kind],
    }
    checks: dict[str, dict[str, Any]] = {}
    if kind == "cuda" and not torch.cuda.is_available():
        checks["cuda_available"] = _check(False, "torch sees a CUDA device", False)
        return _finish(summary, checks, started)

    # 1. The server on the device: Moderate and forced escalations.
    served = serve_and_escalate(device, args.out, 2 if args.quick else args.escalations)
    summary["serve"] = served
    checks["moderate_ok"] = _check(
        served["plain_requests"], "every plain Moderate answered OK", not served["failures"] and served["plain_requests"] > 0
    )
    expected = 2 if args.quick else args.escalations
    checks["forced_escalation_completed"] = _check(
        f"{served['forced_completed']}/{expected}", "every forced escalation COMPLETED", served["forced_completed"] == expected
    )
    # clip_backend auto: eager torch fp16 on CUDA; ONNX Runtime int8 on the CPU.
    dtype = {"cuda": "float16", "cpu": "qint8"}[kind]
    checks["clip_runs_on_device"] = _check(
        served["server_says"], f"the server loads CLIP on {kind} in {dtype}", f"{kind}, {dtype};" in served["server_says"]
    )
    checks["server_exits_cleanly"] = _check(served["server_exit_code"], "0 after SIGTERM", served["server_exit_code"] == 0)

    # 2. python -m bench.clip on the device, with both ceilings.
    bench_args = [sys.executable, "-m", "bench.clip", "--device", device, "--model", MODELS[kind]["clip"], "--out", str(args.out)]
    if args.quick:
        bench_args += ["--concurrency", "1,4", "--seconds", "2", "--host-seconds", "2", "--client-processes", "2"]
    bench_log = args.out / f"gpu-check-bench-{kind}.log"
    code = _run(bench_args, bench_log, timeout_s=3600)
    bench_file = args.out / ("clip.json" if kind == "cpu" else f"clip-{kind}.json")
    if code == 0 and bench_file.is_file():
        bench = json.loads(bench_file.read_text())
        errors = {k: v for level in bench["load"] for k, v in level["errors"].items()}
        ratio, peak = bench["throughput_vs_host_decode"], bench["peak_throughput_per_s"]
        judged = kind == "cuda"
        summary["bench"] = {
            "file": str(bench_file),
            "levels": [
                {k: level.get(k) for k in LEVEL_KEYS} for level in bench["load"]
            ],
            "raw_forward_images_per_s": bench["model"]["raw_forward_images_per_s"],
            "raw_forward_batch": bench["model"]["raw_forward_batch"],
            "device_forward_images_per_s": bench["model"].get("device_forward_images_per_s"),
            "host_decode_images_per_s": bench["model"]["host_decode_images_per_s"],
            "host_decode_workers": bench["model"]["host_decode_workers"],
            "host_decode_process_pool_images_per_s": bench["model"].get("host_decode_process_pool_images_per_s"),
            "bound_by": bench["bound_by"],
            "served_cpu_efficiency": bench.get("served_cpu_efficiency"),
            "event_loop_ceiling_per_s": bench.get("event_loop_ceiling_per_s"),
        }  # fmt: skip
        checks["bench_without_errors"] = _check(errors, "no failed call at any level", not errors and bench["server_exit_code"] == 0)
        checks["served_vs_host_decode"] = _check(ratio, f">= {TARGET_VS_HOST_DECODE}", ratio >= TARGET_VS_HOST_DECODE if judged else None)
        checks["served_images_per_s"] = _check(peak, f"> {TARGET_IMAGES_PER_S:.0f} on one H200-class GPU", peak > TARGET_IMAGES_PER_S if judged else None)
    else:
        checks["bench_without_errors"] = _check(f"python -m bench.clip exited {code}", "runs to the end", False)
        summary["bench"] = {"log": str(bench_log)}

    # 3. The explainer beside plain generate, same device.
    escalation_file = args.out / ("escalation-dry-cpu.json" if kind == "cpu" else f"escalation-{kind}.json")
    escalation_args = [
        sys.executable, "-m", "bench.escalation", "--device", device, "--model", MODELS[kind]["explainer"],
        "--runs", "1" if args.quick else "3", "--output", str(escalation_file),
    ]  # fmt: skip
    if kind == "cpu":
        escalation_args.append("--no-quantize")  # the dry run checks the float path the GPU runs
    escalation_log = args.out / f"gpu-check-escalation-{kind}.log"
    code = _run(escalation_args, escalation_log, timeout_s=3600)
    if code == 0 and escalation_file.is_file():
        result = json.loads(escalation_file.read_text())
        summary["escalation_bench"] = {
            "file": str(escalation_file),
            "dtype": result["dtype"],
            "escalation_ms": result["escalation_ms"],
            "generate_ms": result["generate_ms"],
            "escalation_vs_generate_ratio": result["escalation_vs_generate_ratio"],
            "new_tokens": result["new_tokens"],
            "forced_tokens": result["forced_tokens"],
        }
        checks["escalation_beside_generate"] = _check(
            result["escalation_vs_generate_ratio"], "measured beside plain generate, same device (reported, not judged)", True
        )
    else:
        checks["escalation_beside_generate"] = _check(f"bench.escalation exited {code}", "runs to the end", False)
        summary["escalation_bench"] = {"log": str(escalation_log)}
    return _finish(summary, checks, started)


def _finish(summary: dict[str, Any], checks: dict[str, dict[str, Any]], started: float) -> int:
    judged = [c["pass"] for c in checks.values() if c["pass"] is not None]
    summary["checks"] = checks
    summary["pass"] = bool(judged) and all(judged)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary, indent=2))
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
