"""Dataset containers shared by every loader: :class:`LesionDataset` and :class:`DatasetBundle`.

A :class:`LesionDataset` is a map-style dataset (``len`` / ``ds[i] -> (PIL RGB image, int label)``)
that torch's ``DataLoader`` accepts without this module importing torch. Folder datasets decode
images lazily from disk (10k files); array datasets (MedMNIST npz, synthetic) keep uint8 arrays in
memory.
"""
from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lesionlite.errors import LesionliteError
from lesionlite.preprocessing import load_image_file

#: DermaMNIST / HAM10000 7-class order (MedMNIST label indices).
DERMAMNIST_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
#: ISIC 2019 8-class order (ground-truth CSV column order without UNK).
ISIC2019_CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class LesionDataset:
    """Base class: ``labels`` (int64 array), ``num_classes``; subclasses implement :meth:`load_image`."""

    def __init__(self, labels: Sequence[int] | np.ndarray, num_classes: int,
                 groups: Sequence[str] | None = None, ids: Sequence[str] | None = None,
                 attributes: Sequence[dict[str, str]] | None = None) -> None:
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.num_classes = int(num_classes)
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise LesionliteError(
                f"labels out of range: found {self.labels.min()}..{self.labels.max()} for "
                f"{self.num_classes} classes"
            )
        #: Optional group id per sample (lesion_id) — what the split kept together.
        self.groups = None if groups is None else list(groups)
        #: Optional identifier per sample (image id / file name), for reports.
        self.ids = None if ids is None else list(ids)
        #: Optional per-sample metadata for subgroup reports (HAM10000: sex, age, localization).
        self.attributes = None if attributes is None else [dict(a) for a in attributes]
        if self.attributes is not None and len(self.attributes) != len(self.labels):
            raise LesionliteError(f"{len(self.attributes)} attribute rows but {len(self.labels)} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def load_image(self, i: int) -> Image.Image:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for dataset of size {n}")
        i = int(i) % n
        return self.load_image(i), int(self.labels[i])

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.num_classes).astype(int).tolist()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, counts={self.class_counts()})"


class WrappedDataset:
    """A view over another dataset (``self.dataset``): its length and labels are the wrapped one's."""

    dataset: Any

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels


class ArrayDataset(LesionDataset):
    """In-memory uint8 images [N, H, W, 3] (or [N, H, W] grayscale, converted to RGB on access)."""

    def __init__(self, images: np.ndarray, labels: Sequence[int] | np.ndarray, num_classes: int,
                 **kwargs: Any) -> None:
        super().__init__(labels, num_classes, **kwargs)
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise LesionliteError(f"images must be uint8, got {images.dtype}")
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
            raise LesionliteError(f"images must be [N,H,W,3] or [N,H,W], got shape {list(images.shape)}")
        if images.shape[0] != len(self.labels):
            raise LesionliteError(f"{images.shape[0]} images but {len(self.labels)} labels")
        self.images = images

    def load_image(self, i: int) -> Image.Image:
        arr = self.images[i]
        img = Image.fromarray(arr, mode="L" if arr.ndim == 2 else "RGB")
        return img.convert("RGB") if img.mode != "RGB" else img


class FileDataset(LesionDataset):
    """Images decoded lazily from files (EXIF-aware RGB via :func:`lesionlite.preprocessing.load_image_file`)."""

    def __init__(self, paths: Sequence[str | os.PathLike], labels: Sequence[int] | np.ndarray,
                 num_classes: int, **kwargs: Any) -> None:
        super().__init__(labels, num_classes, **kwargs)
        self.paths = [str(p) for p in paths]
        if len(self.paths) != len(self.labels):
            raise LesionliteError(f"{len(self.paths)} image paths but {len(self.labels)} labels")

    def load_image(self, i: int) -> Image.Image:
        # A missing or corrupt file raises ImageDecodeError (a LesionliteError) naming the path.
        return load_image_file(self.paths[i])


@dataclass
class DatasetBundle:
    """The three splits of one dataset plus what reports need to describe it."""

    train: LesionDataset
    val: LesionDataset
    test: LesionDataset
    class_names: list[str]
    name: str
    fingerprint: str
    synthetic: bool
    source: str
    native_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: An external validation set (another clinic): every image is in ``test``; training, early stopping,
    #: model selection, temperature and threshold fitting refuse it (:func:`refuse_evaluation_only`).
    evaluation_only: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> LesionDataset:
        if name not in ("train", "val", "test"):
            raise LesionliteError(f"unknown split {name!r}; expected train, val or test")
        return getattr(self, name)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description (for manifests and reports)."""
        return {
            "name": self.name,
            "source": self.source,
            "synthetic": self.synthetic,
            "fingerprint": self.fingerprint,
            "native_size": self.native_size,
            "class_names": list(self.class_names),
            "sizes": {s: len(self.split(s)) for s in ("train", "val", "test")},
            "class_counts": {s: self.split(s).class_counts() for s in ("train", "val", "test")},
            **({"extra": self.extra} if self.extra else {}),
            **({"evaluation_only": True} if self.evaluation_only else {}),
        }


def refuse_evaluation_only(bundle: DatasetBundle, use: str) -> None:
    """Raise when ``bundle`` is an external validation set and ``use`` would fit anything on it.

    Called where data is trained on, selected on or calibrated on: an external set's figures are only
    honest if nothing was chosen by looking at them.
    """
    if getattr(bundle, "evaluation_only", False):
        raise LesionliteError(
            f"{getattr(bundle, 'name', 'this dataset')} is an external validation set (evaluation only): it must "
            f"not be used for {use}; evaluate on it with `lesionlite evaluate` or export's external section"
        )


# ---------------------------------------------------------------------------------------------
# helpers shared by the loaders


def fingerprint_parts(parts: Iterable[Any]) -> str:
    """sha256 over a stable text rendering of ``parts`` (strings, numbers, lists, arrays)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode() + str(p.shape).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def files_fingerprint(paths: Sequence[str], labels: np.ndarray, splits: np.ndarray,
                      base: str | os.PathLike, extra: Iterable[Any] = ()) -> str:
    """Fingerprint a folder dataset: relative path, size, label and split of every file (+ extra)."""
    h = hashlib.sha256()
    for item in extra:
        h.update(repr(item).encode("utf-8") + b"\x00")
    base = str(base)
    for p, y, s in zip(paths, labels.tolist(), splits.tolist()):
        try:
            size = os.stat(p).st_size
        except OSError:
            size = -1
        h.update(f"{os.path.relpath(p, base)}\t{size}\t{y}\t{s}\n".encode())
    return h.hexdigest()


def read_csv(path: str | os.PathLike, required: Sequence[str] = ()) -> list[dict[str, str]]:
    """Read a CSV into dict rows; a missing file, empty file or missing column raises LesionliteError."""

    path = Path(path)
    if not path.is_file():
        raise LesionliteError(f"CSV file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in r.items()}
                    for r in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LesionliteError(f"{path}: not a readable CSV file ({exc})") from None
    if not fields:
        raise LesionliteError(f"{path}: empty CSV (no header row)")
    missing = [c for c in required if c not in fields]
    if missing:
        raise LesionliteError(
            f"{path}: missing column(s) {', '.join(missing)}; found columns: {', '.join(fields)}"
        )
    if not rows:
        raise LesionliteError(f"{path}: CSV has a header but no rows")
    return rows


def index_images(folders: Sequence[Path]) -> dict[str, str]:
    """Map image stem → path over the given folders (non-recursive, first folder wins)."""
    index: dict[str, str] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            for entry in it:
                name = entry.name
                stem, ext = os.path.splitext(name)
                if ext.lower() in IMAGE_EXTENSIONS and stem not in index and entry.is_file():
                    index[stem] = entry.path
    return index


def missing_images_error(what: str, missing: Sequence[str], folders: Sequence[Path]) -> LesionliteError:
    shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
    where = ", ".join(str(f) for f in folders)
    return LesionliteError(
        f"{what}: {len(missing)} image file(s) listed in the CSV are missing (e.g. {shown}); looked in: {where}"
    )
