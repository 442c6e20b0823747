"""Write an evaluation (``export.evaluate``) as JSON, Markdown and plots a clinical reader looks at.

``evaluation.json`` keeps everything (per-image predictions included, so any figure can be recomputed
from it); ``evaluation.md`` states each figure with its 95 % interval, names balanced accuracy for the
classes present, and says when the model was trained on synthetic images; ``evaluation.png`` shows
the melanoma ROC with the operating point marked and the reliability diagram.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from distill.reports import lazy_pyplot, save_figure, write_metrics_json
from lesionlite.atomic import write_text_atomic
from lesionlite.referral import describe_score

JSON_NAME = "evaluation.json"
MD_NAME = "evaluation.md"
PLOT_NAME = "evaluation.png"

#: display order and labels of the clinical figures
FIGURES = (
    ("melanoma_auc", "melanoma AUC (melanoma vs rest)", "auc"),
    ("melanocytic_auc", "melanoma AUC of P(mel)/(P(mel)+P(nv))", "auc"),
    ("target_auc", "referral-score AUC", "auc"),
    ("sensitivity", "sensitivity at the operating point", "pct"),
    ("specificity", "specificity at the operating point", "pct"),
    ("referral_rate", "referred at the operating point", "pct"),
    ("melanoma_sensitivity_argmax", "melanoma sensitivity at argmax", "pct"),
    ("balanced_accuracy_present", "balanced accuracy over the classes present", "pct"),
    ("accuracy", "accuracy", "pct"),
    ("ece", "ECE (15 bins)", "auc"),
    ("ood_rate", "flagged out of distribution", "pct"),
)


def fmt_ci(m: dict[str, Any] | None, style: str = "pct") -> str:
    """``"61.2 % [58.0, 64.1]"`` / ``"0.602 [0.566, 0.638]"``; ``—`` when undefined."""
    if not m or m.get("value") is None:
        return "—"
    scale, f = (100.0, "{:.1f}") if style == "pct" else (1.0, "{:.3f}")
    unit = " %" if style == "pct" else ""
    out = f.format(scale * m["value"]) + unit
    if m.get("ci_low") is not None:
        out += f" [{f.format(scale * m['ci_low'])}, {f.format(scale * m['ci_high'])}]"
    return out


def figure_rows(clinical: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, formatted value with CI) for every figure the evaluation has."""
    metrics = clinical.get("metrics", {})
    present = ", ".join(clinical.get("classes_present", []))
    rows = []
    for key, label, style in FIGURES:
        if key in metrics:
            if key == "balanced_accuracy_present":
                label = f"balanced accuracy over the classes present ({present})"
            rows.append((label, fmt_ci(metrics[key], style)))
    return rows


def render_markdown(doc: dict[str, Any]) -> str:
    m, d, c = doc["model"], doc["data"], doc["clinical"]
    op = c.get("operating_point")
    lines = [f"# Evaluation: {m['name']} on {d['name']} ({d['split']})", ""]
    if m.get("synthetic_training_data"):
        lines += ["> **SYNTHETIC TRAINING DATA** — this model was trained on generated images; its figures say "
                  "nothing about dermoscopy.", ""]
    lines += [f"- model: {m['architecture']} {m.get('kind')} {m.get('precision')} ({m.get('runtime')}), "
              f"{m['input_size']} px, temperature {m['temperature']:.3f}, trained on {m.get('trained_on')}",
              f"- data: `{d['spec']}` — {d['source']}",
              *([f"- test-time augmentation: {d['tta']} (probabilities averaged over the views)"]
                if d.get("tta", "none") != "none" else []),
              f"- images evaluated: {d['n']}" + (" (left out, no counterpart among the model's classes: "
                                                 + ", ".join(f"{k} {v}" for k, v in d["excluded"].items()) + ")"
                                                 if d.get("excluded") else ""),
              "- " + ("**external set** (another institution; evaluation only)" if d.get("external") else
                      f"internal split `{d['split']}` of the training data"), ""]
    if op:
        lines += [f"Operating point: refer when {describe_score(op)} ≥ {op['threshold']:.4f}, "
                  f"chosen on the validation split ({op['n_positive']} positives) for sensitivity "
                  f"{op['sensitivity_target']:.2f} (reached {op['sensitivity']:.3f} there). Test and external "
                  "images only check it.", ""]
    else:
        lines += ["No operating point in the manifest (export chooses one on the validation split): "
                  "sensitivity and specificity are not reported.", ""]
    b = c.get("bootstrap", {})
    lines += ["| figure | value [95 % CI] |", "|---|---:|"]
    lines += [f"| {label} | {value} |" for label, value in figure_rows(c)]
    lines += ["", f"Intervals: {b.get('n_boot')} bootstrap replicates, stratified by class, resampled by "
              f"{b.get('resampled_by')}; percentile method.", "",
              "## Per class (argmax)", "", "| class | support | precision | recall | AUC |", "|---|---:|---:|---:|---:|"]
    for name, r in doc["report"]["per_class"].items():
        if r["support"]:
            lines.append(f"| {name} | {r['support']} | {100 * r['precision']:.1f} % | {100 * r['recall']:.1f} % | "
                         + ("—" if r["auc"] is None else f"{r['auc']:.3f}") + " |")
    lines += ["", f"Plots: `{PLOT_NAME}` (melanoma ROC with the operating point, reliability diagram)."]
    return "\n".join(lines) + "\n"


def roc_curve(is_pos: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) over every distinct threshold, from (0,0) to (1,1)."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], is_pos[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps, fps = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    return np.r_[0.0, fps / max(1.0, fps[-1])], np.r_[0.0, tps / max(1.0, tps[-1])]


def plot(doc: dict[str, Any], path: Path) -> Path | None:
    """ROC of the melanoma probability (operating point marked) beside the reliability diagram."""
    preds = doc.get("predictions") or {}
    if preds.get("mel_prob") is None:
        return None

    plt = lazy_pyplot()
    names = list(doc["report"]["per_class"])
    mel = next(i for i, n in enumerate(names) if n.lower() in ("mel", "melanoma"))
    labels = np.asarray(preds["labels"])
    metrics = doc["clinical"]["metrics"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.4))
    fpr, tpr = roc_curve(labels == mel, np.asarray(preds["mel_prob"], dtype=np.float64))
    ax1.plot(fpr, tpr, lw=1.5, label=f"melanoma vs rest, AUC {fmt_ci(metrics.get('melanoma_auc'), 'auc')}")
    op = doc["clinical"].get("operating_point")
    if (op and op["positive_classes"] == [names[mel]] and not op.get("given_classes")
            and metrics["sensitivity"]["value"] is not None):  # the point lies on this curve only for P(mel)
        sens, spec = metrics["sensitivity"]["value"], metrics["specificity"]["value"]
        ax1.plot([1 - spec], [sens], "o", color="tab:red",
                 label=f"operating point (P ≥ {op['threshold']:.3f}, chosen on validation)")
    ax1.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax1.set(xlabel="1 − specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
            title=f"{doc['data']['name']} ({doc['data']['split']}, n={doc['data']['n']})")
    ax1.legend(fontsize=7, loc="lower right")
    ax1.grid(alpha=0.3)
    rel = {k: np.asarray(v, dtype=np.float64) for k, v in doc["reliability"].items()}
    centers = (rel["edges"][:-1] + rel["edges"][1:]) / 2
    has = rel["count"] > 0
    ax2.bar(centers[has], rel["accuracy"][has], width=0.95 / len(centers), alpha=0.8, label="accuracy per confidence bin")
    ax2.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax2.set(xlabel="confidence (top label)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
            title=f"reliability, ECE {fmt_ci(metrics.get('ece'), 'auc')}")
    ax2.legend(fontsize=7, loc="upper left")
    ax2.grid(alpha=0.3)
    if doc["model"].get("synthetic_training_data"):
        fig.suptitle("SYNTHETIC TRAINING DATA", color="tab:red")
    fig.tight_layout()
    return save_figure(fig, path)


def write(doc: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write JSON, Markdown and the plot (when matplotlib is installed) into ``out_dir``."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_metrics_json(out / JSON_NAME, doc), "md": write_text_atomic(out / MD_NAME, render_markdown(doc))}
    try:
        png = plot(doc, out / PLOT_NAME)
    except ImportError:
        png = None
    if png is not None:
        paths["png"] = png
    return paths
