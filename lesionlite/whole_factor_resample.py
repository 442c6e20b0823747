"""Pillow's antialiased bilinear downscale by a whole factor (448 → 224, 256 → 64) as a few strided slices.

Why: ``serve`` computes the out-of-distribution statistics of every request on the image as the model sees it
(:func:`lesionlite.preprocessing.model_view`); for a TFLite artifact whose graph takes a 448 px phone input
and downscales it to 224 px, the banded float64 form of that filter cost ~3.3 ms of a request's CPU, which on
2 cores is throughput (benchmarks/RESULTS.md 3a). With a whole factor ``f`` every output row away from the
border reads the same ``2f`` taps ``f`` rows apart with the same weights, so one axis of the filter is a
handful of strided slices of the input; taps of equal weight (the triangle is symmetric) are added before
they are multiplied, which halves the multiplications. The one or two rows at each border, where Pillow
renormalises a window that leaves the image, are taken from the dense weights. float32 throughout: the
result is within float32 rounding (~1e-7) of the float64 definition (tests/test_whole_factor_resample.py).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxisPlan:
    """How one axis of ``n_in`` samples is downscaled to ``n_out``: interior outputs ``[lo, hi)`` as weighted
    sums of strided slices (``groups``: a weight and the tap offsets that share it), the others from ``border``
    (output index, first input index, its weights)."""

    factor: int
    n_out: int
    lo: int
    hi: int
    groups: tuple[tuple[np.float32, tuple[int, ...]], ...]
    border: tuple[tuple[int, int, np.ndarray], ...]
    #: the interior rows' weights (float32) and the input offset of the first, ``f·o + offset`` for output ``o``
    kernel: np.ndarray
    offset: int
    #: per border output, the factor that turns the interior kernel cut to the image (the rest read as 0) into
    #: Pillow's renormalised window; None when some border window is not such a cut
    border_gain: tuple[tuple[int, float], ...] | None


@functools.lru_cache(maxsize=16)
def axis_plan(n_in: int, n_out: int) -> AxisPlan | None:
    """The plan for ``n_in → n_out``, or None when the factor is not whole (or there is no interior to
    share weights), for which the caller keeps the general banded filter."""
    from lesionlite.preprocessing import pillow_weights  # the one definition of the filter's weights

    if n_out < 3 or n_in % n_out or n_in == n_out:
        return None
    f = n_in // n_out
    dense = pillow_weights(n_in, n_out)
    nonzero = dense != 0
    first = nonzero.argmax(axis=1)
    last = n_in - 1 - nonzero[:, ::-1].argmax(axis=1)
    mid = n_out // 2
    offset, width = int(first[mid] - f * mid), int(last[mid] - first[mid] + 1)
    taps = dense[mid, first[mid]:last[mid] + 1]
    interior = [int(first[o] - f * o) == offset and int(last[o] - first[o] + 1) == width
                and np.array_equal(dense[o, first[o]:last[o] + 1], taps) for o in range(n_out)]
    lo = interior.index(True)
    hi = n_out - interior[::-1].index(True)
    if not all(interior[lo:hi]) or f * lo + offset < 0 or f * (hi - 1) + offset + width > n_in:
        return None
    shared: dict[float, list[int]] = {}
    for k, w in enumerate(taps):
        shared.setdefault(float(w), []).append(offset + k)
    border = tuple((o, int(first[o]), _read_only(dense[o, first[o]:last[o] + 1].astype(np.float32)))
                   for o in [*range(lo), *range(hi, n_out)])
    return AxisPlan(f, n_out, lo, hi, tuple((np.float32(w), tuple(js)) for w, js in shared.items()), border,
                    _read_only(taps.astype(np.float32)), offset, _border_gain(dense, taps, f, offset, [b[0] for b in border]))


def _border_gain(dense: np.ndarray, taps: np.ndarray, f: int, offset: int, outputs: list[int]) -> tuple | None:
    """For each border output, 1 / (the sum of the interior weights that fall inside the image), when Pillow's
    weights there are exactly those weights renormalised (true for Pillow's triangle); else None."""
    n_in = dense.shape[1]
    gains = []
    for o in outputs:
        idx = f * o + offset + np.arange(len(taps))
        inside = (idx >= 0) & (idx < n_in)
        cut = np.zeros(n_in)
        cut[idx[inside]] = taps[inside]
        total = cut.sum()
        if total <= 0 or not np.allclose(cut / total, dense[o], rtol=0, atol=1e-12):
            return None
        gains.append((o, float(1.0 / total)))
    return tuple(gains)


def _read_only(a: np.ndarray) -> np.ndarray:
    """``a``, unwritable: plans are cached and shared by every request's thread."""
    a.setflags(write=False)
    return a


def downscale_axis(x: np.ndarray, axis: int, plan: AxisPlan) -> np.ndarray:
    """``x`` (float32) downscaled along ``axis`` by ``plan``; the other axes keep their order (C-contiguous)."""
    shape = list(x.shape)
    shape[axis] = plan.n_out
    out = np.empty(shape, np.float32)

    def along(s: slice | int) -> tuple[slice | int, ...]:
        return tuple(s if a == axis else slice(None) for a in range(x.ndim))

    acc = out[along(slice(plan.lo, plan.hi))]
    term = np.empty(acc.shape, np.float32)
    pair = np.empty(acc.shape, np.float32)

    def taps(j: int) -> np.ndarray:
        first = plan.factor * plan.lo + j
        return x[along(slice(first, first + plan.factor * (plan.hi - plan.lo - 1) + 1, plan.factor))]

    for g, (weight, offsets) in enumerate(plan.groups):
        dst = acc if g == 0 else term
        if len(offsets) == 1:
            np.multiply(taps(offsets[0]), weight, out=dst)
        else:
            np.add(taps(offsets[0]), taps(offsets[1]), out=pair)
            for j in offsets[2:]:
                np.add(pair, taps(j), out=pair)
            np.multiply(pair, weight, out=dst)
        if g:
            np.add(acc, term, out=acc)
    for o, first, weights in plan.border:
        out[along(o)] = np.tensordot(weights, x[along(slice(first, first + len(weights)))], axes=(0, axis))
    return out


def downscale_chw(x: np.ndarray, rows: AxisPlan, cols: AxisPlan, layout: str = "NCHW") -> np.ndarray:
    """One image (C,H,W, or H,W,C with ``layout="NHWC"``) downscaled by ``rows``/``cols``, as C-contiguous C,H,W
    float32 (the layout the image statistics reduce fastest). Whole-image passes: processing a block of rows
    at a time to stay in cache measured slower here (the per-call overhead of 14+ blocks outweighs it)."""
    x = np.asarray(x, np.float32)
    if layout == "NHWC":
        # rows on the H,W,C image (whole pixel rows are contiguous), then channels first on half the data
        return downscale_axis(np.ascontiguousarray(downscale_axis(x, 0, rows).transpose(2, 0, 1)), 2, cols)
    return downscale_axis(downscale_axis(x, 1, rows), 2, cols)
