"""Classification metrics on numpy arrays (no torch): what every run reports on val and test.

All functions take integer labels ``y_true`` [N] and either predicted labels [N] or class
probabilities ``probs`` [N, K] (rows summing to 1). :func:`softmax` turns logits into probabilities
(float64, numerically stable); :func:`classification_report` computes everything at once.

Classes absent from ``y_true`` (possible in a small val/test split of a rare class)
-------------------------------------------------------------------------------------
Recall, F1, one-vs-rest AUC and average precision are undefined for a class with no true sample.
Such a class gets ``None`` (JSON ``null``) in the per-class table and is **left out of every macro
average** (balanced accuracy, macro-F1, macro-AUC, macro-AP), which are therefore means over the
classes *present* in ``y_true``; ``classes_absent`` in the report lists them. Predictions *of* an
absent class are not ignored: they are errors that lower the recall of the true classes (and the
precision of the absent class is then 0). A macro average over zero present classes is ``None``.
Precision of a class that is never predicted is 0 (sklearn's ``zero_division=0`` convention).

ECE is the top-label expected calibration error with 15 equal-width confidence bins
``(0, 1/15], (1/15, 2/15], …`` (Guo et al., 2017): ``Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|``.
NLL is the mean ``−log p(y_true)``, with probabilities clipped at 1e-12.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

ECE_BINS = 15
_EPS = 1e-12


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _labels(y: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(y, dtype=np.int64).reshape(-1)


def _num_classes(num_classes: int | None, *arrays: np.ndarray) -> int:
    if num_classes is not None:
        return int(num_classes)
    return int(max((int(a.max()) + 1 for a in arrays if a.size), default=0))


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int | None = None) -> np.ndarray:
    """``cm[i, j]`` = number of samples of true class ``i`` predicted as ``j`` (int64, K×K)."""
    t, p = _labels(y_true), _labels(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    k = _num_classes(num_classes, t, p)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    t, p = _labels(y_true), _labels(y_pred)
    return float((t == p).mean()) if t.size else float("nan")


def per_class_prf(cm: np.ndarray) -> dict[str, list[float | None]]:
    """Per-class precision / recall / F1 / support from a confusion matrix (None where undefined)."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision, recall, f1 = [], [], []
    for c in range(cm.shape[0]):
        prec = tp[c] / predicted[c] if predicted[c] > 0 else 0.0
        if support[c] == 0:
            precision.append(float(prec))
            recall.append(None)
            f1.append(None)
            continue
        rec = tp[c] / support[c]
        precision.append(float(prec))
        recall.append(float(rec))
        f1.append(float(2 * prec * rec / (prec + rec)) if prec + rec > 0 else 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(int).tolist()}


def _mean_defined(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def balanced_accuracy(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int | None = None) -> float | None:
    """Mean recall over the classes present in ``y_true``."""
    return _mean_defined(per_class_prf(confusion_matrix(y_true, y_pred, num_classes))["recall"])


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int | None = None) -> float | None:
    """Mean F1 over the classes present in ``y_true``."""
    return _mean_defined(per_class_prf(confusion_matrix(y_true, y_pred, num_classes))["f1"])


def _binary_auc(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    """ROC AUC = P(score_pos > score_neg) + ½ P(tie), by ranks (Mann–Whitney U)."""
    scores = np.concatenate([pos_scores, neg_scores])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks for ties
    i = 0
    n = scores.size
    while i < n:
        j = i
        while j + 1 < n and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    n_pos, n_neg = pos_scores.size, neg_scores.size
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def binary_auc(is_pos: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for the positives ``is_pos`` (None when either side is empty)."""
    pos = np.asarray(is_pos, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if pos.all() or not pos.any():
        return None
    # vectorised Mann–Whitney U with average ranks for ties (the bootstrap calls this thousands of times)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _average_precision(is_pos: np.ndarray, scores: np.ndarray) -> float:
    """Step-wise AP = Σ_n (R_n − R_{n−1}) P_n over distinct thresholds (sklearn's definition)."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], is_pos[order].astype(np.float64)
    distinct = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / y.sum()
    recall_prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - recall_prev) * precision))


def per_class_auc_ap(y_true: Sequence[int], probs: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """One-vs-rest ROC AUC and average precision per class (None where undefined).

    AUC is undefined for a class absent from ``y_true`` or one that is every sample; AP for an
    absent class.
    """
    t = _labels(y_true)
    p = np.asarray(probs, dtype=np.float64)
    aucs: list[float | None] = []
    aps: list[float | None] = []
    for c in range(p.shape[1]):
        pos = t == c
        n_pos = int(pos.sum())
        if n_pos == 0:
            aucs.append(None)
            aps.append(None)
            continue
        aps.append(_average_precision(pos, p[:, c]))
        aucs.append(_binary_auc(p[pos, c], p[~pos, c]) if n_pos < t.size else None)
    return aucs, aps


def macro_auc(y_true: Sequence[int], probs: np.ndarray) -> float | None:
    return _mean_defined(per_class_auc_ap(y_true, probs)[0])


def macro_ap(y_true: Sequence[int], probs: np.ndarray) -> float | None:
    return _mean_defined(per_class_auc_ap(y_true, probs)[1])


def reliability_bins(y_true: Sequence[int], probs: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per-bin count, mean confidence and accuracy of the top label (bins ``((b-1)/n, b/n]``)."""
    t = _labels(y_true)
    p = np.asarray(probs, dtype=np.float64)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    # bin b holds conf in ((b)/n, (b+1)/n]; conf == 0 (impossible for a softmax) goes to bin 0
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        mean_acc = np.where(count > 0, acc_sum / np.maximum(count, 1), np.nan)
    return {"count": count, "confidence": mean_conf, "accuracy": mean_acc,
            "edges": np.linspace(0.0, 1.0, n_bins + 1)}


def ece(y_true: Sequence[int], probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width bins."""
    b = reliability_bins(y_true, probs, n_bins)
    n = b["count"].sum()
    if n == 0:
        return float("nan")
    mask = b["count"] > 0
    gap = np.abs(b["accuracy"][mask] - b["confidence"][mask])
    return float(np.sum(b["count"][mask] / n * gap))


def nll(y_true: Sequence[int], probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    t = _labels(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if t.size == 0:
        return float("nan")
    return float(-np.mean(np.log(np.clip(p[np.arange(t.size), t], _EPS, 1.0))))


def nll_from_logits(y_true: Sequence[int], logits: np.ndarray, temperature: float = 1.0) -> float:
    """Mean NLL computed with log-sum-exp (exact even for confident, wrong predictions)."""
    t = _labels(y_true)
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(lse - z[np.arange(t.size), t])) if t.size else float("nan")


def prior_restored_logits(logits: np.ndarray, class_weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Logits of the real class prior from a model trained with class-weighted cross-entropy.

    Weighted CE with weights ``w`` makes the softmax estimate ``q(c|x) ∝ w_c · p(c|x)`` (the posterior
    of a training set in which class c is w_c times as frequent), which is what balanced accuracy wants.
    Subtracting ``log w_c`` undoes the tilt, so the argmax becomes the accuracy-optimal (Bayes) decision
    for the class frequencies seen in training and the softmax a posterior at those frequencies. A class
    with weight 0 (absent from training) gets ``-inf``.
    """
    w = np.asarray(class_weights, dtype=np.float64).reshape(-1)
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != w.shape[0]:
        raise ValueError(f"logits of shape {z.shape} do not match {w.shape[0]} class weights")
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"class weights must be finite and non-negative, got {w.tolist()}")
    with np.errstate(divide="ignore"):
        log_w = np.where(w > 0, np.log(w), np.inf)  # an untrained class can never win
    return z - log_w[None, :]


def classification_report(
    y_true: Sequence[int] | np.ndarray,
    logits: np.ndarray | None = None,
    *,
    probs: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    temperature: float = 1.0,
    n_bins: int = ECE_BINS,
) -> dict[str, Any]:
    """Every metric of one split as a JSON-friendly dict.

    Pass ``logits`` (preferred: NLL via log-sum-exp; ``temperature`` divides them) or ``probs``.
    Scalar keys: accuracy, balanced_accuracy, macro_f1, macro_auc, macro_ap, ece, nll, n.
    ``per_class``: {name: {precision, recall, f1, support, auc, ap}}; ``confusion_matrix``: K×K list;
    ``classes_absent``: names of classes with no sample in ``y_true`` (left out of macro averages).
    """
    t = _labels(y_true)
    if logits is None and probs is None:
        raise ValueError("pass logits or probs")
    if logits is not None:
        logits = np.asarray(logits, dtype=np.float64)
        p = softmax(logits, temperature)
        loss = nll_from_logits(t, logits, temperature)
    else:
        p = np.asarray(probs, dtype=np.float64)
        loss = nll(t, p)
    if p.ndim != 2 or p.shape[0] != t.size:
        raise ValueError(f"scores of shape {p.shape} do not match {t.size} labels")
    k = p.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} score columns")
    pred = p.argmax(axis=1)
    cm = confusion_matrix(t, pred, k)
    prf = per_class_prf(cm)
    aucs, aps = per_class_auc_ap(t, p)
    per_class = {
        names[c]: {
            "precision": prf["precision"][c],
            "recall": prf["recall"][c],
            "f1": prf["f1"][c],
            "support": prf["support"][c],
            "auc": aucs[c],
            "ap": aps[c],
        }
        for c in range(k)
    }
    return {
        "n": int(t.size),
        "accuracy": accuracy(t, pred),
        "balanced_accuracy": _mean_defined(prf["recall"]),
        "macro_f1": _mean_defined(prf["f1"]),
        "macro_auc": _mean_defined(aucs),
        "macro_ap": _mean_defined(aps),
        "ece": ece(t, p, n_bins),
        "nll": loss,
        "temperature": float(temperature),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "classes_absent": [names[c] for c in range(k) if prf["support"][c] == 0],
    }


SCALAR_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "macro_ap", "ece", "nll")


def scalars(report: dict[str, Any], prefix: str = "") -> dict[str, float | None]:
    """The scalar entries of a :func:`classification_report`, optionally prefixed (``val_``…)."""
    return {f"{prefix}{k}": report.get(k) for k in SCALAR_KEYS}


def paired_bootstrap_balanced_accuracy_delta(y_true: Sequence[int], preds_a: Sequence[Sequence[int]],
                                             preds_b: Sequence[Sequence[int]], num_classes: int,
                                             n_boot: int = 2000, seed: int = 0,
                                             ci: float = 0.95) -> dict[str, Any]:
    """Mean over seeds of Bal-ACC(a) − Bal-ACC(b) on the same test images, with a paired bootstrap CI.

    ``preds_a[k]`` and ``preds_b[k]`` are the predicted labels of seed ``k`` of two methods on the
    same images. Every bootstrap replicate resamples the *images* (with replacement, one draw shared
    by every seed and both methods, so the pairing is kept) and recomputes the mean per-seed
    difference of balanced accuracy — "seeds pooled" in one statistic. A class that a replicate
    happens to leave out is skipped in both balanced accuracies alike. Returns the point estimate
    (full test set), the per-seed differences and the percentile interval.
    """
    y = _labels(y_true)
    a = np.asarray(preds_a, dtype=np.int64).reshape(-1, y.size)
    b = np.asarray(preds_b, dtype=np.int64).reshape(-1, y.size)
    if a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(f"need the same number (>= 1) of seeds for both methods, got {a.shape[0]} and {b.shape[0]}")
    onehot = np.eye(num_classes, dtype=np.float64)[y]  # [N, C]
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(y.size, np.full(y.size, 1.0 / y.size), size=n_boot).astype(np.float64)  # [B, N]
    per_class_n = counts @ onehot  # [B, C]
    present = per_class_n > 0

    def bal(pred: np.ndarray, w: np.ndarray, n: np.ndarray, ok: np.ndarray) -> np.ndarray:
        hits = w @ (onehot * (pred == y)[:, None])  # [B, C]
        rec = np.where(ok, hits / np.maximum(n, 1e-12), 0.0)
        return rec.sum(1) / np.maximum(ok.sum(1), 1)

    full_w = np.ones((1, y.size))
    full_n = full_w @ onehot
    per_seed = [float(bal(a[k], full_w, full_n, full_n > 0)[0] - bal(b[k], full_w, full_n, full_n > 0)[0])
                for k in range(a.shape[0])]
    boot = np.mean([bal(a[k], counts, per_class_n, present) - bal(b[k], counts, per_class_n, present)
                    for k in range(a.shape[0])], axis=0)
    lo, hi = np.quantile(boot, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return {"delta": float(np.mean(per_seed)), "per_seed": per_seed, "ci_low": float(lo), "ci_high": float(hi),
            "ci": ci, "n_boot": int(n_boot), "n_images": int(y.size), "seeds": int(a.shape[0])}
