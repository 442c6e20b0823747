"""The in-graph downscale equals Pillow's antialiased bilinear squash (export/resize_in_graph.py), and on real
HAM10000 images a 256-px-input TFLite agrees with MediaPipe's ImageClassifier fed the images as they came
(issue 29's resize gap; the real-data test skips with its reason where the data or the student is absent)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.resize_in_graph import conv_plan, pillow_weights
from lesionlite.errors import LesionliteError

REPO = Path(__file__).resolve().parents[1]
STUDENT = REPO / "runs" / "qs_scratch4"  # a real MobileNetV2 student (scratch, 4 epochs, 64 px)
MIN_AGREEMENT = 0.97


@pytest.mark.parametrize("n_in,n_out", [(256, 64), (192, 64), (128, 64), (200, 64), (150, 64)])
def test_weights_are_pillows(n_in, n_out):
    a = np.random.default_rng(0).integers(0, 256, (n_in, n_in, 3)).astype(np.uint8)
    pil = np.asarray(Image.fromarray(a).resize((n_out, n_out), Image.BILINEAR)).astype(np.float64)
    r = pillow_weights(n_in, n_out)
    ours = np.stack([r @ a[:, :, c] @ r.T for c in range(3)], axis=2)
    assert np.abs(ours - pil).max() < 1.0  # Pillow rounds to uint8 after each of its two passes


def test_graph_module_equals_the_weights():
    torch = pytest.importorskip("torch")
    from export.resize_in_graph import downscale_module

    a = np.random.default_rng(1).random((256, 256, 3)).astype(np.float32)
    r = pillow_weights(256, 64)
    want = np.stack([r @ a[:, :, c] @ r.T for c in range(3)], axis=2)
    got = downscale_module(256, 64)(torch.from_numpy(a).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    assert np.abs(got - want).max() < 1e-5


def test_non_integer_factor_is_refused():
    with pytest.raises(LesionliteError, match="integer factor"):
        conv_plan(200, 64)


def _real_data_reason() -> str | None:
    root = os.environ.get("LESIONLITE_DATA")
    if not root or not (Path(root) / "ham10000_200x150").is_dir():
        return "HAM10000 not found: set LESIONLITE_DATA to a folder holding ham10000_200x150"
    if not (STUDENT / "student.pt").is_file():
        return f"no real student at {STUDENT} (train one with lesionlite distill, see the quick start)"
    for mod in ("torch", "litert_torch", "ai_edge_litert", "mediapipe"):
        try:
            __import__(mod)
        except ImportError:
            return f"{mod} is not installed (pip install 'lesionlite[export]')"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_real_data_reason() is not None, reason=str(_real_data_reason()))
def test_mediapipe_agrees_on_real_images_with_the_downscale_in_the_graph(tmp_path):
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from mediapipe_resize_probe import measure

    r = measure(str(STUDENT), 300, (256,), tmp_path)
    v = r["variants"]["input256"]
    assert r["n"] == 300
    assert v["mediapipe_vs_litert_own_preprocessing"] >= MIN_AGREEMENT
    assert v["mediapipe_vs_pytorch_training_preprocessing"] >= MIN_AGREEMENT
