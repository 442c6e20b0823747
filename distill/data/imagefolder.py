"""Generic image folders: ``imagefolder:PATH``.

Either ``PATH/{train,val,test}/CLASS/*.jpg`` (given split; a missing val/test split is carved out
of train, stratified) or ``PATH/CLASS/*.jpg`` (split 70/10/20 stratified, seeded). Class names are
the sorted folder names. Images are decoded lazily.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from distill.data.base import IMAGE_EXTENSIONS, DatasetBundle, FileDataset, files_fingerprint
from distill.data.paths import data_root, resolve_path
from distill.data.registry import register_dataset
from distill.data.splits import DEFAULT_FRACTIONS, grouped_stratified_split
from lesionlite.errors import LesionliteError

SPLITS = ("train", "val", "test")


def _class_dirs(d: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))


def _files(d: Path) -> list[str]:
    return sorted(e.path for e in os.scandir(d)
                  if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)


def _scan(d: Path, class_names: list[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for i, c in enumerate(class_names):
        if (d / c).is_dir():
            f = _files(d / c)
            paths += f
            labels += [i] * len(f)
    return paths, labels


@register_dataset("imagefolder", "PATH/{train,val,test}/CLASS/* or PATH/CLASS/*; imagefolder:PATH")
def load_imagefolder(arg: str | None = None, root: str | Path | None = None, seed: int = 0,
                     fractions=DEFAULT_FRACTIONS, **_: object) -> DatasetBundle:
    if not arg:
        raise LesionliteError("imagefolder needs a path: imagefolder:/path/to/folder")
    d = resolve_path(arg, data_root(root))
    if not d.is_dir():
        raise LesionliteError(f"imagefolder path {d} is not a directory")
    has_split = (d / "train").is_dir()
    if has_split:
        extra_dirs = [s for s in _class_dirs(d) if s not in SPLITS]
        class_names = sorted(set().union(*[set(_class_dirs(d / s)) for s in SPLITS if (d / s).is_dir()]))
        if extra_dirs:
            raise LesionliteError(f"{d}: has train/ but also other folders {extra_dirs}; expected only train/val/test")
    else:
        class_names = _class_dirs(d)
    if len(class_names) < 2:
        where = d / "train" if has_split else d
        raise LesionliteError(f"{where}: need at least 2 class folders (CLASS/*.jpg), found {class_names or 'none'}")

    split_paths: list[list[str]] = []
    split_labels: list[np.ndarray] = []
    if has_split:
        parts = {s: _scan(d / s, class_names) for s in SPLITS if (d / s).is_dir()}
        tr_p, tr_y = parts["train"]
        if not tr_p:
            raise LesionliteError(f"{d / 'train'}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders")
        missing = [s for s in ("val", "test") if s not in parts]
        if missing:
            fr = (fractions[0],) + tuple(fractions[SPLITS.index(s)] for s in missing)
            idx = grouped_stratified_split(tr_y, None, fractions=fr, seed=seed)
            tr_arr = np.asarray(tr_y)
            parts["train"] = ([tr_p[i] for i in idx[0]], tr_arr[idx[0]].tolist())
            for k, s in enumerate(missing, start=1):
                parts[s] = ([tr_p[i] for i in idx[k]], tr_arr[idx[k]].tolist())
        for s in SPLITS:
            split_paths.append(parts[s][0])
            split_labels.append(np.asarray(parts[s][1], dtype=np.int64))
        how = "given train/val/test folders" + (f" (carved {', '.join(missing)} from train)" if missing else "")
    else:
        paths, labels = _scan(d, class_names)
        if not paths:
            raise LesionliteError(f"{d}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders")
        y = np.asarray(labels, dtype=np.int64)
        idx = grouped_stratified_split(y, None, fractions=fractions, seed=seed)
        for ix in idx:
            split_paths.append([paths[i] for i in ix])
            split_labels.append(y[ix])
        how = f"stratified {'/'.join(str(round(f * 100)) for f in fractions)} (seed {seed})"

    all_p = [p for ps in split_paths for p in ps]
    all_y = np.concatenate(split_labels)
    all_s = np.concatenate([np.full(len(ps), k) for k, ps in enumerate(split_paths)])
    fp = files_fingerprint(all_p, all_y, all_s, d, extra=["imagefolder", class_names, seed, tuple(fractions)])
    ds = [FileDataset(ps, ys, len(class_names), ids=[os.path.relpath(p, d) for p in ps])
          for ps, ys in zip(split_paths, split_labels)]
    return DatasetBundle(
        train=ds[0], val=ds[1], test=ds[2], class_names=class_names, name=f"imagefolder:{d.name}",
        fingerprint=fp, synthetic=False,
        source=f"image folder {d}: {len(all_p)} images, {len(class_names)} classes, split {how}",
        native_size=None, extra={"dir": str(d), "seed": seed},
    )
