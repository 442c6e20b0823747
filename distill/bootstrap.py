"""95 % bootstrap confidence intervals for any metric of a set of predictions (numpy only).

A figure on 263 melanomas moves by several points from one sample of patients to the next; a
clinical reader needs that spread beside it. Two choices make the interval honest for this data:

* **stratified by class**: every replicate keeps each class's count (a replicate with no melanoma
  would have no melanoma AUC, and class balance is a property of the test set, not of chance);
* **resampled by lesion**: images of the same lesion (HAM10000 has up to six) are not independent;
  where lesion ids exist, whole lesions are drawn (a cluster bootstrap), else single images.

All statistics of one call share the same replicates, so a difference of two statistics computed
inside one replicate (artifact minus PyTorch on the same images) is a *paired* interval.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: replicates of every interval the project reports (percentile method)
N_BOOT = 1000
CI_LEVEL = 0.95

Statistic = Callable[[np.ndarray], "float | None"]


@dataclass(frozen=True)
class _Stratum:
    """One class's resampling units, flattened: unit ``u`` is ``flat[starts[u]:starts[u] + sizes[u]]``."""

    flat: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        pick = rng.integers(0, self.sizes.size, size=self.sizes.size)
        if self.flat.size == self.sizes.size:  # one image per unit: plain indexing
            return self.flat[pick]
        sizes = self.sizes[pick]
        offsets = np.repeat(self.starts[pick] - np.cumsum(np.r_[0, sizes[:-1]]), sizes)
        return self.flat[np.arange(sizes.sum()) + offsets]


def _strata(labels: np.ndarray, groups: Sequence[str] | None) -> list[_Stratum]:
    """Per class, its resampling units (lesions, or single images)."""
    strata = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if groups is None:
            strata.append(_Stratum(idx, np.arange(idx.size), np.ones(idx.size, np.int64)))
            continue
        keys = np.asarray([str(groups[i]) or f"#{i}" for i in idx])
        _, unit = np.unique(keys, return_inverse=True)
        order = np.argsort(unit, kind="stable")
        sizes = np.bincount(unit)
        strata.append(_Stratum(idx[order], np.r_[0, np.cumsum(sizes)[:-1]], sizes))
    return strata


#: the last replicates drawn, by (labels, groups, n_boot, seed): export measures many models on one image set
_MEMO: dict[tuple[Any, ...], list[np.ndarray]] = {}


def replicate_indices(labels: Sequence[int] | np.ndarray, groups: Sequence[str] | None = None,
                      n_boot: int = N_BOOT, seed: int = 0) -> list[np.ndarray]:
    """``n_boot`` index arrays, each a class-stratified (lesion-clustered where ``groups``) resample."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if groups is not None and len(groups) != y.size:
        raise ValueError(f"{len(groups)} group ids for {y.size} labels")
    key = (y.tobytes(), None if groups is None else hash(tuple(map(str, groups))), int(n_boot), seed)
    if key not in _MEMO:
        strata = _strata(y, groups)
        rng = np.random.default_rng(seed)
        reps = [np.concatenate([s.draw(rng) for s in strata]) if strata else np.zeros(0, np.int64)
                for _ in range(int(n_boot))]
        _MEMO.clear()  # one entry: bounded memory
        _MEMO[key] = reps
    return _MEMO[key]


def bootstrap(statistics: Mapping[str, Statistic], labels: Sequence[int] | np.ndarray,
              groups: Sequence[str] | None = None, n_boot: int = N_BOOT, seed: int = 0,
              level: float = CI_LEVEL) -> dict[str, dict[str, Any]]:
    """Point value and percentile interval of every statistic, over the same replicates.

    ``statistics[name](idx)`` computes the statistic on the images ``idx`` (all images for the point
    value); a replicate where it is undefined (None / NaN) is left out and counted in ``n_undefined``.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    everything = np.arange(y.size)
    reps = replicate_indices(y, groups, n_boot, seed) if y.size else []
    out: dict[str, dict[str, Any]] = {}
    for name, fn in statistics.items():
        value = _clean(fn(everything)) if y.size else None
        draws = [v for v in (_clean(fn(idx)) for idx in reps) if v is not None]
        lo = hi = None
        if value is not None and len(draws) >= max(10, len(reps) // 2):
            lo, hi = (float(q) for q in np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2]))
        out[name] = {"value": value, "ci_low": lo, "ci_high": hi}
    meta = {"n_boot": int(n_boot), "level": level, "seed": seed,
            "resampled_by": "lesion" if groups is not None else "image", "stratified_by": "class"}
    return {"metrics": out, "bootstrap": meta}  # type: ignore[dict-item]


def _clean(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if np.isnan(v) else v
