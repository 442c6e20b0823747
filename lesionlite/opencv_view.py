"""The out-of-distribution statistics of a phone-input image through OpenCV, where OpenCV is installed.

Why: ``serve`` computes, for every request to a TFLite artifact with a 448 px phone input, the image statistics
of the 224 px view its graph gives the model (:func:`lesionlite.ood.model_view_statistics`). In numpy that is
~1.6–1.8 ms of a request's CPU (the strided downscale of :mod:`lesionlite.whole_factor_resample`, then
:func:`lesionlite.ood.image_statistics` in float64), which on 2 cores is most of what separates ``serve`` from
a minimal endpoint doing the same decode + inference (benchmarks/RESULTS.md 3a). OpenCV does the same in
~0.8 ms: its separable filter (the view's interior kernel, with the image's outside read as 0), a
nearest-neighbour pick of every ``f``-th filtered pixel (OpenCV's ``INTER_NEAREST`` reads source pixel
``floor(o·f)``), Pillow's renormalisation of the border rows and columns as one gain each, then one-pass
mean/std and absolute differences, accumulated in double — all on the H,W,C image, with no transpose.

numpy stays the definition and the fallback: OpenCV is not a dependency of ``serve`` (it comes with the
``export`` extra, through MediaPipe), and where it cannot be imported :func:`view_statistics` returns None.
The two agree to float32 rounding (~1e-7, ``tests/test_whole_factor_resample.py``), and ``export``'s OOD
figures and ``serve``'s verdicts take the same path in one environment.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from types import ModuleType

import numpy as np

from lesionlite.ood import features, identity_normalization
from lesionlite.whole_factor_resample import AxisPlan


@functools.lru_cache(maxsize=1)
def opencv() -> ModuleType | None:
    """``cv2``, or None where it is missing or cannot load (a GUI build without its system libraries).

    OpenCV is set to one thread: a view is ~0.5 ms of work, which its thread pool would only split at a
    hand-off cost, and serve already runs as many requests at once as there are cores."""
    try:
        import cv2
    except (ImportError, OSError):
        return None
    cv2.setNumThreads(1)
    return cv2


def usable(rows: AxisPlan, cols: AxisPlan) -> bool:
    """Whether :func:`view_statistics` can take this view: OpenCV importable, and every border window Pillow's
    renormalised cut of the interior kernel."""
    return opencv() is not None and rows.border_gain is not None and cols.border_gain is not None


def view_statistics(x_hwc: np.ndarray, rows: AxisPlan, cols: AxisPlan,
                    mean: Sequence[float], std: Sequence[float]) -> np.ndarray | None:
    """:func:`lesionlite.ood.image_statistics` of the whole-factor view of one normalised H,W,C image, back to
    [0, 1] pixels with ``mean``/``std``; None when OpenCV is unavailable or a border window is not Pillow's
    renormalised cut of the interior kernel (then the caller takes the numpy path)."""
    if not usable(rows, cols):
        return None
    cv2 = opencv()
    x = np.ascontiguousarray(x_hwc, np.float32)
    channels = x.shape[2]
    filtered = cv2.sepFilter2D(x, cv2.CV_32F, cols.kernel, rows.kernel, anchor=(-cols.offset, -rows.offset),
                               borderType=cv2.BORDER_CONSTANT)
    view = cv2.resize(filtered, (cols.n_out, rows.n_out), interpolation=cv2.INTER_NEAREST)
    for o, gain in rows.border_gain:
        view[o] *= np.float32(gain)
    for o, gain in cols.border_gain:
        view[:, o] *= np.float32(gain)
    if not identity_normalization(mean, std):
        view = view * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    np.clip(view, 0.0, 1.0, out=view)
    means, stds = cv2.meanStdDev(view)
    down = cv2.absdiff(view[1:], view[:-1])
    across = cv2.absdiff(view[:, 1:], view[:, :-1])
    texture = 0.5 * (sum(cv2.sumElems(down)[:channels]) / down.size
                     + sum(cv2.sumElems(across)[:channels]) / across.size)
    return features(means[:, 0], stds[:, 0], texture)
