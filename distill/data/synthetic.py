"""Deterministic SYNTHETIC dermoscopy-like data for tests, the CPU demo and smoke runs.

NOT real data: every bundle is named ``synthetic`` and flagged ``synthetic=True``, and its source
string says so. Seven classes named like DermaMNIST, each a class-dependent drawn "lesion"
(colour, size, border irregularity, texture) on a skin-toned background with shading and noise,
so that a tiny CNN learns it in a few epochs. Same (seed, size, counts) → same bytes.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from distill.data.base import DERMAMNIST_CLASSES, ArrayDataset, DatasetBundle, fingerprint_parts
from distill.data.registry import register_dataset
from lesionlite.errors import LesionliteError

GENERATOR_VERSION = "synthetic-v1"
#: Larger images are rendered at this size and upsampled (bilinear) before the noise is added.
MAX_RENDER = 112
DEFAULT_COUNTS = (280, 70, 140)

# Per class: base RGB colour, radius range (fraction of size), aspect range, border irregularity,
# texture kind. Loosely after the dermoscopic look of each diagnosis; only the learnability matters.
_CLASS_STYLE = {
    0: dict(color=(200, 105, 95), radius=(0.22, 0.30), aspect=(0.7, 1.0), irregular=0.18, texture="scaly"),
    1: dict(color=(222, 170, 170), radius=(0.17, 0.25), aspect=(0.8, 1.0), irregular=0.06, texture="vessels"),
    2: dict(color=(176, 128, 84), radius=(0.24, 0.33), aspect=(0.5, 0.7), irregular=0.08, texture="cysts"),
    3: dict(color=(125, 82, 62), radius=(0.12, 0.18), aspect=(0.85, 1.0), irregular=0.04, texture="scar"),
    4: dict(color=(62, 38, 34), radius=(0.25, 0.36), aspect=(0.6, 0.95), irregular=0.30, texture="bluegray"),
    5: dict(color=(135, 88, 56), radius=(0.16, 0.24), aspect=(0.85, 1.0), irregular=0.03, texture="network"),
    6: dict(color=(150, 35, 70), radius=(0.14, 0.22), aspect=(0.8, 1.0), irregular=0.05, texture="lacunae"),
}


F = np.float32


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _draw(cls: int, size: int, rng: np.random.Generator) -> np.ndarray:
    out_size = None
    if size > MAX_RENDER:
        size, out_size = MAX_RENDER, size
    st = _CLASS_STYLE[cls]
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(s)  # [0,1)
    # Skin background: tone, a smooth illumination gradient and a dark dermoscope vignette.
    skin = (np.array([205, 165, 135], dtype=np.float64) * rng.uniform(0.85, 1.08) + rng.normal(0, 3, 3)).astype(F)
    gx, gy = (float(v) for v in rng.normal(0, 18, 2))
    img = skin[None, None, :] + ((xx - 0.5) * gx + (yy - 0.5) * gy)[..., None]
    rr_c = np.hypot(xx - 0.5, yy - 0.5)
    img *= (1.0 - 0.35 * np.clip((rr_c - 0.48) / 0.25, 0, 1))[..., None]

    # Lesion geometry: centre, radius, aspect, orientation, irregular border via angular harmonics.
    cx, cy = (float(v) for v in 0.5 + rng.normal(0, 0.05, 2))
    r0 = float(rng.uniform(*st["radius"]))
    aspect = float(rng.uniform(*st["aspect"]))
    theta = float(rng.uniform(0, np.pi))
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / aspect
    ang = np.arctan2(v, u)
    rad = np.hypot(u, v)
    border = np.ones_like(ang)
    for h in (2, 3, 5, 7):
        border += float(st["irregular"] * rng.normal(0, 1) / np.sqrt(h)) * np.cos(h * ang + float(rng.uniform(0, 2 * np.pi)))
    edge = r0 * np.clip(border, 0.4, 1.8)
    soft = 0.012 + 0.01 * float(rng.uniform())
    mask = _sigmoid((edge - rad) / soft)  # 1 inside the lesion
    rel = rad / np.maximum(edge, 1e-6)  # 0 at the centre, 1 at the border

    color = (np.array(st["color"], dtype=np.float64) * rng.uniform(0.88, 1.12) + rng.normal(0, 4, 3)).astype(F)
    les = np.broadcast_to(color, img.shape).copy()
    tex = st["texture"]
    if tex == "scaly":  # rough, white scale flecks
        flecks = (rng.random((size, size), dtype=F) > 0.9).astype(F)
        les += (18 * rng.standard_normal((size, size), dtype=F) + 60 * flecks)[..., None]
    elif tex == "vessels":  # thin red branching lines on a pearly background
        for _ in range(3):
            a, b, c = (float(v) for v in (rng.uniform(-1, 1), rng.uniform(4, 12), rng.uniform(0, 2 * np.pi)))
            line = np.exp(-((v - 0.6 * r0 * np.sin(b * u + c) - a * 0.3 * r0) ** 2) / (2 * (0.01) ** 2))
            les = les * (1 - 0.7 * line[..., None]) + np.array([170, 20, 40], F) * 0.7 * line[..., None]
    elif tex == "cysts":  # pale milia-like dots on waxy tan
        for _ in range(int(rng.integers(4, 9))):
            px, py = (float(v) for v in rng.normal(0, 0.5, 2) * r0)
            dot = np.exp(-((u - px) ** 2 + (v - py) ** 2) / (2 * (0.02) ** 2))
            les += 70 * dot[..., None]
    elif tex == "scar":  # central white patch inside a brown ring
        centre = np.exp(-(rel ** 2) / (2 * 0.35 ** 2))
        les = les * (1 - centre[..., None]) + np.array([235, 220, 210], F) * centre[..., None]
    elif tex == "bluegray":  # multicolour: blue-grey veil and an off-centre black blotch
        bx, by = (float(v) for v in rng.normal(0, 0.4, 2) * r0)
        veil = np.exp(-((u - bx) ** 2 + (v - by) ** 2) / (2 * (0.45 * r0) ** 2))
        les = les * (1 - 0.8 * veil[..., None]) + np.array([95, 110, 140], F) * 0.8 * veil[..., None]
        les += 10 * rng.standard_normal((size, size), dtype=F)[..., None]
    elif tex == "network":  # regular reticular pigment network
        f = float(rng.uniform(30, 45))
        net = 0.5 + 0.5 * np.cos(f * u) * np.cos(f * v)
        les -= 25 * net[..., None] * (1 - rel.clip(0, 1))[..., None]
    elif tex == "lacunae":  # red-purple round lacunae
        for _ in range(int(rng.integers(5, 10))):
            px, py = (float(v) for v in rng.normal(0, 0.45, 2) * r0)
            lac = np.exp(-((u - px) ** 2 + (v - py) ** 2) / (2 * (0.035) ** 2))
            les = les * (1 - 0.6 * lac[..., None]) + np.array([110, 10, 60], F) * 0.6 * lac[..., None]
    img = img * (1 - mask[..., None]) + les * mask[..., None]
    if out_size is not None and out_size != size:  # render small, upsample, then add full-res noise
        small = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")
        img = np.asarray(small.resize((out_size, out_size), Image.BILINEAR), dtype=F)
    img = img + 6 * rng.standard_normal(img.shape, dtype=F)  # sensor noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def generate(n: int, size: int, rng: np.random.Generator, num_classes: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images balanced over classes (remainder to the first classes), shuffled."""
    labels = np.arange(n, dtype=np.int64) % num_classes
    labels = labels[rng.permutation(n)]
    images = np.stack([_draw(int(c), size, rng) for c in labels]) if n else np.zeros((0, size, size, 3), np.uint8)
    return images, labels


@register_dataset("synthetic", "generated 7-class lesion-like images (not real data); synthetic[:SIZE]")
def load_synthetic(arg: str | None = None, root=None, seed: int = 0, synthetic_size: int = 64,
                   synthetic_counts: tuple[int, int, int] = DEFAULT_COUNTS, **_: object) -> DatasetBundle:
    """``synthetic`` or ``synthetic:SIZE``. Deterministic in (seed, size, counts)."""
    size = int(synthetic_size)
    if arg:
        try:
            size = int(arg)
        except ValueError:
            raise LesionliteError(f"bad synthetic spec 'synthetic:{arg}': expected an image size, e.g. synthetic:64") from None
    if not 8 <= size <= 1024:
        raise LesionliteError(f"synthetic image size must be in 8..1024, got {size}")
    counts = tuple(int(c) for c in synthetic_counts)
    if len(counts) != 3 or min(counts) < 7:
        raise LesionliteError(f"synthetic_counts must be three sizes >= 7 (train, val, test), got {counts}")
    splits = []
    for k, n in enumerate(counts):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, k, size, 20240601])
        splits.append(generate(n, size, rng))
    fp = fingerprint_parts([GENERATOR_VERSION, seed, size, counts] + [a for pair in splits for a in pair])
    ds = [ArrayDataset(im, lb, 7, ids=[f"synthetic_{name}_{i}" for i in range(len(lb))])
          for (im, lb), name in zip(splits, ("train", "val", "test"))]
    return DatasetBundle(
        train=ds[0], val=ds[1], test=ds[2], class_names=list(DERMAMNIST_CLASSES), name="synthetic",
        fingerprint=fp, synthetic=True,
        source=(f"SYNTHETIC generated data ({GENERATOR_VERSION}, seed {seed}, {size}x{size} px, "
                f"{counts[0]}/{counts[1]}/{counts[2]} images) - not real dermoscopy; class names borrowed from DermaMNIST"),
        native_size=size,
    )
