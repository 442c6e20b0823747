"""Seeded, stratified, grouped train/val/test splits.

Used for every dataset without an official split (HAM10000, ISIC 2019, image folders). Samples of
one group (a HAM10000 ``lesion_id``: several photos of the same lesion) always land in the same
split, so no lesion is both trained and tested on. Groups are stratified by their (majority) class
and assigned so that each split gets close to its fraction of the *images* of every class.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from lesionlite.errors import LesionliteError

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def grouped_stratified_split(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> list[np.ndarray]:
    """Return one sorted index array per fraction (default train/val/test = 70/10/20).

    ``groups=None`` (or an empty group id) puts each sample in its own group, i.e. a plain
    stratified split. Deterministic for a given (labels, groups, fractions, seed).
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = labels.shape[0]
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or len(fr) < 2 or (fr < 0).any() or fr.sum() <= 0:
        raise LesionliteError(f"bad split fractions {list(fractions)}")
    fr = fr / fr.sum()
    if groups is None:
        gids = [f"\x00{i}" for i in range(n)]
    else:
        if len(groups) != n:
            raise LesionliteError(f"{len(groups)} group ids for {n} samples")
        gids = [str(g) if g not in (None, "") else f"\x00{i}" for i, g in enumerate(groups)]

    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(gids):
        members[g].append(i)
    # A group's class: its majority label (ties → smallest label), so a mixed group stays whole.
    by_class: dict[int, list[str]] = defaultdict(list)
    for g in sorted(members):
        cls = Counter(labels[members[g]].tolist()).most_common()
        top = max(c for _, c in cls)
        by_class[min(lbl for lbl, c in cls if c == top)].append(g)

    rng = np.random.default_rng(seed)
    k = len(fr)
    assign: dict[str, int] = {}
    for cls in sorted(by_class):
        glist = by_class[cls]
        order = rng.permutation(len(glist))
        glist = [glist[j] for j in order]
        sizes = np.array([len(members[g]) for g in glist], dtype=np.float64)
        total = sizes.sum()
        bounds = np.cumsum(fr) * total
        # Assign each group by where the midpoint of its cumulative image range falls.
        mids = np.cumsum(sizes) - sizes / 2.0
        split_of = np.minimum(np.searchsorted(bounds, mids, side="right"), k - 1)
        # Every split with a positive fraction gets at least one group of the class when possible.
        if len(glist) >= k:
            for s in range(k):
                if fr[s] > 0 and not (split_of == s).any():
                    counts = np.bincount(split_of, minlength=k)
                    donor = int(np.argmax(counts))
                    cand = np.flatnonzero(split_of == donor)
                    split_of[cand[np.argmin(sizes[cand])]] = s
        for g, s in zip(glist, split_of.tolist()):
            assign[g] = int(s)

    split_ids = np.array([assign[g] for g in gids], dtype=np.int64)
    return [np.flatnonzero(split_ids == s) for s in range(k)]


def check_disjoint_groups(groups: Sequence[str], splits: Sequence[np.ndarray]) -> None:
    """Raise if any non-empty group id occurs in more than one split (a leak)."""
    seen: dict[str, int] = {}
    for s, idx in enumerate(splits):
        for i in idx.tolist():
            g = groups[i]
            if not g:
                continue
            if seen.setdefault(g, s) != s:
                raise LesionliteError(f"group {g!r} appears in two splits (leak)")
