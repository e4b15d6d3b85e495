"""CLIP runtimes behind the ImageTextEncoder seam (moderation/signals/clip/encoder.py).

One entry per backend: name -> 'module:function(spec) -> ImageTextEncoder'.
Modules are imported only when their backend is chosen.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

BACKENDS: Mapping[str, str] = MappingProxyType(
    {
        # Eager PyTorch: CPU fp32, CUDA fp16/bf16.
        "torch": "moderation.signals.clip.backends.torch_eager:load",
        # ONNX Runtime, CPU only: the image tower exported once (cached), text on torch.
        "onnxruntime": "moderation.signals.clip.backends.onnx_runtime:load_fp32",
        "onnxruntime-int8": "moderation.signals.clip.backends.onnx_runtime:load_int8",
        # An exported model folder (`moderation export`), CPU: onnxruntime + numpy + PIL, no torch.
        "onnx-folder": "moderation.signals.clip.backends.onnx_folder:load",
    }
)
