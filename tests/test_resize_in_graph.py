"""The in-graph downscale equals Pillow's antialiased bilinear squash (export/resize_in_graph.py), and on real
HAM10000 images a 256-px-input TFLite agrees with MediaPipe's ImageClassifier fed the images as they came
(the resize gap; the real-data test skips with its reason where the data or the student is absent)."""
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
    from benchmarks.mediapipe_resize_probe import measure

    r = measure(str(STUDENT), 300, (256,), tmp_path)
    v = r["variants"]["input256"]
    assert r["n"] == 300
    assert v["mediapipe_vs_litert_own_preprocessing"] >= MIN_AGREEMENT
    assert v["mediapipe_vs_pytorch_training_preprocessing"] >= MIN_AGREEMENT


@pytest.mark.parametrize("option,size,want", [
    ("auto", 64, 256), ("auto", 32, 256), ("auto", 96, 288), ("auto", 224, 448), ("auto", 256, None),
    (0, 64, None), (None, 64, None), ("none", 64, None), ("off", 64, None), ("0", 64, None),
    (128, 64, 128), ("256", 64, 256), (64, 64, None),
])
def test_phone_input_size_is_resolved(option, size, want):
    from export.resize_in_graph import resolve_size

    assert resolve_size(option, size) == want


@pytest.mark.parametrize("option,match", [(200, "multiple"), (32, "multiple"), ("big", "auto, none")])
def test_bad_phone_input_size_is_one_clear_error(option, match):
    from export.resize_in_graph import resolve_size

    with pytest.raises(LesionliteError, match=match):
        resolve_size(option, 64)


def test_a_cropping_model_gets_no_phone_input():
    from export.resize_in_graph import resolve_size

    assert resolve_size("auto", 64, 72) is None  # auto says nothing: MediaPipe squashes, the model crops
    with pytest.raises(LesionliteError, match="crops"):
        resolve_size(256, 64, 72)


def test_export_option_is_checked():
    from export.context import ExportOptions

    assert ExportOptions.from_kwargs({}).phone_input_size == "auto"
    with pytest.raises(LesionliteError, match="phone-input-size"):
        ExportOptions.from_kwargs({"phone_input_size": "huge"})


def test_model_view_is_the_graphs_downscale():
    """serve's out-of-distribution statistics of a 256 px input are computed at the model's side, torch-free."""
    from dataclasses import replace

    from lesionlite.preprocessing import PreprocessConfig, model_size, model_view

    cfg = PreprocessConfig(input_size=256, mean=(0, 0, 0), std=(1, 1, 1))
    assert model_view(np.ones((3, 256, 256), np.float32), cfg).shape == (3, 256, 256)  # no in-graph resize
    cfg = replace(cfg, extra={"in_graph_resize": {"from": 256, "to": 64}})
    assert model_size(cfg) == 64
    a = np.random.default_rng(2).integers(0, 256, (256, 256, 3)).astype(np.uint8)
    pil = np.asarray(Image.fromarray(a).resize((64, 64), Image.BILINEAR)).astype(np.float32).transpose(2, 0, 1)
    got = model_view(a.transpose(2, 0, 1).astype(np.float32), cfg)
    assert got.shape == (3, 64, 64) and np.abs(got - pil).max() < 1.0


def test_cli_flag():
    from export.cli import build_parser

    assert build_parser().parse_args(["--checkpoint", "x"]).phone_input_size == "auto"
    assert build_parser().parse_args(["--checkpoint", "x", "--phone-input-size", "none"]).phone_input_size == "none"


@pytest.mark.parametrize("n_in,n_out", [(448, 224), (256, 64), (451, 97), (64, 64 + 1)])
def test_model_view_applies_the_band_of_the_dense_filter(n_in, n_out):
    """The banded filter (serve's per-request path) equals the dense resampling matrix to float32 rounding,
    and gives a C-contiguous image (the statistics' reductions are 5x slower on a strided one)."""
    from lesionlite.preprocessing import PreprocessConfig, model_view

    cfg = PreprocessConfig(input_size=n_in, mean=(0, 0, 0), std=(1, 1, 1),
                           extra={"in_graph_resize": {"from": n_in, "to": n_out}})
    x = np.random.default_rng(n_in).random((3, n_in, n_in)).astype(np.float32)
    rh, rw = pillow_weights(n_in, n_out), pillow_weights(n_in, n_out)
    dense = np.stack([rh @ c.astype(np.float64) @ rw.T for c in x]).astype(np.float32)
    got = model_view(x, cfg)
    assert got.shape == (3, n_out, n_out) and got.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(got, dense, rtol=0, atol=1e-6)
