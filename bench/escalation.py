"""Escalation latency: the explainer's path against a plain `model.generate` on the same prompt.

One run, side by side, interleaved, on SmolVLM2-256M's architecture with random
weights (same FLOPs and memory traffic as the real model; the text means nothing), on
the CPU (default) or a GPU (--device cuda: bf16, both paths on the same GPU), with one
real photo (scikit-image's astronaut) and the default policy's first two categories as
the borderline ones.

What is compared, for the same prompt tokens and the same number of output tokens:
  generate     `model.generate` on the full prompt (prefix + image + question), in the
               explainer's float dtype on its device (float32 on CPU, bf16 on CUDA),
               greedy, min_new_tokens = max_new_tokens = N: the naive way to call the model.
  escalation   `Explainer.explain`: the production path. The prefix KV cache is warm (it
               is prefilled once per policy version, in warmup), int8 dynamic quantization
               (CPU, unless --no-quantize), grammar-constrained greedy decoding with
               jump-forward. N is the number of tokens its verdict took; the grammar
               dictates some of them (`forced_tokens`), which are fed to the model in bulk.
Two more rows split the gain:
  escalation_unconstrained   the explainer's path without the grammar, exactly N tokens
                             (all chosen by the model: no jump-forward).
  prefix_reuse_float32       the explainer's path, float32 (no quantization), same grammar
                             (CPU with int8 only).
Each is repeated `runs` times, interleaved, and the median is reported: the machine is
shared and noisy, so compare ratios, not absolute milliseconds. The process's CPU time is
recorded too; its ratio moves much less than wall time when other work shares the CPU.

Torch runs single-threaded here by default: on the shared 2-core build machine, two
OpenMP threads competing with other processes turned runs into noise (the same call
took 5 s in one run and 39 s in the next), while one thread measures the work itself.
Pass --threads 2 on a quiet machine to measure both cores.

On CUDA there is no int8 path: escalation runs in bf16 beside generate in bf16, and
times are taken after the device has finished (the grammar reads every step's logits
on the host; generate's token clock synchronises).

Run: python -m bench.escalation [--runs 3] [--threads 1] [--no-quantize] [--output bench/results/escalation.json]
     python -m bench.escalation --device cuda --output bench/results/escalation-cuda.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers.generation.streamers import BaseStreamer

from moderation.escalation import (
    DEFAULT_EXPLAINER_MODEL,
    Explainer,
    ExplainerSpec,
    load_explainer,
)
from moderation.policy.loader import load_policy_file

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POLICY = REPO_ROOT / "policies" / "default.yaml"
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "escalation.json"


class _TokenClock(BaseStreamer):
    """Times `generate`'s output: its first `put` is the prompt, each later one a new token."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.token_times: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if value.device.type == "cuda":
            torch.cuda.synchronize(value.device)  # the token exists when the device has produced it
        if self._prompt_seen:
            self.token_times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


def _plain_generate(model: torch.nn.Module, inputs: Any, new_tokens: int) -> dict[str, float]:
    # The prompt is built on the host in float32; it moves to the model's device and float dtype.
    device, dtype = model.device, model.dtype
    input_ids = inputs.input_ids.to(device)
    cpu_started = time.process_time()
    clock = _TokenClock()
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            pixel_values=inputs.pixel_values.to(device, dtype),
            pixel_attention_mask=inputs.pixel_attention_mask.to(device),
            do_sample=False,
            min_new_tokens=new_tokens,
            max_new_tokens=new_tokens,
            streamer=clock,
        )
    finished = time.perf_counter()
    produced = output.shape[1] - input_ids.shape[1]
    if produced != new_tokens or len(clock.token_times) != new_tokens:
        raise RuntimeError(f"generate produced {produced} tokens, not the {new_tokens} asked for")
    first = clock.token_times[0]
    return {
        "total_ms": (finished - clock.started) * 1000.0,
        "ttft_ms": (first - clock.started) * 1000.0,
        "ms_per_token": (finished - first) * 1000.0 / max(1, new_tokens - 1),
        "cpu_ms": (time.process_time() - cpu_started) * 1000.0,
    }


def _explainer_row(call: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    cpu_started = time.process_time()
    result = call()
    cpu_ms = (time.process_time() - cpu_started) * 1000.0
    return result, {
        "total_ms": result.total_ms,
        "ttft_ms": result.ttft_ms,
        "ms_per_token": result.decode_ms_per_token,
        "cpu_ms": cpu_ms,
    }


def _median_row(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(row[key] for row in rows), 1) for key in rows[0]}


def _machine(device: str) -> dict[str, Any]:
    cpu_model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu_model = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    return {
        "device": device,
        "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: importlib.metadata.version(name) for name in ("torch", "transformers", "xgrammar")},
    }


def run_escalation_bench(
    runs: int = 3,
    quantize: bool = True,
    policy_path: Path = DEFAULT_POLICY,
    output: Path | None = DEFAULT_OUTPUT,
    seed: int = 0,
    threads: int | None = 1,
    progress: Callable[[str], None] = print,
    device: str = "cpu",
    model: str = DEFAULT_EXPLAINER_MODEL,
    precision: str = "auto",
) -> dict[str, Any]:
    """Measure and return the comparison described in the module docstring; write it to `output`.

    `threads` sets torch's intra-op threads for the bench (None: torch's own choice).
    Off the CPU there is no int8: `quantize` is ignored there.
    """
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    quantize = quantize and device == "cpu" and precision in ("auto", "fp32")
    try:
        return _run(runs, quantize, policy_path, output, seed, progress, device, model, precision)
    finally:
        torch.set_num_threads(threads_before)


def _run(
    runs: int,
    quantize: bool,
    policy_path: Path,
    output: Path | None,
    seed: int,
    progress: Callable[[str], None],
    device: str,
    model: str,
    precision: str,
) -> dict[str, Any]:
    from skimage import data as skimage_data

    started = time.perf_counter()
    load_at_start = os.getloadavg()
    policy, _ = load_policy_file(policy_path)
    category_ids = [c.id for c in policy.categories[:2]]
    image = Image.fromarray(skimage_data.astronaut())

    float_spec = ExplainerSpec(model=model, weights="random", seed=seed, device=device, precision=precision)
    float_name = str(float_spec.torch_dtype).removeprefix("torch.")
    progress(f"building {model} with random weights on {device} ({float_name}{' and int8' if quantize else ''})")
    float_model = load_explainer(float_spec)
    prefix_reuse_float = Explainer(float_model)
    explainer = (
        Explainer.load(ExplainerSpec(model=model, weights="random", seed=seed, quantize=True)) if quantize else prefix_reuse_float
    )
    inputs = explainer.prompt_inputs(image, policy, category_ids)

    progress("warming up (this also prefills the policy prefix, as the server does once per policy version)")
    explainer.warmup(policy, category_ids)
    prefix_reuse_float.warmup(policy, category_ids)
    _plain_generate(float_model.model, inputs, new_tokens=2)
    new_tokens = explainer.explain(image, policy, category_ids).generated_tokens

    rows: dict[str, list[dict[str, float]]] = {"generate": [], "escalation": [], "escalation_unconstrained": []}
    if quantize:  # the float path beside the int8 one (the default's row on CPU)
        rows["prefix_reuse_float32"] = []
    forced_tokens = []
    for run in range(runs):
        result, row = _explainer_row(lambda: explainer.explain(image, policy, category_ids))
        if result.generated_tokens != new_tokens:  # greedy decoding is deterministic
            raise RuntimeError(f"explain produced {result.generated_tokens} tokens, then {new_tokens}")
        forced_tokens.append(result.forced_tokens)
        rows["escalation"].append(row)
        rows["generate"].append(_plain_generate(float_model.model, inputs, new_tokens))
        _, row = _explainer_row(lambda: explainer.generate_unconstrained(image, policy, category_ids, new_tokens))
        rows["escalation_unconstrained"].append(row)
        if quantize:
            _, row = _explainer_row(lambda: prefix_reuse_float.explain(image, policy, category_ids))
            rows["prefix_reuse_float32"].append(row)
        progress(
            f"run {run + 1}/{runs}: " + ", ".join(f"{name} {row[-1]['total_ms']:.0f} ms" for name, row in rows.items())
        )

    medians = {name: _median_row(measured) for name, measured in rows.items()}
    generate_ms = medians["generate"]["total_ms"]
    results = {
        "model": f"{model} (random weights)",
        "device": device,
        "dtype": "int8 (dynamic, Linear layers)" if quantize else float_name,
        "generate_dtype": float_name,
        "quantized": quantize,
        "policy": f"{policy.id}@{policy.version}",
        "categories": category_ids,
        "image": "skimage.data.astronaut (512x512 RGB), one frame, no tiling",
        "prompt_tokens": inputs.input_ids.shape[1],
        "prefix_tokens": inputs.prefix_tokens,
        "new_tokens": new_tokens,
        "forced_tokens": statistics.median(forced_tokens),
        "runs": runs,
        "escalation_vs_generate_ratio": round(medians["escalation"]["total_ms"] / generate_ms, 3),
        # The same ratio within each run pair, whose median resists load that drifts over the bench.
        "escalation_vs_generate_ratio_per_run": [
            round(e["total_ms"] / g["total_ms"], 3) for e, g in zip(rows["escalation"], rows["generate"], strict=True)
        ],
        "escalation_ms": medians["escalation"]["total_ms"],
        "generate_ms": generate_ms,
        "ttft_ms": {name: row["ttft_ms"] for name, row in medians.items()},
        "ms_per_token": {name: row["ms_per_token"] for name, row in medians.items()},
        "total_ms": {name: row["total_ms"] for name, row in medians.items()},
        "ratios_vs_generate": {name: round(row["total_ms"] / generate_ms, 3) for name, row in medians.items()},
        # CPU time of this process: on a machine shared with other work it moves far less
        # than wall time, so its ratio is the steadier estimate of the same speed-up.
        "cpu_ms": {name: row["cpu_ms"] for name, row in medians.items()},
        "cpu_ratios_vs_generate": {
            name: round(row["cpu_ms"] / medians["generate"]["cpu_ms"], 3) for name, row in medians.items()
        },
        "verdict_sample": asdict(result.verdict),
        "all_runs": rows,
        "machine": _machine(device),
        "load_average": {"start": [round(x, 2) for x in load_at_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "bench_seconds": round(time.perf_counter() - started, 1),
        "compared": (
            f"same prompt token ids and pixels, same number of output tokens (new_tokens); generate: {float_name} "
            f"model.generate on {device} with min_new_tokens=max_new_tokens=new_tokens; escalation: Explainer.explain with a warm "
            "prefix cache, grammar and jump-forward (forced_tokens of new_tokens dictated by the grammar)"
        ),
    }
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        progress(f"wrote {output}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-quantize", dest="quantize", action="store_false", help="float32 explainer")
    parser.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    parser.add_argument("--output", type=Path, default=None, help="default: bench/results/escalation[-cuda].json")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's own choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16, no int8)")
    parser.add_argument("--model", default=DEFAULT_EXPLAINER_MODEL, help="architecture for random weights (tiny-smolvlm: dry runs)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    args = parser.parse_args()
    results = run_escalation_bench(
        runs=args.runs,
        quantize=args.quantize,
        policy_path=args.policy,
        output=args.output or (DEFAULT_OUTPUT if args.device == "cpu" else DEFAULT_OUTPUT.with_name(f"escalation-{args.device.partition(':')[0]}.json")),
        threads=args.threads or None,
        device=args.device,
        model=args.model,
        precision=args.precision,
    )
    print(f"\n{'path':<28}{'total ms':>10}{'ttft ms':>10}{'ms/token':>10}{'vs generate':>13}{'cpu ratio':>11}")
    for name, total in results["total_ms"].items():
        print(
            f"{name:<28}{total:>10.0f}{results['ttft_ms'][name]:>10.0f}{results['ms_per_token'][name]:>10.1f}"
            f"{results['ratios_vs_generate'][name]:>12.2f}x{results['cpu_ratios_vs_generate'][name]:>10.2f}x"
        )
    print(
        f"new tokens: {results['new_tokens']} ({results['forced_tokens']} forced by the grammar), "
        f"prompt tokens: {results['prompt_tokens']}"
    )


if __name__ == "__main__":
    main()
