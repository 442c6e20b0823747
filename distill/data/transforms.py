"""Torch transforms: the eval transform (= :func:`lesionlite.preprocessing.preprocess`, bit for bit),
dermoscopy training augmentation, and the multi-view dataset/collate the methods consume.

Normalisation has one source of truth: every path ends in :func:`lesionlite.preprocessing.normalize`
on a uint8 HWC array.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from lesionlite.errors import LesionliteError
from lesionlite.preprocessing import PreprocessConfig, normalize, preprocess, to_rgb

Strength = Literal["default", "light", "none"]

_INTERP = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
           "nearest": InterpolationMode.NEAREST}


class EvalTransform:
    """PIL image → float32 CHW tensor, exactly ``torch.from_numpy(preprocess(img, cfg))``."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(preprocess(img, self.cfg, layout="NCHW"))

    def __repr__(self) -> str:
        return f"EvalTransform(input_size={self.cfg.input_size}, resize_size={self.cfg.resize_size})"


def eval_transform(cfg: PreprocessConfig) -> Callable[[Image.Image], torch.Tensor]:
    return EvalTransform(cfg)


def to_normalized_tensor(img: Image.Image, cfg: PreprocessConfig) -> torch.Tensor:
    """RGB PIL image (already at the input size) → normalised CHW float32 via ``normalize``."""
    arr = np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
    return torch.from_numpy(normalize(arr, cfg, "NCHW"))


class RandomRotationCrop:
    """Rotate by a uniform angle in ±``degrees`` and keep the largest centred crop of the same aspect
    ratio that contains no fill (no black corners for the network to learn)."""

    def __init__(self, degrees: float) -> None:
        self.degrees = float(degrees)

    def __call__(self, img: Image.Image) -> Image.Image:
        angle = float(torch.empty(1).uniform_(-self.degrees, self.degrees).item())
        if abs(angle) < 1e-3:
            return img
        w, h = img.size
        c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
        f = min(w / (w * c + h * s), h / (w * s + h * c))
        rot = img.rotate(angle, resample=Image.BILINEAR, expand=False)
        cw, ch = max(1, int(w * f)), max(1, int(h * f))
        left, top = (w - cw) // 2, (h - ch) // 2
        return rot.crop((left, top, left + cw, top + ch))

    def __repr__(self) -> str:
        return f"RandomRotationCrop(degrees={self.degrees})"


class TrainTransform:
    """Dermoscopy augmentation, then the same normalisation as :func:`preprocess`.

    default: rotation ±30° (cropped so no fill corners appear), RandomResizedCrop(scale 0.6–1,
             aspect 3/4–4/3) to ``input_size``, horizontal + vertical flips, colour jitter
             (brightness/contrast/saturation 0.2, hue 0.02);
    light:   rotation ±15°, RandomResizedCrop(scale 0.8–1), flips, jitter 0.1, no hue change;
    none:    no augmentation (identical to :class:`EvalTransform`).

    Lesions have no canonical orientation, so flips and rotations keep the label (as in the ISIC
    challenge literature); hue is only nudged since colour is diagnostic. Random draws use torch's
    RNG, which DataLoader seeds per worker. ``vertical_flip=False`` is what the "rotations" view
    mode needs: with both flips, vflip(x) = hflip(rot180(x)) would make rotation labels ambiguous.
    """

    def __init__(self, cfg: PreprocessConfig, strength: Strength = "default", vertical_flip: bool = True) -> None:
        if strength not in ("default", "light", "none"):
            raise LesionliteError(f"unknown augmentation strength {strength!r}; expected default, light or none")
        self.cfg = cfg
        self.strength = strength
        self.vertical_flip = vertical_flip
        size = cfg.input_size
        interp = _INTERP.get(cfg.interpolation, InterpolationMode.BILINEAR)
        if strength == "none":
            self.aug = None
            return
        default = strength == "default"
        ops: list[Any] = [
            RandomRotationCrop(30 if default else 15),
            T.RandomResizedCrop(size, scale=(0.6, 1.0) if default else (0.8, 1.0),
                                ratio=(3 / 4, 4 / 3), interpolation=interp, antialias=True),
            T.RandomHorizontalFlip(),
        ]
        if vertical_flip:
            ops.append(T.RandomVerticalFlip())
        ops.append(T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02) if default
                   else T.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1))
        self.aug = T.Compose(ops)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.aug is None:
            return torch.from_numpy(preprocess(img, self.cfg, layout="NCHW"))
        img = to_rgb(img)
        return to_normalized_tensor(self.aug(img), self.cfg)

    def rotation_safe(self) -> "TrainTransform":
        """This transform without the vertical flip (for the "rotations" view mode)."""
        if not self.vertical_flip:
            return self
        return TrainTransform(self.cfg, self.strength, vertical_flip=False)

    def __repr__(self) -> str:
        return f"TrainTransform(strength={self.strength!r}, vertical_flip={self.vertical_flip}, aug={self.aug})"


def train_transform(cfg: PreprocessConfig, strength: Strength = "default") -> TrainTransform:
    return TrainTransform(cfg, strength)


_ROT = {0: None, 1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}


class MultiViewDataset:
    """Wrap a dataset so each item is ``(views [V,C,H,W], label, index)``.

    view_mode "independent": V independently augmented views of the image;
    view_mode "rotations":   view k = transform(image rotated by k·90° counter-clockwise), k = 0..V-1
                             (the rotation is applied to the PIL image before the random
                             augmentation; each view is augmented independently). V ≤ 4. A
                             :class:`TrainTransform` is switched to its rotation-safe variant
                             (no vertical flip) so the rotation label stays well defined.
    """

    def __init__(self, dataset: Any, transform: Callable[[Image.Image], torch.Tensor], num_views: int = 1,
                 view_mode: Literal["independent", "rotations"] = "independent") -> None:
        if num_views < 1:
            raise LesionliteError(f"num_views must be >= 1, got {num_views}")
        if view_mode not in ("independent", "rotations"):
            raise LesionliteError(f"unknown view_mode {view_mode!r}; expected 'independent' or 'rotations'")
        if view_mode == "rotations":
            if num_views > 4:
                raise LesionliteError(f"view_mode 'rotations' supports at most 4 views (0/90/180/270°), got {num_views}")
            if isinstance(transform, TrainTransform):
                transform = transform.rotation_safe()
        self.dataset = dataset
        self.transform = transform
        self.num_views = int(num_views)
        self.view_mode = view_mode

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        img, label = self.dataset[index]
        views = []
        for k in range(self.num_views):
            im = img
            if self.view_mode == "rotations" and k % 4:
                im = img.transpose(_ROT[k % 4])
            views.append(self.transform(im))
        return torch.stack(views), int(label), int(index)


class TransformedDataset:
    """``(tensor, label)`` pairs — for evaluation loaders that do not need views or indices."""

    def __init__(self, dataset: Any, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, label = self.dataset[index]
        return self.transform(img), int(label)


def collate_views(batch: Sequence[tuple[torch.Tensor, int, int]]):
    """List of ``(views, label, index)`` → :class:`distill.methods.base.Batch` ([B,V,C,H,W], [B], [B])."""
    from distill.methods.base import Batch

    if not batch:
        raise LesionliteError("empty batch")
    images = torch.stack([b[0] for b in batch])
    labels = torch.tensor([int(b[1]) for b in batch], dtype=torch.long)
    indices = torch.tensor([int(b[2]) for b in batch], dtype=torch.long)
    return Batch(images=images, labels=labels, indices=indices)


__all__ = ["EvalTransform", "TrainTransform", "MultiViewDataset", "TransformedDataset", "eval_transform",
           "train_transform", "collate_views", "to_normalized_tensor"]
