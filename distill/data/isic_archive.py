"""ISIC-archive images from another institution than HAM10000, as an **external validation set**.

Spec: ``isic-archive[:PATH]``; PATH (default ``isic2017_msk_256`` under the data root) holds a
``labels.csv`` with ``file`` and ``label8`` (ISIC 2019 ground-truth order) and, optionally,
``isic2019_image`` (the id in the ISIC 2019 metadata). Sex, age and anatomical site are joined from
``ISIC_2019_Training_Metadata.csv`` (beside the images, or in ``isic2019_labels/`` under the data root
or next to PATH), so the model card can report subgroups on the external site too.

Why a loader of its own: an external set is evaluated whole. Every image is in ``test`` (train and
val are empty) and the bundle is ``evaluation_only``, so training, early stopping, selection,
temperature and threshold fitting refuse it (:func:`distill.data.base.refuse_evaluation_only`).
Lesion ids, where the metadata has them, group the bootstrap of the confidence intervals.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.data.base import ISIC2019_CLASSES, DatasetBundle, FileDataset, files_fingerprint, read_csv
from distill.data.isic2019 import METADATA, read_labels_csv
from distill.data.paths import data_root, resolve_path
from distill.data.registry import register_dataset
from lesionlite.errors import LesionliteError

#: the staged external set's folder under the data root (``../shared/data/isic2017_msk_256``)
DEFAULT_DIR = "isic2017_msk_256"
#: this loader's registry name (export looks for an external set with it)
NAME = "isic-archive"


def _metadata_file(d: Path, root: Path | None) -> Path | None:
    bases = [d, *([root / "isic2019_labels"] if root is not None else []), d.parent / "isic2019_labels"]
    for cand in (b / METADATA for b in bases):
        if cand.is_file():
            return cand
    return None


def _attributes(d: Path, root: Path | None, keys: list[str]) -> tuple[list[dict[str, str]], list[str], str]:
    """Per image: ``{sex, age, localization}`` (model-card names) and lesion ids, from the ISIC 2019 metadata."""
    meta_file = _metadata_file(d, root)
    if meta_file is None:
        return [{} for _ in keys], list(keys), "no ISIC 2019 metadata found: no subgroups"
    meta = {r["image"]: r for r in read_csv(meta_file, required=("image",))}
    attrs, groups = [], []
    for k in keys:
        r = meta.get(k) or meta.get(f"{k}_downsampled") or {}
        attrs.append({"sex": r.get("sex", ""), "age": r.get("age_approx", ""),
                      "localization": r.get("anatom_site_general", "")})
        groups.append(r.get("lesion_id") or k)  # no lesion id: the image is its own group
    found = sum(1 for k in keys if k in meta or f"{k}_downsampled" in meta)
    return attrs, groups, f"metadata joined from {meta_file.name} for {found}/{len(keys)} images"


@register_dataset(NAME, "ISIC-archive images (labels.csv, ISIC 2019 classes) as an external evaluation-only set; "
                        "isic-archive[:PATH] (default isic2017_msk_256)")
def load_isic_archive(arg: str | None = None, root: str | Path | None = None, seed: int = 0,
                      **_: object) -> DatasetBundle:
    """Every image of the folder as the test split of an evaluation-only bundle (``seed`` is unused: no split)."""
    root_p = data_root(root)
    d = resolve_path(arg or DEFAULT_DIR, root_p)
    if not (d / "labels.csv").is_file():
        raise LesionliteError(f"{d}: no labels.csv (file,label8[,isic2019_image]) for an ISIC-archive external set")
    ids, labels, paths = read_labels_csv(d)
    rows = {r.get("image_id") or Path(r["file"]).stem: r for r in read_csv(d / "labels.csv", required=("file", "label8"))}
    keys = [rows.get(i, {}).get("isic2019_image") or i for i in ids]
    attrs, groups, how = _attributes(d, root_p, keys)
    y = np.asarray(labels, dtype=np.int64)
    names = list(ISIC2019_CLASSES)
    empty = FileDataset([], [], len(names))
    fp = files_fingerprint(paths, y, np.full(len(ids), 2), d, extra=[NAME, len(ids)])
    counts = {names[c]: int(n) for c, n in enumerate(np.bincount(y, minlength=len(names))) if n}
    return DatasetBundle(
        train=empty, val=FileDataset([], [], len(names)),
        test=FileDataset(paths, y, len(names), groups=groups, ids=ids, attributes=attrs),
        class_names=names, name=f"{NAME}:{d.name}", fingerprint=fp, synthetic=False,
        source=(f"ISIC-archive images at {d} ({len(ids)} images: "
                + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"), external, evaluation only; {how}"),
        native_size=None, extra={"dir": d.name, "external": True}, evaluation_only=True,
    )
