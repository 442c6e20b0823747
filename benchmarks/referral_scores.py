"""Which referral score ranks melanomas best, internally and at another clinic (RESULTS.md 8f).

For each model (a run folder or an exported artifact) this computes, on the internal test split and on the
external set, the melanoma-vs-rest AUC of four scores built from the same softmax output, each with a 95 %
bootstrap CI (class-stratified, lesion-clustered) and its paired change against P(mel):

- ``P(mel)``: the melanoma probability (the project's "melanoma AUC");
- ``P(mel | mel or nv)``: ``lesionlite.referral``'s ``melanocytic`` target;
- ``1 - P(nv)``: "not a nevus";
- ``P(mel + bcc + akiec)``: the ``malignant`` target's score.

The external set is only *evaluated*: nothing here is fitted on it. Choosing a score by its external figure
is choosing between named recipes on the dev half, which the external-validation rules allow when it is
said: the held-back half checks it.

    python benchmarks/referral_scores.py artifacts/qs_scratch4/mobilenet_v2_tflite_fp32 runs/scratch20 \
        --out benchmarks/results/referral_scores.json
"""
from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill.bootstrap import bootstrap
from distill.clinical import DEFAULT_SENSITIVITY, sensitivity_specificity, threshold_for_sensitivity
from distill.metrics import binary_auc
from export.evaluate import predict
from lesionlite.atomic import write_text_atomic
from lesionlite.classes import class_index
from lesionlite.referral import referral_scores, target_classes

Score = Callable[[np.ndarray], np.ndarray]


def scores(class_names: Sequence[str]) -> dict[str, Score]:
    """The four scores of one model's classes, by display name."""
    nv = class_index(list(class_names), "nv")
    named = {"P(mel)": "mel", "P(mel | mel or nv)": "melanocytic", "P(mel + bcc + akiec)": "malignant"}
    out: dict[str, Score] = {k: (lambda p, t=t: referral_scores(p, *target_classes(class_names, t)))
                             for k, t in named.items()}
    out["1 - P(nv)"] = lambda p: 1.0 - p[:, nv]
    return out


def score_aucs(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], groups: Sequence[str] | None,
               n_boot: int, thresholds: dict[str, float]) -> dict[str, Any]:
    """AUC of each score (melanoma vs rest) and its paired change against P(mel), and the melanoma sensitivity
    and specificity at each score's validation-chosen threshold, with CIs."""
    is_mel = labels == class_index(list(class_names), "mel")
    values = {name: fn(probs) for name, fn in scores(class_names).items()}
    base = values["P(mel)"]
    stats: dict[str, Callable[[np.ndarray], float | None]] = {}
    for name, v in values.items():
        stats[name] = lambda i, v=v: binary_auc(is_mel[i], v[i])
        if name != "P(mel)":
            stats[f"Δ {name}"] = lambda i, v=v: _diff(binary_auc(is_mel[i], v[i]), binary_auc(is_mel[i], base[i]))
    for name, t in thresholds.items():
        v = values[name]
        stats[f"sens @ {name}"] = lambda i, v=v, t=t: sensitivity_specificity(v[i], is_mel[i], t)[0]
        stats[f"spec @ {name}"] = lambda i, v=v, t=t: sensitivity_specificity(v[i], is_mel[i], t)[1]
    result = bootstrap(stats, labels, groups, n_boot=n_boot)
    return {"n": int(labels.size), "n_melanoma": int(is_mel.sum()), **result}


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def measure(model: str, external: str, data_root: str | None, n_boot: int) -> dict[str, Any]:
    """Both sets for one model."""
    predictor, val, _ = predict(model, None, data_root, "val", progress=False)
    names = list(predictor.manifest.class_names)
    is_mel = val.labels == class_index(names, "mel")
    thresholds = {name: threshold_for_sensitivity(fn(val.probs), is_mel, DEFAULT_SENSITIVITY)
                  for name, fn in scores(names).items() if name in ("P(mel)", "P(mel | mel or nv)")}
    doc: dict[str, Any] = {"model": model, "thresholds_chosen_on_val": thresholds,
                           "sensitivity_target": DEFAULT_SENSITIVITY}
    for role, spec in (("internal", None), ("external", external)):
        _, preds, data = predict(model, spec, data_root, "test", progress=False)
        doc[role] = {"data": data["name"],
                     **score_aucs(preds.labels, preds.probs, names, preds.groups, n_boot, thresholds)}
    return doc


def fmt(m: dict[str, Any]) -> str:
    if m.get("value") is None:
        return "—"
    """``0.684 [0.644, 0.724]``; a change with its sign."""
    ci = "" if m.get("ci_low") is None else f" [{m['ci_low']:+.3f}, {m['ci_high']:+.3f}]"
    return f"{m['value']:+.3f}{ci}" if "Δ" in m.get("_name", "") else f"{m['value']:.3f}{ci.replace('+', '')}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per model and set, the AUC of each score and its change against P(mel), then the
    sensitivity / specificity at each score's validation-chosen threshold."""
    names = [n for n in next(iter(rows))["internal"]["metrics"] if "@" not in n]
    lines = ["| model | set | n (melanomas) | " + " | ".join(names) + " |", "|---|---|---:|" + "---:|" * len(names)]
    for r in rows:
        for role in ("internal", "external"):
            d = r[role]
            cells = [fmt({**d["metrics"][n], "_name": n}) for n in names]
            lines.append(f"| {r['model']} | {role} | {d['n']} ({d['n_melanoma']}) | " + " | ".join(cells) + " |")
    ops = [n for n in next(iter(rows))["internal"]["metrics"] if "@" in n]
    lines += ["", f"Melanoma sensitivity / specificity at the threshold each score reaches "
              f"{DEFAULT_SENSITIVITY:.2f} sensitivity with on the validation split:", "",
              "| model | set | " + " | ".join(ops) + " |", "|---|---|" + "---:|" * len(ops)]
    for r in rows:
        for role in ("internal", "external"):
            cells = [fmt(r[role]["metrics"][n]) for n in ops]
            lines.append(f"| {r['model']} | {role} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="run folders or exported artifact folders")
    ap.add_argument("--external", default="isic-archive", help="external data spec (default: isic-archive)")
    ap.add_argument("--data-root", default=None, help="data root (default: LESIONLITE_DATA)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results/referral_scores.json")
    args = ap.parse_args(argv)
    rows = [measure(m, args.external, args.data_root, args.n_boot) for m in args.models]
    text = table(rows)
    print(text)
    doc = {"rows": rows, "markdown": text, "host": {"cpu": platform.processor() or platform.machine(),
                                                     "python": platform.python_version()}}
    write_text_atomic(Path(args.out), json.dumps(doc, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
