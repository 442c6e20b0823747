"""Logits of a trained model over an in-memory evaluation array, in fixed-size batches.

The evaluation scripts (``benchmarks/accuracy_gap.py``, ``teacher_ensemble_probe.py``, ``ood_probe.py``)
score whole test splits that are already preprocessed tensors; one batched, gradient-free pass keeps the
model's activations bounded by ``batch_size`` images (the input split and its logits are held whole).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def logits_in_batches(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """``model``'s float32 logits for every row of ``x`` (N, C, H, W), computed ``batch_size`` rows at a time.

    An empty ``x`` gives an empty (0, 0) array: without a forward pass the number of classes is unknown."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    xs = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    with torch.inference_mode():
        parts = [model(xs[i:i + batch_size]).float() for i in range(0, len(xs), batch_size)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, 0), dtype=np.float32)
