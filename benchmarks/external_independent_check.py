"""Re-compute export's external melanoma AUC of exported TFLite artifacts without lesionlite's code.

Issue 27's acceptance check: an independent computation — its own image loading and resizing (Pillow,
bilinear squash to the model's input), LiteRT, and a plain pairwise AUC — must reproduce the
melanoma AUC that ``export`` wrote for each artifact within 0.02. Nothing of lesionlite is imported:
the script reads the artifact's ``manifest.json`` (input size, pixel layout, class names) and the
external set's ``labels.csv`` directly.

    python benchmarks/external_independent_check.py artifacts/qs_scratch4 --images ../shared/data/isic2017_msk_256

Writes ``benchmarks/results/external_independent_check.json`` (``--out``) and prints a table.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image


def pairwise_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a melanoma > score of a non-melanoma) + ½ P(tie), by counting every pair."""
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def tflite_probabilities(model: Path, manifest: dict, images: list[Path]) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    size = int(manifest["preprocessing"]["input_size"])
    mean = np.asarray(manifest["preprocessing"]["mean"], np.float32)
    std = np.asarray(manifest["preprocessing"]["std"], np.float32)
    it = Interpreter(model_path=str(model), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    rows = []
    for path in images:
        img = Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        x = ((np.asarray(img, np.float32) / 255.0 - mean) / std)[None]
        if inp["dtype"] != np.float32:  # integer input: quantize with the tensor's own parameters
            scale, zero = inp["quantization"]
            x = np.clip(np.round(x / scale + zero), np.iinfo(inp["dtype"]).min, np.iinfo(inp["dtype"]).max).astype(inp["dtype"])
        it.set_tensor(inp["index"], x)
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y - zero) * scale
        rows.append(y[0])
    z = np.asarray(rows, np.float64)
    if manifest["output"].get("kind") == "probabilities":
        return z / z.sum(1, keepdims=True)
    t = float(manifest.get("calibration", {}).get("temperature", 1.0))
    e = np.exp(z / t - (z / t).max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--images", type=Path, required=True, help="the external folder (labels.csv with file, isic2019_dx)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/external_independent_check.json"))
    args = ap.parse_args()
    rows = list(csv.DictReader(open(args.images / "labels.csv", newline="")))
    paths = [args.images / r["file"] for r in rows]
    is_mel = np.asarray([r["isic2019_dx"] == "MEL" for r in rows])
    report = json.loads((args.export_dir / "export_report.json").read_text())
    results = []
    for art in report["artifacts"]:
        if art["format"] != "tflite" or not art.get("path"):
            continue
        d = args.export_dir / art["name"]
        manifest = json.loads((d / "manifest.json").read_text())
        t0 = time.perf_counter()
        probs = tflite_probabilities(d / manifest["files"]["model"], manifest, paths)
        names = [c.lower() for c in manifest["class_names"]]
        mel = names.index("mel")
        auc = pairwise_auc(probs[is_mel, mel], probs[~is_mel, mel])
        exported = art["clinical"]["external"]["metrics"]["melanoma_auc"]["value"]
        den = probs[:, mel] + probs[:, names.index("nv")]  # P(mel | mel or nv); 0 where both are 0
        cond = np.divide(probs[:, mel], den, out=np.zeros_like(den), where=den > 0)
        cond_auc = pairwise_auc(cond[is_mel], cond[~is_mel])
        cond_exported = (art["clinical"]["external"]["metrics"].get("melanocytic_auc") or {}).get("value")
        results.append({"artifact": art["name"], "independent_auc": auc, "export_auc": exported,
                        "independent_melanocytic_auc": cond_auc, "export_melanocytic_auc": cond_exported,
                        "difference": auc - exported, "within_0_02": abs(auc - exported) <= 0.02,
                        "n": int(len(rows)), "n_melanoma": int(is_mel.sum()), "seconds": round(time.perf_counter() - t0, 1)})
        print(f"{art['name']:32s} independent {auc:.4f}  export {exported:.4f}  Δ {auc - exported:+.4f}")
        print(f"{'':32s} P(mel | mel or nv): independent {cond_auc:.4f}  export "
              + ("—" if cond_exported is None else f"{cond_exported:.4f}"))
    doc = {"command": f"python benchmarks/external_independent_check.py {args.export_dir} --images {args.images.name}",
           "host": f"{platform.processor() or platform.machine()}", "export_dir": args.export_dir.name,
           "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(args.out)
    return 0 if results and all(r["within_0_02"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
