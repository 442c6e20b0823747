"""95 % bootstrap confidence intervals for any metric of a set of predictions (numpy only).

A figure on 263 melanomas moves by several points from one sample of patients to the next; a
clinical reader needs that spread beside it. Two choices make the interval honest for this data:

* **stratified by class**: every replicate keeps each class's count (a replicate with no melanoma
  would have no melanoma AUC, and class balance is a property of the test set, not of chance);
* **resampled by lesion**: images of the same lesion (HAM10000 has up to six) are not independent;
  where lesion ids exist, whole lesions are drawn (a cluster bootstrap), else single images.

All statistics of one call share the same replicates, so a difference of two statistics computed
inside one replicate (artifact minus PyTorch on the same images) is a *paired* interval.

Speed (an export reports ~20 intervals per model and set): the replicates are drawn in one call, and a
:class:`Vectorised` statistic (``distill.replicate_stats``) is computed on all replicates at once from
their draw counts (:class:`ReplicateBlock`) — the same figures, bit for bit, as one call per replicate.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

#: replicates of every interval the project reports (percentile method)
N_BOOT = 1000
CI_LEVEL = 0.95

Statistic = Callable[[np.ndarray], "float | None"]


@dataclass(frozen=True)
class _Units:
    """Every resampling unit (a lesion, or a single image), class after class in label order: unit ``u`` is
    ``flat[starts[u]:starts[u] + sizes[u]]``, and the ``k``-th class owns the next ``per_class[k]`` units."""

    flat: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray
    per_class: list[int]

    def draw(self, rng: np.random.Generator, n_boot: int) -> list[np.ndarray]:
        """``n_boot`` resamples: per replicate and class, as many of the class's units as it has, with replacement.

        All picks come from one ``rng.integers`` call with one bound per pick (its class's unit count), in
        the order replicate, class, unit. numpy's Generator draws every bounded integer below 2**32 from the
        same stream of 32-bit words whether the bounds come one per call (one call per replicate and class,
        as the replicates of a seed were first defined) or as an array: the same replicates, thousands of
        calls fewer (``tests/test_bootstrap_fast.py`` compares them with the per-call draw).
        """
        if n_boot == 0 or not self.per_class:
            return [np.zeros(0, np.int64) for _ in range(n_boot)]
        counts = np.asarray(self.per_class, dtype=np.int64)
        first = np.cumsum(counts) - counts
        picks = (rng.integers(0, np.tile(np.repeat(counts, counts), n_boot))
                 + np.tile(np.repeat(first, counts), n_boot))
        sizes = self.sizes[picks]
        ends = np.cumsum(sizes)
        images = self.flat[np.arange(ends[-1]) + np.repeat(self.starts[picks] - (ends - sizes), sizes)]
        per_rep = int(counts.sum())
        return np.split(images, ends[per_rep - 1::per_rep][:-1])


def _units(labels: np.ndarray, groups: Sequence[str] | None) -> _Units:
    """Per class, its resampling units (lesions, or single images)."""
    flats, sizes = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if groups is None:
            flats.append(idx)
            sizes.append(np.ones(idx.size, np.int64))
            continue
        keys = np.asarray([str(groups[i]) or f"#{i}" for i in idx])
        _, unit = np.unique(keys, return_inverse=True)
        flats.append(idx[np.argsort(unit, kind="stable")])
        sizes.append(np.bincount(unit))
    size = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    return _Units(np.concatenate(flats) if flats else np.zeros(0, np.int64), np.cumsum(size) - size, size,
                  [s.size for s in sizes])


class ReplicateBlock:
    """Consecutive replicates of one draw, laid out for vectorised statistics (see :class:`Vectorised`).

    A statistic evaluated replicate by replicate costs a Python call, a gather and often a sort per
    replicate; over a block it costs a few array operations on all replicates at once. The arrays are
    built on first use and kept: every statistic of every model measured on the same images shares them.
    """

    def __init__(self, indices: Sequence[np.ndarray], n_images: int):
        self.indices = list(indices)
        self.n_rows = len(self.indices)
        self.n_images = int(n_images)

    @cached_property
    def flat(self) -> np.ndarray:
        """All replicates' image indices, concatenated in draw order."""
        return np.concatenate(self.indices) if self.indices else np.zeros(0, np.int64)

    @cached_property
    def row(self) -> np.ndarray:
        """The replicate (row of this block) of each entry of :attr:`flat`."""
        return np.repeat(np.arange(self.n_rows), [i.size for i in self.indices])

    @cached_property
    def weights(self) -> np.ndarray:
        """``weights[r, j]``: how often image ``j`` is drawn in replicate ``r`` (float64, small integers).

        A count over a replicate is then ``weights @ flag``: sums of integers, exact in float64 whatever
        the order, so equal bit for bit to counting on the resampled index array.
        """
        cells = np.bincount(self.row * self.n_images + self.flat, minlength=self.n_rows * self.n_images)
        return cells.reshape(self.n_rows, self.n_images).astype(np.float64)

    def counts(self, flag: np.ndarray) -> np.ndarray:
        """Per replicate, the number of drawn images where ``flag`` (bool per image) holds (float64)."""
        return self.weights @ np.asarray(flag, dtype=np.float64)


#: images × replicates per block: bounds the memory of :attr:`ReplicateBlock.weights` (16 MiB of float64)
BLOCK_CELLS = 1 << 21


class Replicates:
    """The ``n_boot`` index arrays of one draw, and the same replicates cut into blocks (:class:`ReplicateBlock`)."""

    def __init__(self, indices: list[np.ndarray], n_images: int):
        self.indices = indices
        self.n_images = int(n_images)

    @cached_property
    def blocks(self) -> list[ReplicateBlock]:
        step = max(1, BLOCK_CELLS // max(self.n_images, 1))
        return [ReplicateBlock(self.indices[i:i + step], self.n_images) for i in range(0, len(self.indices), step)]


#: the last replicates drawn, by (labels, groups, n_boot, seed): export measures many models on one image set
_MEMO: dict[tuple[Any, ...], Replicates] = {}


def replicates(labels: Sequence[int] | np.ndarray, groups: Sequence[str] | None = None,
               n_boot: int = N_BOOT, seed: int = 0) -> Replicates:
    """The replicates of :func:`replicate_indices`, with their blocks (memoised: one entry)."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if groups is not None and len(groups) != y.size:
        raise ValueError(f"{len(groups)} group ids for {y.size} labels")
    key = (y.tobytes(), None if groups is None else hash(tuple(map(str, groups))), int(n_boot), seed)
    if key not in _MEMO:
        reps = _units(y, groups).draw(np.random.default_rng(seed), int(n_boot))
        _MEMO.clear()  # one entry: bounded memory
        _MEMO[key] = Replicates(reps, y.size)
    return _MEMO[key]


def replicate_indices(labels: Sequence[int] | np.ndarray, groups: Sequence[str] | None = None,
                      n_boot: int = N_BOOT, seed: int = 0) -> list[np.ndarray]:
    """``n_boot`` index arrays, each a class-stratified (lesion-clustered where ``groups``) resample."""
    return replicates(labels, groups, n_boot, seed).indices


@dataclass(frozen=True)
class Vectorised:
    """A statistic with two equivalent forms: on one index array, and on a block of replicates at once.

    ``on_indices(idx)`` is the plain :data:`Statistic` (the point value uses it, and it is the reference);
    ``on_block(block)`` returns one float64 per replicate of the block, NaN where the statistic is
    undefined, equal bit for bit to ``on_indices`` on each replicate (``tests/test_bootstrap_fast.py``).
    :func:`bootstrap` uses the block form: the same figures, several times faster.
    """

    on_indices: Statistic
    on_block: Callable[[ReplicateBlock], np.ndarray]

    def __call__(self, idx: np.ndarray) -> float | None:
        return self.on_indices(idx)


def bootstrap(statistics: Mapping[str, Statistic], labels: Sequence[int] | np.ndarray,
              groups: Sequence[str] | None = None, n_boot: int = N_BOOT, seed: int = 0,
              level: float = CI_LEVEL) -> dict[str, dict[str, Any]]:
    """Point value and percentile interval of every statistic, over the same replicates.

    ``statistics[name](idx)`` computes the statistic on the images ``idx`` (all images for the point
    value); a replicate where it is undefined (None / NaN) is left out and counted in ``n_undefined``.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    everything = np.arange(y.size)
    reps = replicates(y, groups, n_boot, seed) if y.size else Replicates([], 0)
    out: dict[str, dict[str, Any]] = {}
    for name, fn in statistics.items():
        value = _clean(fn(everything)) if y.size else None
        draws = _draws(fn, reps)
        lo = hi = None
        if value is not None and len(draws) >= max(10, len(reps.indices) // 2):
            lo, hi = (float(q) for q in np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2]))
        out[name] = {"value": value, "ci_low": lo, "ci_high": hi}
    meta = {"n_boot": int(n_boot), "level": level, "seed": seed,
            "resampled_by": "lesion" if groups is not None else "image", "stratified_by": "class"}
    return {"metrics": out, "bootstrap": meta}  # type: ignore[dict-item]


def _draws(fn: Statistic, reps: Replicates) -> np.ndarray:
    """The statistic's defined values over the replicates, in replicate order (undefined ones left out)."""
    if isinstance(fn, Vectorised):
        values = np.concatenate([fn.on_block(b) for b in reps.blocks] or [np.zeros(0)])
        return values[~np.isnan(values)]
    return np.asarray([v for v in (_clean(fn(idx)) for idx in reps.indices) if v is not None], dtype=np.float64)


def _clean(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if np.isnan(v) else v
