"""CLIP image-tower runtimes on the CPU, side by side: speed, accuracy against eager fp32, memory.

Model: open_clip ViT-B-32 with random weights (same FLOPs and memory traffic as
laion2b_s34b_b79k; no download). One process, one set of weights, every candidate:
  torch-fp32            eager PyTorch: the 'torch' backend (reference)
  torch-bf16-autocast   eager PyTorch under CPU bf16 autocast
  torch-int8-dynamic    torch.ao dynamic int8 of nn.Linear (attention's in_proj stays fp32)
  ort-fp32              ONNX Runtime on the exported graph: the 'onnxruntime' backend
  ort-int8              ONNX Runtime, dynamic int8: the 'onnxruntime-int8' backend (QInt8
                        weights per channel, output projection fp32, no thread spinning,
                        no memory arena)
  ort-int8-*            one setting changed: projection int8 too, per-tensor weights, QUInt8
                        weights, ORT's default spinning threads, or its memory arena
  ov-fp32, ov-bf16      OpenVINO on the same ONNX file, inference precision f32 / bf16
                        (bf16 is OpenVINO's own default on this AVX-512 BF16 CPU)
Candidates whose runtime is not installed are skipped and listed.

Speed, per intra-op thread count (default 1 and torch's default): batch 1 and 16 of
real photos; each round times every candidate once (batch 1: `--calls-b1` calls per
sample), the order rotates every round, and the median over rounds is reported with
the median of the per-round ratio to torch-fp32 (robust to load drift on a shared
machine). One thread measures the work itself; with two, eager torch's OpenMP threads
suffer most when another process takes a core. CPU time per image is recorded too.

Accuracy, on scikit-image sample photos against torch-fp32: cosine of embeddings,
and the largest absolute change of any category SCORE of policies/default.yaml
(ClipScorer; text embeddings from the torch model, as every backend does). Scores
are a softmax over logit_scale * cosine, so embedding errors are amplified by the
scale: random weights carry exp(log(1/0.07)) = 14.3, trained CLIP models 100, so
scores are recomputed at 100 as well; that is the deviation that matters in service.

Memory: each backend in a fresh subprocess (`load_encoder`, policy text index, one
batch of 16): RSS after that and peak RSS, first with an empty export cache (cold:
exports in-process) and again with it filled (warm).

Static int8 (issue 19), on an exported folder's own graphs (`moderation export DIR`):
`--static-int8 DIR` times 16 images per call through fp32 batched, dynamic int8 one image
per run (the folder backend's serving mode) and batched, and static int8 (QDQ and QOperator
formats, calibrated as export does) one image per run and batched; accuracy against the
folder's fp32 graph on the guard's probe images plus the photos, at the guard's logit scale
and at 100; and the largest embedding change of an image alone against inside a batch of
16 (bench/results/clip_int8_static.json).

Run: python -m bench.clip_backends [--rounds 7] [--threads 1 2] [--no-memory] [--output bench/results/clip_backends.json]
     python -m bench.clip_backends --static-int8 models/vit-b-32 [--threads 1 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from moderation.signals.clip.backends import onnx_export
from moderation.signals.clip.backends.onnx_runtime import SCORE_TOLERANCE, session_for
from moderation.signals.clip.backends.torch_eager import TorchEncoder
from moderation.signals.clip.loading import ClipModelSpec, build_open_clip
from moderation.signals.clip.scorer import ClipScorer
from moderation.policy import load_policy_file

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "clip_backends.json"
POLICY = REPO_ROOT / "policies" / "default.yaml"
MODEL = "ViT-B-32"
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "camera", "immunohistochemistry", "coins", "hubble_deep_field", "page")
TRAINED_LOGIT_SCALE = 100.0
REFERENCE = "torch-fp32"
# Dynamic int8 variants beside the backend's own ('ort-int8'), each changing one setting:
# (name, weight type, per channel, output projection kept fp32).
ORT_INT8_VARIANTS = (
    ("ort-int8-proj-int8", "QInt8", True, False),
    ("ort-int8-per-tensor", "QInt8", False, True),
    ("ort-int8-u8-weights", "QUInt8", True, True),
)
MEMORY_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")

Run = Callable[[np.ndarray], np.ndarray]


def sample_pixels(preprocess: Callable[[Any], torch.Tensor]) -> tuple[list[str], np.ndarray]:
    import skimage.data
    from PIL import Image

    frames = []
    for name in SAMPLE_PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        frames.append(preprocess(image))
    return list(SAMPLE_PHOTOS), torch.stack(frames).numpy()


def export_files(clip: Any, folder: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """The ONNX files of every ONNX candidate: the backends' own and the int8 variants."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    files: dict[str, Path] = {"ort-fp32": folder / "fp32.onnx", "ort-int8": folder / "int8.onnx"}
    notes: dict[str, Any] = {}
    started = time.monotonic()
    onnx_export.export_fp32(clip, files["ort-fp32"])
    notes["export_seconds"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    onnx_export.quantize_int8(files["ort-fp32"], files["ort-int8"])
    notes["quantize_seconds"] = round(time.monotonic() - started, 1)
    notes["ort-int8"] = {"weight_type": onnx_export.INT8_WEIGHT_TYPE, "per_channel": onnx_export.INT8_PER_CHANNEL, "output_projection": "fp32", "is": "the onnxruntime-int8 backend"}
    import onnx

    fp32_model = onnx.load(str(files["ort-fp32"]))
    projection = onnx_export.output_projection(fp32_model)
    for name, weight_type, per_channel, keep_projection in ORT_INT8_VARIANTS:
        files[name] = folder / f"{name}.onnx"
        quantize_dynamic(
            fp32_model, str(files[name]), weight_type=getattr(QuantType, weight_type), per_channel=per_channel, nodes_to_exclude=projection if keep_projection else []
        )
        notes[name] = {"weight_type": weight_type, "per_channel": per_channel, "output_projection": "fp32" if keep_projection else "int8"}
    del fp32_model
    for name, path in files.items():
        notes.setdefault(name, {}).update(ops=_op_counts(path), file_mb=round(path.stat().st_size / 2**20, 1))
    return files, notes


def build_candidates(clip: Any, files: dict[str, Path], threads: int) -> tuple[dict[str, Run], dict[str, str]]:
    """name -> run(pixels) -> normalised embeddings, at `threads` intra-op threads; skipped candidates and why."""
    torch.set_num_threads(threads)
    visual = clip.model.visual
    runs: dict[str, Run] = {}
    skipped: dict[str, str] = {}

    @torch.inference_mode()
    def torch_fp32(x: np.ndarray) -> np.ndarray:
        return F.normalize(visual(torch.from_numpy(x)), dim=-1).numpy()

    @torch.inference_mode()
    def torch_bf16(x: np.ndarray) -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = visual(torch.from_numpy(x))
        return F.normalize(features.float(), dim=-1).numpy()

    runs["torch-fp32"] = torch_fp32
    runs["torch-bf16-autocast"] = torch_bf16
    try:
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(visual), {torch.nn.Linear}, dtype=torch.qint8)

        @torch.inference_mode()
        def torch_int8(x: np.ndarray) -> np.ndarray:
            return F.normalize(quantized(torch.from_numpy(x)), dim=-1).numpy()

        runs["torch-int8-dynamic"] = torch_int8
    except Exception as err:  # noqa: BLE001 - report and go on
        skipped["torch-int8-dynamic"] = f"{type(err).__name__}: {err}"

    for name, path in files.items():
        runs[name] = _ort_run(session_for(path, threads))
    runs["ort-int8-spin"] = _ort_run(session_for(files["ort-int8"], threads, spin=True))
    runs["ort-int8-arena"] = _ort_run(session_for(files["ort-int8"], threads, arena=True))

    try:
        import openvino as ov

        core = ov.Core()
        for name, precision in (("ov-fp32", "f32"), ("ov-bf16", "bf16")):
            config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
            runs[name] = _ov_run(core.compile_model(str(files["ort-fp32"]), "CPU", config))
    except ImportError as err:
        skipped["ov-fp32"] = skipped["ov-bf16"] = f"openvino not installed ({err})"
    skipped["ov-int8"] = "needs NNCF post-training quantisation (not installed: not added to the shared environment)"
    return runs, skipped


def _ort_run(session: Any) -> Run:
    return lambda x: session.run([onnx_export.OUTPUT_NAME], {onnx_export.INPUT_NAME: x})[0]


def _ov_run(compiled: Any) -> Run:
    request = compiled.create_infer_request()
    return lambda x: np.array(request.infer({0: x})[0], copy=True)


def _op_counts(path: Path) -> dict[str, int]:
    import onnx

    counts = Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)
    keep = ("MatMul", "Gemm", "Conv", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "Gelu", "Softmax", "LayerNormalization")
    return {op: counts[op] for op in keep if counts[op]}


class _Scaled:
    """An encoder seen with another logit scale (scores as a trained model's temperature would give them)."""

    def __init__(self, encoder: Any, logit_scale: float):
        self._encoder = encoder
        self.logit_scale = logit_scale

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)


def accuracy(runs: dict[str, Run], pixels: np.ndarray, clip: Any) -> dict[str, dict[str, float]]:
    encoder = TorchEncoder(ClipModelSpec(model=MODEL, weights="random"), clip)
    policy, _ = load_policy_file(POLICY)
    scorers = {"native": ClipScorer(encoder), "trained": ClipScorer(_Scaled(encoder, TRAINED_LOGIT_SCALE))}
    index = scorers["native"].index_policy(policy)
    reference = torch.from_numpy(runs[REFERENCE](pixels))
    reference_scores = {k: s.score(reference, index) for k, s in scorers.items()}
    result = {}
    for name, run in runs.items():
        embeddings = torch.from_numpy(run(pixels))
        cosine = (embeddings * reference).sum(-1)
        row = {"min_cosine": round(float(cosine.min()), 6), "max_abs_embedding_diff": float((embeddings - reference).abs().max())}
        for key, scorer in scorers.items():
            scores = scorer.score(embeddings, index)
            deviation = max(abs(s[c] - r[c]) for s, r in zip(scores, reference_scores[key], strict=True) for c in s)
            row[f"max_score_diff_at_{scorer.logit_scale:.1f}"] = float(deviation)
        result[name] = row
    # The scores themselves at scale 100: how far from uniform random weights put them.
    spread = [v for per_image in reference_scores["trained"] for v in per_image.values()]
    result["_reference_scores_at_100"] = {"min": min(spread), "max": max(spread)}
    return result


def speed(runs: dict[str, Run], pixels: np.ndarray, batch: int, rounds: int, calls: int, reference: str = REFERENCE) -> dict[str, dict[str, float]]:
    x = np.ascontiguousarray(np.resize(pixels, (batch, *pixels.shape[1:])))
    for run in runs.values():  # warm up: first calls allocate and pick kernels
        run(x)
        run(x)
    names = list(runs)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            cpu_started, started = time.process_time(), time.perf_counter()
            for _ in range(calls):
                runs[name](x)
            wall[name].append((time.perf_counter() - started) / (calls * batch))
            cpu[name].append((time.process_time() - cpu_started) / (calls * batch))
    result = {}
    for name in names:
        ratios = [ref / own for ref, own in zip(wall[reference], wall[name], strict=True)]
        result[name] = {
            "images_per_s": round(1.0 / statistics.median(wall[name]), 1),
            f"ratio_vs_{reference.replace('-', '_')}": round(statistics.median(ratios), 2),
            "cpu_ms_per_image": round(1000 * statistics.median(cpu[name]), 1),
            "spread_images_per_s": [round(1.0 / max(wall[name]), 1), round(1.0 / min(wall[name]), 1)],
        }
    return result


MEMORY_PROBE = """
import json, sys, time, torch
from pathlib import Path
from moderation.signals.clip import ClipModelSpec, ClipScorer, load_encoder
from moderation.policy import load_policy_file
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
torch.set_num_threads({threads})
torch.manual_seed(0)
before = status('VmRSS')
started = time.monotonic()
encoder = load_encoder(ClipModelSpec(model={model!r}, weights='random', backend={backend!r}, cache_dir=Path({cache!r})))
load_s = time.monotonic() - started
scorer = ClipScorer(encoder)
index = scorer.index_policy(load_policy_file({policy!r})[0])
scorer.embed_images(torch.rand(16, 3, encoder.image_size, encoder.image_size))
print(json.dumps({{"load_s": round(load_s, 1), "rss_after_import_mb": round(before), "rss_mb": round(status('VmRSS')), "peak_rss_mb": round(status('VmHWM'))}}))
"""


def memory(cache: Path, threads: int) -> dict[str, dict[str, Any]]:
    result = {}
    for backend in MEMORY_BACKENDS:
        for phase in ("cold", "warm") if backend != "torch" else ("-",):
            code = MEMORY_PROBE.format(threads=threads, model=MODEL, backend=backend, cache=str(cache), policy=str(POLICY))
            done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
            key = backend if phase == "-" else f"{backend} ({phase} cache)"
            if done.returncode != 0:
                result[key] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
            else:
                result[key] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("torch", "open_clip_torch", "onnxruntime", "onnx", "onnxscript", "openvino"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _cpu_flags() -> list[str]:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(("avx512_vnni", "avx512_bf16", "amx", "avx_vnni", "avx512f")))


def summary(report: dict[str, Any]) -> str:
    accuracy_rows = report["accuracy_vs_torch_fp32"]
    lines = [f"{'candidate':22s} {'threads':>7s} {'b1 img/s':>9s} {'x':>5s} {'b16 img/s':>9s} {'x':>5s} {'cosine':>9s} {'dscore@14.3':>11s} {'dscore@100':>10s}"]
    for threads, batches in report["speed"].items():
        for name, b1 in batches["batch_1"].items():
            b16, acc = batches["batch_16"][name], accuracy_rows[name]
            lines.append(
                f"{name:22s} {threads:>7s} {b1['images_per_s']:9.1f} {b1['ratio_vs_torch_fp32']:5.2f} {b16['images_per_s']:9.1f} {b16['ratio_vs_torch_fp32']:5.2f} "
                f"{acc['min_cosine']:9.6f} {acc['max_score_diff_at_14.3']:11.5f} {acc['max_score_diff_at_100.0']:10.5f}"
            )
    for name, row in report["memory"].items():
        lines.append(f"memory {name}: {row}")
    return "\n".join(lines)


# --static-int8: dynamic int8 against static int8 from an exported folder (issue 19).
STATIC_RESULTS = REPO_ROOT / "bench" / "results" / "clip_int8_static.json"
POLICY_SAMPLES = REPO_ROOT / "policies" / "tests" / "samples"
STATIC_REFERENCE = "fp32-batched"


class _ImageRun:
    """A folder encoder whose image tower is another graph (its text tower and preprocessing unchanged)."""

    def __init__(self, encoder: Any, run: Run):
        self._encoder = encoder
        self._run = run

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        return self._run(np.ascontiguousarray(pixels, dtype=np.float32))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)


def _per_image(run: Run) -> Run:
    return lambda x: np.concatenate([run(x[i : i + 1]) for i in range(len(x))])


def calibration_pixels(encoder: Any) -> tuple[np.ndarray, list[str]]:
    """What export would calibrate on: generated images (another seed than the guard's probe set) and the policy samples."""
    from PIL import Image

    from moderation.signals.clip.backends.folder_export import probe_images

    images = probe_images(32, seed=1)
    names = [f"generated:{len(images)}"]
    for path in sorted(POLICY_SAMPLES.glob("*")) if POLICY_SAMPLES.is_dir() else []:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
        names.append(path.name)
    return np.stack([encoder.preprocess(image) for image in images]), names


def static_int8_study(folder_path: Path, threads_list: list[int], rounds: int, output: Path) -> dict[str, Any]:
    """Dynamic int8 one image per run (today's serving mode) against static int8 (QDQ and QOperator
    formats; one image per run and batched) and fp32 batched, on one exported folder's graphs."""
    import skimage.data
    from PIL import Image

    from moderation.signals.clip.backends.folder_export import _scores, probe_images, probe_policies
    from moderation.signals.clip.backends.onnx_folder import OnnxFolderEncoder
    from moderation.signals.clip.model_folder import DEFAULT_INT8_TOLERANCE, IMAGE_FILES, read_folder

    load_before = os.getloadavg()
    folder = read_folder(folder_path)
    if IMAGE_FILES["int8"] not in folder.manifest["files"]:
        raise SystemExit(f"{folder_path} has no dynamic int8 graph ({folder.int8_verdict}); export one where the guard accepts it")
    scratch = Path(tempfile.mkdtemp(prefix="clip-int8-static-"))
    encoder = OnnxFolderEncoder(folder, "fp32", threads=1, text_cache=scratch / "text-cache")
    calibration, calibration_names = calibration_pixels(encoder)
    files = {"fp32": folder.file(IMAGE_FILES["fp32"]), "dynamic": folder.file(IMAGE_FILES["int8"])}
    notes: dict[str, Any] = {"calibration_images": calibration_names}
    for quant_format in onnx_export.STATIC_INT8_FORMATS:
        files[f"static-{quant_format}"] = scratch / f"static-{quant_format}.onnx"
        started = time.monotonic()
        onnx_export.quantize_int8_static(files["fp32"], files[f"static-{quant_format}"], calibration, quant_format)
        notes[f"static-{quant_format}"] = {"quantize_seconds": round(time.monotonic() - started, 1), "ops": _op_counts(files[f"static-{quant_format}"])}
    for name, path in files.items():
        notes.setdefault(name, {})["file_mb"] = round(path.stat().st_size / 2**20, 1)

    def candidates(threads: int) -> dict[str, Run]:
        sessions = {name: _ort_run(session_for(path, threads)) for name, path in files.items()}
        runs = {STATIC_REFERENCE: sessions["fp32"], "dynamic-int8-per-image": _per_image(sessions["dynamic"]), "dynamic-int8-batched": sessions["dynamic"]}
        for quant_format in onnx_export.STATIC_INT8_FORMATS:
            runs[f"static-{quant_format}-per-image"] = _per_image(sessions[f"static-{quant_format}"])
            runs[f"static-{quant_format}-batched"] = sessions[f"static-{quant_format}"]
        return runs

    # Accuracy on the guard's own probe set (generated images, seed 0) plus real photos, against the folder's fp32 graph.
    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in SAMPLE_PHOTOS]
    pixels = np.stack([encoder.preprocess(image) for image in [*probe_images(), *photos]])
    policies = probe_policies(REPO_ROOT / "policies")
    runs = candidates(1)
    reference = runs[STATIC_REFERENCE](pixels)
    reference_scores = {scale: _scores(_ImageRun(encoder, runs[STATIC_REFERENCE]), policies, pixels, scale) for scale in (encoder.logit_scale, TRAINED_LOGIT_SCALE)}
    accuracy_rows: dict[str, Any] = {}
    for name, run in runs.items():
        embeddings = run(pixels)
        row = {"min_cosine_vs_fp32": round(float((embeddings * reference).sum(-1).min()), 6)}
        for scale, expected in reference_scores.items():
            row[f"max_score_diff_at_{scale:.1f}"] = float(np.abs(_scores(_ImageRun(encoder, run), policies, pixels, scale) - expected).max())
        row["passes_guard"] = row[f"max_score_diff_at_{encoder.logit_scale:.1f}"] <= DEFAULT_INT8_TOLERANCE
        accuracy_rows[name] = row
    # Batch independence: an image's embedding alone against inside a batch of 16 different images.
    batch_dependence = {}
    for name in ("dynamic-int8", *(f"static-{f}" for f in onnx_export.STATIC_INT8_FORMATS), "fp32"):
        batched = runs[f"{name}-batched"] if name != "fp32" else runs[STATIC_REFERENCE]
        alone = _per_image(batched)
        worst = max(float(np.abs(batched(pixels[i : i + 16]) - alone(pixels[i : i + 16])).max()) for i in range(0, len(pixels) - 15, 8))
        batch_dependence[name] = worst
    del runs
    sixteen = pixels[:16]
    speed_rows = {}
    for threads in threads_list:
        runs = candidates(threads)
        print(f"threads {threads}: timing {', '.join(runs)}", flush=True)
        speed_rows[str(threads)] = speed(runs, sixteen, 16, rounds, 1, reference=STATIC_REFERENCE)
        del runs
    report = {
        "model": folder.model_id,
        "folder": str(folder_path),
        "machine": {
            "cpus": os.cpu_count(), "cpu_flags": _cpu_flags(), "platform": platform.platform(),
            "load_average_1_5_15_min": {"start": [round(v, 2) for v in load_before], "end": [round(v, 2) for v in os.getloadavg()]},
        },  # fmt: skip
        "versions": _versions(),
        "rounds": rounds,
        "what": "16 images per timed call: '-per-image' runs them one per session run (batch 1), '-batched' in one run; "
        "ratio_vs_fp32_batched is the median of per-round ratios",
        "speed": speed_rows,
        "accuracy_vs_fp32": accuracy_rows,
        "guard_tolerance": DEFAULT_INT8_TOLERANCE,
        "guard_logit_scale": encoder.logit_scale,
        "accuracy_images": f"{len(pixels)}: the export guard's 24 generated probe images and {len(photos)} scikit-image photos",
        "max_abs_embedding_diff_batched_vs_alone": batch_dependence,
        "notes": notes,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1) + "\n")
    for threads, rows in speed_rows.items():
        for name, row in rows.items():
            acc = accuracy_rows[name]
            print(f"{name:28s} threads {threads} {row['images_per_s']:7.1f}/s x{row['ratio_vs_fp32_batched']:5.2f}  cos {acc['min_cosine_vs_fp32']:.6f}  "
                  f"dscore {acc[f'max_score_diff_at_{encoder.logit_scale:.1f}']:.4f} @{encoder.logit_scale:.1f} {acc['max_score_diff_at_100.0']:.4f} @100")
    print("batched vs alone:", batch_dependence)
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls-b1", type=int, default=6, help="batch-1 calls per timed sample")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=sorted({1, torch.get_num_threads()}),
        help="intra-op thread counts to time (default: 1, which measures the work itself on a shared machine, and torch's default)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the subprocess RSS probes")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--static-int8", type=Path, default=None, metavar="FOLDER",
        help="only compare dynamic and static int8 on an exported folder's graphs (results: bench/results/clip_int8_static.json)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.static_int8 is not None:
        return static_int8_study(args.static_int8, args.threads, args.rounds, args.output or STATIC_RESULTS)
    args.output = args.output or DEFAULT_OUTPUT
    default_threads = torch.get_num_threads()

    load_before = os.getloadavg()
    torch.manual_seed(0)
    clip = build_open_clip(ClipModelSpec(model=MODEL, weights="random"))
    photos, pixels = sample_pixels(clip.preprocess)
    speed_rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="clip-backends-") as scratch:
        files, notes = export_files(clip, Path(scratch))
        accuracy_rows: dict[str, Any] = {}
        for threads in args.threads:
            runs, skipped = build_candidates(clip, files, threads)
            print(f"threads {threads}: {', '.join(runs)}; skipped: {skipped or 'none'}", flush=True)
            if not accuracy_rows:
                accuracy_rows = accuracy(runs, pixels, clip)
            speed_rows[str(threads)] = {f"batch_{b}": speed(runs, pixels, b, args.rounds, args.calls_b1 if b == 1 else 1) for b in (1, 16)}
            del runs
        memory_rows = {} if args.no_memory else memory(Path(scratch) / "export-cache", default_threads)
    tolerances = {"onnxruntime": ("ort-fp32", SCORE_TOLERANCE["onnxruntime"]), "onnxruntime-int8": ("ort-int8", SCORE_TOLERANCE["onnxruntime-int8"])}
    report = {
        "model": f"{MODEL} (random weights)",
        "machine": {
            "cpus": os.cpu_count(),
            "threads_timed": args.threads,
            "platform": platform.platform(),
            "cpu_flags": _cpu_flags(),
            # Other work on the machine: above the core count, 2-thread timings mostly measure contention.
            "load_average_1_5_15_min": {"start": [round(v, 2) for v in load_before], "end": [round(v, 2) for v in os.getloadavg()]},
        },
        "versions": _versions(),
        "photos": photos,
        "rounds": args.rounds,
        "speed_by_threads": "speed[threads][batch][candidate]; ratio_vs_torch_fp32 is the median of per-round ratios",
        "speed": speed_rows,
        "accuracy_vs_torch_fp32": accuracy_rows,
        "score_tolerance": {
            backend: {"candidate": candidate, "max_abs_score_diff": tolerance, "at_100": accuracy_rows[candidate]["max_score_diff_at_100.0"],
                      "within": accuracy_rows[candidate]["max_score_diff_at_100.0"] <= tolerance}
            for backend, (candidate, tolerance) in tolerances.items()
        },
        "memory": memory_rows,
        "notes": notes,
        "skipped": skipped,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_suffix(".json.tmp")
    partial.write_text(json.dumps(report, indent=1) + "\n")
    partial.replace(args.output)
    print(summary(report))
    return report


if __name__ == "__main__":
    main()
