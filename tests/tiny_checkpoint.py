"""Small fixtures for tests of export and of the stages that read its artifacts (serve, bench).

``make_tiny_checkpoint(run_dir)`` trains ``tiny_cnn`` for a few dozen steps on
``synthetic_bundle()`` — images whose class decides which colour channel is bright — and saves it
with :func:`distill.artifacts.save_student`; ``export_model(run_dir, out, …, dataset=synthetic_bundle())``
then exports it without any real data. Training takes about a second on one CPU core and gives a
model with well-separated logits (so int8 calibration and parity are meaningful, not noise).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lesionlite.manifest import Manifest
from lesionlite.preprocessing import PreprocessConfig

CLASS_NAMES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
PREPROCESSING = PreprocessConfig(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
#: calibration images of conftest's shared every-format export (``export_all``)
EXPORT_ALL_CALIB = 100
#: conftest's small shared ONNX export (``small_export``): ``synthetic_bundle(**SMALL_BUNDLE_ARGS)``, these options
SMALL_BUNDLE_ARGS = dict(n_train=70, n_val=14, n_test=42)
SMALL_EXPORT_KW = dict(formats="onnx", precisions="fp32,fp16", eval_samples=28, calib_samples=28)


@dataclass
class SyntheticBundle:
    """Duck-types ``distill.data.DatasetBundle``: lists of (PIL image, label) per split."""

    train: list[tuple[Image.Image, int]]
    val: list[tuple[Image.Image, int]]
    test: list[tuple[Image.Image, int]]
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    name: str = "synthetic-export-fixture"
    fingerprint: str = "synthetic-v1"
    synthetic: bool = True
    source: str = "tests/tiny_checkpoint.py"


def _images(n: int, num_classes: int, seed: int) -> list[tuple[Image.Image, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        c = i % num_classes
        a = rng.integers(0, 70, (40, 48, 3)).astype(np.int32)
        a[..., c % 3] += 120  # class → bright channel …
        a[: 8 + 4 * c, :, (c + 1) % 3] += 60  # … and the height of a band in the next channel
        out.append((Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB"), c))
    return out


def synthetic_bundle(n_train: int = 140, n_val: int = 35, n_test: int = 84, num_classes: int = 7) -> SyntheticBundle:
    return SyntheticBundle(
        train=_images(n_train, num_classes, 1), val=_images(n_val, num_classes, 2), test=_images(n_test, num_classes, 3),
        class_names=list(CLASS_NAMES[:num_classes]),
    )


def make_tiny_checkpoint(run_dir: str | Path, bundle: SyntheticBundle | None = None, steps: int = 60,
                         temperature: float = 1.25, data: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """Train tiny_cnn briefly on the synthetic bundle and save it as a lesionlite run directory."""
    import torch

    from distill.artifacts import save_student
    from distill.models import build_model
    from lesionlite.preprocessing import preprocess_batch

    bundle = bundle or synthetic_bundle()
    torch.manual_seed(seed)
    model = build_model("tiny_cnn", len(bundle.class_names))
    pairs = [bundle.train[i] for i in range(len(bundle.train))]
    x = torch.from_numpy(preprocess_batch([p[0] for p in pairs], PREPROCESSING))
    y = torch.tensor([int(p[1]) for p in pairs])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    manifest = Manifest(
        kind="checkpoint", architecture="tiny_cnn", class_names=list(bundle.class_names),
        preprocessing=PREPROCESSING, calibration={"temperature": temperature},
        metrics={}, data=data if data is not None else {"name": bundle.name, "fingerprint": bundle.fingerprint,
                                                         "synthetic": True},
    )
    save_student(run_dir, model, manifest)
    return Path(run_dir)


class _Split(list):
    """A list split that also answers ``load_image(i)`` like the project's datasets."""

    def load_image(self, i: int):
        return self[i][0]


def with_load_image(bundle: SyntheticBundle) -> SyntheticBundle:
    """``bundle`` with splits that answer ``load_image(i)`` (what export's MediaPipe check feeds raw images from)."""
    bundle.train, bundle.val, bundle.test = _Split(bundle.train), _Split(bundle.val), _Split(bundle.test)
    return bundle
