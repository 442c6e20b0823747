"""What the int8 probes (``int8_sensitivity.py``, ``tflite_int8_probe.py``) share: their command line, the
checkpoint with export's own calibration and held-out images, and one row per variant scored against PyTorch."""
from __future__ import annotations

import argparse
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS
from distill.inference import logits_in_batches
from export.api import load_checkpoint_and_export_data
from export.parity import classification_metrics, compare


def probe_parser(description: str, result_name: str, eval_samples: int | None, eval_help: str) -> argparse.ArgumentParser:
    """The probes' common flags: a run directory, its data (export's own by default), sample counts, seed, JSON."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("checkpoint", type=Path, help="a distill run directory")
    ap.add_argument("--data", default=None, help="dataset spec (default: the checkpoint's own, via export)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--calib-samples", type=int, default=300)
    ap.add_argument("--eval-samples", type=int, default=eval_samples, help=eval_help)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=RESULTS / result_name)
    return ap


def load_probe(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    """(model, manifest, data, options) of the checkpoint, with the calibration and held-out images export uses."""
    return load_checkpoint_and_export_data(args.checkpoint, args.data, args.data_root, args.calib_samples,
                                           args.eval_samples, args.seed)


def torch_logits(model: Any, x: np.ndarray) -> np.ndarray:
    """PyTorch logits of every held-out image (batches of 64)."""
    return logits_in_batches(model, x, batch_size=64)


@dataclass
class VariantRows:
    """One row per variant: balanced accuracy and agreement with the PyTorch reference logits ``ref``."""

    ref: np.ndarray
    y: np.ndarray
    num_classes: int
    temperature: float = 1.0
    rows: list[dict[str, Any]] = field(default_factory=list)

    def record(self, name: str, out: np.ndarray, seconds: float = 0.0, **extra: Any) -> dict[str, Any]:
        par = compare(self.ref, out, "logits", self.temperature)
        row = {"variant": name, **extra,
               "balanced_accuracy": classification_metrics(self.y, out, self.num_classes)["balanced_accuracy"],
               "top1_agreement": par["top1_agreement"], "max_abs_logits": par["max_abs_logits"],
               "max_abs_probs": par["max_abs_probs"], "seconds": round(seconds, 1)}
        self.rows.append(row)
        return row


def probe_result(benchmark: str, args: argparse.Namespace, manifest: Any, data: Any, **extra: Any) -> dict[str, Any]:
    """The result document's head: which checkpoint, data and host; ``extra`` (rows, ...) follows."""
    return {"benchmark": benchmark, "checkpoint": str(args.checkpoint), "architecture": manifest.architecture,
            "input_size": manifest.preprocessing.input_size,
            "data": {"name": data.name, "eval_split": data.eval_split, "eval_samples": int(len(data.eval_y)),
                     "calibration_samples": int(len(data.calib))},
            "host": {"platform": platform.platform(), "python": platform.python_version()}, **extra}


def write_result(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
