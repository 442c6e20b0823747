"""Out-of-distribution signal for ``/predict``: is this image like the ones the model was validated on?

A classifier always answers with *some* class: a 1×1 black PNG got ``vasc 0.742, abstain: false``. Two
cheap scores, both fitted on the **validation** images at training time (``distill``) and stored in the
manifest (``calibration.ood``), so every artifact exported from that checkpoint carries them and
``serve`` needs neither torch nor the data:

* **image statistics** — the Mahalanobis distance of seven numbers describing the model's input image
  (mean and log-std of R, G, B in [0, 1], and the log of the mean absolute neighbour difference, a
  texture/noise level) from those of the validation images. Flat colours (std ≈ 0), noise (texture far
  above any photo's), screenshots (white, sharp edges) and most non-skin photos fall far outside.
* **energy** — ``T·logsumexp(logits/T)`` (Liu et al., NeurIPS 2020), low when no class fits.

Each threshold is the validation quantile ``quantile`` (0.99 by default): about 1 % of in-distribution
images exceed each, so about 2 % of real lesions abstain for this reason at most; the fitted rates are
stored beside the thresholds. numpy only: ``serve`` runs without torch.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

FEATURES = ("mean_r", "mean_g", "mean_b", "log_std_r", "log_std_g", "log_std_b", "log_texture")
METHOD = "image-statistics Mahalanobis + logit energy, thresholds at a validation quantile"
_EPS = 1e-3


def unnormalize(x: np.ndarray, mean: Iterable[float], std: Iterable[float], layout: str = "NCHW") -> np.ndarray:
    """A preprocessed image (C,H,W or H,W,C; normalised) back to [0, 1] pixels, as C,H,W."""
    chw = np.asarray(x, dtype=np.float32)
    if layout == "NHWC":
        chw = chw.transpose(2, 0, 1)
    m = np.asarray(tuple(mean), np.float32).reshape(3, 1, 1)
    s = np.asarray(tuple(std), np.float32).reshape(3, 1, 1)
    return chw * s + m


def image_statistics(pixels: np.ndarray) -> np.ndarray:
    """The seven :data:`FEATURES` of one C,H,W image in [0, 1]."""
    px = np.clip(np.asarray(pixels, dtype=np.float64), 0.0, 1.0)
    mean = px.mean(axis=(1, 2))
    std = px.std(axis=(1, 2))
    texture = 0.5 * (np.abs(np.diff(px, axis=1)).mean() + np.abs(np.diff(px, axis=2)).mean()) if min(px.shape[1:]) > 1 else 0.0
    return features(mean, std, texture)


def features(mean: np.ndarray, std: np.ndarray, texture: float) -> np.ndarray:
    """The seven :data:`FEATURES` from per-channel mean and std and the texture level: one formula for numpy's
    :func:`image_statistics` and OpenCV's (:mod:`lesionlite.opencv_view`)."""
    return np.concatenate([mean, np.log(std + _EPS), [np.log(texture + _EPS)]])


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``T·logsumexp(z/T)`` per row (higher = more like the training data)."""
    z = np.atleast_2d(np.asarray(logits, dtype=np.float64)) / float(temperature)
    m = z.max(axis=1, keepdims=True)
    return float(temperature) * (m[:, 0] + np.log(np.exp(z - m).sum(axis=1)))


def fit(stats: np.ndarray, logits: np.ndarray | None, temperature: float = 1.0, quantile: float = 0.99) -> dict[str, Any]:
    """Fit both scores on validation images: ``stats`` [N, 7] from :func:`image_statistics`, ``logits`` [N, C].

    The covariance is shrunk towards its diagonal scale (a few hundred images, seven features), so
    the distance stays defined when a feature barely varies.
    """
    stats = np.asarray(stats, dtype=np.float64)
    if stats.ndim != 2 or stats.shape[1] != len(FEATURES) or len(stats) < 10:
        raise ValueError(f"need at least 10 rows of {len(FEATURES)} image statistics, got shape {stats.shape}")
    mu = stats.mean(axis=0)
    cov = np.cov(stats, rowvar=False)
    shrink = 0.05
    cov = (1 - shrink) * cov + shrink * np.diag(np.diag(cov)) + 1e-6 * np.eye(len(FEATURES))
    precision = np.linalg.inv(cov)
    d2 = _mahalanobis2(stats, mu, precision)
    out: dict[str, Any] = {
        "method": METHOD, "features": list(FEATURES), "quantile": float(quantile), "n": int(len(stats)),
        "mean": mu.tolist(), "precision": precision.tolist(),
        "image_threshold": float(np.quantile(d2, quantile)),
        "energy_threshold": None,
    }
    flagged = d2 > out["image_threshold"]
    if logits is not None and len(logits):
        e = energy(logits, temperature)
        out["energy_threshold"] = float(np.quantile(e, 1.0 - quantile))
        out["temperature"] = float(temperature)
        flagged = flagged | (e < out["energy_threshold"])
    out["val_abstain_rate"] = float(flagged.mean())
    return out


def _mahalanobis2(x: np.ndarray, mu: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = np.atleast_2d(x) - mu
    return np.einsum("ij,jk,ik->i", d, precision, d)


def assess(cal: dict[str, Any], stats: np.ndarray, logits: np.ndarray | None) -> dict[str, Any]:
    """Scores of one image against a fitted ``cal``: ``{out_of_distribution, image_distance, energy, reasons}``."""
    d2 = float(_mahalanobis2(np.asarray(stats, np.float64), np.asarray(cal["mean"]), np.asarray(cal["precision"]))[0])
    reasons = []
    if d2 > float(cal["image_threshold"]):
        reasons.append("image statistics unlike the validation images")
    e = None
    if logits is not None and cal.get("energy_threshold") is not None:
        e = float(energy(logits, float(cal.get("temperature", 1.0)))[0])
        if e < float(cal["energy_threshold"]):
            reasons.append("no class fits (low logit energy)")
    return {"out_of_distribution": bool(reasons), "image_distance": d2, "energy": e, "reasons": reasons}


def out_of_distribution(cal: dict[str, Any], stats: np.ndarray, logits: np.ndarray | None = None) -> np.ndarray:
    """:func:`assess`'s verdict for many images at once (``stats`` [N, 7], ``logits`` [N, C] or None): bool [N].

    For evaluating a whole split (``lesionlite evaluate``, export's evidence); ``serve`` assesses one image
    and keeps the reasons.
    """
    d2 = _mahalanobis2(np.asarray(stats, np.float64), np.asarray(cal["mean"]), np.asarray(cal["precision"]))
    flags = d2 > float(cal["image_threshold"])
    if logits is not None and cal.get("energy_threshold") is not None:
        flags |= energy(logits, float(cal.get("temperature", 1.0))) < float(cal["energy_threshold"])
    return flags


def model_view_statistics(x: np.ndarray, cfg: Any, layout: str = "NCHW") -> np.ndarray:
    """:func:`image_statistics` of one preprocessed image (``cfg``: its ``PreprocessConfig``) as the model sees
    it: back to [0, 1] pixels and, where the artifact's graph downscales a larger input (a TFLite phone input),
    at the model's own side, where the statistics were fitted. ``serve`` and ``export``'s evidence both call it,
    so a served verdict and the exported OOD rate are computed alike.

    With an in-graph downscale the view is taken first and unnormalised after (the filter's weights sum to
    one, so the order changes only float rounding) on a quarter of the pixels; such artifacts normalise in
    their graph (mean 0, std 1), where unnormalising is the identity and is skipped. A whole-factor downscale
    goes through OpenCV where it is installed (:mod:`lesionlite.opencv_view`), else through numpy; the two
    agree to float32 rounding."""
    from lesionlite.preprocessing import model_size, model_view

    side = x.shape[-1] if layout == "NCHW" else x.shape[1]
    n = model_size(cfg)
    if n == side:  # the image itself, channels first
        return image_statistics(unnormalize(model_view(x, cfg, layout), cfg.mean, cfg.std, "NCHW"))  # type: ignore[arg-type]
    from lesionlite.opencv_view import view_statistics
    from lesionlite.whole_factor_resample import axis_plan

    hwc = x if layout == "NHWC" else x.transpose(1, 2, 0)
    rows, cols = axis_plan(hwc.shape[0], n), axis_plan(hwc.shape[1], n)
    if rows is not None and cols is not None:  # OpenCV where installed (~0.8 vs ~1.7 ms at 448 px), else numpy
        fast = view_statistics(hwc, rows, cols, cfg.mean, cfg.std)
        if fast is not None:
            return fast
    view = model_view(x, cfg, layout)  # type: ignore[arg-type]
    if not identity_normalization(cfg.mean, cfg.std):
        view = unnormalize(view, cfg.mean, cfg.std, "NCHW")
    return image_statistics(view)


def identity_normalization(mean: Iterable[float], std: Iterable[float]) -> bool:
    """Whether ``(x - mean) / std`` is the identity (mean 0, std 1: an artifact that normalises in its graph),
    so that a view's unnormalising can be skipped."""
    return all(float(m) == 0.0 for m in mean) and all(float(s) == 1.0 for s in std)


def view_backend(cfg: Any) -> str | None:
    """What computes :func:`model_view_statistics` for images preprocessed by ``cfg``: ``"opencv"``, ``"numpy"``,
    or None where the model sees its input as given (no view). ``serve`` logs it at start-up, because on a box
    without OpenCV a phone-input artifact's check costs ~1.7 instead of ~0.8 ms per request."""
    from lesionlite.opencv_view import usable
    from lesionlite.preprocessing import model_size
    from lesionlite.whole_factor_resample import axis_plan

    n, side = model_size(cfg), int(cfg.input_size)
    if n == side:
        return None
    plan = axis_plan(side, n)
    return "opencv" if plan is not None and usable(plan, plan) else "numpy"
