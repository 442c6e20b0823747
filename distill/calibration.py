"""Temperature scaling (Guo et al., 2017) fitted on validation logits.

One scalar ``T > 0`` divides the logits; it changes confidences, never the predicted class. It is
fitted by minimising the validation NLL. ``NLL(β)`` with ``β = 1/T`` is convex (a log-sum-exp of
linear functions minus a linear function), so a bounded 1-D golden-section search over ``log β``
finds the global minimum; a few safeguarded Newton steps then polish it. ``T`` is searched in
``[T_MIN, T_MAX]`` (0.05 … 20) and 1.0 is returned for degenerate input (no samples).

The fitted ``T`` goes into the manifest (``calibration.temperature``) and every later stage divides
the logits by it before the softmax.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from distill.metrics import ece, nll_from_logits, softmax

T_MIN = 0.05
T_MAX = 20.0


@dataclass
class CalibrationResult:
    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _nll_beta(z: np.ndarray, y: np.ndarray, beta: float) -> tuple[float, float, float]:
    """NLL(β) and its first and second derivatives for logits ``z`` (float64)."""
    s = z * beta
    m = s.max(axis=1, keepdims=True)
    e = np.exp(s - m)
    tot = e.sum(axis=1, keepdims=True)
    p = e / tot
    lse = (m + np.log(tot))[:, 0]
    zy = z[np.arange(y.size), y]
    f = float(np.mean(lse - beta * zy))
    ez = (p * z).sum(axis=1)
    ez2 = (p * z * z).sum(axis=1)
    g = float(np.mean(ez - zy))
    h = float(np.mean(ez2 - ez * ez))
    return f, g, h


def fit_temperature(logits: np.ndarray, labels: np.ndarray, t_min: float = T_MIN, t_max: float = T_MAX,
                    tol: float = 1e-7) -> float:
    """The temperature minimising the NLL of ``softmax(logits / T)`` on (``logits``, ``labels``)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if z.ndim != 2 or z.shape[0] != y.size:
        raise ValueError(f"logits of shape {z.shape} do not match {y.size} labels")
    if y.size == 0 or not np.isfinite(z).all():
        return 1.0
    lo, hi = math.log(1.0 / t_max), math.log(1.0 / t_min)  # bounds on log β

    def f(lb: float) -> float:
        return _nll_beta(z, y, math.exp(lb))[0]

    gr = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - gr * (b - a), a + gr * (b - a)
    fc, fd = f(c), f(d)
    while b - a > 1e-4:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - gr * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + gr * (b - a)
            fd = f(d)
    beta = math.exp((a + b) / 2.0)
    # Newton polish in β (convex); keep a step only if it lowers the NLL and stays in bounds.
    best_f = _nll_beta(z, y, beta)[0]
    for _ in range(20):
        _, g, h = _nll_beta(z, y, beta)
        if h <= 1e-15:
            break
        nb = beta - g / h
        if not (math.exp(lo) <= nb <= math.exp(hi)):
            break
        nf = _nll_beta(z, y, nb)[0]
        if nf > best_f + 1e-15:
            break
        done = abs(nb - beta) < tol * max(1.0, beta)
        beta, best_f = nb, nf
        if done:
            break
    return float(1.0 / beta)


def calibrate(val_logits: np.ndarray, val_labels: np.ndarray) -> CalibrationResult:
    """Fit ``T`` on validation logits and report NLL/ECE on the same logits before and after."""
    z = np.asarray(val_logits, dtype=np.float64)
    y = np.asarray(val_labels, dtype=np.int64).reshape(-1)
    t = fit_temperature(z, y)
    return CalibrationResult(
        temperature=t,
        nll_before=nll_from_logits(y, z, 1.0),
        nll_after=nll_from_logits(y, z, t),
        ece_before=ece(y, softmax(z, 1.0)),
        ece_after=ece(y, softmax(z, t)),
    )
