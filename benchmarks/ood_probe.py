"""How often ``/predict`` abstains as out of distribution: real lesions vs non-dermoscopy inputs.

Takes a trained run (``distill`` output), fits :mod:`lesionlite.ood` on its validation split exactly as
training does (``distill.train.fit_ood``: image statistics + logit energy at the run's temperature), then
counts the flagged images among every test-split lesion and among the inputs of
``benchmarks/ood_inputs.py``, per score and combined. Prints a table, writes JSON.

    python benchmarks/ood_probe.py --run runs/cpu/seed0/scratch_mobilenet_v2
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.ood_inputs import non_dermoscopy
from distill.artifacts import load_student
from distill.data import load_dataset
from distill.inference import logits_in_batches
from lesionlite.ood import assess, energy, fit, image_statistics, unnormalize
from lesionlite.preprocessing import preprocess

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a distill run directory (student.pt + manifest.json)")
    p.add_argument("--data-root", default=None, help="real data root (default: LESIONLITE_DATA)")
    p.add_argument("--out", default=str(HERE / "results" / "ood_probe.json"))
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    model, man = load_student(args.run)
    model.eval()
    pre = man.preprocessing
    bundle = load_dataset((man.data or {}).get("spec") or "ham10000", args.data_root, 0)

    def prepare(images: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        xs = np.stack([preprocess(im.convert("RGB"), pre, "NCHW") for im in images]).astype(np.float32)
        stats = np.stack([image_statistics(unnormalize(x, pre.mean, pre.std)) for x in xs])
        return xs, stats

    val = [bundle.val[i][0] for i in range(len(bundle.val))]
    xv, sv = prepare(val)
    cal = fit(sv, logits_in_batches(model, xv), man.temperature)
    test = [bundle.test[i][0] for i in range(len(bundle.test))]
    groups: dict[str, list[Any]] = {"lesion (test split)": test, **non_dermoscopy()}
    rows = []
    for kind, images in groups.items():
        xs, stats = prepare(images)
        logits = logits_in_batches(model, xs)
        verdicts = [assess(cal, s, z[None]) for s, z in zip(stats, logits)]
        image_only = sum(v["image_distance"] > cal["image_threshold"] for v in verdicts)
        energy_only = int((energy(logits, man.temperature) < cal["energy_threshold"]).sum())
        combined = sum(v["out_of_distribution"] for v in verdicts)
        rows.append({"inputs": kind, "n": len(images), "image_statistics": int(image_only), "energy": energy_only,
                     "either (serve)": int(combined)})
    doc = {"run": args.run, "architecture": man.architecture, "input_size": pre.input_size,
           "calibration": {k: cal[k] for k in ("method", "quantile", "n", "image_threshold", "energy_threshold",
                                               "val_abstain_rate")},
           "host": {"cpu": platform.processor() or platform.machine(), "python": sys.version.split()[0]},
           "rows": rows}
    print(f"{'inputs':22s} {'n':>5s} {'image stats':>12s} {'energy':>8s} {'either':>8s}")
    for r in rows:
        print(f"{r['inputs']:22s} {r['n']:5d} {r['image_statistics']:12d} {r['energy']:8d} {r['either (serve)']:8d}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
