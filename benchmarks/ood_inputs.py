"""Inputs for judging the out-of-distribution signal (lesionlite.ood): lesion images and four kinds of
non-dermoscopy input made here (flat colours, noise, text screenshots, natural-looking photos).

Shared by ``tests/test_ood.py`` and ``benchmarks/ood_probe.py``. Lesion images are real HAM10000 JPEGs
when the data root holds them, else generated lesion-like images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def _lesion_like(rng: np.random.Generator, w: int = 200, h: int = 150) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    skin = np.array([200, 150, 130]) + rng.integers(-25, 25, 3)
    img = np.broadcast_to(skin, (h, w, 3)).astype(np.float64).copy()
    cy, cx, r = h / 2 + rng.normal(0, 10), w / 2 + rng.normal(0, 10), rng.uniform(25, 55)
    angle = np.arctan2(yy - cy, xx - cx)
    edge = r * (1 + 0.15 * np.sin(3 * angle + rng.uniform(0, 6)))
    inside = np.hypot(yy - cy, xx - cx) < edge
    img[inside] = np.array([110, 70, 50]) + rng.integers(-20, 20, 3)
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def lesion_images(data_root: Path | None, n: int) -> tuple[list[Image.Image], str]:
    folder = data_root / "ham10000_200x150" / "images" if data_root else None
    if folder is not None and folder.is_dir():
        files = sorted(folder.glob("*.jpg"))[:: 7][:n]  # spread over the folder
        if len(files) == n:
            return [Image.open(f).convert("RGB") for f in files], "HAM10000 (real)"
    rng = np.random.default_rng(0)
    return [_lesion_like(rng) for _ in range(n)], "generated lesion-like"


def non_dermoscopy() -> dict[str, list[Image.Image]]:
    rng = np.random.default_rng(1)
    flat = [Image.new("RGB", (200, 150), c) for c in
            [(0, 0, 0), (255, 255, 255), (128, 128, 128), (220, 30, 30), (30, 60, 200), (205, 160, 140)]]
    noise = [Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8), "RGB") for _ in range(5)]
    noise += [Image.fromarray(np.clip(rng.normal(128, 40, (150, 200, 3)), 0, 255).astype(np.uint8), "RGB")
              for _ in range(5)]
    texts = []
    for i in range(5):  # a text screenshot: dark text on a light page
        page = Image.new("RGB", (200, 150), (250, 250, 250) if i % 2 == 0 else (255, 255, 240))
        draw = ImageDraw.Draw(page)
        for line in range(9):
            draw.text((6, 4 + 16 * line), f"Patient report {i}.{line}: lorem ipsum dolor", fill=(20, 20, 20))
        texts.append(page)
    photos = []
    for i in range(5):  # a natural photo: sky, horizon, grass, a sun
        yy, xx = np.mgrid[0:150, 0:200]
        img = np.zeros((150, 200, 3))
        horizon = 70 + 10 * np.sin(xx / 25 + i)
        sky = yy < horizon
        img[sky] = np.stack([90 + yy, 150 + yy / 2, 240 - yy / 3], -1)[sky]
        img[~sky] = np.stack([40 + 0 * yy, 140 - (yy - 70) / 2, 40 + 0 * yy], -1)[~sky]
        sun = np.hypot(yy - 30, xx - 150 + 20 * i) < 15
        img[sun] = (255, 240, 150)
        img += rng.normal(0, 8, img.shape)
        photos.append(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB"))
    return {"flat colour": flat, "noise": noise, "text screenshot": texts, "natural photo": photos}
