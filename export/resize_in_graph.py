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

Wired into export as ``--phone-input-size`` (:class:`export.context.ExportOptions`, :func:`resolve_size`): every
TFLite artifact (fp32, fp16, int8, int8 with uint8 I/O) then takes the larger image; its manifest's
``preprocessing`` squashes to that side (what serve, bench, golden vectors and ``lesionlite verify`` feed it) and
``preprocessing.extra["in_graph_resize"]`` says what the graph does (:func:`lesionlite.preprocessing.model_view`
reproduces it torch-free for the out-of-distribution statistics).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lesionlite.errors import LesionliteError
from lesionlite.preprocessing import pillow_weights

#: what ``--phone-input-size auto`` chooses: the smallest multiple of the model's input side at least this large.
#: Measured (benchmarks/RESULTS.md, "MediaPipe and the resize gap"): HAM10000's 200 x 150 JPEGs given to MediaPipe
#: as they came agree with PyTorch on 97-99 % of test images at 256 px in, against 85.7 % at 64 px in (MediaPipe's
#: own resize has no antialiasing; a larger input leaves it an upsample, or a milder downsample, to do).
AUTO_MIN_SIDE = 256


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
            # the edge renormalisation, separable: one factor per row and one per column (2 x n_out constants)
            self.register_buffer("gain_h", g.view(1, 1, n_out, 1))
            self.register_buffer("gain_w", g.view(1, 1, 1, n_out))

        def forward(self, x):
            x = F.pad(x, (pad_l, pad_r, pad_l, pad_r))
            x = F.conv2d(x, self.kw, stride=(1, k), groups=3)
            x = F.conv2d(x, self.kh, stride=(k, 1), groups=3)
            return x * self.gain_h * self.gain_w

    return PillowDownscale().eval()


def resolve_size(option: Any, input_size: int, resize_size: int | None = None) -> int | None:
    """The TFLite artifacts' input side for ``--phone-input-size`` (None: no in-graph resize, the model's own side).

    ``option``: ``"auto"`` (the smallest multiple of ``input_size`` that is at least :data:`AUTO_MIN_SIDE`; off
    when the model is that large already, or when its preprocessing crops: MediaPipe squashes the whole image),
    an integer multiple of ``input_size`` larger than it, or ``0`` / ``None`` / ``"none"`` / ``"off"`` (off).
    """
    if option is None or (isinstance(option, str) and option.strip().lower() in ("", "0", "none", "off")):
        return None
    if isinstance(option, str) and option.strip().lower() == "auto":
        if resize_size not in (None, input_size) or input_size >= AUTO_MIN_SIDE:
            return None
        return -(-AUTO_MIN_SIDE // input_size) * input_size
    try:
        size = int(option)
    except (TypeError, ValueError):
        raise LesionliteError(f"--phone-input-size must be auto, none/0 or a number of pixels, got {option!r}") from None
    if size == 0 or size == input_size:
        return None
    if resize_size not in (None, input_size):
        raise LesionliteError(f"--phone-input-size {size}: the model's preprocessing resizes to {resize_size} and crops "
                              f"{input_size}, but a phone runtime squashes the whole image; use --phone-input-size none")
    if size < input_size or size % input_size:
        raise LesionliteError(f"--phone-input-size {size} must be a multiple of the model's input side {input_size} "
                              f"(e.g. {4 * input_size}): the in-graph downscale needs an integer factor")
    return size
