"""The vectorised bootstrap (``distill.replicate_stats`` over blocks of replicates) gives the figures the
per-replicate computation gave, bit for bit: same point values, same interval bounds, same replicates left
out as undefined. The reference here is the previous code, kept verbatim: one Python call per replicate on
the resampled index array (``binary_auc``'s sort, ``balanced_accuracy``'s confusion matrix, ``ece``'s bins).
"""
from __future__ import annotations

import numpy as np
import pytest

import distill.bootstrap as boot
from distill import replicate_stats as rs
from distill.bootstrap import bootstrap, replicate_indices, replicates
from distill.clinical import choose_operating_point, clinical_metrics, melanocytic_scores, paired_deltas
from distill.clinical import sensitivity_specificity as sens_spec
from distill.metrics import balanced_accuracy, binary_auc, ece

NAMES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
MEL = 4


def reference_bootstrap(stats, labels, groups, n_boot, seed, level=0.95):
    """``bootstrap`` as it was: every statistic called on every replicate's index array (drawn as before)."""
    y = np.asarray(labels, dtype=np.int64)
    reps = reference_replicates(y, groups, n_boot, seed)

    def clean(v):
        return None if v is None or np.isnan(float(v)) else float(v)

    out = {}
    for name, fn in stats.items():
        value = clean(fn(np.arange(y.size)))
        draws = [v for v in (clean(fn(i)) for i in reps) if v is not None]
        lo = hi = None
        if value is not None and len(draws) >= max(10, len(reps) // 2):
            lo, hi = (float(q) for q in np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2]))
        out[name] = {"value": value, "ci_low": lo, "ci_high": hi}
    return out


def reference_replicates(labels, groups, n_boot, seed):
    """The draw as it was: per replicate, per class (label order), one ``rng.integers`` call for its units."""
    rng = np.random.default_rng(seed)
    strata = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if groups is None:  # an image per unit, in image order
            unit = np.arange(idx.size)
        else:
            _, unit = np.unique(np.asarray([str(groups[i]) or f"#{i}" for i in idx]), return_inverse=True)
        sizes = np.bincount(unit)
        strata.append((idx[np.argsort(unit, kind="stable")], np.r_[0, np.cumsum(sizes)[:-1]], sizes))
    reps = []
    for _ in range(n_boot):
        parts = []
        for flat, starts, sizes in strata:
            pick = rng.integers(0, sizes.size, size=sizes.size)
            drawn = sizes[pick]
            offsets = np.repeat(starts[pick] - np.cumsum(np.r_[0, drawn[:-1]]), drawn)
            parts.append(flat[np.arange(drawn.sum()) + offsets])
        reps.append(np.concatenate(parts))
    return reps


def _delta(a, b):
    return None if a is None or b is None else float(a) - float(b)


def reference_clinical(y, p, op, ood):
    """``clinical_metrics``' statistics as they were written before (lambdas on index arrays)."""
    pred = p.argmax(1)
    mc = melanocytic_scores(p, NAMES)
    score = op.scores(p, NAMES)
    is_pos = np.isin(y, [NAMES.index(c) for c in op.positive_classes])
    return {
        "accuracy": lambda i: float((pred[i] == y[i]).mean()) if i.size else None,
        "balanced_accuracy_present": lambda i: balanced_accuracy(y[i], pred[i]),
        "ece": lambda i: ece(y[i], p[i]) if i.size else None,
        "melanoma_auc": lambda i: binary_auc(y[i] == MEL, p[i, MEL]),
        "melanocytic_auc": lambda i: binary_auc(y[i] == MEL, mc[i]),
        "melanoma_sensitivity_argmax":
            lambda i: float((pred[i][y[i] == MEL] == MEL).mean()) if (y[i] == MEL).any() else None,
        "target_auc": lambda i: binary_auc(is_pos[i], score[i]),
        "sensitivity": lambda i: sens_spec(score[i], is_pos[i], op.threshold)[0],
        "specificity": lambda i: sens_spec(score[i], is_pos[i], op.threshold)[1],
        "referral_rate": lambda i: float((score[i] >= op.threshold).mean()) if i.size else None,
        "ood_rate": lambda i: float(ood[i].mean()) if i.size else None,
    }


def reference_paired(y, p, r, op):
    pred, ref_pred = p.argmax(1), r.argmax(1)
    mc, mc_ref = melanocytic_scores(p, NAMES), melanocytic_scores(r, NAMES)
    s, s_ref = op.scores(p, NAMES), op.scores(r, NAMES)
    is_pos = np.isin(y, [NAMES.index(c) for c in op.positive_classes])
    t = op.threshold
    return {
        "balanced_accuracy_present": lambda i: _delta(balanced_accuracy(y[i], pred[i]),
                                                      balanced_accuracy(y[i], ref_pred[i])),
        "top1_agreement": lambda i: float((pred[i] == ref_pred[i]).mean()) if i.size else None,
        "melanoma_auc": lambda i: _delta(binary_auc(y[i] == MEL, p[i, MEL]), binary_auc(y[i] == MEL, r[i, MEL])),
        "melanocytic_auc": lambda i: _delta(binary_auc(y[i] == MEL, mc[i]), binary_auc(y[i] == MEL, mc_ref[i])),
        "sensitivity": lambda i: _delta(sens_spec(s[i], is_pos[i], t)[0], sens_spec(s_ref[i], is_pos[i], t)[0]),
        "specificity": lambda i: _delta(sens_spec(s[i], is_pos[i], t)[1], sens_spec(s_ref[i], is_pos[i], t)[1]),
    }


def _data(seed, n=400, decimals=1):
    """Labels with a tiny class (one df, two vasc), coarse probabilities (many ties), lesions of 1-4 images."""
    rng = np.random.default_rng(seed)
    y = rng.choice([0, 1, 2, 4, 5], size=n, p=[.05, .08, .12, .15, .60])
    y[:3] = [3, 6, 6]
    logits = rng.normal(size=(n, 7))
    logits[np.arange(n), y] += 1.2
    z = np.round(logits, decimals)
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    z2 = np.round(logits + rng.normal(scale=0.4, size=logits.shape), decimals)
    e2 = np.exp(z2 - z2.max(1, keepdims=True))
    r = e2 / e2.sum(1, keepdims=True)
    lesion = np.cumsum(rng.random(n) < 0.5)  # runs of images share a lesion id
    groups = [f"L{y[i]}-{lesion[i]}" if i % 7 else "" for i in range(n)]  # "" = an image of its own
    return y, p, r, groups, rng.random(n) < 0.03


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Several blocks per draw, so that the block boundaries are exercised too."""
    monkeypatch.setattr(boot, "BLOCK_CELLS", 20_000)


@pytest.mark.parametrize("seed", [0, 1, 11])
@pytest.mark.parametrize("clustered", [True, False])
def test_replicates_are_the_ones_the_per_class_draw_made(seed, clustered):
    y, _, _, groups, _ = _data(seed, n=300)
    y = np.r_[y, np.full(5, 7)]  # a class of one lesion of five images; df is one image (a bound of 1: no word drawn)
    g = (groups + ["one lesion"] * 5) if clustered else None
    for n_boot in (0, 1, 137):
        boot._MEMO.clear()
        got = replicate_indices(y, g, n_boot, seed)
        want = reference_replicates(y, g, n_boot, seed)
        assert len(got) == len(want) == n_boot
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("seed, clustered", [(0, True), (1, False), (2, True)])
def test_clinical_metrics_and_paired_deltas_equal_the_per_replicate_computation(seed, clustered):
    y, p, r, groups, ood = _data(seed)
    g = groups if clustered else None
    op = choose_operating_point(r, y, NAMES, "mel", 0.9)
    got = clinical_metrics(y, p, NAMES, op, ood, g, n_boot=300, seed=seed)["metrics"]
    assert got == reference_bootstrap(reference_clinical(y, p, op, ood), y, g, 300, seed)
    got = paired_deltas(y, p, r, NAMES, op, g, n_boot=300, seed=seed)["metrics"]
    assert got == reference_bootstrap(reference_paired(y, p, r, op), y, g, 300, seed)
    assert all(v["ci_low"] is not None for v in got.values())  # the comparison covered real intervals


def _building_blocks(y, p, r, rng):
    """Every vectorised statistic, on data chosen to make some replicates undefined (rare ``among``, rare
    positives, all-tied scores)."""
    n = y.size
    rare = np.zeros(n, bool)
    rare[rng.choice(n, 2, replace=False)] = True
    return {
        "rate": rs.rate(rng.random(n) < 0.4),
        "rate_rare": rs.rate(rng.random(n) < 0.5, among=rare),
        "auc": rs.auc(y == MEL, p[:, MEL]),
        "auc_rare_pos": rs.auc(rare, p[:, 0]),
        "auc_all_tied": rs.auc(y == MEL, np.full(n, 0.25)),
        "auc_distinct": rs.auc(y == 5, rng.random(n)),
        "balanced_accuracy": rs.balanced_accuracy(y, p.argmax(1)),
        "balanced_accuracy_pred_beyond": rs.balanced_accuracy(np.minimum(y, 5), p.argmax(1)),
        "ece": rs.ece(y, p),
        "delta": rs.delta(rs.auc(rare, p[:, 0]), rs.auc(y == MEL, r[:, MEL])),
        "mean_of_seeds": rs.mean([rs.auc(y == MEL, p[:, MEL]), rs.auc(y == MEL, r[:, MEL]), rs.auc(rare, p[:, 1])]),
    }


@pytest.mark.parametrize("seed", [3, 4])
def test_each_block_statistic_equals_its_per_index_form_on_every_replicate(seed):
    y, p, r, groups, _ = _data(seed, n=150, decimals=2)
    reps = replicates(y, groups, 200, seed)
    assert len(reps.blocks) > 1
    undefined = 0
    for name, stat in _building_blocks(y, p, r, np.random.default_rng(seed)).items():
        fast = np.concatenate([stat.on_block(b) for b in reps.blocks])
        slow = [stat(i) for i in reps.indices]
        slow = np.array([np.nan if v is None else float(v) for v in slow])
        np.testing.assert_array_equal(fast, slow, err_msg=name)  # NaN where undefined, else the same float
        undefined += int(np.isnan(slow).sum())
    assert undefined > 0  # undefined replicates were exercised


def test_bootstrap_leaves_out_the_same_undefined_replicates():
    y, p, r, groups, _ = _data(5, n=200)
    stats = _building_blocks(y, p, r, np.random.default_rng(5))
    plain = {k: (lambda i, f=f: f(i)) for k, f in stats.items()}  # not Vectorised: the per-replicate path
    got = bootstrap(stats, y, groups, n_boot=250, seed=7)["metrics"]
    assert got == reference_bootstrap(plain, y, groups, 250, 7)
    assert got == bootstrap(plain, y, groups, n_boot=250, seed=7)["metrics"]


def test_no_images_gives_no_figures():
    got = bootstrap({"rate": rs.rate(np.zeros(0, bool))}, np.zeros(0, np.int64), n_boot=20)
    assert got["metrics"]["rate"] == {"value": None, "ci_low": None, "ci_high": None}
