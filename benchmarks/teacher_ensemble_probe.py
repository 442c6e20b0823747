"""Would an ensemble be a teacher worth distilling? Test balanced accuracy of runs and of their average.

Each run is evaluated on its own checkpoint's test split with its own preprocessing (so a 128 px teacher
and 64 px students can be averaged), through ``export.api.load_checkpoint_and_export_data`` (the
images export evaluates on, in the split's order); the ensemble averages the softmax probabilities.

    python benchmarks/teacher_ensemble_probe.py runs/cpu/teacher_mobilenet_v2 runs/cpu/seed{0,1,2}/scratch_mobilenet_v2
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from distill.inference import logits_in_batches
from distill.metrics import classification_report
from export.api import load_checkpoint_and_export_data

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="distill run directories trained on the same data split")
    p.add_argument("--out", default=str(HERE / "results" / "teacher_ensemble_probe.json"))
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    probs, labels, rows = [], None, []
    for run in args.runs:
        model, man, data, _ = load_checkpoint_and_export_data(run, None, None, 8, None)
        logits = logits_in_batches(model, data.eval_x)
        if labels is not None and not np.array_equal(labels, data.eval_y):
            raise SystemExit(f"{run}: its test split differs from the first run's; ensemble undefined")
        labels = np.asarray(data.eval_y)
        p_run = np.exp(logits - logits.max(1, keepdims=True))
        probs.append(p_run / p_run.sum(1, keepdims=True))
        rep = classification_report(labels, logits, class_names=list(man.class_names))
        rows.append({"run": run, "architecture": man.architecture, "input_size": man.preprocessing.input_size,
                     "accuracy": rep["accuracy"], "balanced_accuracy": rep["balanced_accuracy"]})
    ens = classification_report(labels, np.log(np.mean(probs, axis=0) + 1e-12), class_names=list(man.class_names))
    doc = {"runs": rows, "ensemble": {"accuracy": ens["accuracy"], "balanced_accuracy": ens["balanced_accuracy"],
                                      "n": int(len(labels)), "how": "mean of softmax probabilities"}}
    for r in rows:
        print(f"{r['run']:45s} {r['input_size']:4d} px  acc {r['accuracy']:.4f}  bal-acc {r['balanced_accuracy']:.4f}")
    print(f"{'ensemble':45s}          acc {ens['accuracy']:.4f}  bal-acc {ens['balanced_accuracy']:.4f}")
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
