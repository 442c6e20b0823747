"""The int8 weight grid every backend here uses, in one place (torch imported only when called).

Per-output-channel symmetric int8: ``scale = max|w| / 127`` per channel, zero point 0, values in
[-127, 127]. It is what onnxruntime's ``QInt8`` symmetric per-channel weights, ai-edge-quantizer's
``static_wi8_ai8`` and coremltools' ``linear_symmetric`` produce (checked against onnxruntime in
``tests/test_int8_prep.py``), so weights already on it are not rounded again by any of them. Used by
export's int8 preparation and by quantization-aware training (``distill --method qat``).

:func:`quantize_affine` / :func:`dequantize_affine` are the tensor (activation) side, numpy only: how
export feeds and reads an int8-I/O TFLite model and how ``serve`` does the same in production — one
definition, so the parity export measured is the arithmetic serve runs.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def snap_to_int8_grid(weight: Any) -> Any:
    """Round ``weight`` (a torch tensor, output channels on dim 0) to the per-channel int8 grid."""
    import torch

    dims = tuple(range(1, weight.dim()))
    scale = weight.abs().amax(dim=dims, keepdim=True) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, (weight / safe).round().clamp(-127, 127) * safe, weight)


def quantize_affine(x: np.ndarray, scale: float, zero_point: int, dtype: Any) -> np.ndarray:
    """float → int8/uint8 as TFLite does: ``q = clip(round_half_even(x / scale) + zero_point)``."""
    info = np.iinfo(dtype)
    q = np.rint(x / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_affine(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """int → float32: ``(q - zero_point) * scale``."""
    return (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
