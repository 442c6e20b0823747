"""The clinical statistics as :class:`~distill.bootstrap.Vectorised` statistics: each computed on all
bootstrap replicates at once, with the same result, bit for bit, as on every replicate's index array.

Why: an export reports ~20 intervals per model and evidence set (1,000 replicates each, 400 per subgroup);
computed replicate by replicate, with a sort per replicate for every AUC, they were three quarters of a
small export's time. Here every replicate is a row of multiplicities (``block.weights``: how often each
image was drawn), and a statistic is a few array operations over those rows.

Why the results do not move: every count is a sum of small integers (exact in float64 in any order),
every AUC rank sum is a sum of half-integers (exact too), and the divisions are the ones the per-index
form does, on the same operands. The two sums whose order does matter — ECE's summed confidences and
the final few-term means — are done in the original order: confidences accumulated in draw order (one
``bincount`` over the concatenated replicates), and the few-term means with ``np.mean``/``np.sum`` on
each replicate's row as before. ``tests/test_bootstrap_fast.py`` checks equality against the per-index form.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from distill.bootstrap import ReplicateBlock, Vectorised
from distill.metrics import ECE_BINS, binary_auc
from distill.metrics import balanced_accuracy as balanced_accuracy_on
from distill.metrics import ece as ece_on


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` per replicate, NaN (undefined) where ``den`` is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def rate(hit: np.ndarray, among: np.ndarray | None = None) -> Vectorised:
    """Share of the images ``among`` (all when None) where ``hit`` holds: accuracy, sensitivity,
    referral rate... Undefined when no image is ``among``."""
    hit = np.asarray(hit, dtype=bool)
    among = np.ones(hit.size, bool) if among is None else np.asarray(among, dtype=bool)

    def on_indices(i: np.ndarray) -> float | None:
        sel = among[i]
        return float(hit[i][sel].mean()) if sel.any() else None

    def on_block(block: ReplicateBlock) -> np.ndarray:
        return _ratio(block.counts(hit & among), block.counts(among))

    return Vectorised(on_indices, on_block)


def auc(is_pos: np.ndarray, scores: np.ndarray) -> Vectorised:
    """:func:`distill.metrics.binary_auc` (Mann–Whitney U with average ranks for ties).

    The images are sorted by score once; in a replicate, the average rank of a score value is the number
    of drawn images up to that value, less half its ties less one (a resample's duplicates are ties): a
    running sum over the replicate's row instead of a sort of the resample. The rank sum of the
    positives is a sum of half-integers times draw counts: exact in float64.
    """
    pos = np.asarray(is_pos, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    _, value = np.unique(s, return_inverse=True)  # the grouping binary_auc's np.unique makes, values ascending
    order = np.argsort(value, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(value[order]) != 0])  # the first image of each value
    positives = np.flatnonzero(pos)
    v = value[positives]

    def on_block(block: ReplicateBlock) -> np.ndarray:
        by_image = block.weights[:, order]
        drawn = by_image if starts.size == by_image.shape[1] else np.add.reduceat(by_image, starts, axis=1)
        up_to = np.cumsum(drawn, axis=1)  # per value: images drawn with that score or lower
        ranks = up_to[:, v] - (drawn[:, v] - 1) / 2.0  # each positive's average rank in the replicate
        w = block.weights[:, positives]
        n_pos = w.sum(axis=1)
        n_neg = up_to[:, -1] - n_pos
        u = (w * ranks).sum(axis=1) - n_pos * (n_pos + 1) / 2.0
        return _ratio(u, n_pos * n_neg)

    return Vectorised(lambda i: binary_auc(pos[i], s[i]), on_block)


def _row_means(values: np.ndarray, defined: np.ndarray,
               fn: Callable[[np.ndarray], Any] = np.mean) -> np.ndarray:
    """``fn`` over each row's defined entries, as a 1-D array as the per-index form builds it (same
    summation order), NaN where a row has none. A loop over rows: cheap, they are a few numbers each."""
    return np.array([float(fn(v[d])) if d.any() else np.nan for v, d in zip(values, defined)], dtype=np.float64)


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> Vectorised:
    """:func:`distill.metrics.balanced_accuracy`: mean recall over the classes a replicate holds."""
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    k = int(max(y.max(initial=-1), pred.max(initial=-1))) + 1
    onehot = np.eye(max(k, 1), dtype=np.float64)[y]
    hits = onehot * (pred == y)[:, None]

    def on_block(block: ReplicateBlock) -> np.ndarray:
        support, tp = block.weights @ onehot, block.weights @ hits
        return _row_means(tp / np.maximum(support, 1), support > 0)

    return Vectorised(lambda i: balanced_accuracy_on(y[i], pred[i]), on_block)


def ece(y: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> Vectorised:
    """:func:`distill.metrics.ece` (top-label, equal-width bins), undefined on no image.

    Counts and hits per bin are exact; the summed confidences are accumulated in each replicate's draw
    order (one ``bincount`` over the concatenated replicates), as ``reliability_bins`` does on a replicate.
    """
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    conf = p.max(axis=1)
    bin_of = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)  # reliability_bins' binning
    onehot = np.eye(n_bins, dtype=np.float64)[bin_of]
    correct = onehot * (p.argmax(axis=1) == y)[:, None]

    def on_block(block: ReplicateBlock) -> np.ndarray:
        count, acc_sum = block.weights @ onehot, block.weights @ correct
        conf_sum = np.bincount(block.row * n_bins + bin_of[block.flat], weights=conf[block.flat],
                               minlength=block.n_rows * n_bins).reshape(block.n_rows, n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
            mean_acc = np.where(count > 0, acc_sum / np.maximum(count, 1), np.nan)
            n = count.sum(axis=1, keepdims=True)
            terms = count / n * np.abs(mean_acc - mean_conf)
        return _row_means(terms, count > 0, np.sum)

    return Vectorised(lambda i: ece_on(y[i], p[i], n_bins) if i.size else None, on_block)


def delta(a: Vectorised, b: Vectorised) -> Vectorised:
    """``a - b`` on the same replicate (a paired change), undefined where either is."""

    def on_indices(i: np.ndarray) -> float | None:
        va, vb = a(i), b(i)
        return None if va is None or vb is None else float(va) - float(vb)

    return Vectorised(on_indices, lambda block: a.on_block(block) - b.on_block(block))


def mean(stats: Sequence[Vectorised]) -> Vectorised:
    """The mean of several statistics on the same replicate — a figure averaged over seeds, each seed's model
    evaluated on the same resampled images — undefined where any of them is."""
    stats = list(stats)
    if not stats:
        raise ValueError("mean of no statistics")

    def on_indices(i: np.ndarray) -> float | None:
        values = [s(i) for s in stats]
        return None if any(v is None for v in values) else float(np.mean([float(v) for v in values]))

    return Vectorised(on_indices, lambda block: np.mean(np.stack([s.on_block(block) for s in stats]), axis=0))
