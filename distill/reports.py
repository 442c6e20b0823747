"""Plots and metric files of a training run (matplotlib, Agg backend: no display needed).

* :func:`plot_training_curves`  — ``curves.png``: every training loss term, train accuracy and the
  validation loss / accuracy / balanced accuracy per epoch, the best epoch marked;
* :func:`plot_confusion_matrix` — ``confusion_matrix.png``: row-normalised (recall per true class)
  with counts, class names on both axes;
* :func:`plot_reliability`      — ``reliability.png``: top-label reliability diagram before and after
  temperature scaling, ECE in the title, each bin's sample count above its bar, tiny bins (< 10 samples
  or < 1 % of them) grey;
* :func:`write_metrics_json`    — ``metrics.json`` (NaN → null, atomic).

Callers put "SYNTHETIC DATA" in the title of runs on generated data; it is then in every figure.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill.metrics import ece, reliability_bins, softmax
from lesionlite.atomic import atomic_path, write_json_atomic
from lesionlite.fmt import plain_tree


def lazy_pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf → None, numpy → python."""
    return plain_tree(obj, _clean_leaf)


def _clean_leaf(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_metrics_json(path: str | Path, doc: dict[str, Any]) -> Path:
    return write_json_atomic(path, _clean(doc))


def save_figure(fig: Any, path: str | Path) -> Path:
    plt = lazy_pyplot()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Loss terms (left) and accuracies (right) per epoch from the loop's epoch records."""
    return save_figure(training_curves_figure(history, title), path)


def training_curves_figure(history: Sequence[dict[str, Any]], title: str = "") -> Any:
    """The Figure :func:`plot_training_curves` saves (epoch axes tick at whole epochs only)."""
    from matplotlib.ticker import MaxNLocator

    plt = lazy_pyplot()
    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(12, 4.2))
    epochs = [h["epoch"] for h in history]
    # loss terms only: a method's diagnostics (accuracies, kept fractions, weights) are not losses
    loss_keys = sorted({k for h in history for k in h if k.startswith("train_") and k != "train_acc"
                        and not any(t in k for t in ("acc", "kept", "psi", "weight", "frac"))})
    values = []
    for k in loss_keys:
        ys = [h.get(k) for h in history]
        values += [v for v in ys if isinstance(v, (int, float)) and v > 0]
        ax_l.plot(epochs, ys, marker=".", label=k.replace("train_", "train "))
    if any(h.get("val_loss") is not None for h in history):
        ax_l.plot(epochs, [h.get("val_loss") for h in history], marker=".", linestyle="--", color="k",
                  label="val loss (CE)")
    if values and max(values) / max(min(values), 1e-12) > 50:
        ax_l.set_yscale("log")  # terms of very different scales (e.g. SSD-KD's weighted terms)
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("loss")
    ax_l.set_title("losses (per term)")
    ax_l.grid(alpha=0.3)
    ax_l.legend(fontsize=8)
    for key, label, style in (("train_acc", "train acc", ":"), ("val_accuracy", "val acc", "--"),
                              ("val_balanced_accuracy", "val balanced acc", "-"), ("val_macro_f1", "val macro-F1", "-.")):
        vals = [h.get(key) for h in history]
        if any(v is not None for v in vals):
            ax_r.plot(epochs, [np.nan if v is None else v for v in vals], marker=".", linestyle=style, label=label)
    best = [h["epoch"] for h in history if h.get("best")]
    if best:
        ax_r.axvline(best[-1], color="gray", alpha=0.5, linestyle=":")
        ax_r.annotate(f"best epoch {best[-1]}", (best[-1], 0.02), fontsize=8, color="gray")
    ax_r.set_ylim(0, 1.02)
    ax_r.set_xlabel("epoch")
    ax_r.set_title("accuracy")
    ax_r.grid(alpha=0.3)
    ax_r.legend(fontsize=8)
    for ax in (ax_l, ax_r):  # epochs are whole numbers: no ticks at 1.2, 1.4, …
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (each row = recall distribution of one true class) with counts."""
    plt = lazy_pyplot()
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(4.5, 0.65 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(k), [f"{n} (n={int(r)})" for n, r in zip(class_names, rows[:, 0])])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title((title + "\n" if title else "") + "confusion matrix (row-normalised)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return save_figure(fig, path)


#: A reliability bin is "tiny" (drawn grey: its accuracy is too noisy to read) below either threshold.
TINY_BIN_MIN_COUNT = 10
TINY_BIN_MIN_FRACTION = 0.01
TINY_BIN_COLOR = "lightgray"
TINY_BIN_RULE = (f"< {TINY_BIN_MIN_COUNT} samples or < {TINY_BIN_MIN_FRACTION:.0%} of samples")


def tiny_bins(count: np.ndarray) -> np.ndarray:
    """True for non-empty bins holding fewer than 10 samples or fewer than 1 % of all samples."""
    count = np.asarray(count, dtype=np.float64)
    return (count > 0) & ((count < TINY_BIN_MIN_COUNT) | (count < TINY_BIN_MIN_FRACTION * count.sum()))


def plot_reliability(labels: np.ndarray, logits: np.ndarray, temperature: float, path: str | Path,
                     title: str = "", n_bins: int = 15) -> Path:
    """Reliability diagram (accuracy vs confidence per bin) before and after temperature scaling."""
    return save_figure(reliability_figure(labels, logits, temperature, title, n_bins), path)


def reliability_figure(labels: np.ndarray, logits: np.ndarray, temperature: float, title: str = "",
                       n_bins: int = 15) -> Any:
    """The Figure :func:`plot_reliability` saves: each bin's sample count is written above its bar, and
    tiny bins (:func:`tiny_bins`, rule stated in the legend) are drawn grey instead of full-colour bars."""

    plt = lazy_pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    for ax, (t, name) in zip(axes, ((1.0, "uncalibrated"), (float(temperature), f"temperature T={temperature:.3f}"))):
        p = softmax(logits, t)
        b = reliability_bins(labels, p, n_bins)
        e = ece(labels, p, n_bins)
        centers = (b["edges"][:-1] + b["edges"][1:]) / 2
        width = 1.0 / n_bins
        acc = np.nan_to_num(b["accuracy"])
        conf = np.nan_to_num(b["confidence"])
        has = b["count"] > 0
        tiny = tiny_bins(b["count"])
        big = has & ~tiny
        lo = np.minimum(acc, conf)
        gap = np.abs(conf - acc)
        ax.bar(centers[big], acc[big], width=width * 0.95, color="tab:blue", alpha=0.8, label="accuracy")
        ax.bar(centers[big], gap[big], bottom=lo[big], width=width * 0.95, facecolor="none",
               edgecolor="tab:red", hatch="//", linewidth=0.8, label="gap |accuracy − confidence|")
        if tiny.any():
            ax.bar(centers[tiny], acc[tiny], width=width * 0.95, color=TINY_BIN_COLOR, alpha=0.8,
                   edgecolor="gray", linewidth=0.5, label=f"tiny bin ({TINY_BIN_RULE}): unreliable")
        for c, n, top in zip(centers[has], b["count"][has], np.maximum(acc, conf)[has]):
            ax.annotate(f"{int(n)}", (c, min(top, 0.93)), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=6, rotation=90, color="dimgray")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top label); number above a bar: samples in the bin")
        ax.set_title(f"{name}\nECE = {e:.4f} ({n_bins} bins, n={int(b['count'].sum())})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("accuracy")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
