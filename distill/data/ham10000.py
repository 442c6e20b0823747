"""HAM10000: ``HAM10000_metadata.csv`` + images, split 70/10/20 by ``lesion_id`` (no lesion in two splits).

Spec forms: ``ham10000`` (looks in the data root for ``ham10000_200x150/``, ``ham10000/``,
``HAM10000/`` or the root itself), ``ham10000:PATH``; ``ham10000-isic8[:PATH]`` relabels with the
8-class ISIC 2019 labelling (``label8`` in ``labels.csv``: MEL,NV,BCC,AK,BKL,DF,VASC,SCC; HAM akiec
splits into AK and SCC). ``ham10000-image-split[:PATH]`` splits per image instead, as DermaMNIST does:
photos of one lesion may then sit in train and test (35 % of the test images here), so it exists only to
compare with per-image-split figures (``benchmarks/accuracy_gap.py``), never to report a model.
Images are found in ``images/``, ``HAM10000_images_part_1/``, ``HAM10000_images_part_2/``,
``HAM10000_images/`` or the folder itself, and decoded lazily.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distill.data.base import (
    DERMAMNIST_CLASSES,
    ISIC2019_CLASSES,
    DatasetBundle,
    FileDataset,
    files_fingerprint,
    index_images,
    missing_images_error,
    read_csv,
)
from distill.data.paths import ENV_VAR, data_root, describe_root, resolve_path
from distill.data.registry import register_dataset
from distill.data.splits import DEFAULT_FRACTIONS, check_disjoint_groups, grouped_stratified_split
from lesionlite.errors import LesionliteError

METADATA = "HAM10000_metadata.csv"
#: metadata columns kept per image for subgroup reports (missing columns read as empty)
SUBGROUP_FIELDS = ("sex", "age", "localization")
LABELS = "labels.csv"
DIR_NAMES = ("ham10000_200x150", "ham10000", "HAM10000")
IMAGE_DIRS = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images", ".")


def find_ham_dir(arg: str | None, root: Path | None) -> Path:
    if arg:
        p = resolve_path(arg, root)
        if p.is_file() and p.name == METADATA:
            p = p.parent
        if not p.is_dir():
            raise LesionliteError(f"HAM10000 path {p} is not a directory")
        if not (p / METADATA).is_file():
            raise LesionliteError(f"{p}: no {METADATA} here (expected the HAM10000 metadata CSV and images)")
        return p
    cands = ([root / d for d in DIR_NAMES] + [root]) if root is not None else []
    for c in cands:
        if (c / METADATA).is_file():
            return c
    looked = ", ".join(str(c / METADATA) for c in cands) or describe_root(root)
    raise LesionliteError(
        f"HAM10000 not found; looked for {looked}. Point to it with ham10000:/path/to/folder "
        f"(holding {METADATA} and the images) or set the data root ({ENV_VAR} / --data-root)"
    )


def _labeller(d: Path, labelling: str):
    """(class names, ``label_of(image_id, dx, csv_line) -> int``) for the 7-class dx or the 8-class ISIC labelling."""
    if labelling == "isic8":
        lab_rows = read_csv(d / LABELS, required=("image_id", "label8"))
        label8: dict[str, str] = {r["image_id"]: r["label8"] for r in lab_rows}
        names = list(ISIC2019_CLASSES)

        def isic8(iid: str, dx: str, line: int) -> int:
            v = label8.get(iid, "")
            try:
                y = int(v)
                if not 0 <= y < len(names):
                    raise ValueError
            except ValueError:
                raise LesionliteError(f"{d / LABELS}: no valid label8 (0..7) for image {iid} (got {v!r})") from None
            return y

        return names, isic8
    names = list(DERMAMNIST_CLASSES)
    cls_index = {c: i for i, c in enumerate(names)}

    def dx7(iid: str, dx: str, line: int) -> int:
        if dx not in cls_index:
            raise LesionliteError(
                f"{d / METADATA}: line {line}: unknown dx {dx!r}; expected one of {', '.join(names)}")
        return cls_index[dx]

    return names, dx7


@register_dataset("ham10000", "HAM10000 7 classes, 70/10/20 split by lesion_id; ham10000[:PATH]")
def load_ham10000(arg: str | None = None, root: str | Path | None = None, seed: int = 0,
                  labelling: str = "dx7", fractions=DEFAULT_FRACTIONS, split_by: str = "lesion",
                  train_exclude_dx_type: Sequence[str] = (), train_dx_type_fraction: dict[str, float] | None = None,
                  **_: object) -> DatasetBundle:
    """``train_exclude_dx_type`` / ``train_dx_type_fraction`` (``data.options``): see :func:`_training_subset`."""
    if split_by not in ("lesion", "image"):
        raise LesionliteError(f"HAM10000 split_by must be 'lesion' or 'image', got {split_by!r}")
    root_p = data_root(root)
    d = find_ham_dir(arg, root_p)
    meta = read_csv(d / METADATA, required=("lesion_id", "image_id", "dx"))

    class_names, label_of = _labeller(d, labelling)

    folders = [d / sub if sub != "." else d for sub in IMAGE_DIRS]
    index = index_images(folders)
    paths, labels, groups, ids, missing = [], [], [], [], []
    attributes: list[dict[str, str]] = []  # what subgroup reports need (model card)
    confirmations: list[str] = []  # dx_type: how each diagnosis was confirmed
    seen: set[str] = set()
    for n, r in enumerate(meta, start=2):
        iid, lid, dx = r["image_id"], r["lesion_id"], r["dx"].lower()
        if not iid:
            raise LesionliteError(f"{d / METADATA}: line {n} has an empty image_id")
        if iid in seen:
            raise LesionliteError(f"{d / METADATA}: image_id {iid} listed twice (line {n})")
        seen.add(iid)
        y = label_of(iid, dx, n)
        p = index.get(iid)
        if p is None:
            missing.append(iid)
            continue
        paths.append(p)
        labels.append(y)
        groups.append(lid)
        ids.append(iid)
        attributes.append({k: (r.get(k) or "").strip() for k in SUBGROUP_FIELDS})
        confirmations.append((r.get("dx_type") or "").strip())
    if missing:
        raise missing_images_error(f"HAM10000 at {d}", missing, folders)

    y_arr = np.asarray(labels, dtype=np.int64)
    per_image = split_by == "image"
    splits = grouped_stratified_split(y_arr, None if per_image else groups, fractions=fractions, seed=seed)
    if not per_image:
        check_disjoint_groups(groups, splits)
    split_of = np.zeros(len(paths), dtype=np.int64)
    for s, idx in enumerate(splits):
        split_of[idx] = s
    keep, excluded, thinned = _training_subset(splits[0], groups, confirmations, train_exclude_dx_type,
                                               train_dx_type_fraction or {}, seed)
    if excluded or thinned:
        splits = [splits[0][keep], *splits[1:]]
        split_of[np.setdiff1d(np.arange(len(paths)), np.concatenate(splits))] = -1  # in no split: not trained on

    def part(idx: np.ndarray) -> FileDataset:
        return FileDataset([paths[i] for i in idx], y_arr[idx], len(class_names),
                           groups=[groups[i] for i in idx], ids=[ids[i] for i in idx],
                           attributes=[attributes[i] for i in idx])

    fp = files_fingerprint(paths, y_arr, split_of, d,
                           extra=["ham10000", labelling, seed, tuple(fractions), len(paths)]
                           + (["per-image"] if per_image else [])
                           + ([f"train without dx_type {','.join(excluded)}"] if excluded else [])
                           + ([f"train dx_type fractions {sorted(thinned.items())}"] if thinned else []))
    name = "ham10000" if labelling != "isic8" else "ham10000-isic8"
    name += "-image-split" if per_image else ""
    how = ("per image (photos of one lesion may be in train and test; for comparison with per-image-split "
           "figures only)") if per_image else "by lesion_id"
    lab_desc = "7 classes (dx, DermaMNIST order)" if labelling != "isic8" else "8 classes (ISIC 2019 label8)"
    return DatasetBundle(
        train=part(splits[0]), val=part(splits[1]), test=part(splits[2]), class_names=class_names,
        name=name, fingerprint=fp, synthetic=False,
        source=(f"HAM10000 at {d}: {len(paths)} images of {len(set(groups))} lesions, {lab_desc}, "
                f"split {'/'.join(str(round(f * 100)) for f in fractions)} {how} (seed {seed})"
                + _training_note(excluded, thinned, int((~keep).sum()))),
        native_size=None, extra={"dir": str(d), "seed": seed,
                                 "split": "per image" if per_image else "grouped by lesion_id",
                                 **({"train_exclude_dx_type": excluded} if excluded else {}),
                                 **({"train_dx_type_fraction": thinned} if thinned else {})},
    )


def _training_note(excluded: list[str], thinned: dict[str, float], left_out: int) -> str:
    """What the dataset's ``source`` says about a thinned training split (empty when it is not)."""
    note = f"; training split without dx_type {', '.join(excluded)}" if excluded else ""
    if thinned:
        note += "; training split keeping " + ", ".join(f"{f:g} of its {t} lesions" for t, f in sorted(thinned.items()))
    return note + (f" ({left_out} training images left out)" if excluded or thinned else "")


def _training_subset(train: np.ndarray, groups: list[str], confirmations: list[str], exclude: Sequence[str],
                     fractions: dict[str, float], seed: int) -> tuple[np.ndarray, list[str], dict[str, float]]:
    """Which training images stay: a mask over ``train``, the confirmation types left out, those thinned.

    ``train_exclude_dx_type`` leaves images whose diagnosis was confirmed this way (HAM10000's ``dx_type``: histo,
    follow_up, consensus, confocal) out of the *training* split only — validation and test are the same images as
    without it (split first, filtered after), so runs compare paired. ``train_dx_type_fraction`` (e.g.
    ``{follow_up: 0.25}``) keeps that fraction of a type's training lesions (all their images; seeded by the split
    seed). Issue 28's case-mix study (benchmarks/RESULTS.md 8g): HAM10000's followed-up nevi are easy and many."""
    excluded = sorted(set(exclude))
    kept = {str(k): float(v) for k, v in fractions.items()}
    for t, f in kept.items():
        if not 0 <= f <= 1:
            raise LesionliteError(f"data.options.train_dx_type_fraction: {t}: {f} is not a fraction in [0, 1]")
    excluded += sorted(t for t, f in kept.items() if f == 0 and t not in excluded)
    thinned = {t: f for t, f in kept.items() if 0 < f < 1 and t not in excluded}
    if not excluded and not thinned:
        return np.ones(len(train), dtype=bool), excluded, thinned
    known = sorted(set(confirmations) - {""})
    unknown = [t for t in [*excluded, *thinned] if t not in known]
    if unknown:
        raise LesionliteError(f"data.options.train_exclude_dx_type / train_dx_type_fraction: {unknown} not among "
                              f"this metadata's dx_type values {known}")
    rng = np.random.default_rng(seed)
    dropped_lesions = set()
    for t, f in sorted(thinned.items()):
        lesions = sorted({groups[i] for i in train if confirmations[i] == t})
        dropped_lesions |= set(rng.permutation(lesions)[round(f * len(lesions)):].tolist())
    keep = np.array([confirmations[i] not in excluded
                     and not (confirmations[i] in thinned and groups[i] in dropped_lesions) for i in train], dtype=bool)
    if not keep.any():
        raise LesionliteError(f"data.options.train_exclude_dx_type {excluded} leaves no training image")
    return keep, excluded, thinned


@register_dataset("ham10000-isic8", "HAM10000 with ISIC 2019 8-class labels (labels.csv label8); ham10000-isic8[:PATH]")
def load_ham10000_isic8(arg: str | None = None, root: str | Path | None = None, seed: int = 0,
                        **kw: object) -> DatasetBundle:
    kw.pop("labelling", None)
    return load_ham10000(arg, root, seed=seed, labelling="isic8", **kw)


@register_dataset("ham10000-image-split",
                  "HAM10000 7 classes split per image as DermaMNIST (lesions leak across splits: comparison only)")
def load_ham10000_image_split(arg: str | None = None, root: str | Path | None = None, seed: int = 0,
                              **kw: object) -> DatasetBundle:
    kw.pop("split_by", None)
    return load_ham10000(arg, root, seed=seed, split_by="image", **kw)
