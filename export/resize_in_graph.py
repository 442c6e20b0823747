"""The downscale of lesionlite's preprocessing as fixed ops inside a model graph (issue 29, the resize gap).

Why: MediaPipe Tasks (what Android/iOS apps run) resizes the whole image to the model's input itself,
bilinear *without* antialiasing, while training squashed it with Pillow's antialiased bilinear
(:mod:`lesionlite.preprocessing`). At 64 px the two disagree on enough images to flip a low-margin
student's answer (94.7 % top-1 agreement on 300 HAM10000 test images). A model that takes a larger image
(e.g. 256 × 256) and does the downscale to its training size itself, with Pillow's own filter, leaves
MediaPipe only a mild resize to do (200 × 150 → 256 × 256 is an upsample, nearly lossless), and hands the
student what Pillow would have given it.

Pillow's antialiased bilinear downscale by ``scale = n_in / n_out`` is a triangle filter of half-width
``scale`` input pixels centred on each output pixel, renormalised where the window leaves the image
(``precompute_coeffs`` in Pillow's ``Resample.c``); :func:`pillow_weights` ports it exactly. For an integer
factor it is a strided convolution with one fixed kernel plus an edge correction, which
:class:`downscale_module` builds from depthwise convolutions (≈0.5 M multiply-adds at 256 → 64, against
≈25 M for MobileNetV2 at 64 px; a dense resampling matrix would cost 16 M).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lesionlite.errors import LesionliteError


def pillow_weights(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` resampling matrix of Pillow's ``Image.resize(..., BILINEAR)`` along one axis (float64)."""
    if n_in < 1 or n_out < 1:
        raise LesionliteError(f"resize sizes must be positive, got {n_in} -> {n_out}")
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear (triangle) filter has support 1
    out = np.zeros((n_out, n_in), np.float64)
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)  # C's (int) truncates toward zero, as int() does
        hi = min(int(center + support + 0.5), n_in)
        w = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - center + 0.5) / filterscale))
        out[o, lo:hi] = w / w.sum()
    return out


def conv_plan(n_in: int, n_out: int) -> tuple[np.ndarray, int, int, np.ndarray]:
    """(kernel, left pad, right pad, per-output gain) such that a stride-``n_in // n_out`` convolution with zero
    padding, times the gain, equals :func:`pillow_weights` exactly; refuses a non-integer factor."""
    if n_in % n_out or n_in < n_out:
        raise LesionliteError(f"the in-graph downscale needs an integer factor; {n_in} is not a multiple of {n_out}")
    k = n_in // n_out
    r = pillow_weights(n_in, n_out)
    mid = n_out // 2
    nz = np.flatnonzero(r[mid])
    lo = int(nz[0])
    kernel = r[mid, lo:int(nz[-1]) + 1]
    pad_l = mid * k - lo
    pad_r = max(0, (n_out - 1) * k + len(kernel) - n_in - pad_l)
    conv = np.zeros((n_out, n_in + pad_l + pad_r))
    for o in range(n_out):
        conv[o, o * k:o * k + len(kernel)] = kernel
    conv = conv[:, pad_l:pad_l + n_in]
    gain = 1.0 / conv.sum(axis=1)
    if not np.allclose(conv * gain[:, None], r, atol=1e-12):
        raise LesionliteError(f"Pillow's {n_in} -> {n_out} filter is not one strided kernel; cannot build it in the graph")
    return kernel, pad_l, pad_r, gain


def downscale_module(n_in: int, n_out: int) -> Any:
    """A torch module NCHW [N, 3, n_in, n_in] → [N, 3, n_out, n_out] equal to Pillow's antialiased bilinear squash
    (in float: Pillow rounds to uint8 after each pass, so the two differ by < 1 level)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    kernel, pad_l, pad_r, gain = conv_plan(n_in, n_out)
    k = n_in // n_out

    class PillowDownscale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            t = torch.tensor(kernel, dtype=torch.float32)
            self.register_buffer("kw", t.view(1, 1, 1, -1).repeat(3, 1, 1, 1))
            self.register_buffer("kh", t.view(1, 1, -1, 1).repeat(3, 1, 1, 1))
            g = torch.tensor(gain, dtype=torch.float32)
            self.register_buffer("gain", (g.view(-1, 1) * g.view(1, -1)).view(1, 1, n_out, n_out))

        def forward(self, x):  # noqa: ANN001
            x = F.pad(x, (pad_l, pad_r, pad_l, pad_r))
            x = F.conv2d(x, self.kw, stride=(1, k), groups=3)
            x = F.conv2d(x, self.kh, stride=(k, 1), groups=3)
            return x * self.gain

    return PillowDownscale().eval()
