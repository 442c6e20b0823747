"""``MODEL_CARD.md`` / ``model_card.json`` beside the export report: what a reviewer of a dermatology
model asks for first (Mitchell et al., "Model Cards for Model Reporting", 2019).

Intended use and the not-a-diagnosis warning; the training data and split; per-class precision and
recall and calibration of the PyTorch model on the held-out split; each artifact's size, latency on
the exporting host and accuracy cost; and **subgroup performance** where the data carries the metadata
(HAM10000: sex, age band, anatomical site — balanced accuracy and melanoma recall per subgroup, with
counts). Everything is computed from what ``export_model`` already measured; nothing is estimated.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.evidence_report import render
from export.parity import softmax
from lesionlite.atomic import write_json_atomic, write_text_atomic
from lesionlite.classes import display_name

CARD_MD = "MODEL_CARD.md"
CARD_JSON = "model_card.json"
#: age bands of the subgroup table (years; HAM10000 ages are in steps of 5)
AGE_BANDS = ((0, 30, "< 30"), (30, 45, "30–44"), (45, 60, "45–59"), (60, 75, "60–74"), (75, 200, "≥ 75"))
#: a subgroup smaller than this is merged into "other" (localization) or flagged as too small to read
MIN_GROUP = 20
WARNING = ("Research prototype — not a diagnosis. This model has not been clinically validated; it must not "
           "be used to make or change a clinical decision.")


def per_class(labels: np.ndarray, pred: np.ndarray, class_names: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for k, name in enumerate(class_names):
        tp = int(((pred == k) & (labels == k)).sum())
        support = int((labels == k).sum())
        predicted = int((pred == k).sum())
        rows.append({"class": name, "name": display_name(name), "support": support,
                     "precision": tp / predicted if predicted else None, "recall": tp / support if support else None})
    return rows


def balanced_accuracy(labels: np.ndarray, pred: np.ndarray) -> float | None:
    """Mean recall over the classes present in ``labels`` (None when empty)."""
    present = np.unique(labels)
    if not len(present):
        return None
    return float(np.mean([(pred[labels == k] == k).mean() for k in present]))


def ece(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top class (equal-width confidence bins)."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs((pred[m] == labels[m]).mean() - conf[m].mean())
    return float(total)


def _age_band(value: str) -> str:
    try:
        age = float(value)
    except (TypeError, ValueError):
        return "unknown"
    return next((name for lo, hi, name in AGE_BANDS if lo <= age < hi), "unknown")


def group_labels(attributes: Sequence[dict[str, str]] | None) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Per attribute (sex, age band, anatomical site): each image's group and the groups in display order.

    Sites under ``MIN_GROUP`` images are merged into "other"; an attribute the data lacks is left out.
    """
    if not attributes:
        return {}
    keys = {"sex": lambda a: a.get("sex") or "unknown", "age band": lambda a: _age_band(a.get("age", "")),
            "anatomical site": lambda a: a.get("localization") or "unknown"}
    order = {n: i for i, (lo, hi, n) in enumerate(AGE_BANDS)}
    out: dict[str, tuple[np.ndarray, list[str]]] = {}
    for attr, key in keys.items():
        values = np.array([key(a) for a in attributes])
        if set(values.tolist()) == {"unknown"}:  # the data has no such column
            continue
        names, counts = np.unique(values, return_counts=True)
        if attr == "anatomical site":  # many sites: the small ones together
            small = set(names[counts < MIN_GROUP])
            values = np.array([f"other (each < {MIN_GROUP})" if v in small else v for v in values])
        out[attr] = (values, sorted(set(values.tolist()), key=lambda v: (order.get(v, 99), v)))
    return out


def subgroups(labels: np.ndarray, pred: np.ndarray, attributes: Sequence[dict[str, str]] | None,
              class_names: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Per attribute (sex, age band, localization): n, balanced accuracy and melanoma recall per group."""
    mel = list(class_names).index("mel") if "mel" in class_names else None
    out: dict[str, list[dict[str, Any]]] = {}
    for attr, (values, groups) in group_labels(attributes).items():
        rows = []
        for g in groups:
            m = values == g
            row: dict[str, Any] = {"group": str(g), "n": int(m.sum()),
                                   "balanced_accuracy": balanced_accuracy(labels[m], pred[m])}
            if mel is not None:
                mm = m & (labels == mel)
                row["melanoma_n"] = int(mm.sum())
                row["melanoma_recall"] = float((pred[mm] == mel).mean()) if mm.any() else None
                # "small" by the count a figure rests on: melanoma recall rests on the group's melanomas
                row["melanoma_small"] = bool(mm.sum() < MIN_GROUP)
            row["small"] = bool(m.sum() < MIN_GROUP)
            rows.append(row)
        out[attr] = rows
    return out


def build_model_card(report: Any, manifest: Any, data: Any, ref_logits: np.ndarray, evidence: Any = None) -> dict[str, Any]:
    """The card as a dict (``model_card.json``); :func:`render_markdown` turns it into ``MODEL_CARD.md``."""
    labels = np.asarray(data.eval_y, dtype=np.int64)
    pred = np.asarray(ref_logits).argmax(1)
    t = float(manifest.temperature or 1.0)
    src_metrics = report.source.get("metrics") or {}
    artifacts = []
    for a in report.artifacts:
        bal = (a.metrics or {}).get("balanced_accuracy")
        ref = src_metrics.get("balanced_accuracy")
        artifacts.append({
            "name": a.name, "format": a.format, "precision": a.precision, "status": a.status,
            "size_bytes": a.size_bytes, "balanced_accuracy": bal,
            "balanced_accuracy_cost_points": None if bal is None or ref is None else 100.0 * (bal - ref),
            "top1_agreement": (a.parity or {}).get("top1_agreement"),
            "latency_ms_p50": getattr(a, "latency_ms_p50", None),
        })
    return {
        "model": {"architecture": manifest.architecture, "input_size": manifest.preprocessing.input_size,
                  "params": report.source.get("params"), "macs": report.source.get("macs"),
                  "checkpoint": report.source.get("checkpoint"), "classes": [display_name(c) for c in manifest.class_names]},
        "intended_use": ("Research and engineering evaluation of on-device skin-lesion classifiers from dermoscopy "
                         "images: comparing compression methods, export formats and runtimes."),
        "out_of_scope": ("Diagnosis, triage or screening of patients; images that are not dermoscopy; populations, "
                         "devices or sites unlike the training data (see the subgroups below)."),
        "warning": WARNING,
        "training_data": {"name": (manifest.data or {}).get("name"), "fingerprint": (manifest.data or {}).get("fingerprint"),
                          "synthetic": bool((manifest.data or {}).get("synthetic")),
                          "training_metrics": {k: v for k, v in (manifest.metrics or {}).items()
                                               if k.startswith(("val_", "test_")) and isinstance(v, (int, float))}},
        "evaluation": {"split": data.eval_split, "n": int(len(labels)), "metrics": src_metrics,
                       "per_class": per_class(labels, pred, manifest.class_names)},
        "calibration": {"temperature": t, "ece": ece(labels, softmax(np.asarray(ref_logits), 1.0)),
                        "ece_calibrated": ece(labels, softmax(np.asarray(ref_logits), t)),
                        "out_of_distribution": bool((manifest.calibration or {}).get("ood"))},
        "artifacts": artifacts,
        "latency_host": report.source.get("host"),
        "subgroups": subgroups(labels, pred, data.eval_attributes, manifest.class_names),
        "clinical": _clinical(report, evidence, manifest),
    }


def _clinical(report: Any, evidence: Any, manifest: Any) -> dict[str, Any] | None:
    """Internal and external figures with CIs (PyTorch and each artifact), and the external site's subgroups."""
    if evidence is None:
        return None
    ext = next((s for s in evidence.sets if s.role == "external"), None)
    ext_subgroups = {}
    if ext is not None:
        ext_subgroups = subgroups(ext.labels, np.asarray(ext.ref_logits).argmax(1), ext.attributes, manifest.class_names)
    return {"evidence": evidence.describe(), "pytorch": report.source.get("clinical") or {},
            "artifacts": {a.name: a.clinical for a in report.artifacts if a.clinical},
            "external_subgroups": ext_subgroups}


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def render_markdown(card: dict[str, Any]) -> str:
    m, ev, cal = card["model"], card["evaluation"], card["calibration"]
    td = card["training_data"]
    lines = [f"# Model card: {m['architecture']} ({m['input_size']} px)", "", f"> **{card['warning']}**", "",
             "## Intended use", "", card["intended_use"], "", f"Out of scope: {card['out_of_scope']}", "",
             "## Training data", "",
             f"{td['name']} (fingerprint `{str(td['fingerprint'])[:12]}`)"
             + (" — **SYNTHETIC DATA**: generated images, no figure here describes dermoscopy" if td["synthetic"] else ""),
             "", f"## Performance of the PyTorch model on the {ev['split']} split ({ev['n']} images)", "",
             f"Accuracy {_pct(ev['metrics'].get('accuracy'))}, balanced accuracy {_pct(ev['metrics'].get('balanced_accuracy'))}, "
             f"macro-F1 {_pct(ev['metrics'].get('macro_f1'))}.", "",
             "| class | support | precision | recall |", "|---|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['support']} | {_pct(r['precision'])} | {_pct(r['recall'])} |" for r in ev["per_class"]]
    lines += ["", "## Calibration", "",
              f"Temperature {cal['temperature']:.3f} (fitted on validation at training time): ECE {cal['ece']:.3f} → "
              f"{cal['ece_calibrated']:.3f} on the {ev['split']} split. Out-of-distribution check in the manifest: "
              f"{'yes' if cal['out_of_distribution'] else 'no'}.", "",
              "## Artifacts", "",
              "| artifact | status | size | balanced accuracy | cost vs PyTorch | top-1 agreement | latency p50 (this host) |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for a in card["artifacts"]:
        cost = "—" if a["balanced_accuracy_cost_points"] is None else f"{a['balanced_accuracy_cost_points']:+.1f} pt"
        lat = "—" if a["latency_ms_p50"] is None else f"{a['latency_ms_p50']:.2f} ms"
        size = "—" if a["size_bytes"] is None else f"{a['size_bytes'] / 1e6:.2f} MB"
        lines.append(f"| {a['name']} | {a['status']} | {size} | {_pct(a['balanced_accuracy'])} | {cost} | "
                     f"{_pct(a['top1_agreement'])} | {lat} |")
    lines += ["", "Latency: batch 1, one process, the runtime's default threads, on the host that exported "
              f"({card.get('latency_host') or 'unknown'}); use `lesionlite bench` for a target's figures."]
    if card["subgroups"]:
        lines += ["", "## Subgroups", "",
                  f"Balanced accuracy and melanoma recall of the PyTorch model per subgroup of the {ev['split']} split. "
                  f"A group under {MIN_GROUP} images, and a melanoma recall resting on fewer than {MIN_GROUP} "
                  "melanomas, is marked *small* (read it as an anecdote)."]
        for attr, rows in card["subgroups"].items():
            lines += ["", f"### {attr}", "", "| group | n | balanced accuracy | melanoma recall (n) |", "|---|---:|---:|---:|"]
            lines += _subgroup_rows(rows)
    else:
        lines += ["", "## Subgroups", "", "The data carries no subgroup metadata (sex, age, site): not reported."]
    clinical = card.get("clinical")
    if clinical:
        lines += ["", *render(clinical["pytorch"], list(clinical["artifacts"].items()), clinical["evidence"])]
        for attr, rows in (clinical.get("external_subgroups") or {}).items():
            lines += ["", f"### External site, PyTorch model, by {attr}", "",
                      "| group | n | balanced accuracy | melanoma recall (n) |", "|---|---:|---:|---:|"]
            lines += _subgroup_rows(rows)
    return "\n".join(lines) + "\n"


def _subgroup_rows(rows: list[dict[str, Any]]) -> list[str]:
    """Table rows; a figure resting on fewer than MIN_GROUP images (melanomas for melanoma recall) is *small*."""
    out = []
    for r in rows:
        small = " *small*" if r["small"] else ""
        mel_small = ", *small*" if r.get("melanoma_small") else ""
        out.append(f"| {r['group']}{small} | {r['n']} | {_pct(r['balanced_accuracy'])} | "
                   f"{_pct(r.get('melanoma_recall'))} ({r.get('melanoma_n', 0)}{mel_small}) |")
    return out


def write_model_card(card: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    return write_json_atomic(out / CARD_JSON, card), write_text_atomic(out / CARD_MD, render_markdown(card))
