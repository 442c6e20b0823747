"""The clinical evidence export writes beside parity: an operating point chosen on validation, and every
artifact's figures with 95 % CIs on the internal test split and on an external set from another clinic.

Why in export: the artifact a phone runs is what a clinic deploys, and int8 may cost one site or one
subgroup more than the average. So the PyTorch model and each artifact are measured on the same images
with the same operating point, and each artifact's change against PyTorch gets a *paired* interval.

Rules kept here, in code: the operating point is chosen on the **validation** split only; the
external set (an evaluation-only bundle) is only ever predicted on — nothing is fitted on it
(:func:`distill.data.base.refuse_evaluation_only` guards the other stages).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import export.data  # export.data.load_bundle looked up at call time: tests replace it
from distill.adapt import adapted_ids
from distill.clinical import OperatingPoint, choose_operating_point, clinical_metrics, paired_deltas
from distill.data.base import DatasetBundle
from distill.data.isic_archive import NAME
from export.evaluate import prepare_split
from export.model_card import MIN_GROUP, group_labels
from lesionlite.classes import class_index
from lesionlite.errors import LesionliteError
from lesionlite.manifest import Manifest
from lesionlite.ood import image_statistics, out_of_distribution, unnormalize
from lesionlite.preprocessing import preprocess_batch

BATCH = 64
#: bootstrap replicates of the export's intervals
N_BOOT = 1000


@dataclass
class EvidenceSet:
    """One set of images every artifact is measured on, with PyTorch's outputs on it."""

    role: str  # "internal" | "external"
    describe: dict[str, Any]
    x: np.ndarray  # NCHW float32, the deployed preprocessing
    labels: np.ndarray  # in the model's class index space
    groups: list[str] | None
    attributes: list[dict[str, str]] | None
    stats: np.ndarray | None  # image statistics for the out-of-distribution check
    ref_logits: np.ndarray | None = None
    #: the images as they came (PIL, in ``x``'s order), re-read on demand: for an artifact that takes another
    #: input than ``x`` (TFLite's larger phone input, the downscale in its graph)
    images: Callable[[], list[Any]] | None = None


@dataclass
class Evidence:
    operating_point: OperatingPoint | None
    sets: list[EvidenceSet]
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"operating_point": None if self.operating_point is None else self.operating_point.to_dict(),
                "sets": {s.role: s.describe for s in self.sets}, "notes": list(self.notes)}


def _stats(x: np.ndarray, manifest: Manifest) -> np.ndarray | None:
    if not (manifest.calibration or {}).get("ood"):
        return None
    cfg = manifest.preprocessing
    return np.stack([image_statistics(unnormalize(im, cfg.mean, cfg.std)) for im in x]) if len(x) else None


def _labels(dataset: Any) -> np.ndarray:
    """Labels of a LesionDataset (``.labels``) or of a plain list of (image, label) pairs."""
    if hasattr(dataset, "labels"):
        return np.asarray(dataset.labels, dtype=np.int64)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def _preprocess(dataset: Any, indices: np.ndarray, manifest: Manifest) -> np.ndarray:
    """The deployed preprocessing of ``dataset[i]`` for ``indices`` (a LesionDataset or a list of (image, label))."""
    cfg = manifest.preprocessing
    chunks = [preprocess_batch([dataset[int(j)][0] for j in indices[i:i + BATCH]], cfg, "NCHW")
              for i in range(0, len(indices), BATCH)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 3, cfg.input_size, cfg.input_size), np.float32)


def probabilities(outputs: np.ndarray, output_kind: str, temperature: float) -> np.ndarray:
    """Calibrated probabilities from an artifact's outputs (softmax(logits/T), or its probabilities)."""
    out = np.asarray(outputs, dtype=np.float64)
    if output_kind == "probabilities":
        return out / np.maximum(out.sum(axis=1, keepdims=True), 1e-12)
    z = out / float(temperature)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def operating_point(run: Callable[[np.ndarray], np.ndarray], bundle: DatasetBundle, manifest: Manifest,
                    target: str, sensitivity: float) -> tuple[OperatingPoint | None, str | None]:
    """Choose the threshold on the validation split with the PyTorch model; (None, why) when it cannot."""
    val = getattr(bundle, "val", None)
    if val is None or len(val) == 0:
        return None, "no validation split: no operating point"
    x = _preprocess(val, np.arange(len(val)), manifest)
    probs = probabilities(_batched(run, x), "logits", manifest.temperature)
    try:
        op = choose_operating_point(probs, _labels(val), list(manifest.class_names), target, sensitivity,
                                    split="val", data_fingerprint=getattr(bundle, "fingerprint", None))
    except LesionliteError as exc:
        return None, f"no operating point: {exc}"
    return op, None


def _batched(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(run(x[i:i + BATCH])) for i in range(0, len(x), BATCH)])


def internal_set(data: Any, manifest: Manifest, ref_logits: np.ndarray) -> EvidenceSet:
    """The export's own evaluation images (the held-out test split)."""
    return EvidenceSet(role="internal", describe={"name": data.name, "split": data.eval_split, "n": int(len(data.eval_y))},
                       x=data.eval_x, labels=np.asarray(data.eval_y, np.int64), groups=data.eval_groups,
                       attributes=data.eval_attributes, stats=_stats(data.eval_x, manifest), ref_logits=ref_logits,
                       images=getattr(data, "eval_images", None))


def load_external(external: Any, data_root: str | None, manifest: Manifest) -> tuple[Any, str | None]:
    """The external bundle asked for (``"auto"``: the ISIC-archive set if it is under the data root)."""
    if external is None or (isinstance(external, str) and external.lower() in ("none", "off", "")):
        return None, "external validation turned off (--external none)"
    if not isinstance(external, str):
        bundle = external
    else:
        spec = NAME if external == "auto" else external
        try:
            bundle = export.data.load_bundle(spec, data_root)
        except LesionliteError as exc:
            if external == "auto":
                return None, f"no external set found ({exc}); pass --external SPEC"
            raise
    if not getattr(bundle, "evaluation_only", False):
        if external == "auto":  # auto never fails an export: it says what it found
            return None, f"no external set: {getattr(bundle, 'name', '?')} is not an evaluation-only set"
        raise LesionliteError(f"--external {getattr(bundle, 'name', external)}: not an external (evaluation-only) "
                              "set; use an ISIC-archive spec such as isic-archive:PATH")
    return bundle, None


def external_set(bundle: DatasetBundle, manifest: Manifest,
                 run: Callable[[np.ndarray], np.ndarray]) -> tuple[EvidenceSet | None, str | None]:
    """The external images whose class the model knows, prepared as ``lesionlite evaluate`` prepares them (a
    site-adapted model: its site's held-out images only), with PyTorch's outputs on them."""

    test = bundle.test
    fitted = adapted_ids(manifest, bundle)
    try:
        prepared, excluded = prepare_split(test, manifest, bundle.class_names, progress=False, exclude_ids=fitted,
                                           cache_key=bundle.fingerprint)
    except LesionliteError as exc:
        return None, f"external set {bundle.name}: {exc}"
    if fitted:
        excluded["adapted on (site images this model was fitted to)"] = len(fitted)

    def pick(values: list[Any] | None) -> list[Any] | None:
        return None if values is None else [values[int(j)] for j in prepared.keep]

    desc = {"name": bundle.name, "split": "test", "n": int(prepared.keep.size), "source": bundle.source,
            "fingerprint": bundle.fingerprint, "excluded": excluded}
    return EvidenceSet(role="external", describe=desc, x=prepared.x, labels=prepared.labels_data,
                       groups=pick(getattr(test, "groups", None)), attributes=pick(getattr(test, "attributes", None)),
                       stats=prepared.stats, ref_logits=_batched(run, prepared.x),
                       images=lambda: [test.load_image(int(j)) for j in prepared.keep]), None


def ood_flags(s: EvidenceSet, logits: np.ndarray | None, manifest: Manifest) -> np.ndarray | None:
    cal = (manifest.calibration or {}).get("ood")
    if not cal or s.stats is None:
        return None
    return out_of_distribution(cal, s.stats, logits)


def measure(evidence: Evidence, manifest: Manifest, outputs: dict[str, np.ndarray] | None, output_kind: str,
            n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Per evidence set: the clinical figures with CIs, and (for an artifact) paired changes against PyTorch.

    ``outputs`` maps a set's role to the artifact's raw outputs on it; None measures PyTorch itself.
    """
    names = list(manifest.class_names)
    out: dict[str, Any] = {}
    for s in evidence.sets:
        ref_p = probabilities(s.ref_logits, "logits", manifest.temperature)
        if outputs is None:
            p, logits = ref_p, s.ref_logits
        else:
            raw = outputs[s.role]
            p = probabilities(raw, output_kind, manifest.temperature)
            logits = raw if output_kind == "logits" else None
        block = clinical_metrics(s.labels, p, names, evidence.operating_point, ood_flags(s, logits, manifest),
                                 s.groups, n_boot=n_boot, seed=seed)
        block["set"] = s.describe
        if outputs is not None:
            block["vs_pytorch"] = paired_deltas(s.labels, p, ref_p, names, evidence.operating_point, s.groups,
                                                n_boot=n_boot, seed=seed)
            if not np.array_equal(p.argmax(1), ref_p.argmax(1)):  # identical answers cost no subgroup anything
                block["vs_pytorch_by_subgroup"] = subgroup_deltas(s, p, ref_p, names, evidence.operating_point,
                                                                  n_boot=SUBGROUP_N_BOOT, seed=seed)
        out[s.role] = block
    return out


#: bootstrap replicates of the per-subgroup changes (many small groups per artifact: fewer replicates)
SUBGROUP_N_BOOT = 400


def subgroup_deltas(s: EvidenceSet, p: np.ndarray, ref_p: np.ndarray, names: list[str], op: OperatingPoint | None,
                    n_boot: int = SUBGROUP_N_BOOT, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Per attribute and group: the artifact's paired change against PyTorch (balanced accuracy over the
    classes present, melanoma AUC, sensitivity), with the counts each figure rests on and *small* flags."""

    mel = class_index(names, "mel")
    out: dict[str, list[dict[str, Any]]] = {}
    for attr, (values, groups) in group_labels(s.attributes).items():
        rows = []
        for g in groups:
            idx = np.flatnonzero(values == g)
            y = s.labels[idx]
            n_mel = int((y == mel).sum()) if mel is not None else 0
            d = paired_deltas(y, p[idx], ref_p[idx], names, op, None if s.groups is None else [s.groups[i] for i in idx],
                              n_boot=n_boot, seed=seed)["metrics"]
            rows.append({"group": str(g), "n": int(idx.size), "melanoma_n": n_mel, "small": bool(idx.size < MIN_GROUP),
                         "melanoma_small": bool(n_mel < MIN_GROUP), **d})
        out[attr] = rows
    return out
