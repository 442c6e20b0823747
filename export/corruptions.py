"""Everyday image faults at a few severities, for "does int8 break first when the photo is bad?".

Five faults a phone camera or a gallery produces — defocus blur, sensor noise, under/over-exposure,
low contrast, heavy JPEG compression — each at severities 1–3, applied to the image *as it came* (before
lesionlite's preprocessing), so the model sees exactly what it would see in the field.

Why not a corruption library: the maintained-looking one (``imagecorruptions``, after Hendrycks &
Dietterich's ImageNet-C) was last released in 2020 and pulls OpenCV, scikit-image and SciPy for these five
faults, which are one Pillow call each; the parameters follow ImageNet-C's low severities.
"""
from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from lesionlite.errors import LesionliteError

SEVERITIES = (1, 2, 3)


def _blur(img: Image.Image, s: int) -> Image.Image:
    # radius relative to the image: the same optical blur whatever the resolution it arrives at
    return img.filter(ImageFilter.GaussianBlur(radius=(0.004, 0.008, 0.015)[s - 1] * max(img.size)))


def _noise(img: Image.Image, s: int, seed: int = 0) -> Image.Image:
    a = np.asarray(img, dtype=np.float32) / 255.0
    rng = np.random.default_rng(seed)
    a = a + rng.normal(0.0, (0.04, 0.08, 0.12)[s - 1], a.shape)
    return Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")


def _dark(img: Image.Image, s: int) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance((0.8, 0.65, 0.5)[s - 1])


def _bright(img: Image.Image, s: int) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance((1.2, 1.35, 1.5)[s - 1])


def _contrast(img: Image.Image, s: int) -> Image.Image:
    return ImageEnhance.Contrast(img).enhance((0.75, 0.55, 0.4)[s - 1])


def _jpeg(img: Image.Image, s: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=(30, 15, 8)[s - 1])
    buf.seek(0)
    return Image.open(buf).convert("RGB")


CORRUPTIONS: dict[str, Callable[[Image.Image, int], Image.Image]] = {
    "gaussian_blur": _blur, "gaussian_noise": _noise, "darker": _dark, "brighter": _bright,
    "low_contrast": _contrast, "jpeg": _jpeg,
}


def corrupt(img: Image.Image, name: str, severity: int) -> Image.Image:
    """``img`` (RGB) with fault ``name`` at ``severity`` (1–3)."""
    if name not in CORRUPTIONS:
        raise LesionliteError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise LesionliteError(f"severity must be one of {SEVERITIES}, got {severity}")
    return CORRUPTIONS[name](img.convert("RGB"), severity)
