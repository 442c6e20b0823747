"""Run an exported ``.tflite`` in the phone's own task runtime: MediaPipe Tasks' ``vision.ImageClassifier``.

An app hands MediaPipe the image as the camera or gallery gives it; MediaPipe resizes the whole image
to the model input itself (its ImageToTensor: the full image stretched to the input size, bilinear
without antialiasing), while training, export's parity, ``serve`` and ``bench`` use
:func:`lesionlite.preprocessing.preprocess` (Pillow's antialiased bilinear squash). This module
measures what that difference costs: top-1 agreement of MediaPipe on the original RGB images with
LiteRT on lesionlite's preprocessing (and with PyTorch), plus the checks an app relies on — scores
in [0, 1] summing to ≈ 1 and the labels in output order.

Since ``--phone-input-size`` (default ``auto``: 256 px for a 64 px model) the exported TFLite takes a larger
image and downscales it to the model's side inside the graph with training's own filter
(:mod:`export.resize_in_graph`), so MediaPipe's resize is a mild one; export measures each such artifact beside
its twin at the model's own side (``parity["in_graph_resize"]["cost"]``, :func:`report_lines`).

mediapipe is an optional dependency (the ``export`` extra pins it): without it :func:`check` returns a
``skipped`` verdict that says so instead of failing the export.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lesionlite.errors import require

#: a probability vector's sum may be off by this much (uint8 outputs are multiples of 1/256)
SUM_TOLERANCE = 0.02


def available() -> bool:
    """Whether mediapipe is importable here (its Tasks runtime ships in the wheel)."""
    return importlib.util.find_spec("mediapipe") is not None


def classify(model_path: Path, images: Sequence[Any], class_names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """MediaPipe's scores [N, C] in output-index order for ``images`` (PIL RGB, as they came), and the labels
    MediaPipe reports by index (``category_name``) for the first image."""
    mp = require("mediapipe", "export", "the MediaPipe ImageClassifier check")
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_buffer=Path(model_path).read_bytes()),
                                            max_results=-1)
    scores = np.zeros((len(images), len(class_names)), np.float64)
    labels = [""] * len(class_names)
    with vision.ImageClassifier.create_from_options(options) as clf:
        for i, img in enumerate(images):
            rgb = np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
            result = clf.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
            for c in result.classifications[0].categories:
                scores[i, c.index] = c.score
                if i == 0:
                    labels[c.index] = c.category_name
    return scores, labels


def check(model_path: Path, images: Sequence[Any], class_names: Sequence[str], litert_outputs: np.ndarray,
          torch_logits: np.ndarray | None = None) -> dict[str, Any]:
    """The MediaPipe verdict of one artifact on ``images``: agreement with LiteRT (on lesionlite's
    preprocessing of the same images) and with PyTorch, score range and sums, labels."""
    if not available():
        return {"status": "skipped", "reason": "mediapipe is not installed (pip install 'lesionlite[export]')"}
    scores, labels = classify(model_path, images, class_names)
    sums = scores.sum(axis=1)
    out: dict[str, Any] = {
        "status": "ok", "runtime": "mediapipe.tasks.python.vision.ImageClassifier", "n": int(len(images)),
        "input": "the original RGB images (MediaPipe resizes them itself)",
        "top1_agreement_litert": float(np.mean(scores.argmax(1) == np.asarray(litert_outputs).argmax(1))),
        "scores_in_unit_interval": bool(((scores >= 0) & (scores <= 1)).all()),
        "max_abs_sum_error": float(np.abs(sums - 1).max()) if len(sums) else 0.0,
        "labels_match": labels == list(class_names),
    }
    if torch_logits is not None:
        out["top1_agreement_pytorch"] = float(np.mean(scores.argmax(1) == np.asarray(torch_logits).argmax(1)))
    out["ok"] = out["scores_in_unit_interval"] and out["max_abs_sum_error"] <= SUM_TOLERANCE and out["labels_match"]
    return out


def report_lines(artifacts: Sequence[Any]) -> list[str]:
    """The export report's MediaPipe section (markdown lines; none when no artifact was checked)."""
    rows = [(a.name, (a.parity or {}).get("mediapipe")) for a in artifacts]
    rows = [(n, m) for n, m in rows if m]
    if not rows:
        return []
    lines = ["", "MediaPipe Tasks ImageClassifier on the original images (its own resize) — top-1 agreement with "
             "LiteRT on lesionlite's preprocessing and with PyTorch (training's preprocessing):", ""]
    for name, m in rows:
        if m.get("status") != "ok":
            lines.append(f"- {name}: {m.get('status')}: {m.get('reason')}")
            continue
        torch_part = f", vs PyTorch {m['top1_agreement_pytorch']:.2%}" if "top1_agreement_pytorch" in m else ""
        lines.append(f"- {name}: vs LiteRT {m['top1_agreement_litert']:.2%}{torch_part} on {m['n']} images; scores in "
                     f"[0, 1]: {m['scores_in_unit_interval']}, max |sum − 1| {m['max_abs_sum_error']:.3g}, labels "
                     f"{'right' if m['labels_match'] else 'WRONG'}")
    lines += _resize_cost_lines(artifacts)
    return lines


def _resize_cost_lines(artifacts: Sequence[Any]) -> list[str]:
    """The cost of the in-graph downscale (TFLite ``--phone-input-size``): each artifact beside its twin
    without it (the model's own input side; measured at export, not shipped)."""
    rows = [(a.name, ((a.parity or {}).get("in_graph_resize") or {})) for a in artifacts]
    rows = [(n, r) for n, r in rows if r.get("cost")]
    if not rows:
        return []
    first = rows[0][1]
    pct = lambda v: "n/a" if v is None else f"{v:.2%}"  # noqa: E731
    num = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    lines = ["", f"Input {first['from']} px with the downscale to {first['to']} px in the graph (what ships) against the "
             f"same precision taking {first['to']} px (not shipped): MediaPipe's and LiteRT's top-1 agreement with "
             "PyTorch, balanced accuracy, file size and LiteRT invoke p50 on 1 thread (latency indicative only: "
             "measured during export on a shared host).", "",
             "| artifact | MediaPipe vs PyTorch, with / without | LiteRT vs PyTorch, with / without | with vs without "
             "(LiteRT top-1) | bal. acc with / without | size with / without | LiteRT p50 ms with / without |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        c = r["cost"]
        lines.append(
            f"| {name} | {pct(c.get('mediapipe_top1_agreement_pytorch_with'))} / "
            f"{pct(c.get('mediapipe_top1_agreement_pytorch_without'))} | {pct(c.get('top1_agreement_pytorch_with'))} / "
            f"{pct(c.get('top1_agreement_pytorch_without'))} | {pct(c.get('top1_agreement_with_vs_without'))} | "
            f"{num(c.get('balanced_accuracy_with'), '.4f')} / {num(c.get('balanced_accuracy_without'), '.4f')} | "
            f"{c.get('size_bytes_with')} / {c.get('size_bytes_without')} B | "
            f"{num(c.get('litert_invoke_ms_p50_1thread_with'), '.3f')} / "
            f"{num(c.get('litert_invoke_ms_p50_1thread_without'), '.3f')} |")
    return lines


def attach(fmt: Any, dest: Path, info: Any, data: Any, torch_logits: np.ndarray, parity: dict[str, Any],
           litert_outputs: np.ndarray | None = None) -> None:
    """Add ``parity["mediapipe"]`` for a verified TFLite artifact (export calls this after its parity check).

    ``data`` is export's :class:`~export.data.ExportData`; its ``eval_images()`` gives the evaluation
    images as they came (not resized), the same images as ``eval_x``. ``litert_outputs``: the artifact's
    LiteRT outputs on its own preprocessing of those images (export's parity run); computed here from
    ``eval_x`` when not given, which only fits an artifact that takes the source's input.
    """
    if getattr(fmt, "name", None) != "tflite" or not parity.get("verified"):
        return
    loader = getattr(data, "eval_images", None)
    if loader is None:
        parity["mediapipe"] = {"status": "skipped", "reason": "the evaluation data cannot give its original images"}
        return
    if not available():
        parity["mediapipe"] = check(dest, [], [], np.zeros((0, 1)))
        return
    litert = litert_outputs
    if litert is None:
        runner = fmt.load_runner(dest, info)
        litert = np.concatenate([runner(data.eval_x[i:i + 64]) for i in range(0, len(data.eval_x), 64)], axis=0)
    parity["mediapipe"] = check(dest, loader(), data.class_names, litert, torch_logits)
    pre = getattr(info, "preprocessing", None)
    resize = (pre.extra.get("in_graph_resize") if pre is not None else None) or {}
    if resize and parity["mediapipe"].get("status") == "ok":
        parity["mediapipe"]["input"] = (f"the original RGB images (MediaPipe resizes them to the {resize['from']} px "
                                        f"input; the graph downscales to {resize['to']} px as training did)")
