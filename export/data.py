"""The images export needs: calibration (train split) and evaluation (held-out test split).

Data come from :func:`distill.data.load_dataset` (``DatasetBundle(train, val, test, class_names, name,
fingerprint, synthetic, source)``; datasets yield ``(PIL.Image, label)``), defaulting to the data the
checkpoint was trained on (its manifest's ``data.name``). Every image goes through
:func:`lesionlite.preprocessing.preprocess_batch` — the same function `serve` and
`mobile_benchmarks` call — so calibration and parity see exactly the deployed inputs.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill.data import load_dataset
from distill.data.base import DatasetBundle, refuse_evaluation_only
from lesionlite.errors import LesionliteError
from lesionlite.preprocessing import PreprocessConfig, normalize, preprocess_batch, resize_and_crop


class PreparedInputs:
    """Images resized once with a :class:`PreprocessConfig` and kept as uint8 (a 256 px float32 copy of a whole
    test split would be ~0.8 MB an image); slicing gives the float32 NCHW batch :func:`preprocess_batch` gives.

    Used where an artifact takes another input than the source's (TFLite's larger phone input, the downscale in
    its graph): ``len(x)``, ``x[i:j]`` and ``x[:]`` work as on the array they stand for.
    """

    def __init__(self, images: Sequence[Any], cfg: PreprocessConfig) -> None:
        self.cfg = cfg
        s = cfg.input_size
        self._u8 = (np.stack([np.asarray(resize_and_crop(im, cfg), dtype=np.uint8) for im in images])
                    if len(images) else np.zeros((0, s, s, 3), np.uint8))

    def __len__(self) -> int:
        return len(self._u8)

    @property
    def shape(self) -> tuple[int, ...]:
        n, h, w, c = self._u8.shape
        return (n, c, h, w)

    def __getitem__(self, index: slice) -> np.ndarray:
        rows = self._u8[index]
        if not len(rows):
            s = self.cfg.input_size
            return np.zeros((0, 3, s, s), np.float32)
        return np.stack([normalize(r, self.cfg, "NCHW") for r in rows]).astype(np.float32, copy=False)


@dataclass
class ExportData:
    """Preprocessed NCHW float32 arrays; ``eval_split`` names the held-out split used for parity."""

    name: str
    fingerprint: str
    synthetic: bool
    calib: np.ndarray
    eval_x: np.ndarray
    eval_y: np.ndarray
    eval_split: str
    class_names: list[str]
    #: per-eval-image metadata for subgroup reports (HAM10000: sex, age, localization), when the data has it
    eval_attributes: list[dict[str, str]] | None = None
    #: indices of the evaluation images in ``eval_split`` (None for a non-indexable split): lets a later
    #: stage (bench's ARM agreement) run the very images PyTorch was measured on
    eval_indices: list[int] | None = None
    #: the evaluation images as they came (PIL RGB, not resized), re-read on demand: the MediaPipe check
    #: (export/mediapipe_check.py) gives them to the phone runtime, which resizes them itself
    eval_images: Any = None
    #: lesion id per evaluation image (None when the data has none): the bootstrap resamples lesions
    eval_groups: list[str] | None = None
    #: the calibration images as they came, re-read on demand (int8 calibration at another input size)
    calib_images: Any = None

    def inputs(self, which: str, cfg: PreprocessConfig) -> Any:
        """The ``which`` ("calib" or "eval") images preprocessed with ``cfg`` — an artifact whose input differs
        from the source's (TFLite's phone input) — as :class:`PreparedInputs`, made once per config."""
        cache = self.__dict__.setdefault("_inputs", {})
        key = (which, repr(cfg.to_dict()))
        if key not in cache:
            loader = self.calib_images if which == "calib" else self.eval_images
            if loader is None:
                raise LesionliteError(f"data {self.name!r} cannot give its original {which} images again")
            cache[key] = PreparedInputs(loader(), cfg)
        return cache[key]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "synthetic": self.synthetic,
            "calibration_split": "train",
            "calibration_samples": int(len(self.calib)),
            "eval_split": self.eval_split,
            "eval_samples": int(len(self.eval_x)),
        }


def load_bundle(spec: str, root: str | None, seed: int = 0, **options: Any) -> Any:
    """Load a dataset bundle with the project's loader (``options``: its loader options, as training
    recorded them); a bad spec is one line."""
    try:
        return load_dataset(spec, root, seed, **options)
    except LesionliteError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise LesionliteError(f"cannot load data {spec!r}: {type(exc).__name__}: {exc}") from None


def _take_indices(dataset: Any, n: int | None, seed: int) -> Sequence[int] | None:
    """The indices :func:`_take` uses for an indexable dataset (None for a plain iterable)."""
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        return None
    total = len(dataset)
    if n is None or n >= total:
        return range(total)
    return sorted(np.random.default_rng(seed).choice(total, size=n, replace=False).tolist())


def take_images(dataset: Any, n: int | None, seed: int) -> list[tuple[Any, int]]:
    """Up to ``n`` (image, label) pairs: a seeded random subset of an indexable dataset, else the first n."""
    if dataset is None:
        return []
    idx = _take_indices(dataset, n, seed)
    if idx is not None:
        return [dataset[int(i)] for i in idx]
    it: Iterable = iter(dataset)
    return list(it if n is None else itertools.islice(it, n))


def _to_arrays(pairs: list[tuple[Any, int]], cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    if not pairs:
        s = cfg.input_size
        return np.zeros((0, 3, s, s), np.float32), np.zeros((0,), np.int64)
    images = [p[0] for p in pairs]
    labels = np.asarray([int(p[1]) for p in pairs], dtype=np.int64)
    return preprocess_batch(images, cfg, "NCHW"), labels


def prepare_data(
    bundle: DatasetBundle,
    cfg: PreprocessConfig,
    class_names: list[str],
    calib_samples: int = 300,
    eval_samples: int | None = None,
    seed: int = 0,
) -> ExportData:
    """Preprocess a calibration subset of ``train`` and the held-out ``test`` split (``val`` if empty)."""
    refuse_evaluation_only(bundle, "int8 calibration or export's parity data (pass it as --external)")
    data_classes = [str(c) for c in getattr(bundle, "class_names", class_names)]
    if len(data_classes) != len(class_names):
        raise LesionliteError(
            f"data {getattr(bundle, 'name', '?')!r} has {len(data_classes)} classes but the checkpoint "
            f"has {len(class_names)} ({', '.join(class_names)}); pass the data the model was trained on"
        )
    calib_x, _ = _to_arrays(take_images(bundle.train, calib_samples, seed), cfg)
    if len(calib_x) == 0:
        raise LesionliteError(f"data {getattr(bundle, 'name', '?')!r}: the train split is empty; no calibration images")
    split = "test"
    pairs = take_images(getattr(bundle, "test", None), eval_samples, seed + 1)
    if not pairs:
        split = "val"
        pairs = take_images(getattr(bundle, "val", None), eval_samples, seed + 1)
    if not pairs:
        raise LesionliteError(f"data {getattr(bundle, 'name', '?')!r} has no test or val images for parity")
    eval_x, eval_y = _to_arrays(pairs, cfg)
    source = getattr(bundle, split, None)
    attrs = getattr(source, "attributes", None)
    idx = _take_indices(source, eval_samples, seed + 1)
    eval_attributes = [attrs[int(i)] for i in idx] if idx is not None and attrs is not None else None
    groups = getattr(source, "groups", None)
    eval_groups = [groups[int(i)] for i in idx] if idx is not None and groups is not None else None
    return ExportData(
        name=str(getattr(bundle, "name", "unknown")),
        fingerprint=str(getattr(bundle, "fingerprint", "")),
        synthetic=bool(getattr(bundle, "synthetic", False)),
        calib=calib_x,
        eval_x=eval_x,
        eval_y=eval_y,
        eval_split=split,
        class_names=data_classes,
        eval_attributes=eval_attributes,
        eval_groups=eval_groups,
        eval_indices=[int(i) for i in idx] if idx is not None else None,
        eval_images=lambda: [p[0] for p in take_images(source, eval_samples, seed + 1)],
        calib_images=lambda: [p[0] for p in take_images(bundle.train, calib_samples, seed)],
    )
