"""Learning curve of site adaptation (``lesionlite adapt``): external melanoma AUC against K labelled site images.

For one source student: the unadapted model, BatchNorm re-estimation on the unlabelled pool (K = 0), and
the KD-anchored fine-tune with K = 50, 100, 300 and the whole pool — each measured on the site's
**held-out** images only (the same ones for every row; never an image the model was adapted on), plus
the internal test split after adaptation (does it forget HAM10000?). CIs: class-stratified bootstrap;
changes against the unadapted model are paired.

    python benchmarks/site_adaptation.py runs/qs_scratch4 --site isic-archive --work runs/adapt_qs4

Writes ``benchmarks/results/site_adaptation.{json,md}`` (``--out``).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from distill.adapt import AdaptConfig, adapt, site_split
from distill.clinical import clinical_metrics, paired_deltas
from distill.data import load_dataset
from export.api import ExportOptions, load_export_data
from export.evaluate import load_predictor, predict_prepared, prepare_split
from export.evaluation_report import fmt_ci
from export.evidence_report import fmt_delta
from lesionlite.atomic import write_json_atomic, write_text_atomic

N_BOOT = 500


def _probs_on(model_dir: Path, dataset: Any, class_names: list[str], keep_ids: set[str] | None) -> tuple[np.ndarray, np.ndarray]:
    pred = load_predictor(model_dir)
    exclude = None if keep_ids is None else {i for i in dataset.ids if i not in keep_ids}
    prepared, excluded = prepare_split(dataset, pred.manifest, class_names, progress=False, exclude_ids=exclude)
    p = predict_prepared(pred, prepared, dataset, excluded)
    return p.labels, p.probs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--site", default="isic-archive")
    ap.add_argument("--work", type=Path, required=True, help="folder for the adapted runs")
    ap.add_argument("--ks", default="0,50,100,300,all", help="labelled images per row (0 = BatchNorm only)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/site_adaptation"))
    args = ap.parse_args()
    site = load_dataset(args.site)
    test = site.test
    _, held = site_split(list(test.ids), test.groups, 0.5, args.seed)
    held_ids = {test.ids[i] for i in held}
    src_man = load_predictor(args.checkpoint).manifest
    internal = load_export_data(src_man, None, None, ExportOptions()).test
    names = list(src_man.class_names)
    y_ext, p_ext0 = _probs_on(args.checkpoint, test, site.class_names, held_ids)
    y_int, p_int0 = _probs_on(args.checkpoint, internal, names, None)
    rows = [{"k": "source (unadapted)", "external": clinical_metrics(y_ext, p_ext0, names, n_boot=N_BOOT)["metrics"],
             "internal": clinical_metrics(y_int, p_int0, names, n_boot=N_BOOT)["metrics"]}]
    for k in args.ks.split(","):
        method = "bn" if k == "0" else "finetune"
        labelled = 0 if k in ("0", "all") else int(k)
        out = args.work / f"k{k}"
        meta = adapt(args.checkpoint, args.site, out,
                     AdaptConfig(method=method, labelled=labelled, epochs=args.epochs, seed=args.seed), progress=False)
        assert not (set(meta["adapted_on_ids"]) & held_ids), "an adapted-on image is in the held-out set"
        y, p = _probs_on(out, test, site.class_names, held_ids)
        yi, pi = _probs_on(out, internal, names, None)
        rows.append({"k": k, "method": method, "labelled_images": meta["labelled_images"], "pool": meta["pool_images"],
                     "seconds": meta["seconds"],
                     "external": clinical_metrics(y, p, names, n_boot=N_BOOT)["metrics"],
                     "external_vs_source": paired_deltas(y, p, p_ext0, names, n_boot=N_BOOT)["metrics"],
                     "internal": clinical_metrics(yi, pi, names, n_boot=N_BOOT)["metrics"]})
        print(f"K={k}: external melanoma AUC {fmt_ci(rows[-1]['external']['melanoma_auc'], 'auc')}, "
              f"internal {fmt_ci(rows[-1]['internal']['melanoma_auc'], 'auc')}", flush=True)
    doc = {"checkpoint": args.checkpoint.name, "site": site.name, "held_out": len(held_ids), "n_held_out_scored": int(y_ext.size),
           "n_melanoma_held_out": int((y_ext == names.index("mel")).sum()), "epochs": args.epochs, "seed": args.seed,
           "n_boot": N_BOOT, "rows": rows,
           "command": f"python benchmarks/site_adaptation.py {args.checkpoint} --site {args.site} --work {args.work}"}
    write_json_atomic(args.out.with_suffix(".json"), doc)
    lines = [f"# Site adaptation of {doc['checkpoint']} to {doc['site']}", "",
             f"Measured on the site's {doc['n_held_out_scored']} held-out images ({doc['n_melanoma_held_out']} melanomas; "
             "never adapted on) and on the internal test split; 95 % CIs, changes paired against the unadapted model.", "",
             "| K labelled | method | external melanoma AUC | Δ vs source | external bal. acc | internal melanoma AUC "
             "| internal bal. acc |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = (r.get("external_vs_source") or {}).get("melanoma_auc")
        lines.append(f"| {r['k']} | {r.get('method', '—')} | {fmt_ci(r['external']['melanoma_auc'], 'auc')} | "
                     f"{fmt_delta(d, 'auc')} | {fmt_ci(r['external']['balanced_accuracy_present'])} | "
                     f"{fmt_ci(r['internal']['melanoma_auc'], 'auc')} | {fmt_ci(r['internal']['balanced_accuracy_present'])} |")
    write_text_atomic(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
