"""ISIC 2019: one-hot ground truth (8 classes, UNK rows dropped), seeded 70/10/20 split.

Spec: ``isic2019:PATH`` where PATH holds ``ISIC_2019_Training_GroundTruth.csv`` (or is that CSV)
and the images in PATH, PATH/images or PATH/ISIC_2019_Training_Input(/ISIC_2019_Training_Input).
With ``ISIC_2019_Training_Metadata.csv`` beside it (column ``lesion_id``) the split is grouped by
lesion (images without a lesion_id are their own group); otherwise it is stratified per image.
A folder with a ``labels.csv`` holding ``file`` + ``label8`` columns (e.g. the staged
``isic2017_msk_256``) is accepted as well.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.data.base import (
    ISIC2019_CLASSES,
    DatasetBundle,
    FileDataset,
    files_fingerprint,
    index_images,
    missing_images_error,
    read_csv,
)
from distill.data.paths import data_root, resolve_path
from distill.data.registry import register_dataset
from distill.data.splits import DEFAULT_FRACTIONS, check_disjoint_groups, grouped_stratified_split
from lesionlite.errors import LesionliteError

GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
METADATA = "ISIC_2019_Training_Metadata.csv"
IMAGE_DIRS = (".", "images", "ISIC_2019_Training_Input", "ISIC_2019_Training_Input/ISIC_2019_Training_Input")


def _one_hot_rows(csv_path: Path) -> tuple[list[str], list[int]]:
    rows = read_csv(csv_path, required=("image", *ISIC2019_CLASSES))
    ids, labels = [], []
    for n, r in enumerate(rows, start=2):
        try:
            vec = [float(r[c] or 0) for c in ISIC2019_CLASSES]
            unk = float(r.get("UNK", "0") or 0)
        except ValueError:
            raise LesionliteError(f"{csv_path}: line {n}: non-numeric one-hot value") from None
        if unk > 0.5 or max(vec) <= 0.5:
            continue  # UNK (or unlabelled) rows are dropped
        if sum(v > 0.5 for v in vec) != 1:
            raise LesionliteError(f"{csv_path}: line {n} ({r['image']}): not one-hot ({vec})")
        ids.append(r["image"])
        labels.append(int(np.argmax(vec)))
    if not ids:
        raise LesionliteError(f"{csv_path}: no labelled rows (all UNK?)")
    return ids, labels


def _read_ground_truth(gt: Path, d: Path) -> tuple[list[str], list[int], list[str], dict[str, str]]:
    """Ids, labels and image paths from the official one-hot CSV, plus lesion ids to group the split by."""
    ids, labels = _one_hot_rows(gt)
    groups_by_id: dict[str, str] = {}
    meta = gt.parent / METADATA
    if meta.is_file():
        for r in read_csv(meta, required=("image",)):
            if r.get("lesion_id"):
                groups_by_id[r["image"]] = r["lesion_id"]
    folders = [d / s if s != "." else d for s in IMAGE_DIRS]
    index = index_images(folders)
    paths = []
    missing = []
    for i in ids:
        q = index.get(i) or index.get(f"{i}_downsampled")
        if q is None:
            missing.append(i)
        paths.append(q)
    if missing:
        raise missing_images_error(f"ISIC 2019 at {d}", missing, folders)
    return ids, labels, paths, groups_by_id


def read_labels_csv(d: Path) -> tuple[list[str], list[int], list[str]]:
    """Ids, labels and image paths from a ``labels.csv`` (file + label8), the staged-folder layout."""
    rows = read_csv(d / "labels.csv", required=("file", "label8"))
    ids, labels, paths, missing = [], [], [], []
    for n, r in enumerate(rows, start=2):
        if r["label8"] == "":
            continue
        try:
            y = int(r["label8"])
            if not 0 <= y < len(ISIC2019_CLASSES):
                raise ValueError
        except ValueError:
            raise LesionliteError(f"{d / 'labels.csv'}: line {n}: bad label8 {r['label8']!r} (0..7)") from None
        q = d / r["file"]
        if not q.is_file():
            missing.append(r["file"])
        ids.append(r.get("image_id") or Path(r["file"]).stem)
        labels.append(y)
        paths.append(str(q))
    if missing:
        raise missing_images_error(f"ISIC images at {d}", missing, [d])
    if not ids:
        raise LesionliteError(f"{d / 'labels.csv'}: no labelled rows")
    return ids, labels, paths


def _split_bundle(d: Path, layout: str, ids: list[str], labels: list[int], paths: list[str],
                  groups_by_id: dict[str, str], seed: int, fractions) -> DatasetBundle:
    """Split train/val/test (grouped by lesion when known, so no lesion leaks across) and bundle them."""
    y_arr = np.asarray(labels, dtype=np.int64)
    groups = [groups_by_id.get(i, "") for i in ids]
    grouped = any(groups)
    splits = grouped_stratified_split(y_arr, groups if grouped else None, fractions=fractions, seed=seed)
    if grouped:
        check_disjoint_groups(groups, splits)
    split_of = np.zeros(len(ids), dtype=np.int64)
    for s, idx in enumerate(splits):
        split_of[idx] = s
    names = list(ISIC2019_CLASSES)

    def part(idx: np.ndarray) -> FileDataset:
        return FileDataset([paths[i] for i in idx], y_arr[idx], len(names),
                           groups=[groups[i] for i in idx], ids=[ids[i] for i in idx])

    fp = files_fingerprint([str(q) for q in paths], y_arr, split_of, d,
                           extra=["isic2019", layout, seed, tuple(fractions), len(ids)])
    how = "grouped by lesion_id" if grouped else "stratified per image (no lesion_id metadata)"
    return DatasetBundle(
        train=part(splits[0]), val=part(splits[1]), test=part(splits[2]), class_names=names,
        name="isic2019", fingerprint=fp, synthetic=False,
        source=f"ISIC 2019 labels ({layout}) at {d}: {len(ids)} images, 8 classes, UNK dropped, split {how} (seed {seed})",
        native_size=None, extra={"dir": str(d), "seed": seed, "split": how},
    )


@register_dataset("isic2019", "ISIC 2019 one-hot ground truth, 8 classes, UNK dropped; isic2019:PATH")
def load_isic2019(arg: str | None = None, root: str | Path | None = None, seed: int = 0,
                  fractions=DEFAULT_FRACTIONS, **_: object) -> DatasetBundle:
    """Load ISIC 2019 from ``isic2019:PATH`` (ground-truth CSV or labels.csv layout), split by seed."""
    root_p = data_root(root)
    if not arg:
        raise LesionliteError(
            "isic2019 needs a path: isic2019:/path/to/folder holding "
            f"{GROUND_TRUTH} and the ISIC 2019 training images"
        )
    p = resolve_path(arg, root_p)
    if p.is_file():
        gt, d = p, p.parent
    else:
        d = p
        gt = d / GROUND_TRUTH
    groups_by_id: dict[str, str] = {}
    if gt.is_file():
        ids, labels, paths, groups_by_id = _read_ground_truth(gt, d)
        layout = "ISIC 2019 ground truth"
    elif (d / "labels.csv").is_file():
        ids, labels, paths = read_labels_csv(d)
        layout = "labels.csv (label8, ISIC 2019 order)"
    else:
        raise LesionliteError(f"{d}: no {GROUND_TRUTH} (nor a labels.csv with file,label8 columns)")
    return _split_bundle(d, layout, ids, labels, paths, groups_by_id, seed, fractions)
