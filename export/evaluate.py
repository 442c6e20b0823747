"""``lesionlite evaluate``: any model — a checkpoint or any exported artifact — on any data spec, with the
clinical figures and their 95 % bootstrap intervals.

Why it exists: the figures a student ships with came from its own test split. A team deploying it in
another clinic must see what happens on *their* images (an external set such as ``isic-archive``) with
the same metrics, the same preprocessing (:mod:`lesionlite.preprocessing`) and the same operating
point, computed the same way for a PyTorch checkpoint and for the int8 TFLite the phone will run.

Artifacts run through the torch-free runtimes of :mod:`serve.runtimes` (ONNX Runtime, LiteRT), so
evaluating an exported model needs no torch; a checkpoint needs torch. Labels of a dataset with other
class codes are mapped onto the model's (:func:`lesionlite.classes.class_mapping`); images of classes
the model lacks are left out and counted, and balanced accuracy is named for the classes present.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.clinical import OperatingPoint, clinical_metrics
from distill.metrics import classification_report, reliability_bins
from lesionlite.classes import class_index, class_mapping
from lesionlite.errors import LesionliteError
from lesionlite.manifest import MANIFEST_NAME, Manifest, read_manifest
from lesionlite.ood import model_view_statistics, out_of_distribution
from lesionlite.preprocessing import preprocess_batch

BATCH = 64


@dataclass
class Predictor:
    """A loaded model: NCHW float32 batch → calibrated class probabilities."""

    name: str
    manifest: Manifest
    run: Callable[[np.ndarray], np.ndarray]  # NCHW float32 → logits (log-probabilities for a probabilities model)
    describe: dict[str, Any] = field(default_factory=dict)

    tta: str = "none"  # test-time augmentation: "none" or "flips" (mean probabilities over 4 flips)

    def probabilities(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(calibrated probabilities, logits; None for a model whose graph already outputs probabilities).

        With ``tta="flips"`` the probabilities are averaged over the image and its horizontal, vertical and
        double flips (dermoscopy has no up or left): 4× the inference time on the phone; logits are the
        plain view's (for the out-of-distribution energy).
        """
        p, z = outputs_to_probabilities(np.asarray(self.run(x), dtype=np.float64), self.manifest)
        if self.tta == "flips":
            views = (x[..., ::-1], x[..., ::-1, :], x[..., ::-1, ::-1])
            p = (p + sum(outputs_to_probabilities(np.asarray(self.run(np.ascontiguousarray(v)), np.float64),
                                                  self.manifest)[0] for v in views)) / 4.0
        return p, z


def outputs_to_probabilities(out: np.ndarray, manifest: Manifest) -> tuple[np.ndarray, np.ndarray | None]:
    """What serve answers: softmax(z / T), with T = 1 where the graph applied the temperature itself.

    Every runner here returns logits: serve's runtimes turn a probabilities output into log-probabilities
    (softmax of those gives the probabilities back), the checkpoint returns its logits.
    """
    applied = bool((manifest.output or {}).get("temperature_applied"))
    z = out / (1.0 if applied else float(manifest.temperature))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True), (None if (manifest.output or {}).get("kind") == "probabilities" else out)


def load_predictor(path: str | Path, threads: int = 0) -> Predictor:
    """A checkpoint folder (needs torch) or an exported artifact folder (torch-free runtimes)."""
    d = Path(path)
    d = d.parent if d.is_file() else d
    if not (d / MANIFEST_NAME).is_file():
        raise LesionliteError(f"{path}: no {MANIFEST_NAME}: pass a run folder written by distill or an artifact "
                              "folder written by export")
    manifest = read_manifest(d / MANIFEST_NAME)
    if manifest.kind == "checkpoint":
        return _checkpoint_predictor(d)
    from serve.runtimes import load_runtime

    model_file = d / manifest.files.get("model", "")
    if not model_file.is_file():
        raise LesionliteError(f"{d}: the model file {manifest.files.get('model')!r} named by its manifest is missing")
    runtime = load_runtime(model_file, manifest, threads)

    def run(x: np.ndarray) -> np.ndarray:
        return runtime.predict(x if runtime.layout == "NCHW" else x.transpose(0, 2, 3, 1))

    return Predictor(name=d.name, manifest=manifest, run=run,
                     describe={"kind": manifest.kind, "precision": manifest.precision, "runtime": runtime.platform})


def _checkpoint_predictor(d: Path) -> Predictor:
    try:
        import torch

        from distill.artifacts import load_student
    except ImportError as exc:
        raise LesionliteError(f"{d} is a PyTorch checkpoint: evaluating it needs torch ({exc}); "
                              "evaluate an exported artifact instead, or install lesionlite[distill]") from None
    model, manifest = load_student(d)
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()

    return Predictor(name=d.name, manifest=manifest, run=run,
                     describe={"kind": "checkpoint", "precision": "fp32", "runtime": f"torch {torch.__version__}"})


@dataclass
class Predictions:
    """One model's outputs on one split, in the model's class index space."""

    labels: np.ndarray
    probs: np.ndarray
    ood: np.ndarray | None
    groups: list[str] | None
    ids: list[str] | None
    attributes: list[dict[str, str]] | None
    excluded: dict[str, int]  # data class → images left out (no counterpart among the model's classes)
    seconds: float


@dataclass
class PreparedSplit:
    """A split's images preprocessed once for a given preprocessing, shared by every model evaluated on it."""

    x: np.ndarray  # NCHW float32
    labels_data: np.ndarray
    keep: np.ndarray  # indices of the split kept (mapped classes)
    stats: np.ndarray | None  # image statistics for the out-of-distribution check


#: the last split prepared, by (data fingerprint, preprocessing, images kept): export measures many artifacts
#: on one external set, and a test session exports many models at the same size
_CACHE: dict[tuple[str, str, str], PreparedSplit] = {}


def prepare_split(dataset: Any, manifest: Manifest, data_classes: Sequence[str], progress: bool = True,
                  exclude_ids: set[str] | None = None, cache_key: str | None = None) -> tuple[PreparedSplit, dict[str, int]]:
    """Decode and preprocess every image of ``dataset`` whose class the model knows (with a progress bar),
    leaving out ``exclude_ids`` (the images a site-adapted model was fitted to). ``cache_key`` (the data's
    fingerprint) keeps the result for the next call on the same images with the same preprocessing."""
    mapping = class_mapping(list(data_classes), list(manifest.class_names))
    labels = np.asarray(dataset.labels, dtype=np.int64)
    ok = np.isin(labels, list(mapping))
    if exclude_ids:
        ok &= ~np.isin(np.asarray(dataset.ids or [], dtype=object), list(exclude_ids))
    keep = np.flatnonzero(ok)
    excluded = {data_classes[c]: int(n) for c, n in zip(*np.unique(labels, return_counts=True)) if int(c) not in mapping}
    if keep.size == 0:
        raise LesionliteError(f"no image of this data has a class the model knows ({', '.join(manifest.class_names)})")
    from tqdm import tqdm

    cfg = manifest.preprocessing
    key = None if cache_key is None else (cache_key, repr(cfg.to_dict()) + repr(bool((manifest.calibration or {}).get("ood"))),
                                          hashlib.sha256(keep.tobytes()).hexdigest())
    if key in _CACHE:
        return _CACHE[key], excluded
    chunks = []
    for i in tqdm(range(0, keep.size, BATCH), desc="preprocess", unit="batch", disable=not progress, leave=False):
        chunks.append(preprocess_batch([dataset.load_image(int(j)) for j in keep[i:i + BATCH]], cfg, "NCHW"))
    x = np.concatenate(chunks)
    stats = None
    if (manifest.calibration or {}).get("ood"):
        stats = np.stack([model_view_statistics(im, cfg) for im in x])
    mapped = np.asarray([mapping[int(c)] for c in labels[keep]], dtype=np.int64)
    prepared = PreparedSplit(x=x, labels_data=mapped, keep=keep, stats=stats)
    if key is not None:
        _CACHE.clear()  # one entry: bounded memory
        _CACHE[key] = prepared
    return prepared, excluded


def predict_prepared(predictor: Predictor, prepared: PreparedSplit, dataset: Any, excluded: dict[str, int]) -> Predictions:
    """Run ``predictor`` on prepared images; the out-of-distribution check as serve applies it."""
    t0 = time.perf_counter()
    probs, logits = [], []
    for i in range(0, len(prepared.x), BATCH):
        p, z = predictor.probabilities(prepared.x[i:i + BATCH])
        probs.append(p)
        logits.append(z)
    p_all = np.concatenate(probs)
    z_all = None if logits[0] is None else np.concatenate(logits)
    cal = (predictor.manifest.calibration or {}).get("ood")
    ood = out_of_distribution(cal, prepared.stats, z_all) if cal and prepared.stats is not None else None

    def pick(values: list[Any] | None) -> list[Any] | None:
        return None if values is None else [values[int(j)] for j in prepared.keep]

    return Predictions(labels=prepared.labels_data, probs=p_all, ood=ood, groups=pick(getattr(dataset, "groups", None)),
                       ids=pick(getattr(dataset, "ids", None)), attributes=pick(getattr(dataset, "attributes", None)),
                       excluded=excluded, seconds=time.perf_counter() - t0)


def operating_point_of(manifest: Manifest) -> OperatingPoint | None:
    op = (manifest.calibration or {}).get("operating_point")
    return OperatingPoint.from_dict(op) if op else None


def summarize(predictor: Predictor, preds: Predictions, data: dict[str, Any], n_boot: int, seed: int = 0,
              keep_predictions: bool = True) -> dict[str, Any]:
    """The evaluation document: clinical metrics with CIs, the training-style report, per-image predictions."""
    m = predictor.manifest
    names = list(m.class_names)
    op = operating_point_of(m)
    clinical = clinical_metrics(preds.labels, preds.probs, names, op, preds.ood, preds.groups, n_boot=n_boot, seed=seed)
    report = classification_report(preds.labels, probs=preds.probs, class_names=names)
    mel, nv = class_index(names, "mel"), class_index(names, "nv")
    doc: dict[str, Any] = {
        "model": {"name": predictor.name, "architecture": m.architecture, **predictor.describe,
                  "input_size": m.preprocessing.input_size, "temperature": m.temperature,
                  "synthetic_training_data": bool((m.data or {}).get("synthetic")),
                  "trained_on": (m.data or {}).get("name")},
        "data": {**data, "n": int(preds.labels.size), "excluded": preds.excluded},
        "clinical": clinical,
        "report": report,
        "reliability": {k: v.tolist() for k, v in reliability_bins(preds.labels, preds.probs).items()},
        "seconds": round(preds.seconds, 3),
    }
    if keep_predictions:
        doc["predictions"] = {
            "ids": preds.ids, "labels": preds.labels.tolist(),
            "mel_prob": None if mel is None else [round(float(v), 6) for v in preds.probs[:, mel]],
            "nv_prob": None if nv is None else [round(float(v), 6) for v in preds.probs[:, nv]],
            "pred": preds.probs.argmax(1).tolist(),
            "ood": None if preds.ood is None else preds.ood.astype(int).tolist(),
        }
    return doc


TTA_MODES = ("none", "flips")


def evaluate(model: str | Path, data_spec: str | None = None, data_root: str | None = None, split: str = "test",
             n_boot: int = 1000, seed: int = 0, threads: int = 0, progress: bool = True, tta: str = "none") -> dict[str, Any]:
    """Evaluate one model on ``split`` of ``data_spec`` (default: the data the model was trained on)."""
    predictor, preds, data = predict(model, data_spec, data_root, split, seed, threads, progress, tta)
    return summarize(predictor, preds, data, n_boot, seed)


def predict(model: str | Path, data_spec: str | None = None, data_root: str | None = None, split: str = "test",
            seed: int = 0, threads: int = 0, progress: bool = True,
            tta: str = "none") -> tuple[Predictor, Predictions, dict[str, Any]]:
    """The model's probabilities on ``split`` of ``data_spec`` with what describes the data (for studies that
    compute their own figures from the same predictions, e.g. ``benchmarks/referral_scores.py``)."""
    if tta not in TTA_MODES:
        raise LesionliteError(f"unknown test-time augmentation {tta!r}; choose from {', '.join(TTA_MODES)}")
    predictor = load_predictor(model, threads)
    predictor.tta = tta
    m = predictor.manifest
    info = m.data or {}
    spec = data_spec or info.get("spec") or info.get("name")
    if not spec:
        raise LesionliteError(f"{model}: its manifest names no data; pass --data SPEC")
    from export.api import ExportOptions, load_export_data

    same = data_spec is None or data_spec == info.get("spec")  # the model's own data: its split seed, fingerprint checked
    bundle = load_export_data(m, None if same else data_spec, data_root, ExportOptions(seed=seed))
    if getattr(bundle, "evaluation_only", False) and split != "test":
        raise LesionliteError(f"{bundle.name} is an external set: it has a test split only")
    dataset = bundle.split(split)
    if len(dataset) == 0:
        raise LesionliteError(f"{bundle.name}: the {split} split is empty")
    from distill.adapt import adapted_ids

    fitted = adapted_ids(m, bundle)
    prepared, excluded = prepare_split(dataset, m, bundle.class_names, progress, fitted)
    if fitted:
        excluded = {**excluded, "adapted on (site images this model was fitted to)": len(fitted)}
    preds = predict_prepared(predictor, prepared, dataset, excluded)
    data = {"spec": str(spec), "name": bundle.name, "split": split, "fingerprint": bundle.fingerprint, "tta": tta,
            "external": bool(getattr(bundle, "evaluation_only", False)), "synthetic": bool(bundle.synthetic),
            "source": bundle.source}
    return predictor, preds, data


def external_block(model: str | Path, spec: str = "isic-archive", data_root: str | None = None,
                   n_boot: int = 1000, seed: int = 0) -> dict[str, Any] | None:
    """What a run record keeps of one model on an external set: spec, n, per-image labels and melanoma
    probabilities, and the figures with CIs computed from them (so verdicts are recomputed from predictions).

    None when the external set is not under the data root; evaluation only, nothing is fitted.
    """
    try:
        doc = evaluate(model, spec, data_root, "test", n_boot=n_boot, seed=seed, progress=False)
    except LesionliteError as exc:
        if "path not found" in str(exc) or "no labels.csv" in str(exc):
            return None
        raise
    preds = doc["predictions"]
    return {"spec": spec, "name": doc["data"]["name"], "fingerprint": doc["data"]["fingerprint"],
            "n": doc["data"]["n"], "excluded": doc["data"]["excluded"], "model": doc["model"]["name"],
            "kind": doc["model"].get("kind"), "precision": doc["model"].get("precision"),
            "class_names": list(doc["report"]["per_class"]), "labels": preds["labels"], "mel_prob": preds["mel_prob"],
            "nv_prob": preds["nv_prob"],
            "pred": preds["pred"], "metrics": doc["clinical"]["metrics"], "bootstrap": doc["clinical"]["bootstrap"]}
