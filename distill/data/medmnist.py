"""DermaMNIST (MedMNIST npz layout) with its official train/val/test split.

Spec forms: ``dermamnist`` (28 px), ``dermamnist:28|64|128|224`` or a path to an ``.npz`` with keys
``train_images, train_labels, val_images, val_labels, test_images, test_labels`` (labels [N,1]).
Looked up in the data root and its ``dermamnist/`` folder as ``dermamnist.npz`` / ``dermamnist_{size}.npz``;
at 28 px the lossy ``dermamnist_28_jpeg_reconstructed.npz`` is accepted too (its source says LOSSY).
If nothing is found and the ``medmnist`` package is importable, it downloads into the data root.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from distill.data.base import DERMAMNIST_CLASSES, ArrayDataset, DatasetBundle
from distill.data.paths import ENV_VAR, data_root, describe_root, resolve_path
from distill.data.registry import register_dataset
from lesionlite.errors import LesionliteError
from lesionlite.hashing import file_sha256

SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")
JPEG_RECONSTRUCTED = "dermamnist_28_jpeg_reconstructed.npz"


def candidate_files(root: Path | None, size: int) -> list[Path]:
    if root is None:
        return []
    names = ["dermamnist.npz"] if size == 28 else []
    names += [f"dermamnist_{size}.npz"]
    if size == 28:
        names += [JPEG_RECONSTRUCTED]
    out = []
    for name in names:  # official files first, then the lossy rebuild
        out += [root / name, root / "dermamnist" / name]
    return out


def _download(root: Path | None, size: int) -> Path | None:
    try:
        import medmnist  # noqa: F401 - whether the package is installed is the check
        from medmnist import DermaMNIST
    except Exception:
        return None
    if root is None:
        return None
    target = root / "dermamnist"
    target.mkdir(parents=True, exist_ok=True)
    try:
        kwargs = {"size": size} if size != 28 else {}
        DermaMNIST(split="train", download=True, root=str(target), **kwargs)
    except Exception as exc:  # no network, old medmnist without size=…
        raise LesionliteError(f"downloading DermaMNIST {size}px with the medmnist package failed: {exc}") from None
    for p in candidate_files(root, size):
        if p.exists():
            return p
    return None


def load_npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read and validate a MedMNIST-layout npz; errors name the file and the problem."""
    if not path.is_file():
        raise LesionliteError(f"DermaMNIST file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            need = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
            missing = [k for k in need if k not in keys]
            if missing:
                raise LesionliteError(
                    f"{path}: not a MedMNIST npz (missing keys {', '.join(missing)}; found {', '.join(sorted(keys))})"
                )
            arrays = {k: np.asarray(npz[k]) for k in need}
    except LesionliteError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise LesionliteError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    for s in SPLITS:
        im, lb = arrays[f"{s}_images"], arrays[f"{s}_labels"]
        if im.ndim not in (3, 4) or (im.ndim == 4 and im.shape[-1] not in (1, 3)):
            raise LesionliteError(f"{path}: {s}_images must be [N,H,W,3] or [N,H,W], got {list(im.shape)}")
        if im.dtype != np.uint8:
            raise LesionliteError(f"{path}: {s}_images must be uint8, got {im.dtype}")
        lb = lb.reshape(-1)
        if lb.shape[0] != im.shape[0]:
            raise LesionliteError(f"{path}: {s} has {im.shape[0]} images but {lb.shape[0]} labels")
        if lb.size and (lb.min() < 0 or not np.issubdtype(lb.dtype, np.integer)):
            raise LesionliteError(f"{path}: {s}_labels must be non-negative integers")
        arrays[f"{s}_labels"] = lb.astype(np.int64)
    return arrays


def bundle_from_npz(path: Path, requested_size: int | None = None) -> DatasetBundle:
    arrays = load_npz_arrays(path)
    max_label = max(int(arrays[f"{s}_labels"].max(initial=-1)) for s in SPLITS)
    n_cls = max_label + 1
    is_derma = "derma" in path.name.lower() or n_cls == 7
    if is_derma and n_cls > 7:
        raise LesionliteError(f"{path}: DermaMNIST has 7 classes but labels go up to {max_label}")
    class_names = list(DERMAMNIST_CLASSES) if is_derma else [f"class_{i}" for i in range(n_cls)]
    ds = [ArrayDataset(arrays[f"{s}_images"], arrays[f"{s}_labels"], len(class_names)) for s in SPLITS]
    native = int(arrays["train_images"].shape[1])
    if requested_size is not None and native != requested_size:
        raise LesionliteError(f"{path}: holds {native}x{native} images but dermamnist:{requested_size} was asked for")
    lossy = "jpeg_reconstructed" in path.name.lower()
    what = f"DermaMNIST {native}x{native}" if is_derma else f"MedMNIST-layout npz {native}x{native}"
    what += " JPEG-reconstructed (lossy, not the official Zenodo bytes)" if lossy else " (official MedMNIST split)"
    name = "dermamnist" if is_derma else path.stem
    if lossy:
        name += "_jpeg_lossy"
    return DatasetBundle(
        train=ds[0], val=ds[1], test=ds[2], class_names=class_names,
        name=name if native == 28 else f"{name}_{native}",
        fingerprint=file_sha256(path), synthetic=False, source=f"{what}: {path}", native_size=native,
        extra={"lossy": lossy, "file": str(path)},
    )


@register_dataset("dermamnist", "DermaMNIST npz, official split; dermamnist[:28|64|128|224|PATH.npz]")
def load_dermamnist(arg: str | None = None, root: str | Path | None = None, **_: object) -> DatasetBundle:
    """``dermamnist``, ``dermamnist:SIZE`` or ``dermamnist:PATH.npz``."""
    size = 28
    root_p = data_root(root)
    if arg:
        if arg.isdigit():
            size = int(arg)
            if size not in SIZES:
                raise LesionliteError(f"DermaMNIST comes in sizes {', '.join(map(str, SIZES))}; got {size}")
        else:
            return bundle_from_npz(resolve_path(arg, root_p))
    cands = candidate_files(root_p, size)
    for p in cands:
        if p.is_file():
            return bundle_from_npz(p, requested_size=size)
    got = _download(root_p, size)
    if got is not None:
        return bundle_from_npz(got, requested_size=size)
    looked = ", ".join(str(p) for p in cands) or describe_root(root_p)
    fname = "dermamnist.npz" if size == 28 else f"dermamnist_{size}.npz"
    raise LesionliteError(
        f"DermaMNIST {size}px not found; looked for {looked}. Get {fname} from MedMNIST+ "
        f"(https://zenodo.org/records/10519652) into the data root (--data-root or {ENV_VAR}), "
        f"or pip install medmnist to download it, or pass a path: dermamnist:/path/{fname}"
    )


@register_dataset("npz", "any MedMNIST-layout npz; npz:PATH or a bare PATH.npz")
def load_npz(arg: str, root: str | Path | None = None, **_: object) -> DatasetBundle:
    """A bare path to a MedMNIST-layout ``.npz`` file."""
    return bundle_from_npz(resolve_path(arg, data_root(root)))
