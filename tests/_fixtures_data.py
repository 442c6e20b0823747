"""Small generated datasets on disk for the data tests (no real data needed)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image

from distill.data.base import DERMAMNIST_CLASSES, ISIC2019_CLASSES

REPO_ROOT = Path(__file__).resolve().parents[1]


def real_data_root() -> Path | None:
    """The one real-data setting: LESIONLITE_DATA, else ../shared/data beside the checkout (None if absent)."""
    env = os.environ.get("LESIONLITE_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    default = REPO_ROOT.parent / "shared" / "data"
    return default if default.is_dir() else None


def _img(rng: np.random.Generator, label: int, size: tuple[int, int] = (10, 8)) -> Image.Image:
    base = np.array([30 * label, 200 - 20 * label, 120], dtype=np.int64)
    arr = np.clip(base + rng.integers(-10, 10, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def make_npz(path: Path, size: int = 28, counts=(70, 21, 35), num_classes: int = 7, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        labels = (np.arange(n) % num_classes).astype(np.uint8).reshape(-1, 1)
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def make_ham(root: Path, lesions_per_class: int = 8, seed: int = 0, image_dir: str = "images",
             with_labels_csv: bool = True) -> Path:
    """HAM10000-like folder: metadata with repeated lesion_ids (1–3 images per lesion)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / image_dir).mkdir(exist_ok=True)
    meta, labels = [], []
    k = 0
    for c, dx in enumerate(DERMAMNIST_CLASSES):
        for les in range(lesions_per_class):
            lid = f"HAM_{c:02d}{les:04d}"
            for _ in range(int(rng.integers(1, 4))):
                iid = f"ISIC_{k:07d}"
                k += 1
                _img(rng, c).save(root / image_dir / f"{iid}.jpg", quality=90)
                meta.append([lid, iid, dx, "histo", "50.0", "male", "back"])
                # label8: akiec alternates AK(3)/SCC(7); others map to the ISIC order.
                l8 = {"akiec": 3 if les % 2 else 7, "bcc": 2, "bkl": 4, "df": 5, "mel": 0, "nv": 1, "vasc": 6}[dx]
                labels.append([iid, f"{image_dir}/{iid}.jpg", lid, dx, c, ISIC2019_CLASSES[l8], l8])
    write_csv(root / "HAM10000_metadata.csv",
              ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"], meta)
    if with_labels_csv:
        write_csv(root / "labels.csv",
                  ["image_id", "file", "lesion_id", "dx", "label7", "isic2019_dx", "label8"], labels)
    return root


def make_isic2019(root: Path, per_class: int = 6, with_metadata: bool = True, seed: int = 0) -> Path:
    """ISIC 2019-like folder: one-hot ground truth incl. UNK rows, images in ISIC_2019_Training_Input/."""
    rng = np.random.default_rng(seed)
    img_dir = root / "ISIC_2019_Training_Input"
    img_dir.mkdir(parents=True, exist_ok=True)
    gt, meta = [], []
    k = 0
    for c in range(len(ISIC2019_CLASSES)):
        for j in range(per_class):
            iid = f"ISIC_{k:07d}"
            k += 1
            _img(rng, c % 7).save(img_dir / f"{iid}.jpg", quality=90)
            gt.append([iid] + [1.0 if i == c else 0.0 for i in range(8)] + [0.0])
            # pairs of images share a lesion; some have no lesion_id
            meta.append([iid, "50", "back", f"L{c}_{j // 2}" if j < per_class - 1 else "", "male"])
    for j in range(3):  # UNK rows (dropped; no image needed)
        gt.append([f"ISIC_UNK{j}"] + [0.0] * 8 + [1.0])
    write_csv(root / "ISIC_2019_Training_GroundTruth.csv", ["image"] + ISIC2019_CLASSES + ["UNK"], gt)
    if with_metadata:
        write_csv(root / "ISIC_2019_Training_Metadata.csv",
                  ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"], meta)
    return root


def make_imagefolder(root: Path, classes=("benign", "malignant", "other"), per_class: int = 10,
                     split_layout: bool = False, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        if split_layout:
            for split, n in (("train", per_class), ("val", 3), ("test", 4)):
                d = root / split / name
                d.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    _img(rng, c).save(d / f"{name}_{i}.png")
        else:
            d = root / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                _img(rng, c).save(d / f"{name}_{i}.jpg", quality=90)
    return root
