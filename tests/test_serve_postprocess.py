"""``serve.postprocess.summarize`` works on one row with Python floats; its answers are the batch functions' to the bit.

The reference below is how the answer was computed before (numpy argsort, the batch form of
:func:`lesionlite.referral.referral_scores` that export also uses to choose the threshold, numpy scalars
converted one by one); every field must be equal, compared as rendered JSON, over logits of many scales,
ties, classes with no probability at all and every referral target.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from lesionlite.referral import operating_point_indices, referral_scores
from serve.postprocess import calibrated_probabilities, normalized_entropy, summarize

NAMES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
OPERATING_POINTS = [
    None,
    {"target": "mel", "positive_classes": ["mel"], "threshold": 0.2, "sensitivity_target": 0.9},
    {"target": "malignant", "positive_classes": ["akiec", "bcc", "mel"], "threshold": 0.3},
    {"target": "melanocytic", "positive_classes": ["mel"], "given_classes": ["mel", "nv"], "threshold": 0.42},
]


def _reference(logits: np.ndarray, temperature: float, top_k: int, abstain: float, op: dict | None) -> dict[str, Any]:
    p = calibrated_probabilities(logits, temperature)
    order = np.argsort(-p, kind="stable")[: max(1, min(top_k, len(NAMES)))]
    reasons = [f"top probability {p.max():.2f} below the abstain threshold {abstain}"] if p.max() < abstain else []
    referral = None
    if op:
        idx, given = operating_point_indices(NAMES, op)
        score = float(referral_scores(np.atleast_2d(p), idx, given)[0])
        referral = {"target": op.get("target"), "positive_classes": [NAMES[i] for i in idx], "score": score,
                    "given_classes": op.get("given_classes"), "threshold": float(op["threshold"]),
                    "refer": bool(score >= float(op["threshold"])), "sensitivity_target": op.get("sensitivity_target"),
                    "chosen_on": op.get("chosen_on", "val")}
    return {"probabilities": {c: float(v) for c, v in zip(NAMES, p)},
            "top_k": [{"label": NAMES[i], "probability": float(p[i])} for i in order],
            "uncertainty": normalized_entropy(p), "abstain": bool(reasons), "abstain_reasons": reasons,
            "out_of_distribution": None, "referral": referral}


@pytest.mark.parametrize("op", OPERATING_POINTS, ids=lambda o: o["target"] if o else "none")
def test_summarize_equals_the_batch_computation_to_the_bit(op: dict | None) -> None:
    rng = np.random.default_rng(0)
    for t in range(2000):
        logits = (rng.standard_normal(len(NAMES)) * [0.1, 1, 5, 30, 200][t % 5]).astype(np.float32)
        if t % 17 == 0:
            logits[:] = logits[0]  # every class tied: the order must stay by index
        if t % 13 == 0:
            logits[4] = logits[5] = -1e4  # mel and nv without any probability: the melanocytic score is 0
        temperature, top_k = (1.0, 1.37, 0.8)[t % 3], (1, 3, 7, 10)[t % 4]
        got = summarize(logits, NAMES, temperature, top_k, 0.5, None, op)
        want = _reference(logits, temperature, top_k, 0.5, op)
        assert json.dumps(got) == json.dumps(want), (t, logits.tolist())
