"""Why do the CPU protocol's students miss MedMNIST's 75.4 % DermaMNIST accuracy? Two measured parts.

1. **Decision rule.** Every student of ``--protocol cpu`` is trained with class-weighted cross-entropy
   (``w_c ∝ N / N_c``, :func:`distill.methods.scratch.class_weights`), which optimises *balanced*
   accuracy: the model's softmax estimates a posterior tilted by ``w``, ``q(c|x) ∝ w_c · p(c|x)``. The
   accuracy-optimal (Bayes) decision for the real class frequencies is ``argmax_c q(c|x) / w_c``.
   MedMNIST's baselines train with plain cross-entropy, i.e. for accuracy. This script evaluates each
   run's checkpoint on its own test split both ways (the weights come from the run's recorded training
   counts; nothing is fitted on the test set), beside the all-*nv* baseline.
2. **Split.** DermaMNIST splits HAM10000 per image; ours splits by ``lesion_id`` (no lesion in two
   splits). With the project's own splitter run per image (``groups=None``, same fractions and seed),
   the script counts the test images whose lesion also has a photo in the training split — images a
   per-image split lets a model recognise rather than diagnose. (Its effect on a trained student is the
   ``ham10000-image-split`` ablation run, reported beside this in ``benchmarks/RESULTS.md``.)

    python benchmarks/accuracy_gap.py                      # every finished run under runs/cpu
    python benchmarks/accuracy_gap.py RUN_DIR [RUN_DIR …]  # or the runs named

Writes ``benchmarks/results/accuracy_gap.json`` and prints a table. Inference only (one thread).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from benchmarks.protocol.verdicts import MEDMNIST_BEST_ACC
from distill.artifacts import load_student
from distill.data import load_dataset
from distill.inference import logits_in_batches
from distill.methods.scratch import class_weights
from distill.metrics import accuracy, balanced_accuracy, classification_report, prior_restored_logits
from export.api import load_export_data
from export.context import ExportOptions
from export.data import prepare_data
from lesionlite.errors import LesionliteError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def default_runs(base: Path) -> list[Path]:
    """The teacher and every student run under ``base`` (``runs/cpu``) that finished (has ``student.pt``)."""
    runs = sorted(p.parent for p in base.glob("teacher_*/student.pt"))
    runs += sorted(p.parent for p in base.glob("seed*/*/student.pt"))
    return runs


class EvalData:
    """Each run's test images, decoded once per distinct preprocessing (students share one, the teacher another)."""

    def __init__(self) -> None:
        self._bundles: dict[str, object] = {}
        self._prepared: dict[str, object] = {}

    def for_manifest(self, man) -> tuple[object, object]:
        """(prepared test images, the data bundle they came from) for one run's manifest."""
        spec = str((man.data or {}).get("spec") or "")
        if spec not in self._bundles:
            self._bundles[spec] = load_export_data(man, None, None, ExportOptions.from_kwargs({"seed": 0}))
        key = spec + json.dumps(man.preprocessing.to_dict(), sort_keys=True)
        if key not in self._prepared:
            self._prepared[key] = prepare_data(self._bundles[spec], man.preprocessing, list(man.class_names), 8, None, 0)
        return self._prepared[key], self._bundles[spec]


def leakage_breakdown(bundle, y: np.ndarray, pred: np.ndarray, num_classes: int) -> dict | None:
    """Test ACC / Bal-ACC over the images whose lesion has a photo in training and over the rest.

    None when the split is by lesion (no such image). Same model, same test set: the gap between the two
    subsets is what a per-image split adds to a reported number.
    """
    test_groups = getattr(bundle.test, "groups", None)
    train_groups = getattr(bundle.train, "groups", None)
    if not test_groups or not train_groups:
        return None
    train_set = set(train_groups)
    seen = np.array([g in train_set for g in test_groups])
    if not seen.any():
        return None
    out = {}
    for name, mask in (("lesion_in_train", seen), ("lesion_not_in_train", ~seen)):
        out[name] = {"images": int(mask.sum()), "accuracy": accuracy(y[mask], pred[mask]),
                     "balanced_accuracy": balanced_accuracy(y[mask], pred[mask], num_classes)}
    return out


def decision_rule_row(run: Path, eval_data: EvalData) -> dict:
    """Test ACC / Bal-ACC of one run under the trained (argmax) and the prior-restored decision rule."""
    model, man = load_student(run)
    model.eval()
    data, bundle = eval_data.for_manifest(man)
    logits = logits_in_batches(model, data.eval_x)
    y = np.asarray(data.eval_y)
    names = list(man.class_names)
    counts = ((man.data or {}).get("class_counts") or {}).get("train")
    if not counts:
        raise SystemExit(f"{run}: its manifest records no training class counts; cannot restore the prior")
    w = class_weights(counts).double().numpy()
    restored = prior_restored_logits(logits, w)
    trained = classification_report(y, logits, class_names=names)
    prior = classification_report(y, restored, class_names=names)
    majority = int(np.argmax(counts))
    leak = leakage_breakdown(bundle, y, logits.argmax(1), len(names))
    row = {
        "run": os.path.relpath(run.resolve(), ROOT), "architecture": man.architecture,
        "input_size": man.preprocessing.input_size, "method": (man.extra or {}).get("method"),
        "n_test": int(len(y)),
        "argmax": {k: trained[k] for k in ("accuracy", "balanced_accuracy", "ece", "nll")},
        "prior_restored": {k: prior[k] for k in ("accuracy", "balanced_accuracy", "ece", "nll")},
        "majority_class": names[majority], "majority_accuracy": float(np.mean(y == majority)),
        "class_weights": [round(float(v), 4) for v in w],
    }
    if leak is not None:
        row["test_subsets"] = leak
    return row


def split_leakage(seed: int = 0) -> dict:
    """How many test images share their lesion with a training image: HAM10000 split by lesion vs per image."""
    out: dict = {}
    for how, spec in (("by_lesion", "ham10000"), ("per_image", "ham10000-image-split")):
        bundle = load_dataset(spec, seed=seed)
        train_lesions = set(bundle.train.groups)
        shared = int(sum(g in train_lesions for g in bundle.test.groups))
        out[how] = {"dataset": spec, "test_images": len(bundle.test), "test_images_whose_lesion_is_in_train": shared,
                    "fraction": shared / len(bundle.test)}
    groups = [g for part in (bundle.train, bundle.val, bundle.test) for g in part.groups]  # same images either way
    out["images"], out["lesions"] = len(groups), len(set(groups))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="distill run directories (default: every finished run under --base)")
    p.add_argument("--base", default=str(ROOT / "runs" / "cpu"))
    p.add_argument("--out", default=str(HERE / "results" / "accuracy_gap.json"))
    p.add_argument("--no-split", action="store_true", help="skip the split-leakage count (needs HAM10000)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    runs = [Path(r) for r in args.runs] or default_runs(Path(args.base))
    if not runs:
        raise SystemExit(f"no finished run (student.pt) under {args.base}; name run directories instead")
    rows, eval_data = [], EvalData()
    try:
        from tqdm import tqdm
        it = tqdm(runs, desc="evaluating", unit="run")
    except ImportError:  # pragma: no cover - tqdm is a dependency
        it = runs

    for run in it:
        if not (run / "student.pt").is_file():
            print(f"skipped {run}: not a finished run (no student.pt)")
            continue
        try:
            rows.append(decision_rule_row(run, eval_data))
        except LesionliteError as e:
            raise SystemExit(f"{run}: {e}") from None
    if not rows:
        raise SystemExit("none of the runs named has finished (no student.pt)")
    doc: dict = {"what": "test ACC / Bal-ACC under the trained argmax and the prior-restored rule argmax(q/w)",
                 "medmnist_best_accuracy": MEDMNIST_BEST_ACC, "runs": rows}
    print(f"{'run':48s} {'px':>4s} {'ACC':>6s} {'BalACC':>7s} {'ECE':>5s} | {'ACC*':>6s} {'BalACC*':>7s} {'ECE*':>5s}"
          "   (* prior restored)")
    for r in rows:
        a, b = r["argmax"], r["prior_restored"]
        for name, sub in (r.get("test_subsets") or {}).items():
            print(f"  {r['run']}: {name.replace('_', ' ')}: {sub['images']} images, ACC "
                  f"{100 * sub['accuracy']:.1f}, Bal-ACC {100 * sub['balanced_accuracy']:.1f}")
        print(f"{r['run']:48s} {r['input_size']:4d} {100 * a['accuracy']:6.1f} {100 * a['balanced_accuracy']:7.1f} "
              f"{100 * a['ece']:5.1f} | {100 * b['accuracy']:6.1f} {100 * b['balanced_accuracy']:7.1f} {100 * b['ece']:5.1f}")
    print(f"all-{rows[0]['majority_class']} baseline ACC {100 * rows[0]['majority_accuracy']:.1f}; "
          f"MedMNIST best {100 * MEDMNIST_BEST_ACC:.1f}")
    if not args.no_split:
        leak = split_leakage()
        doc["split_leakage"] = leak
        pi = leak["per_image"]
        print(f"per-image split: {pi['test_images_whose_lesion_is_in_train']} of {pi['test_images']} test images "
              f"({100 * pi['fraction']:.1f} %) have their lesion in train; by lesion: "
              f"{leak['by_lesion']['test_images_whose_lesion_is_in_train']}")
    out = Path(args.out)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
