"""Metrics and temperature scaling against hand-computed values and sklearn."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from distill import metrics as M
from distill.calibration import calibrate, fit_temperature

Y = np.array([0, 0, 0, 1, 1, 2])
P = np.array([0, 0, 1, 1, 0, 2])


def test_confusion_matrix_by_hand() -> None:
    cm = M.confusion_matrix(Y, P, 3)
    assert cm.tolist() == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert M.confusion_matrix([0, 1], [1, 1], 4).shape == (4, 4)


def test_balanced_accuracy_and_macro_f1_by_hand() -> None:
    # recalls: 2/3, 1/2, 1 ; precisions: 2/3, 1/2, 1 -> F1 = recall here
    assert M.accuracy(Y, P) == pytest.approx(4 / 6)
    assert M.balanced_accuracy(Y, P, 3) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert M.macro_f1(Y, P, 3) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # asymmetric case: class 0 P = 1/2, R = 1 -> F1 = 2/3 ; class 1 P = 1, R = 1/2 -> F1 = 2/3
    assert M.macro_f1([0, 1, 1], [0, 0, 1], 2) == pytest.approx(2 / 3)
    prf = M.per_class_prf(M.confusion_matrix([0, 1, 1], [0, 0, 1], 2))
    assert prf["precision"] == pytest.approx([0.5, 1.0])
    assert prf["recall"] == pytest.approx([1.0, 0.5])
    assert prf["support"] == [1, 2]


def test_against_sklearn_on_random_data() -> None:
    from sklearn.metrics import average_precision_score, balanced_accuracy_score, f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    k, n = 5, 400
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    logits = np.round(logits, 1)  # create ties for the rank-based AUC / AP
    p = M.softmax(logits)
    pred = p.argmax(1)
    assert M.balanced_accuracy(y, pred, k) == pytest.approx(balanced_accuracy_score(y, pred))
    assert M.macro_f1(y, pred, k) == pytest.approx(f1_score(y, pred, average="macro"))
    assert M.macro_auc(y, p) == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    onehot = np.eye(k)[y]
    assert M.macro_ap(y, p) == pytest.approx(average_precision_score(onehot, p, average="macro"))


def test_auc_by_hand() -> None:
    # class 0 vs rest: positives score 0.8, 0.4 ; negatives 0.6, 0.2 -> pairs won 3 of 4 -> AUC 0.75
    probs = np.array([[0.8, 0.2], [0.4, 0.6], [0.6, 0.4], [0.2, 0.8]])
    y = np.array([0, 0, 1, 1])
    aucs, aps = M.per_class_auc_ap(y, probs)
    assert aucs == pytest.approx([0.75, 0.75])
    # AP class 0: ranking 0.8(+), 0.6(-), 0.4(+), 0.2(-) -> 1/2·1 + 1/2·2/3
    assert aps[0] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # a tie between a positive and a negative counts one half
    assert M.per_class_auc_ap([0, 1], np.array([[0.5, 0.5], [0.5, 0.5]]))[0] == pytest.approx([0.5, 0.5])


def test_ece_and_nll_by_hand() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.35, 0.65], [0.35, 0.65]])
    y = np.array([0, 1, 1, 1])
    # bin of 0.9: acc 0.5, conf 0.9 ; bin of 0.65: acc 1, conf 0.65
    assert M.ece(y, probs) == pytest.approx(0.5 * 0.4 + 0.5 * 0.35)
    assert M.nll(y, probs) == pytest.approx(-(math.log(0.9) + math.log(0.1) + 2 * math.log(0.65)) / 4)
    assert M.ece(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(0.0)
    logits = np.log(probs)
    assert M.nll_from_logits(y, logits) == pytest.approx(M.nll(y, probs))


def test_class_absent_from_labels_is_left_out_of_macro_averages() -> None:
    y = np.array([0, 0, 1, 1])
    logits = np.array([[3.0, 0, 0], [0, 0, 3.0], [0, 3.0, 0], [0, 3.0, 0]])  # one sample predicted as absent class 2
    rep = M.classification_report(y, logits, class_names=["a", "b", "c"])
    assert rep["classes_absent"] == ["c"]
    assert rep["per_class"]["c"]["recall"] is None and rep["per_class"]["c"]["auc"] is None
    assert rep["per_class"]["c"]["precision"] == 0.0  # its one prediction was wrong
    assert rep["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)  # mean over present classes a, b
    assert rep["accuracy"] == pytest.approx(0.75)
    assert rep["confusion_matrix"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    json.dumps(rep)  # JSON-serialisable (None, not NaN)


def test_report_keys_and_temperature() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 50)
    logits = rng.normal(size=(50, 3))
    rep = M.classification_report(y, logits, class_names=["a", "b", "c"], temperature=2.0)
    for k in M.SCALAR_KEYS:
        assert k in rep
    assert rep["nll"] == pytest.approx(M.nll(y, M.softmax(logits, 2.0)))
    assert M.scalars(rep, "val_")["val_accuracy"] == rep["accuracy"]


@pytest.mark.parametrize("t_true", [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_known_temperature(t_true: float) -> None:
    rng = np.random.default_rng(42)
    n, k = 20000, 6
    z = rng.normal(scale=3.0, size=(n, k))
    p = M.softmax(z, t_true)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)  # labels drawn from softmax(z / T)
    t_fit = fit_temperature(z, y)
    assert t_fit == pytest.approx(t_true, rel=0.05)
    res = calibrate(z * 1.0, y)
    assert res.nll_after <= res.nll_before + 1e-12
    if t_true != 1.0:
        assert res.ece_after < res.ece_before


def test_temperature_degenerate_inputs() -> None:
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    t = fit_temperature(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]))  # separable: T at the lower bound
    assert t == pytest.approx(0.05, rel=0.02)
    t = fit_temperature(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([0, 1]))  # always wrong: T at the upper bound
    assert t == pytest.approx(20.0, rel=0.02)


def test_prior_restored_logits_undo_class_weighting_exactly() -> None:
    """A model trained with weighted CE estimates q ∝ w·p; restoring the prior gives back p's argmax (the
    accuracy-optimal decision), which on imbalanced data beats the tilted argmax on accuracy."""
    from distill.metrics import prior_restored_logits

    rng = np.random.default_rng(0)
    prior = np.array([0.05, 0.1, 0.85])
    n = 4000
    y = rng.choice(3, size=n, p=prior)
    lik = rng.dirichlet(np.ones(3) * 0.7, size=n)  # noisy likelihoods
    lik[np.arange(n), y] += 0.6
    p = lik * prior
    p /= p.sum(1, keepdims=True)
    w = 1.0 / (3 * prior)  # the project's w_c = N / (K N_c)
    q_logits = np.log(p * w) + 5.0  # any per-row shift is allowed in logits
    restored = prior_restored_logits(q_logits, w)
    assert np.array_equal(restored.argmax(1), p.argmax(1))
    np.testing.assert_allclose(M.softmax(restored), p, atol=1e-12)
    assert M.accuracy(y, restored.argmax(1)) > M.accuracy(y, q_logits.argmax(1)) + 0.02
    with pytest.raises(ValueError, match="class weights"):
        prior_restored_logits(q_logits, [1.0, 2.0])
    assert np.isneginf(prior_restored_logits(q_logits, [1.0, 0.0, 1.0])[:, 1]).all()


def test_logits_in_batches_matches_one_forward_for_any_batch_size():
    import torch

    from distill.inference import logits_in_batches

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    x = np.random.default_rng(0).standard_normal((10, 3, 2, 2)).astype(np.float32)
    with torch.no_grad():
        whole = model(torch.from_numpy(x)).numpy()
    for bs in (1, 3, 10, 256):
        np.testing.assert_allclose(logits_in_batches(model, x, bs), whole, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        logits_in_batches(model, x, 0)
