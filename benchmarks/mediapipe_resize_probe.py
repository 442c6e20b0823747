"""The resize gap, measured: MediaPipe's ImageClassifier on real images as they came, against lesionlite's path.

For a student run folder this converts two fp32 TFLite graphs (with metadata, so MediaPipe loads them):
``input64`` — the exported contract until now (64 × 64 pixels in; MediaPipe resizes the photo to 64 itself,
bilinear without antialiasing) — and ``input256`` — 256 × 256 pixels in and the 256 → 64 downscale done in the
graph with Pillow's antialiased bilinear (:mod:`export.resize_in_graph`). On the held-out test images (export's
own evaluation subset and seed) it reports top-1 agreement of MediaPipe with
* LiteRT on lesionlite's preprocessing *of that artifact* (``input64``: Pillow squash to 64; ``input256``: Pillow
  squash to 256, then the graph's downscale) — the issue's figure, what serve/bench/evaluate compute;
* PyTorch on the training preprocessing (Pillow squash to 64) — what training saw;
plus LiteRT-on-its-preprocessing vs PyTorch, file size and LiteRT/MediaPipe latency (1 thread, p50).

    python benchmarks/mediapipe_resize_probe.py runs/qs_scratch4 --images 300 --out benchmarks/results/mediapipe_resize
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from distill.artifacts import load_student
from export.api import load_export_data
from export.context import ExportOptions
from export.mediapipe_check import classify
from lesionlite.atomic import write_json_atomic, write_text_atomic
from lesionlite.preprocessing import preprocess_batch


def convert(model: Any, manifest: Any, size: int, workdir: Path) -> bytes:
    """fp32 TFLite of ``model`` taking ``size`` px pixels (in-graph downscale when larger than the student's), with metadata."""
    import torch

    from export.formats.tflite import import_litert_torch, nhwc_wrapper
    from export.tflite_metadata import add_metadata

    pre, s = manifest.preprocessing, manifest.preprocessing.input_size
    wrapper = nhwc_wrapper(model, pre.mean, pre.std, manifest.temperature, None if size == s else (size, s))
    lt = import_litert_torch()
    lt.config.show_progress = False
    path = workdir / f"input{size}.tflite"
    lt.convert(wrapper, (torch.zeros(1, size, size, 3),)).export(str(path))
    payload, _ = add_metadata(path.read_bytes(), name=f"probe input{size}", version="probe", description="probe",
                              class_names=list(manifest.class_names))
    return payload


def litert(payload: bytes, x_nhwc: np.ndarray) -> tuple[np.ndarray, float]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=payload, num_threads=1)
    it.allocate_tensors()
    ind, outd = it.get_input_details()[0], it.get_output_details()[0]
    outs, times = [], []
    for x in x_nhwc:
        it.set_tensor(ind["index"], x[None])
        t0 = time.perf_counter()
        it.invoke()
        times.append(time.perf_counter() - t0)
        outs.append(it.get_tensor(outd["index"])[0].copy())
    return np.stack(outs), float(np.median(times) * 1e3)


def measure(run_dir: str, n_images: int, sizes: tuple[int, ...], workdir: Path) -> dict[str, Any]:
    import torch

    from export.data import take_images

    model, manifest = load_student(run_dir)
    model.eval()
    bundle = load_export_data(manifest, None, None, ExportOptions())
    images = [p[0] for p in take_images(bundle.test, n_images, 1)]  # export's evaluation subset (seed + 1)
    pre = manifest.preprocessing
    with torch.no_grad():
        ref = model(torch.from_numpy(preprocess_batch(images, pre, "NCHW"))).numpy().argmax(1)
    out: dict[str, Any] = {"run": run_dir, "n": len(images), "image_sizes": sorted({im.size for im in images}),
                           "student_input": pre.input_size, "variants": {}}
    for size in sizes:
        payload = convert(model, manifest, size, workdir)
        pix = replace(pre, input_size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        lite, lite_ms = litert(payload, preprocess_batch(images, pix, "NHWC"))
        path = workdir / f"input{size}_md.tflite"
        path.write_bytes(payload)
        t0 = time.perf_counter()
        mp, _ = classify(path, images, list(manifest.class_names))
        mp_ms = (time.perf_counter() - t0) / len(images) * 1e3
        out["variants"][f"input{size}"] = {
            "input": [1, size, size, 3], "size_bytes": len(payload),
            "mediapipe_vs_litert_own_preprocessing": float(np.mean(mp.argmax(1) == lite.argmax(1))),
            "mediapipe_vs_pytorch_training_preprocessing": float(np.mean(mp.argmax(1) == ref)),
            "litert_own_preprocessing_vs_pytorch": float(np.mean(lite.argmax(1) == ref)),
            "litert_invoke_ms_p50_1thread": round(lite_ms, 3), "mediapipe_classify_ms_mean": round(mp_ms, 3),
        }
        print(size, out["variants"][f"input{size}"], flush=True)
    return out


def to_markdown(r: dict[str, Any]) -> str:
    lines = [f"# MediaPipe resize gap — {r['run']} ({r['n']} HAM10000 test images, sizes {r['image_sizes']})", "",
             "| artifact input | MediaPipe vs LiteRT (artifact's lesionlite preprocessing) | MediaPipe vs PyTorch "
             "(training preprocessing) | LiteRT vs PyTorch | size (bytes) | LiteRT invoke p50 (ms) | MediaPipe classify (ms) |",
             "|---|---|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        lines.append(f"| {name} | {v['mediapipe_vs_litert_own_preprocessing']:.2%} | "
                     f"{v['mediapipe_vs_pytorch_training_preprocessing']:.2%} | {v['litert_own_preprocessing_vs_pytorch']:.2%} "
                     f"| {v['size_bytes']} | {v['litert_invoke_ms_p50_1thread']} | {v['mediapipe_classify_ms_mean']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--sizes", default="64,256")
    p.add_argument("--out", help="write OUT.json and OUT.md")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(a.run_dir, a.images, tuple(int(s) for s in a.sizes.split(",")), Path(tmp))
    print(to_markdown(r))
    if a.out:
        write_json_atomic(f"{a.out}.json", r)
        write_text_atomic(f"{a.out}.md", to_markdown(r))


if __name__ == "__main__":
    main()
