"""Robustness to everyday image faults: the PyTorch student against its compressed artifacts.

For each fault of :mod:`export.corruptions` (blur, noise, darker, brighter, low contrast, JPEG) at
severities 1–3, the same test images (as they came, then faulted, then each model's own preprocessing)
go through the checkpoint and every artifact of an export; the table gives balanced accuracy and
melanoma AUC per model and the artifact's paired change against PyTorch with a 95 % CI — so one can see
whether int8 breaks first when the photo is bad.

    python benchmarks/corruption_robustness.py runs/qs_scratch4 artifacts/qs_scratch4 --n 600

Writes ``benchmarks/results/corruption_robustness.{json,md}`` (``--out``). Accuracy only: no timing.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from distill.clinical import clinical_metrics, paired_deltas
from export.api import ExportOptions, load_export_data
from export.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from export.evaluate import Predictor, load_predictor
from export.evaluate_cli import expand_models
from export.evaluation_report import fmt_ci
from export.evidence_report import fmt_delta
from lesionlite.atomic import write_json_atomic, write_text_atomic
from lesionlite.classes import class_mapping
from lesionlite.preprocessing import preprocess_batch


def _probs(pred: Predictor, images: list[Any]) -> np.ndarray:
    cfg = pred.manifest.preprocessing
    out = [pred.probabilities(preprocess_batch(images[i:i + 64], cfg, "NCHW"))[0] for i in range(0, len(images), 64)]
    return np.concatenate(out)


def measure(checkpoint: Path, artifacts: list[Path], n: int, n_boot: int, seed: int) -> dict[str, Any]:
    ref = load_predictor(checkpoint)
    others = [load_predictor(a) for a in artifacts]
    info = ref.manifest.data or {}
    bundle = load_export_data(ref.manifest, None, None, ExportOptions())
    test = bundle.test
    idx = np.sort(np.random.default_rng(seed).choice(len(test), size=min(n, len(test)), replace=False))
    mapping = class_mapping(list(bundle.class_names), list(ref.manifest.class_names))
    labels = np.asarray([mapping[int(test.labels[i])] for i in idx])
    groups = None if test.groups is None else [test.groups[i] for i in idx]
    originals = [test.load_image(int(i)) for i in idx]
    names = list(ref.manifest.class_names)
    conditions = [("clean", 0)] + [(c, s) for c in CORRUPTIONS for s in SEVERITIES]
    rows = []
    for cname, sev in tqdm(conditions, desc="conditions", unit="cond"):
        images = originals if cname == "clean" else [corrupt(im, cname, sev) for im in originals]
        p_ref = _probs(ref, images)
        pytorch = clinical_metrics(labels, p_ref, names, None, None, groups, n_boot=n_boot, seed=seed)["metrics"]
        row: dict[str, Any] = {"corruption": cname, "severity": sev, "pytorch": pytorch, "artifacts": {}}
        for art in others:
            p = _probs(art, images)
            row["artifacts"][art.name] = {
                "metrics": clinical_metrics(labels, p, names, None, None, groups, n_boot=n_boot, seed=seed)["metrics"],
                "vs_pytorch": paired_deltas(labels, p, p_ref, names, None, groups, n_boot=n_boot, seed=seed)["metrics"]}
        rows.append(row)
    return {"checkpoint": checkpoint.name, "artifacts": [a.name for a in others], "data": bundle.name, "split": "test",
            "n": int(len(idx)), "n_melanoma": int((labels == names.index("mel")).sum()) if "mel" in names else None,
            "synthetic_training_data": bool(info.get("synthetic")), "n_boot": n_boot, "seed": seed, "rows": rows}


def render(doc: dict[str, Any]) -> str:
    arts = doc["artifacts"]
    lines = [f"# Robustness to image faults: {doc['checkpoint']} and its artifacts", "",
             f"{doc['data']} test split, {doc['n']} images ({doc['n_melanoma']} melanomas), the same images faulted "
             f"before each model's preprocessing; 95 % CIs from {doc['n_boot']} class-stratified bootstrap replicates "
             "(paired for the changes).", ""]
    if doc["synthetic_training_data"]:
        lines += ["> **SYNTHETIC TRAINING DATA**", ""]
    head = ["fault", "sev", "PyTorch bal. acc", "PyTorch melanoma AUC"]
    for a in arts:
        head += [f"{a}: Δ bal. acc", f"{a}: Δ melanoma AUC", f"{a}: agreement"]
    lines += ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    for r in doc["rows"]:
        cells = [r["corruption"], str(r["severity"] or "—"), fmt_ci(r["pytorch"].get("balanced_accuracy_present")),
                 fmt_ci(r["pytorch"].get("melanoma_auc"), "auc")]
        for a in arts:
            v = r["artifacts"][a]["vs_pytorch"]
            cells += [fmt_delta(v.get("balanced_accuracy_present"), "pct"), fmt_delta(v.get("melanoma_auc"), "auc"),
                      fmt_ci(v.get("top1_agreement"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="run folder of the PyTorch student")
    ap.add_argument("export_dir", type=Path, help="export folder (every artifact in it) or one artifact folder")
    ap.add_argument("--n", type=int, default=600, help="test images (seeded subset; default 600)")
    ap.add_argument("--n-boot", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/corruption_robustness"))
    args = ap.parse_args()
    doc = measure(args.checkpoint, expand_models([str(args.export_dir)]), args.n, args.n_boot, args.seed)
    doc["command"] = (f"python benchmarks/corruption_robustness.py {args.checkpoint} {args.export_dir} --n {args.n} "
                      f"--n-boot {args.n_boot}")
    write_json_atomic(args.out.with_suffix(".json"), doc)
    md = render(doc)
    write_text_atomic(args.out.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
