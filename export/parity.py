"""Parity of an exported artifact with the PyTorch model, and its own classification metrics.

Both are computed with numpy only (no sklearn): parity compares logits and temperature-scaled
probabilities on the same preprocessed held-out images; metrics are accuracy, balanced accuracy
(mean per-class recall over classes present in the labels) and macro-F1 (over classes in labels or predictions, as sklearn).
"""
from __future__ import annotations

import functools
import platform
from typing import Any

import numpy as np

from lesionlite.cpu_features import cpu_int8


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def compare(
    reference_logits: np.ndarray,
    outputs: np.ndarray,
    output_kind: str = "logits",
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Max-abs/mean-abs differences and top-1 agreement of ``outputs`` against the reference.

    ``output_kind`` "probabilities" (a CoreML classifier) compares probabilities only.
    """
    ref_p = softmax(reference_logits, temperature)
    if output_kind == "logits":
        p = softmax(outputs, temperature)
        d = np.abs(outputs.astype(np.float64) - reference_logits.astype(np.float64))
        logit_stats = {"max_abs_logits": float(d.max()), "mean_abs_logits": float(d.mean())}
    else:
        p = outputs.astype(np.float32)
        logit_stats = {"max_abs_logits": None, "mean_abs_logits": None}
    dp = np.abs(p.astype(np.float64) - ref_p.astype(np.float64))
    agree = float(np.mean(p.argmax(1) == ref_p.argmax(1)))
    return {
        **logit_stats,
        "max_abs_probs": float(dp.max()),
        "top1_agreement": agree,
        "n": int(len(reference_logits)),
    }


def classification_metrics(labels: np.ndarray, scores: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1 of argmax predictions."""
    labels = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(scores).argmax(1)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    present = support > 0
    seen = present | (predicted > 0)  # sklearn's macro average: classes in labels ∪ predictions
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "accuracy": float(tp.sum() / max(1, len(labels))),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
        "n": int(len(labels)),
    }


@functools.lru_cache(maxsize=1)
def host_int8_note() -> dict[str, Any]:
    """What this CPU's int8 kernels are, for reading int8 parity: x86 without VNNI may saturate (onnxruntime)."""

    cpu = cpu_int8()
    info: dict[str, Any] = {"machine": platform.machine().lower(), "vnni": cpu["vnni"]}
    if not cpu["x86"]:
        info["note"] = "non-x86 CPU"
    elif cpu["vnni"] is None:
        info["note"] = "CPU flags unknown"
    else:
        info["note"] = ("x86 with VNNI: int8 dot products exact" if cpu["vnni"] else
                        "x86 without VNNI: onnxruntime's u8s8 int8 kernels (VPMADDUBSW) can saturate, so its int8 "
                        "parity here can be lower than on ARM or VNNI CPUs; see parity.as_defined (export and serve "
                        "apply session.x64quantprecision=1 on such hosts only)")
    return info
