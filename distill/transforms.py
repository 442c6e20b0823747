"""Torch transforms: the eval transform (= :func:`lesionlite.preprocessing.preprocess`, bit for bit),
dermoscopy training augmentation, and the multi-view dataset/collate the methods consume.

Normalisation has one source of truth: every path ends in :func:`lesionlite.preprocessing.normalize`
on a uint8 HWC array.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from distill.data.base import WrappedDataset
from distill.methods.base import Batch
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


class RandomRotatedResizedCrop:
    """Rotation (±``degrees``, no fill corners) + RandomResizedCrop + resize in one resampling.

    The same geometry as :class:`RandomRotationCrop` followed by ``T.RandomResizedCrop`` (the crop is
    drawn inside the largest fill-free rectangle of the rotated image, area ``scale``, aspect
    ``ratio``), but composed into one affine map and sampled once, at 2 × the output size, then
    box-filtered down 2× (antialiasing): one small resampling instead of two full-image ones (what that
    saves: ``benchmarks/RESULTS.md``, section 9c).
    """

    def __init__(self, size: int, degrees: float, scale: tuple[float, float], ratio: tuple[float, float],
                 resample: int = Image.BILINEAR) -> None:
        self.size = int(size)
        self.degrees = float(degrees)
        self.scale = scale
        self.ratio = ratio
        self.resample = resample

    def _crop_params(self, w: float, h: float) -> tuple[float, float, float, float]:
        """(left, top, width, height) inside a w×h box, torchvision's RandomResizedCrop draw."""
        area = w * h
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(self.scale[0], self.scale[1]).item())
            ar = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item()))
            cw, ch = math.sqrt(target * ar), math.sqrt(target / ar)
            if 0 < cw <= w and 0 < ch <= h:
                left = float(torch.empty(1).uniform_(0, w - cw).item())
                top = float(torch.empty(1).uniform_(0, h - ch).item())
                return left, top, cw, ch
        in_ratio = w / h  # fallback: centre crop at the nearest allowed aspect ratio
        if in_ratio < min(self.ratio):
            cw, ch = w, w / min(self.ratio)
        elif in_ratio > max(self.ratio):
            cw, ch = h * max(self.ratio), h
        else:
            cw, ch = w, h
        return (w - cw) / 2, (h - ch) / 2, cw, ch

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        angle = float(torch.empty(1).uniform_(-self.degrees, self.degrees).item()) if self.degrees else 0.0
        a = math.radians(angle)
        c, s = abs(math.cos(a)), abs(math.sin(a))
        f = min(w / (w * c + h * s), h / (w * s + h * c))  # largest fill-free centred rectangle
        rw, rh = w * f, h * f
        left, top, cw, ch = self._crop_params(rw, rh)
        # output (u, v) in [0, 2S)² → rotated-frame point p = box origin + (u·cw, v·ch)/2S
        # → source = centre + R·(p − centre); R as PIL's rotate(angle) samples it
        out = 2 * self.size
        sx, sy = cw / out, ch / out
        cx, cy = w / 2, h / 2
        ox, oy = (w - rw) / 2 + left - cx, (h - rh) / 2 + top - cy
        cos_m, sin_m = math.cos(-a), math.sin(-a)
        coeffs = (cos_m * sx, sin_m * sy, cos_m * ox + sin_m * oy + cx,
                  -sin_m * sx, cos_m * sy, -sin_m * ox + cos_m * oy + cy)
        big = img.transform((out, out), Image.AFFINE, coeffs, resample=self.resample)
        return big.reduce(2)

    def __repr__(self) -> str:
        return (f"RandomRotatedResizedCrop(size={self.size}, degrees={self.degrees}, scale={self.scale}, "
                f"ratio={self.ratio})")


#: luma weights (ITU-R 601, what PIL's "L" conversion and torchvision's grayscale use)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
#: RGB → YIQ; a hue shift is a rotation of the (I, Q) plane about the luma axis
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float64)
_YIQ_INV = np.linalg.inv(_YIQ)


class LinearColorJitter:
    """torchvision's ``ColorJitter`` (same factor ranges, same random order of the four operations)
    composed into one 3×3 colour matrix plus an offset, applied once to a uint8 RGB image.

    Brightness (×b), contrast (blend with the image's mean luma), saturation (blend with the pixel's
    luma) are linear in RGB, so their composition is exact. Hue is a rotation by 2π·h of the YIQ
    chroma plane about the luma axis — not torchvision's shift of H on the HSV hexcone: both turn a
    colour the same way by a similar amount (a skin tone moves by ~10 levels at h = 0.013 in both),
    but along a circle instead of the hexcone's edges. Values are clipped once at the end instead of
    after every operation: one matrix product instead of torchvision's four PIL passes and an HSV
    round trip (timed in ``benchmarks/RESULTS.md``, section 0a).
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0) -> None:
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    @staticmethod
    def _factor(spread: float) -> float | None:
        return None if spread <= 0 else float(torch.empty(1).uniform_(1 - spread, 1 + spread).item())

    def params(self) -> tuple[np.ndarray, np.ndarray, list[tuple[str, float]]]:
        """Draw the factors as torchvision does: the identity (matrix, offset) to start from and the
        operations in their random order as ``(name, factor)``; switched-off ones are left out."""
        order = torch.randperm(4).tolist()
        b, c, s = self._factor(self.brightness), self._factor(self.contrast), self._factor(self.saturation)
        h = None if self.hue <= 0 else float(torch.empty(1).uniform_(-self.hue, self.hue).item())
        steps = [(("brightness", b), ("contrast", c), ("saturation", s), ("hue", h))[i] for i in order]
        return np.eye(3), np.zeros(3), [(n, v) for n, v in steps if v is not None]

    def __call__(self, img: Image.Image | np.ndarray) -> np.ndarray:
        arr = np.asarray(img, dtype=np.uint8)
        m, off, steps = self.params()
        if not steps:
            return arr
        mean_rgb = arr.reshape(-1, 3).mean(0)
        for name, v in steps:
            if name == "brightness":
                m, off = v * m, v * off
            elif name == "contrast":
                mean_luma = float(_LUMA @ (m @ mean_rgb + off))
                m, off = v * m, v * off + (1 - v) * mean_luma
            elif name == "saturation":
                sat = v * np.eye(3) + (1 - v) * np.outer(np.ones(3), _LUMA)
                m, off = sat @ m, sat @ off
            else:
                a = -2 * math.pi * v  # sign: PIL/torchvision's +h turns red towards yellow
                rot = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
                hue = _YIQ_INV @ rot @ _YIQ
                m, off = hue @ m, hue @ off
        out = arr.astype(np.float32) @ m.T.astype(np.float32) + off.astype(np.float32)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def __repr__(self) -> str:
        return (f"LinearColorJitter(brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation}, hue={self.hue})")


class RandomIlluminant:
    """Re-light the image under a random illuminant: colour-constancy augmentation for other clinics' cameras.

    After Galdran et al. 2017 ("Data-driven color augmentation techniques for deep skin image analysis"): the
    image's illuminant is estimated with Shades of Gray (the Minkowski p-norm of each channel, p = 6, as in
    Barata et al. 2015 for dermoscopy), divided out (the lesion as under a neutral light), and a random
    illuminant put in its place: ``exp(u)`` per channel, ``u ~ U(-spread, spread)``, at the old light's mean
    level (brightness is the jitter's business). A diagonal map: one multiply per pixel. Applied with
    probability ``p``. Why it was tried: the other clinic's images look differently lit — bluish-grey backgrounds
    against HAM10000's pink (``../shared/notes/external.md``) — which a hue nudge of ±0.02 does not cover. Measured:
    no external gain and a lower internal P(mel) AUC (benchmarks/RESULTS.md 8g: the case mix, not the light, is what
    differs); kept as a named option, off by default. Training-only: evaluation, export and serving see the images
    as they come.
    """

    def __init__(self, spread: float, p: float = 0.8, norm: float = 6.0) -> None:
        if spread < 0 or not 0 <= p <= 1:
            raise LesionliteError(f"illuminant augmentation needs spread >= 0 and 0 <= p <= 1, got {spread}, {p}")
        self.spread, self.p, self.norm = float(spread), float(p), float(norm)

    def gains(self, arr: np.ndarray) -> np.ndarray | None:
        """Per-channel gains for ``arr`` (uint8 RGB), or None when this draw leaves the image alone."""
        if self.spread <= 0 or float(torch.rand(1).item()) >= self.p:
            return None
        u = torch.empty(3).uniform_(-self.spread, self.spread).double().numpy()
        x = arr.reshape(-1, 3).astype(np.float64) / 255.0
        estimate = np.power(np.mean(np.power(x, self.norm), axis=0), 1.0 / self.norm) + 1e-6
        light = np.exp(u)
        light /= light.mean()  # the new light at the old one's mean level
        return light * estimate.mean() / estimate  # the estimated light divided out, the new one put in

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        g = self.gains(arr)
        if g is None:
            return arr
        return np.clip(np.rint(arr.astype(np.float32) * g.astype(np.float32)), 0, 255).astype(np.uint8)

    def __repr__(self) -> str:
        return f"RandomIlluminant(spread={self.spread}, p={self.p}, norm={self.norm})"


class TrainTransform:
    """Dermoscopy augmentation, then the same normalisation as :func:`preprocess`.

    default: rotation ±30° (cropped so no fill corners appear), RandomResizedCrop(scale 0.6–1,
             aspect 3/4–4/3) to ``input_size`` (both in one resampling: :class:`RandomRotatedResizedCrop`),
             horizontal + vertical flips, colour jitter (:class:`LinearColorJitter`, one colour matrix)
             (brightness/contrast/saturation 0.2, hue 0.02);
    light:   rotation ±15°, RandomResizedCrop(scale 0.8–1), flips, jitter 0.1, no hue change;
    none:    no augmentation (identical to :class:`EvalTransform`).

    Lesions have no canonical orientation, so flips and rotations keep the label (as in the ISIC
    challenge literature); hue is only nudged since colour is diagnostic. Random draws use torch's
    RNG, which DataLoader seeds per worker. ``vertical_flip=False`` is what the "rotations" view
    mode needs: with both flips, vflip(x) = hflip(rot180(x)) would make rotation labels ambiguous.
    """

    def __init__(self, cfg: PreprocessConfig, strength: Strength = "default", vertical_flip: bool = True,
                 illuminant: float = 0.0) -> None:
        if strength not in ("default", "light", "none"):
            raise LesionliteError(f"unknown augmentation strength {strength!r}; expected default, light or none")
        self.cfg = cfg
        self.strength = strength
        self.vertical_flip = vertical_flip
        #: :class:`RandomIlluminant` spread (0 = off), applied before the jitter
        self.illuminant = RandomIlluminant(illuminant) if illuminant != 0 else None
        if self.illuminant is not None and strength == "none":
            raise LesionliteError("data.illuminant_augment needs an augmentation (data.augment default or light), "
                                  "not data.augment none")
        size = cfg.input_size
        interp = _INTERP.get(cfg.interpolation, InterpolationMode.BILINEAR)
        if strength == "none":
            self.aug = None
            self.jitter = None
            return
        default = strength == "default"
        resample = Image.BICUBIC if interp == InterpolationMode.BICUBIC else Image.BILINEAR
        ops: list[Any] = [
            RandomRotatedResizedCrop(size, 30 if default else 15, (0.6, 1.0) if default else (0.8, 1.0),
                                     (3 / 4, 4 / 3), resample=resample),
            T.RandomHorizontalFlip(),
        ]
        if vertical_flip:
            ops.append(T.RandomVerticalFlip())
        self.jitter = (LinearColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02) if default
                       else LinearColorJitter(brightness=0.1, contrast=0.1, saturation=0.1))
        self.aug = T.Compose(ops)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.aug is None:
            return torch.from_numpy(preprocess(img, self.cfg, layout="NCHW"))
        img = self.aug(to_rgb(img))
        if self.illuminant is not None:  # an array: the jitter takes one as it is (no PIL round trip)
            img = self.illuminant(np.asarray(img, dtype=np.uint8))
        return torch.from_numpy(normalize(self.jitter(img), self.cfg, "NCHW"))

    def rotation_safe(self) -> TrainTransform:
        """This transform without the vertical flip (for the "rotations" view mode)."""
        if not self.vertical_flip:
            return self
        return TrainTransform(self.cfg, self.strength, vertical_flip=False,
                              illuminant=self.illuminant.spread if self.illuminant is not None else 0.0)

    def __repr__(self) -> str:
        return (f"TrainTransform(strength={self.strength!r}, vertical_flip={self.vertical_flip}, aug={self.aug}, "
                f"illuminant={self.illuminant}, jitter={self.jitter})")


def train_transform(cfg: PreprocessConfig, strength: Strength = "default", illuminant: float = 0.0) -> TrainTransform:
    return TrainTransform(cfg, strength, illuminant=illuminant)


_ROT = {0: None, 1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}


class MultiViewDataset(WrappedDataset):
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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        img, label = self.dataset[index]
        views = []
        for k in range(self.num_views):
            im = img
            if self.view_mode == "rotations" and k % 4:
                im = img.transpose(_ROT[k % 4])
            views.append(self.transform(im))
        return torch.stack(views), int(label), int(index)


class TransformedDataset(WrappedDataset):
    """``(tensor, label)`` pairs — for evaluation loaders that do not need views or indices."""

    def __init__(self, dataset: Any, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, label = self.dataset[index]
        return self.transform(img), int(label)


def collate_views(batch: Sequence[tuple[torch.Tensor, int, int]]):
    """List of ``(views, label, index)`` → :class:`distill.methods.base.Batch` ([B,V,C,H,W], [B], [B])."""

    if not batch:
        raise LesionliteError("empty batch")
    images = torch.stack([b[0] for b in batch])
    labels = torch.tensor([int(b[1]) for b in batch], dtype=torch.long)
    indices = torch.tensor([int(b[2]) for b in batch], dtype=torch.long)
    return Batch(images=images, labels=labels, indices=indices)


__all__ = ["EvalTransform", "TrainTransform", "MultiViewDataset", "TransformedDataset", "eval_transform",
           "train_transform", "collate_views", "to_normalized_tensor"]
