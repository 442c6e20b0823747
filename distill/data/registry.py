"""Dataset registry: spec prefix → loader (one file per dataset).

A spec is ``NAME`` or ``NAME:ARG`` (ARG is a size or a path), or a bare path: an ``.npz`` file
(MedMNIST layout) or a folder that is recognised (HAM10000 metadata, ISIC 2019 ground truth,
or class folders). Adding a dataset = one loader file + one line in ``_LOADERS``.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from distill.data.base import DatasetBundle
from lesionlite.errors import LesionliteError

# name → (module, function, description)
_LOADERS: dict[str, tuple[str, str, str]] = {
    "synthetic": ("distill.data.synthetic", "load_synthetic",
                  "generated 7-class lesion-like images (not real data); synthetic[:SIZE]"),
    "dermamnist": ("distill.data.medmnist", "load_dermamnist",
                   "DermaMNIST npz, official split; dermamnist[:28|64|128|224|PATH.npz]"),
    "npz": ("distill.data.medmnist", "load_npz", "any MedMNIST-layout npz; npz:PATH or a bare PATH.npz"),
    "ham10000": ("distill.data.ham10000", "load_ham10000",
                 "HAM10000 7 classes, 70/10/20 split by lesion_id; ham10000[:PATH]"),
    "ham10000-isic8": ("distill.data.ham10000", "load_ham10000_isic8",
                       "HAM10000 with ISIC 2019 8-class labels (labels.csv label8); ham10000-isic8[:PATH]"),
    "isic2019": ("distill.data.isic2019", "load_isic2019",
                 "ISIC 2019 one-hot ground truth, 8 classes, UNK dropped; isic2019:PATH"),
    "imagefolder": ("distill.data.imagefolder", "load_imagefolder",
                    "PATH/{train,val,test}/CLASS/* or PATH/CLASS/*; imagefolder:PATH"),
}


def register_dataset(name: str, module: str, function: str, description: str = "") -> None:
    _LOADERS[name.lower()] = (module, function, description)


def list_datasets() -> dict[str, str]:
    return {k: v[2] for k, v in sorted(_LOADERS.items())}


def get_loader(name: str) -> Callable[..., DatasetBundle]:
    key = name.lower()
    if key not in _LOADERS:
        raise LesionliteError(f"unknown dataset {name!r}; available: {', '.join(sorted(_LOADERS))} or a path")
    mod, fn, _ = _LOADERS[key]
    return getattr(importlib.import_module(mod), fn)


def _detect_folder(p: Path) -> str | None:
    if (p / "HAM10000_metadata.csv").is_file():
        return "ham10000"
    if (p / "ISIC_2019_Training_GroundTruth.csv").is_file():
        return "isic2019"
    if any(c.is_dir() and not c.name.startswith(".") for c in p.iterdir()):
        return "imagefolder"
    return None


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``'ham10000:/x'`` → ``('ham10000', '/x')``; a bare path → (detected loader, path)."""
    if not isinstance(spec, str) or not spec.strip():
        raise LesionliteError("empty dataset spec; use e.g. synthetic, dermamnist, ham10000[:PATH]")
    spec = spec.strip()
    name, sep, arg = spec.partition(":")
    if name.lower() in _LOADERS:
        return name.lower(), (arg if sep and arg != "" else None)
    p = Path(spec).expanduser()
    if spec.lower().endswith(".npz"):
        return "npz", spec
    if p.is_dir():
        kind = _detect_folder(p)
        if kind:
            return kind, spec
        raise LesionliteError(f"{spec}: folder not recognised as a dataset (no HAM10000/ISIC CSV, no class folders)")
    raise LesionliteError(
        f"unknown dataset {spec!r}; use one of {', '.join(sorted(_LOADERS))} (NAME or NAME:ARG), "
        "or a path to an existing .npz file or dataset folder"
    )
