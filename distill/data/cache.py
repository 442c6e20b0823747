"""Decode-once caches for training: JPEG decoding and resizing happen once per run, not every epoch.

On a 2-core host at 64 px a large share of every epoch went into work that is the same every epoch
(decoding) or cheaper on a smaller image (the rotation); the figures are in ``benchmarks/RESULTS.md``,
sections 0a and 9c. Two caches remove it:

* :class:`DecodedImageCache` (training split): every image decoded once into RAM as uint8, downscaled
  (antialiased) so that its shorter side is at most ``short_side`` (default 2 × the input size; the
  random crops of the augmentation keep ≥ 60 % of the area, so they are still downsampled to the
  input size and lose nothing visible). Items are still PIL images, so the augmentation is unchanged.
* :class:`TensorCache` (val/test splits): the eval transform is deterministic, so its output tensor is
  computed once and returned as is — bit-identical to transforming the image on every epoch.

Both fill eagerly with a progress bar (so that DataLoader workers, which are forked, share the filled
cache) and say how much memory they hold. They live in RAM, per process: a run on HAM10000 at 64 px
holds ~460 MB of training images (7,010 × 171×128×3) and 62 MB of eval tensors.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from distill.data.base import WrappedDataset

log = logging.getLogger("distill.data.cache")


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, leave=False, disable=True if not enabled else None, dynamic_ncols=True)


def downscale_to_short_side(img: Image.Image, short_side: int | None) -> Image.Image:
    """``img`` shrunk (antialiased, aspect kept) so its shorter side is ``short_side``; never enlarged."""
    if short_side is None:
        return img
    w, h = img.size
    s = min(w, h)
    if s <= short_side:
        return img
    scale = short_side / s
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(size, Image.BILINEAR, reducing_gap=None)


class DecodedImageCache:
    """A :class:`~distill.data.base.LesionDataset` decoded once: ``(PIL RGB image, label)`` from RAM."""

    def __init__(self, dataset: Any, short_side: int | None, progress: bool = False, desc: str = "decode") -> None:
        self.dataset = dataset
        self.short_side = short_side
        self.labels = np.asarray(dataset.labels)
        self._arrays: list[np.ndarray] = []
        with _progress(len(dataset), desc, progress) as bar:
            for i in range(len(dataset)):
                img, _ = dataset[i]
                arr = np.asarray(downscale_to_short_side(img.convert("RGB") if img.mode != "RGB" else img,
                                                         short_side), dtype=np.uint8)
                self._arrays.append(arr)
                bar.update(1)
        self.nbytes = int(sum(a.nbytes for a in self._arrays))

    def __len__(self) -> int:
        return len(self._arrays)

    def class_counts(self) -> list[int]:
        return self.dataset.class_counts()

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self._arrays[i], mode="RGB"), int(self.labels[i])


class TensorCache:
    """The output of a deterministic transform, computed once per item: ``(tensor, label)``."""

    def __init__(self, dataset: Any, transform: Callable[[Image.Image], Any], progress: bool = False,
                 desc: str = "preprocess") -> None:
        self.dataset = dataset
        self.labels = np.asarray(dataset.labels)
        self._items: list[Any] = []
        with _progress(len(dataset), desc, progress) as bar:
            for i in range(len(dataset)):
                img, _ = dataset[i]
                self._items.append(transform(img))
                bar.update(1)
        self.nbytes = int(sum(getattr(t, "nbytes", 0) for t in self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self._items[i], int(self.labels[i])


class CachedViewDataset(WrappedDataset):
    """``(views [1,C,H,W], label, index)`` from a :class:`TensorCache` — the eval loader's item format."""

    def __init__(self, cache: TensorCache) -> None:
        self.dataset = cache

    def __getitem__(self, i: int):
        t, y = self.dataset[i]
        return t.unsqueeze(0), y, int(i)


__all__ = ["DecodedImageCache", "TensorCache", "CachedViewDataset", "downscale_to_short_side"]
