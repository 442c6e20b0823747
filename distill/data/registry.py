"""Dataset registry: spec prefix → loader (one file per dataset).

A spec is ``NAME`` or ``NAME:ARG`` (ARG is a size or a path), or a bare path: an ``.npz`` file
(MedMNIST layout) or a folder that is recognised (HAM10000 metadata, ISIC 2019 ground truth,
or class folders). Adding a dataset touches one file: a loader module in :mod:`distill.data` whose
function is decorated ``@register_dataset(name, description)``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distill.data.base import DatasetBundle
from lesionlite.errors import LesionliteError
from lesionlite.registry import Registry


@dataclass(frozen=True)
class DatasetLoader:
    name: str
    load: Callable[..., DatasetBundle]  # load(arg, root=None, seed=0, **options) -> DatasetBundle
    description: str  # one line for ``--list-datasets``: what it is and its spec syntax


#: every dataset; a loader module of :mod:`distill.data` adds one with ``@register_dataset``
DATASETS: Registry[DatasetLoader] = Registry("dataset", "distill.data", hint="or a path", ignore_case=True)


def register_dataset(name: str, description: str) -> Callable[[Callable[..., DatasetBundle]], Callable[..., DatasetBundle]]:
    """Function decorator: register a loader under ``name`` (a spec is ``name`` or ``name:ARG``)."""
    def deco(fn: Callable[..., DatasetBundle]) -> Callable[..., DatasetBundle]:
        DATASETS.add(name, DatasetLoader(name, fn, description))
        return fn

    return deco


def list_datasets() -> dict[str, str]:
    return {name: loader.description for name, loader in DATASETS.items()}


def get_loader(name: str) -> Callable[..., DatasetBundle]:
    return DATASETS.get(name).load


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
    if name in DATASETS:
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
        f"unknown dataset {spec!r}; use one of {', '.join(DATASETS.names())} (NAME or NAME:ARG), "
        "or a path to an existing .npz file or dataset folder"
    )
