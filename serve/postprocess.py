"""Logits → calibrated probabilities, top-k, uncertainty and the abstain flag (numpy only)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from lesionlite.referral import operating_point_indices, referral_score


def calibrated_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) in float64 (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def normalized_entropy(p: np.ndarray) -> float:
    """Shannon entropy of ``p`` divided by log(C): 0 = certain, 1 = uniform."""
    p = np.asarray(p, dtype=np.float64)
    if p.size < 2:
        return 0.0
    nz = p[p > 0]
    h = float(-(nz * np.log(nz)).sum())
    return float(min(1.0, max(0.0, h / math.log(p.size))))


def referral(p: np.ndarray, class_names: list[str], op: dict[str, Any] | None) -> dict[str, Any] | None:
    """The operating-point decision for one image: refer when the target's score (``lesionlite.referral``)
    reaches the threshold.

    ``op`` is the manifest's ``calibration.operating_point`` (chosen on the validation split by export);
    None when the artifact carries none.
    """
    if not op:
        return None
    idx, given = operating_point_indices(class_names, op)
    score = referral_score(p, idx, given)
    threshold = float(op["threshold"])
    return {"target": op.get("target"), "positive_classes": [class_names[i] for i in idx], "score": score,
            "given_classes": op.get("given_classes"), "threshold": threshold, "refer": bool(score >= threshold),
            "sensitivity_target": op.get("sensitivity_target"), "chosen_on": op.get("chosen_on", "val")}


def summarize(logits: np.ndarray, class_names: list[str], temperature: float, top_k: int,
              abstain_threshold: float, ood: dict[str, Any] | None = None,
              operating_point: dict[str, Any] | None = None) -> dict[str, Any]:
    """The answer for one image. ``ood``: :func:`lesionlite.ood.assess`'s verdict, None when the model's
    manifest carries no out-of-distribution calibration (then ``out_of_distribution`` is null);
    ``operating_point``: the manifest's, for the ``referral`` decision (null without one)."""
    p = calibrated_probabilities(logits, temperature)
    # per-class work on Python floats (p.tolist() is exact): numpy's per-call cost dominates for ~7 classes
    pl = p.tolist()
    top = max(pl)
    order = sorted(range(len(pl)), key=lambda i: -pl[i])[: max(1, min(top_k, len(class_names)))]  # stable, as before
    reasons = []
    if top < abstain_threshold:
        reasons.append(f"top probability {top:.2f} below the abstain threshold {abstain_threshold}")
    if ood is not None and ood["out_of_distribution"]:
        reasons += [f"out of distribution: {r}" for r in ood["reasons"]]
    return {
        "probabilities": dict(zip(class_names, pl)),
        "top_k": [{"label": class_names[i], "probability": pl[i]} for i in order],
        "uncertainty": normalized_entropy(p),
        "abstain": bool(reasons),
        "abstain_reasons": reasons,
        "out_of_distribution": None if ood is None else bool(ood["out_of_distribution"]),
        "referral": referral(p, class_names, operating_point),
    }
