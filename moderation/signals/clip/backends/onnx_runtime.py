"""ONNX Runtime on the CPU: the image tower runs as an exported ONNX graph, text stays on torch.

Two backends:
    'onnxruntime'       fp32 graph: same arithmetic as eager torch, fused by ORT
    'onnxruntime-int8'  dynamic int8 (weights int8 per channel, activations uint8 per image)
The export is cached on disk (moderation/signals/clip/backends/onnx_export.py). Text
embeddings are computed once per policy version, so the text tower stays on the
torch model; the torch image tower is freed once the session holds its own copy.
CPU only: on CUDA the 'torch' backend serves fp16/bf16.

Intra-op threads: `torch.get_num_threads()` at load time (what the server's
torch_threads setting sets) unless `threads` is given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from moderation.signals.clip.backends.onnx_export import INPUT_NAME, OUTPUT_NAME, image_tower_onnx, release_visual_tower, trim_heap
from moderation.signals.clip.backends.torch_eager import TorchEncoder
from moderation.signals.clip.loading import ClipModelSpec, OpenClipModel, build_open_clip

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)

CPU_PRECISIONS = ("auto", "fp32")
# Largest change of any category score against the 'torch' backend (fp32) that these
# backends are held to, at the model's logit scale; tests/unit/test_clip_backends.py
# checks it on the tiny model, bench/clip_backends.py on ViT-B-32 at the trained scale
# (100): ViT-B-32 (random weights) measured 6e-7 (fp32) and 0.0085 (int8) there.
SCORE_TOLERANCE = {"onnxruntime": 1e-4, "onnxruntime-int8": 0.02}


class CpuOnlyBackend(ValueError):
    """An ONNX/CPU backend was asked for a device or precision it does not run."""


class OnnxRuntimeEncoder(TorchEncoder):
    def __init__(
        self,
        spec: ClipModelSpec,
        clip: OpenClipModel,
        session: onnxruntime.InferenceSession,
        backend: str,
        dtype: torch.dtype,
        per_image: bool,
    ):
        super().__init__(spec, clip)
        self.backend = backend
        self.dtype = dtype  # fp32, or qint8 for the int8 graph (its float parts stay fp32)
        self._session = session
        self._per_image = per_image

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        array = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        if not self._per_image:
            return torch.from_numpy(self._session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])
        # Dynamic quantisation takes one activation scale over its whole input, so in a
        # batch an image's embedding would depend on the other callers' images in it
        # (cosine 0.99994, scores moving by up to ~0.005). One image per run keeps every
        # score a function of its own image: replayable, and the same offline and served.
        # It costs ~20% against batched int8 (55 vs 69 images/s here), still 2.7x eager fp32.
        return torch.from_numpy(
            np.concatenate([self._session.run([OUTPUT_NAME], {INPUT_NAME: array[i : i + 1]})[0] for i in range(len(array))])
        )


def load_fp32(spec: ClipModelSpec, threads: int | None = None) -> OnnxRuntimeEncoder:
    return _load(spec, "onnxruntime", "fp32", torch.float32, threads, per_image=False)


def load_int8(spec: ClipModelSpec, threads: int | None = None) -> OnnxRuntimeEncoder:
    return _load(spec, "onnxruntime-int8", "int8", torch.qint8, threads, per_image=True)


def check_cpu_spec(spec: ClipModelSpec, backend: str) -> None:
    if spec.device != "cpu":
        raise CpuOnlyBackend(f"CLIP backend {backend!r} runs on the CPU only, not device {spec.device!r}; use backend 'torch' there")
    if spec.precision not in CPU_PRECISIONS:
        raise CpuOnlyBackend(f"CLIP backend {backend!r} takes precision 'auto' or 'fp32', not {spec.precision!r}")


def session_for(path: Path, threads: int | None = None, spin: bool = False, arena: bool = False) -> onnxruntime.InferenceSession:
    """A CPU session. Intra-op threads do not busy-wait between runs (`spin`): the server's
    decode and gRPC threads share the cores. No CPU memory arena (`arena`): it keeps a
    batch's peak activations (~130 MB at batch 16 for ViT-B-32) for the life of the process."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.enable_cpu_mem_arena = arena
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _load(
    spec: ClipModelSpec, backend: str, variant: str, dtype: torch.dtype, threads: int | None, per_image: bool
) -> OnnxRuntimeEncoder:
    check_cpu_spec(spec, backend)
    clip = build_open_clip(spec)
    path = image_tower_onnx(spec, clip, variant)
    release_visual_tower(clip)  # before the session is built: the load peaks ~200 MB lower
    try:
        session = session_for(path, threads)
    except Exception as err:  # noqa: BLE001 - ORT raises its own types; a damaged cache file must not stop the service
        log.warning("CLIP image tower: cached export %s does not load (%s); exporting again", path, str(err).splitlines()[0] if str(err) else type(err).__name__)
        path.unlink(missing_ok=True)
        clip = build_open_clip(spec)  # the tower was freed: build again (random weights: drawn again)
        session = session_for(image_tower_onnx(spec, clip, variant), threads)
        release_visual_tower(clip)
    trim_heap()  # building the session parsed the whole file; give those pages back
    return OnnxRuntimeEncoder(spec, clip, session, backend, dtype, per_image)
