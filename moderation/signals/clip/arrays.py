"""The few array operations the CLIP tier does outside a model, for torch tensors and numpy arrays alike.

The torch backends hand over torch tensors (CUDA batches stack into page-locked
memory); an exported model folder (backends/onnx_folder.py) serves with onnxruntime,
numpy and PIL only, and hands over numpy arrays. The scorer and the micro-batcher go
through these functions, so the same code serves both, and torch is imported only when
a torch tensor is already in hand (so it is loaded anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def is_numpy(value: Any) -> bool:
    return isinstance(value, np.ndarray)


def concat(parts: Sequence[Any]) -> Any:
    if is_numpy(parts[0]):
        return np.concatenate(parts)
    import torch

    return torch.cat(list(parts))


def stack(parts: Sequence[Any]) -> Any:
    if is_numpy(parts[0]):
        return np.stack(parts)
    import torch

    return torch.stack(list(parts))


def normalize(rows: Any) -> Any:
    """L2-normalise each row (torch.nn.functional.normalize's eps)."""
    if is_numpy(rows):
        norms = np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), np.float32(1e-12))
        return (rows / norms).astype(np.float32, copy=False)
    import torch.nn.functional as F

    return F.normalize(rows, dim=-1)


def like(reference: Any, values: Any, dtype: str = "float32") -> Any:
    """`values` as the same kind of array as `reference` (numpy or CPU torch)."""
    if is_numpy(reference):
        return np.asarray(values, dtype=dtype)
    import torch

    return torch.tensor(values, dtype=getattr(torch, "long" if dtype == "int64" else dtype))


def to_numpy(values: Any) -> np.ndarray:
    """float32 numpy on the host (a view where it can be)."""
    if is_numpy(values):
        return values.astype(np.float32, copy=False)
    return values.detach().float().cpu().numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def sigmoid(values: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-values))).astype(np.float32, copy=False)


def split(rows: Any, sizes: Sequence[int]) -> list[Any]:
    if is_numpy(rows):
        return np.split(rows, np.cumsum(sizes)[:-1])
    return list(rows.split(list(sizes)))


def empty(shape: tuple[int, ...], dtype: Any = None) -> Any:
    """An uninitialised float32 host array; torch when `dtype` is a torch dtype."""
    if dtype is None or isinstance(dtype, (str, np.dtype, type)):
        return np.empty(shape, dtype=dtype or np.float32)
    import torch

    return torch.empty(shape, dtype=dtype)
