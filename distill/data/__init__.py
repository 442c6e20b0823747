"""Datasets for training students: synthetic, DermaMNIST, HAM10000, ISIC 2019, image folders.

``load_dataset(spec)`` returns a :class:`DatasetBundle` (train/val/test :class:`LesionDataset`
yielding ``(PIL RGB image, label)``, class names, a stable fingerprint and a human-readable source).
Real data is found through one setting: ``root`` / ``LESIONLITE_DATA`` / ``<repo>/../shared/data``.
This package imports without torch (bench's agreement check and export's data rebuild read datasets
through it): the dataset registry imports every public module here, so the torch transforms live
outside it, in :mod:`distill.transforms`, and their names below are looked up lazily.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.data.base import (
    DERMAMNIST_CLASSES,
    ISIC2019_CLASSES,
    ArrayDataset,
    DatasetBundle,
    FileDataset,
    LesionDataset,
)
from distill.data.paths import ENV_VAR, data_root
from distill.data.registry import get_loader, list_datasets, parse_spec, register_dataset
from distill.data.splits import grouped_stratified_split

__all__ = [
    "DERMAMNIST_CLASSES", "ISIC2019_CLASSES", "ArrayDataset", "DatasetBundle", "FileDataset", "LesionDataset",
    "ENV_VAR", "data_root", "get_loader", "list_datasets", "load_dataset", "parse_spec", "register_dataset",
    "grouped_stratified_split", "eval_transform", "train_transform", "MultiViewDataset", "collate_views",
    "TransformedDataset",
]


def load_dataset(spec: str, root: str | Path | None = None, seed: int = 0, synthetic_size: int = 64,
                 **kwargs: Any) -> DatasetBundle:
    """Load a dataset by spec (see :mod:`distill.data.registry`).

    ``seed`` selects the split of datasets without an official one (HAM10000, ISIC 2019, image
    folders) and the synthetic sample; DermaMNIST keeps its official split. Extra keyword
    arguments go to the loader (e.g. ``synthetic_counts=(280, 70, 140)``, ``fractions=(.7,.1,.2)``).
    """
    name, arg = parse_spec(spec)
    loader = get_loader(name)
    return loader(arg, root=root, seed=int(seed), synthetic_size=int(synthetic_size), **kwargs)


_TRANSFORM_NAMES = ("eval_transform", "train_transform", "MultiViewDataset", "collate_views", "TransformedDataset",
                    "EvalTransform", "TrainTransform")


def __getattr__(name: str) -> Any:
    """The torch transforms' names, imported on first use so that ``import distill.data`` needs no torch."""
    if name in _TRANSFORM_NAMES:
        from distill import transforms  # torch: the data layer imports without it

        return getattr(transforms, name)
    raise AttributeError(f"module 'distill.data' has no attribute {name!r}")
