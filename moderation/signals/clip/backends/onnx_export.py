"""The image tower as an ONNX file, exported once per model and weights and cached on disk.

Exporting ViT-B-32 takes 10-30 s on a 2-core machine (trace, fold constants, and for
int8 quantise) and peaks at ~3.2 GB RSS, so backends that run the image tower outside
PyTorch call `image_tower_onnx`, which returns a cached file when one matches and
exports otherwise; `python -m moderation.signals.clip.backends.onnx_export` fills the cache
ahead of time. The graph is the visual tower followed by L2 normalisation:
pixels [batch, 3, S, S] float32 -> embeddings [batch, D] float32.

Cache: `<root>/<model id>/image-<variant>-<fingerprint>.onnx`, where root is the
setting `clip_export_dir` (`spec.export_dir`; default `$XDG_CACHE_HOME/moderation/clip-export`,
else `~/.cache/moderation/clip-export`). It must be writable, so it is not the weights
cache (often a read-only volume).
The fingerprint hashes the tower's architecture (its module tree), input size and
every weight, so a weights change re-exports, and random weights are only reused
when they are the same tensors (a seeded test). Files are written to a temporary
name and renamed into place, so a reader never sees half a file. Writing an entry
removes the other fingerprints of the same model and variant, so a weights change
(or an unseeded random model) replaces the old file rather than piling up.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from moderation.signals.clip.loading import ClipModelSpec, OpenClipModel, WeightsUnavailable

log = logging.getLogger(__name__)

# Bump when the exported graph changes for the same weights (export code, opset, quantisation).
EXPORT_FORMAT = 2  # 2: int8 weights in 7 bits (reduce_range), see quantize_int8
INPUT_NAME = "pixels"
OUTPUT_NAME = "embeddings"
VARIANTS = ("fp32", "int8")
# Dynamic int8 settings (onnxruntime.quantization.quantize_dynamic), chosen by bench/clip_backends.py.
INT8_WEIGHT_TYPE = "QInt8"
INT8_PER_CHANNEL = True
# Weights in 7 bits: on x86 cores without VNNI (AVX2 only) ORT's u8 x s8 kernel adds
# pairs of products in saturating int16, and full-range int8 weights overflowed it: the
# tiny test model's embeddings fell to cosine 0.9965 of fp32 on such a core, against
# 0.99996 with reduce_range (measured 2026-12-02). VNNI cores run the same kernel speed
# either way, and an exported folder may be served on either kind of core.
INT8_REDUCE_RANGE = True
# A single-file ONNX model is a protobuf, capped at 2 GiB.
MAX_SINGLE_FILE_BYTES = 2**31 - 2**26


class ExportFailed(RuntimeError):
    """The image tower could not be exported; the torch backend still serves this model."""


class UnsafeExportCache(WeightsUnavailable):
    """The export cache could be changed by another user: a graph planted there would score every image.

    Refused the way ssh refuses a key file others can write; the message names the path
    and the fix. A WeightsUnavailable, so `serve` exits 2 with that one line.
    """


class _ImageTower(torch.nn.Module):
    def __init__(self, visual: torch.nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(pixels), dim=-1)


def cache_root(spec: ClipModelSpec) -> Path:
    # The setting clip_export_dir (config.py resolves XDG_CACHE_HOME); the weights cache
    # is often a read-only volume, so exports never go there.
    return spec.export_dir or Path.home() / ".cache" / "moderation" / "clip-export"


def tower_fingerprint(clip: OpenClipModel) -> str:
    """sha256 over the export format, the tower's module tree and settings, its input size and all its weights."""
    visual = clip.model.visual
    digest = hashlib.sha256(f"format={EXPORT_FORMAT} size={clip.image_size}\n{visual!r}\n".encode())
    for name, module in visual.named_modules():
        # Flags that change the graph but not repr() (pool type, final LayerNorm placement, ...).
        settings = {k: v for k, v in sorted(vars(module).items()) if not k.startswith("_") and isinstance(v, bool | int | float | str | tuple)}
        digest.update(f"{name} {settings}\n".encode())
    for name, tensor in clip.model.visual.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {flat.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def image_tower_onnx(spec: ClipModelSpec, clip: OpenClipModel, variant: str = "fp32", root: Path | None = None) -> Path:
    """The cached ONNX file of `clip`'s image tower, exported (and for 'int8' quantised) on a miss."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown ONNX variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    cache = root or cache_root(spec)
    folder = cache / _slug(spec.model_id)
    fingerprint = tower_fingerprint(clip)[:24]
    target = folder / f"image-{variant}-{fingerprint}.onnx"
    if target.is_file():
        check_private(cache, folder, target, digest_path(target))
        if verified(target):
            log.info("CLIP image tower: cached ONNX export %s (sha256 verified)", target)
            return target
        log.warning("CLIP image tower: %s does not match the digest recorded when it was exported; exporting again", target)
    for path in (cache, folder):
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    check_private(cache, folder)
    started = time.monotonic()
    with _temporary(folder, ".fp32.onnx") as fp32:
        export_fp32(clip, fp32)
        if variant == "int8":
            with _temporary(folder, ".int8.onnx") as int8:
                quantize_int8(fp32, int8)
                _publish(int8, target)
        else:
            _publish(fp32, target)
    for stale in folder.glob(f"image-{variant}-*.onnx*"):
        if stale not in (target, digest_path(target)):
            stale.unlink(missing_ok=True)
    log.info("CLIP image tower: exported %s in %.1f s", target, time.monotonic() - started)
    return target


def export_fp32(clip: OpenClipModel, path: Path) -> None:
    """The visual tower + normalisation as ONNX at `path`, dynamic batch axis, constants folded."""
    with _temporary(path.parent, ".raw.onnx") as raw:
        export_traced(clip, raw)
        fold_constants(raw, path)


def export_traced(clip: OpenClipModel, path: Path) -> None:
    """torch.onnx (dynamo) export, as traced.

    torch.onnx's own graph optimiser is off (optimize=False): onnxscript 0.7's rewrite
    rules keep the last graph they matched, and with it the torch parameters, so the
    freed image tower would stay in memory. `fold_constants` does that work instead.
    """
    tower = _ImageTower(clip.model.visual).eval()
    size = sum(t.numel() * t.element_size() for t in tower.state_dict().values())
    if size > MAX_SINGLE_FILE_BYTES:
        raise ExportFailed(f"image tower weights are {size / 2**30:.1f} GiB, over what one ONNX file holds; use backend 'torch'")
    dtype = next(tower.parameters()).dtype
    if dtype != torch.float32:
        raise ExportFailed(f"the image tower to export must be float32, not {dtype}")
    # Batch 2: torch.export specialises a dimension of size 1.
    example = torch.zeros(2, 3, clip.image_size, clip.image_size)
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                tower,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                optimize=False,
                verbose=False,
            )
            program.save(str(path), external_data=False)
    except ExportFailed:
        raise
    except Exception as err:  # the exporter raises many types; one line says what failed
        raise ExportFailed(f"ONNX export of the image tower failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err


def fold_constants(source: Path, destination: Path) -> None:
    """onnxruntime's pre-quantisation pass: its basic (hardware-independent, standard-op)
    optimisations and ONNX shape inference, saved. Constant folding turns each weight's
    Transpose/Cast into a plain initializer feeding its MatMul, which is what dynamic
    quantisation looks for; ORT applies its full optimisations again at session load."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Symbolic shape inference is for contrib ops this graph does not use (and it asserts on some Reshapes).
    quant_pre_process(str(source), str(destination), skip_symbolic_shape=True)


def quantize_int8(source: Path, destination: Path) -> None:
    """Dynamic int8: weights int8 per output channel, activations uint8 quantised per batch at run time.

    Every weight MatMul and the patch-embedding Conv become integer ops, except the last
    weight MatMul (the output projection: ~0.1% of the FLOPs, and quantising it doubled
    the embedding error in bench/clip_backends.py). Attention's activation-activation
    MatMuls (QK^T, AV) stay float32. QInt8 weights are the fast path on VNNI cores
    (QUInt8 measured 1.5x slower).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    quantize_dynamic(
        model,
        str(destination),
        weight_type=getattr(QuantType, INT8_WEIGHT_TYPE),
        per_channel=INT8_PER_CHANNEL,
        reduce_range=INT8_REDUCE_RANGE,
        nodes_to_exclude=output_projection(model),
    )


# Static int8 (activation scales fixed at export from calibration images; bench/clip_backends.py --static-int8).
STATIC_INT8_FORMATS = ("QDQ", "QOperator")
# QOperator (QLinearMatMul): batched, it took the least CPU per image there (ViT-B-32, 2026-12-03).
STATIC_INT8_FORMAT = "QOperator"


def quantize_int8_static(source: Path, destination: Path, calibration: Any, quant_format: str = STATIC_INT8_FORMAT, method: str = "MinMax") -> None:
    """Static int8: weights int8 per output channel (7 bits, as dynamic), activations uint8 with
    scales fixed from `calibration` ([N, 3, S, S] float32 pixels, run one image at a time).

    The same MatMuls and Conv as dynamic int8 are quantised (constant weights only; attention's
    QK^T and AV and the output projection stay float32), so the two differ only in where the
    activation scales come from. Fixed scales make an image's embedding independent of the
    other images in its batch, so a static graph can run batched.
    """
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class _Pixels(CalibrationDataReader):
        def __init__(self) -> None:
            self._rows = iter(np.asarray(calibration, dtype=np.float32))

        def get_next(self) -> dict[str, Any] | None:
            row = next(self._rows, None)
            return None if row is None else {INPUT_NAME: np.ascontiguousarray(row[None])}

    model = onnx.load(str(source))
    excluded = output_projection(model)
    if quant_format == "QOperator":
        # QLinearConv needs a constant bias; the exporter computes the patch embedding's (zero) bias
        # with an Expand, so that Conv (~3% of ViT-B-32's FLOPs) stays float32 in this format.
        constants = {initializer.name for initializer in model.graph.initializer}
        excluded += [n.name for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2 and n.input[2] not in constants]
    del model
    # The calibrator runs an augmented copy of the graph from its own temporary directory.
    quantize_static(
        str(source),
        str(destination),
        _Pixels(),
        quant_format=getattr(QuantFormat, quant_format),
        op_types_to_quantize=["MatMul", "Conv", "Gemm"],
        per_channel=INT8_PER_CHANNEL,
        reduce_range=INT8_REDUCE_RANGE,
        activation_type=QuantType.QUInt8,
        weight_type=getattr(QuantType, INT8_WEIGHT_TYPE),
        nodes_to_exclude=excluded,
        calibrate_method=getattr(CalibrationMethod, method),
        extra_options={"MatMulConstBOnly": True},
    )


def output_projection(model: Any) -> list[str]:
    """The name of the last MatMul/Gemm with a constant weight (nodes are in topological order)."""
    constants = {initializer.name for initializer in model.graph.initializer}
    weighted = [node.name for node in model.graph.node if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in constants]
    return weighted[-1:]


def release_visual_tower(clip: OpenClipModel) -> None:
    """Drop the torch image tower (the runtime holds its own copy) and give the memory back."""
    clip.model.visual = None
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Return freed heap pages to the OS (glibc keeps them otherwise); a no-op elsewhere."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).malloc_trim(0)


def digest_path(target: Path) -> Path:
    """Where the sha256 of an export's bytes is recorded, written when it was exported."""
    return target.with_name(target.name + ".sha256")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(target: Path) -> bool:
    """The file's bytes are the ones this process's export code wrote: a name alone proves nothing."""
    try:
        recorded = digest_path(target).read_text(encoding="ascii").split()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        return False
    return recorded == file_sha256(target)


def check_private(*paths: Path) -> None:
    """Refuse paths another user could change: owned by someone else, or writable by group or others."""
    me = os.geteuid()
    for path in paths:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if path.is_symlink():
            raise UnsafeExportCache(f"CLIP export cache: {path} is a symbolic link; point MODERATION_CLIP_EXPORT_DIR at a real directory")
        if info.st_uid not in (me, 0):
            raise UnsafeExportCache(
                f"CLIP export cache: {path} belongs to user {info.st_uid}, not to this server's user {me}; "
                "use a directory this user owns (MODERATION_CLIP_EXPORT_DIR)"
            )
        if info.st_mode & 0o022:
            raise UnsafeExportCache(
                f"CLIP export cache: {path} is writable by other users (mode {info.st_mode & 0o777:o}); "
                f"run chmod go-w {path} or set MODERATION_CLIP_EXPORT_DIR to a private directory"
            )


def _publish(partial: Path, target: Path) -> None:
    partial.chmod(0o644)  # mkstemp made it private; the cache is shared by whoever reads the folder
    with _temporary(target.parent, ".sha256") as digest:
        digest.write_text(f"{file_sha256(partial)}  {target.name}\n", encoding="ascii")
        digest.chmod(0o644)
        # The digest first: a crash between the two leaves a digest that no file matches, never an unverified file.
        os.replace(digest, digest_path(target))
    os.replace(partial, target)


def _slug(model_id: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_")[-60:]
    return f"{readable}-{hashlib.sha256(model_id.encode()).hexdigest()[:8]}"


@contextlib.contextmanager
def _temporary(folder: Path, suffix: str) -> Iterator[Path]:
    """A fresh file name in `folder` (same filesystem as the target, so os.replace is atomic), removed unless renamed."""
    handle, name = tempfile.mkstemp(prefix=".partial-", suffix=suffix, dir=folder)
    os.close(handle)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> Path:
    """Fill the export cache ahead of time (an image build step or init container), so the
    service's first start neither pays the export's time nor its peak memory (~3.2 GB for
    ViT-B-32, against ~1.6 GB when the export is cached)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m moderation.signals.clip.backends.onnx_export", description=main.__doc__.split(",")[0])
    parser.add_argument("--model", default=ClipModelSpec.model)
    parser.add_argument("--weights", default=ClipModelSpec.weights)
    parser.add_argument("--cache-dir", type=Path, default=None, help="the service's weights cache (MODERATION_WEIGHTS_CACHE)")
    parser.add_argument("--variant", choices=VARIANTS, default="int8", help="int8 for 'onnxruntime-int8', fp32 for 'onnxruntime'")
    parser.add_argument("--export-dir", type=Path, default=None, help="the service's MODERATION_CLIP_EXPORT_DIR (default ~/.cache/moderation/clip-export)")
    parser.add_argument("--offline", action="store_true", help="use cached weights only")
    args = parser.parse_args(argv)
    from moderation.signals.clip.loading import build_open_clip

    spec = ClipModelSpec(
        model=args.model, weights=args.weights, cache_dir=args.cache_dir, allow_downloads=not args.offline, export_dir=args.export_dir
    )
    path = image_tower_onnx(spec, build_open_clip(spec), args.variant)
    print(path)
    return path


if __name__ == "__main__":
    main()
