"""What a clinical team reads off a skin-lesion classifier: a referral score, an operating point, and
the figures around it with confidence intervals (numpy only: ``serve`` and ``bench`` need no torch).

**Referral score.** Argmax answers "which class is most likely", but a clinic decides "refer or
not" for a *target* (``lesionlite.referral``): melanoma (``mel``: the melanoma probability), any
malignancy (``malignant``: the summed probability of mel, bcc and akiec/AK/SCC where the model has them)
or melanoma among melanocytic lesions (``melanocytic``: P(mel) / (P(mel) + P(nv))).

**Operating point.** The threshold on that score that reaches a declared sensitivity (default 0.90)
on the **validation** split — the largest threshold at which at least that share of the validation
positives score at or above it. It is never fitted on test or external images: those only *check*
it, and the sensitivity they show at that threshold is the honest figure (it is usually below the
target on another clinic's images).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from distill import replicate_stats as rs
from distill.bootstrap import N_BOOT, bootstrap
from lesionlite.classes import class_index
from lesionlite.errors import LesionliteError
from lesionlite.referral import (
    DEFAULT_TARGET,
    referral_scores,
    resolve_target,
    scores_for_operating_point,
    target_classes,
)

DEFAULT_SENSITIVITY = 0.90


def positive_classes(class_names: Sequence[str], target: str) -> list[int]:
    """Output indices whose probabilities make up the referral score of ``target`` (its numerator)."""
    return target_classes(class_names, target)[0]


def threshold_for_sensitivity(scores: np.ndarray, is_pos: np.ndarray, sensitivity: float) -> float:
    """The largest threshold ``t`` with ``mean(scores[pos] >= t) >= sensitivity``."""
    if not 0.0 < sensitivity <= 1.0:
        raise LesionliteError(f"target sensitivity must be in (0, 1], got {sensitivity}")
    pos = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(is_pos, dtype=bool)])[::-1]
    if pos.size == 0:
        raise LesionliteError("no positive image to choose an operating point on")
    k = max(1, math.ceil(sensitivity * pos.size - 1e-9))
    return float(pos[k - 1])


def sensitivity_specificity(scores: np.ndarray, is_pos: np.ndarray, threshold: float) -> tuple[float | None, float | None]:
    """(sensitivity, specificity) of "refer when score ≥ threshold" (None where a side is empty)."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(is_pos, dtype=bool)
    refer = s >= threshold
    sens = float(refer[pos].mean()) if pos.any() else None
    spec = float((~refer[~pos]).mean()) if (~pos).any() else None
    return sens, spec


def melanocytic_scores(probs: np.ndarray, class_names: Sequence[str]) -> np.ndarray | None:
    """P(mel | mel or nv) per image (``lesionlite.referral``'s ``melanocytic`` score), reported beside the
    plain melanoma AUC for every model; None when the model lacks either class."""
    try:
        return referral_scores(probs, *target_classes(class_names, "melanocytic"))
    except LesionliteError:
        return None


@dataclass
class OperatingPoint:
    """A referral threshold and how it was chosen (stored in the manifest's ``calibration``)."""

    target: str
    positive_classes: list[str]
    sensitivity_target: float
    threshold: float
    chosen_on: str  # the split, always "val"
    n: int
    n_positive: int
    sensitivity: float  # achieved on the split it was chosen on
    specificity: float | None
    data_fingerprint: str | None = None
    #: the classes the score is conditioned on (``melanocytic``: mel, nv); None: every class
    given_classes: list[str] | None = None

    def scores(self, probs: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        """This operating point's referral score of each image."""
        return scores_for_operating_point(probs, class_names, self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OperatingPoint:
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except TypeError as exc:
            raise LesionliteError(f"malformed operating point in the manifest: {exc}") from None


def choose_operating_point(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                           target: str = DEFAULT_TARGET, sensitivity: float = DEFAULT_SENSITIVITY,
                           split: str = "val", data_fingerprint: str | None = None) -> OperatingPoint:
    """Choose the threshold on ``split`` (must be the validation split: test and external only check it)."""
    if split != "val":
        raise LesionliteError(f"an operating point is chosen on the validation split only, not on {split!r}")
    target = resolve_target(class_names, target)
    positives, given = target_classes(class_names, target)
    is_pos = np.isin(np.asarray(labels), positives)
    scores = referral_scores(probs, positives, given)
    t = threshold_for_sensitivity(scores, is_pos, sensitivity)
    sens, spec = sensitivity_specificity(scores, is_pos, t)
    return OperatingPoint(target=target, positive_classes=[class_names[j] for j in positives],
                          sensitivity_target=float(sensitivity), threshold=t, chosen_on=split, n=int(len(labels)),
                          n_positive=int(is_pos.sum()), sensitivity=float(sens or 0.0), specificity=spec,
                          data_fingerprint=data_fingerprint,
                          given_classes=None if given is None else [class_names[j] for j in given])


def clinical_metrics(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                     op: OperatingPoint | None = None, ood: np.ndarray | None = None,
                     groups: Sequence[str] | None = None, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Melanoma AUC, sensitivity/specificity at ``op``, Bal-ACC over the classes present, accuracy, ECE and
    out-of-distribution rate, each with a 95 % class-stratified (lesion-clustered) bootstrap interval.

    ``labels`` are in the model's output index space (map a foreign dataset first).
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    pred = p.argmax(1)
    mel = class_index(list(class_names), "mel")
    stats: dict[str, Any] = {
        "accuracy": rs.rate(pred == y),
        "balanced_accuracy_present": rs.balanced_accuracy(y, pred),
        "ece": rs.ece(y, p),
    }
    mc = melanocytic_scores(p, class_names)
    if mel is not None:
        stats["melanoma_auc"] = rs.auc(y == mel, p[:, mel])
    if mc is not None:
        stats["melanocytic_auc"] = rs.auc(y == mel, mc)
    if mel is not None:
        stats["melanoma_sensitivity_argmax"] = rs.rate(pred == mel, among=y == mel)
    if op is not None:
        pos_idx = [class_names.index(c) for c in op.positive_classes if c in class_names]
        score = op.scores(p, class_names)
        refer = score >= op.threshold
        is_pos = np.isin(y, pos_idx)
        stats["target_auc"] = rs.auc(is_pos, score)
        stats["sensitivity"] = rs.rate(refer, among=is_pos)
        stats["specificity"] = rs.rate(~refer, among=~is_pos)
        stats["referral_rate"] = rs.rate(refer)
    if ood is not None:
        stats["ood_rate"] = rs.rate(np.asarray(ood, dtype=bool))
    result = bootstrap(stats, y, groups, n_boot=n_boot, seed=seed)
    present = [class_names[c] for c in np.unique(y)]
    counts = {class_names[c]: int(n) for c, n in zip(*np.unique(y, return_counts=True))}
    result.update({"n": int(y.size), "classes_present": present, "class_counts": counts,
                   "operating_point": None if op is None else op.to_dict()})
    if mel is not None:
        result["n_melanoma"] = int((y == mel).sum())
    return result


def paired_deltas(labels: np.ndarray, probs: np.ndarray, ref_probs: np.ndarray, class_names: Sequence[str],
                  op: OperatingPoint | None = None, groups: Sequence[str] | None = None,
                  n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Change of a compressed model against its reference on the same images, with paired 95 % CIs.

    Every replicate draws one resample and computes both models on it, so the interval is of the
    difference itself (much narrower than two separate intervals would suggest).
    """
    y = np.asarray(labels, dtype=np.int64)
    p, r = np.asarray(probs, np.float64), np.asarray(ref_probs, np.float64)
    pred, ref_pred = p.argmax(1), r.argmax(1)
    mel = class_index(list(class_names), "mel")
    stats: dict[str, Any] = {
        "balanced_accuracy_present": rs.delta(rs.balanced_accuracy(y, pred), rs.balanced_accuracy(y, ref_pred)),
        "top1_agreement": rs.rate(pred == ref_pred),
    }
    if mel is not None:
        stats["melanoma_auc"] = rs.delta(rs.auc(y == mel, p[:, mel]), rs.auc(y == mel, r[:, mel]))
    mc, mc_ref = melanocytic_scores(p, class_names), melanocytic_scores(r, class_names)
    if mc is not None and mc_ref is not None:
        stats["melanocytic_auc"] = rs.delta(rs.auc(y == mel, mc), rs.auc(y == mel, mc_ref))
    if op is not None:
        pos_idx = [list(class_names).index(c) for c in op.positive_classes if c in class_names]
        refer, refer_ref = op.scores(p, class_names) >= op.threshold, op.scores(r, class_names) >= op.threshold
        is_pos = np.isin(y, pos_idx)
        stats["sensitivity"] = rs.delta(rs.rate(refer, among=is_pos), rs.rate(refer_ref, among=is_pos))
        stats["specificity"] = rs.delta(rs.rate(~refer, among=~is_pos), rs.rate(~refer_ref, among=~is_pos))
    return bootstrap(stats, y, groups, n_boot=n_boot, seed=seed)
