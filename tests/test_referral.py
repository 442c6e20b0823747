"""Referral targets (lesionlite.referral): one score definition for export, evaluate and serve."""
from __future__ import annotations

import numpy as np
import pytest

from distill.clinical import choose_operating_point, clinical_metrics, melanocytic_scores
from lesionlite.errors import LesionliteError
from lesionlite.referral import (
    describe_score,
    referral_scores,
    resolve_target,
    scores_for_operating_point,
    target_classes,
)
from serve.postprocess import referral

NAMES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def test_melanocytic_score_is_melanoma_among_melanocytic() -> None:
    p = np.array([[0.0, 0.0, 0.0, 0.0, 0.2, 0.2, 0.6],   # mass leaked into vasc: 0.5 among mel/nv
                  [0.1, 0.1, 0.1, 0.1, 0.1, 0.4, 0.1]])
    pos, given = target_classes(NAMES, "melanocytic")
    assert (pos, given) == ([4], [4, 5])
    np.testing.assert_allclose(referral_scores(p, pos, given), [0.5, 0.2])
    np.testing.assert_allclose(melanocytic_scores(p, NAMES), [0.5, 0.2])
    np.testing.assert_allclose(referral_scores(p, *target_classes(NAMES, "mel")), [0.2, 0.1])
    assert describe_score({"positive_classes": ["mel"], "given_classes": ["mel", "nv"]}) == "P(mel | mel or nv)"
    assert describe_score({"positive_classes": ["akiec", "bcc", "mel"]}) == "P(akiec + bcc + mel)"


def test_zero_conditioning_mass_scores_zero_and_bad_targets_are_named() -> None:
    p = np.array([[0.5, 0.5, 0, 0, 0, 0, 0]], dtype=float)
    assert referral_scores(p, [4], [4, 5]).tolist() == [0.0]
    with pytest.raises(LesionliteError, match="unknown operating-point target 'mole'"):
        target_classes(NAMES, "mole")
    with pytest.raises(LesionliteError, match="needs the classes mel, nv"):
        target_classes(["mel", "bcc"], "melanocytic")
    assert melanocytic_scores(p[:, :2], ["mel", "bcc"]) is None


def test_operating_point_on_melanocytic_score_is_what_serve_thresholds() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 400)
    logits = rng.normal(size=(400, 7)) + 2.0 * np.eye(7)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    op = choose_operating_point(p, y, NAMES, target="melanocytic", sensitivity=0.8)
    assert op.given_classes == ["mel", "nv"] and op.positive_classes == ["mel"]
    score = referral_scores(p, [4], [4, 5])
    assert (score[y == 4] >= op.threshold).mean() >= 0.8
    np.testing.assert_allclose(scores_for_operating_point(p, NAMES, op.to_dict()), score)
    answer = referral(p[0], NAMES, op.to_dict())
    assert answer["score"] == pytest.approx(score[0]) and answer["refer"] == bool(score[0] >= op.threshold)
    assert answer["given_classes"] == ["mel", "nv"]
    m = clinical_metrics(y, p, NAMES, op, n_boot=50)
    assert m["metrics"]["melanocytic_auc"]["value"] == pytest.approx(m["metrics"]["target_auc"]["value"])
    # an older manifest's operating point (no given_classes) still scores the plain sum
    legacy = {k: v for k, v in op.to_dict().items() if k != "given_classes"}
    np.testing.assert_allclose(scores_for_operating_point(p, NAMES, legacy), p[:, 4])


def test_auto_target_is_melanocytic_where_the_model_has_mel_and_nv_else_mel() -> None:
    assert resolve_target(NAMES, "auto") == "melanocytic"
    assert resolve_target(["MEL", "NV", "BCC"], "auto") == "melanocytic"
    assert resolve_target(["mel", "other"], "auto") == "mel"
    assert resolve_target(NAMES, "malignant") == "malignant"
    y = np.array([0, 4, 5, 4, 1, 5])
    p = np.full((6, 7), 0.1) + 0.3 * np.eye(7)[y]
    p /= p.sum(1, keepdims=True)
    op = choose_operating_point(p, y, NAMES)  # default target: auto
    assert op.target == "melanocytic" and op.given_classes == ["mel", "nv"]


def test_the_one_image_score_equals_the_batch_score_bit_for_bit() -> None:
    from lesionlite.referral import referral_score, referral_scores

    rng = np.random.default_rng(1)
    logits = rng.standard_normal((3000, 7)) * rng.choice([0.1, 1.0, 8.0, 60.0], size=(3000, 1))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    probs[::50, [4, 5]] = 0.0  # no mass on the conditioning classes: both score 0
    for positives, given in (([4], None), ([0, 1, 4], None), ([4], [4, 5]), ([], None), ([0, 1, 4], [0, 1, 4, 5])):
        batch = referral_scores(probs, positives, given) if positives else np.zeros(len(probs))
        one = np.array([referral_score(p, positives, given) for p in probs])
        assert np.array_equal(one, batch), (positives, given)
