"""The whole-factor downscale (serve's per-request model view of a phone-input artifact) against the filter's
float64 definition, and the out-of-distribution statistics computed through it."""
from __future__ import annotations

import numpy as np
import pytest

from lesionlite.ood import assess, fit, image_statistics, model_view_statistics, unnormalize
from lesionlite.preprocessing import PreprocessConfig, model_view, pillow_weights
from lesionlite.whole_factor_resample import axis_plan, downscale_chw


def _dense_view(x_chw: np.ndarray, n_out: int) -> np.ndarray:
    """The definition: Pillow's resampling matrices applied in float64."""
    rh, rw = pillow_weights(x_chw.shape[1], n_out), pillow_weights(x_chw.shape[2], n_out)
    return np.stack([rh @ c.astype(np.float64) @ rw.T for c in x_chw])


@pytest.mark.parametrize("n_in,n_out", [(448, 224), (256, 64), (384, 128), (96, 32), (300, 100), (12, 3)])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_equals_the_dense_filter(n_in, n_out, layout):
    x = np.random.default_rng(n_in + n_out).random((3, n_in, n_in)).astype(np.float32)
    rows = cols = axis_plan(n_in, n_out)
    assert rows is not None and rows.factor == n_in // n_out and rows.n_out == n_out
    got = downscale_chw(x if layout == "NCHW" else np.ascontiguousarray(x.transpose(1, 2, 0)), rows, cols, layout)
    assert got.shape == (3, n_out, n_out) and got.dtype == np.float32 and got.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(got, _dense_view(x, n_out), rtol=0, atol=3e-7)


def test_border_rows_are_renormalised():
    """A constant image stays constant, border rows included (Pillow renormalises a clipped window)."""
    plan = axis_plan(448, 224)
    assert plan.border and {o for o, _, _ in plan.border} == {0, 223}
    got = downscale_chw(np.full((3, 448, 448), 0.7, np.float32), plan, plan)
    np.testing.assert_allclose(got, 0.7, rtol=0, atol=1e-7)


@pytest.mark.parametrize("n_in,n_out", [(451, 97), (64, 65), (64, 64), (4, 2), (100, 33)])
def test_other_sizes_have_no_plan(n_in, n_out):
    """Not a whole factor (or no interior row): model_view keeps the banded float64 filter."""
    assert axis_plan(n_in, n_out) is None


def test_non_square_input_uses_one_plan_per_axis():
    cfg = PreprocessConfig(input_size=448, mean=(0, 0, 0), std=(1, 1, 1), extra={"in_graph_resize": {"from": 448, "to": 64}})
    x = np.random.default_rng(5).random((3, 128, 192)).astype(np.float32)
    got = model_view(x, cfg)
    rh, rw = pillow_weights(128, 64), pillow_weights(192, 64)
    np.testing.assert_allclose(got, np.stack([rh @ c.astype(np.float64) @ rw.T for c in x]), rtol=0, atol=3e-7)


@pytest.mark.parametrize("mean,std", [((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
def test_view_statistics_match_the_definition_and_keep_every_verdict(backend, mean, std):
    """serve/export's statistics of a 448 px phone input: unnormalised after the whole-factor view instead of
    before the float64 band; equal to float32 rounding, and no verdict of a fitted check changes."""
    from lesionlite.preprocessing import normalize

    cfg = PreprocessConfig(input_size=448, mean=mean, std=std, extra={"in_graph_resize": {"from": 448, "to": 224}})
    rng = np.random.default_rng(7)
    # smooth "photos": low-frequency colour fields plus noise of varying strength
    base = rng.random((40, 1, 1, 3)) * 200 + 20
    ramp = np.linspace(-1, 1, 448)[None, :, None, None] * rng.random((40, 1, 1, 3)) * 30
    noise = rng.normal(size=(40, 448, 448, 3)) * rng.random((40, 1, 1, 1)) * 20
    images = np.clip(base + ramp + noise, 0, 255).astype(np.uint8)
    xs = [normalize(im, cfg, "NHWC") for im in images]
    reference = np.stack([image_statistics(_dense_view(unnormalize(x, mean, std, "NHWC"), 224)) for x in xs])
    got = np.stack([model_view_statistics(x, cfg, "NHWC") for x in xs])
    np.testing.assert_allclose(got, reference, rtol=0, atol=2e-6)
    cal = fit(reference[:20], None, quantile=0.5)
    verdicts = [assess(cal, s, None)["out_of_distribution"] for s in reference[20:]]
    assert 0 < sum(verdicts) < 20  # the check decides both ways on these images
    assert [assess(cal, s, None)["out_of_distribution"] for s in got[20:]] == verdicts


def test_view_statistics_without_in_graph_resize_are_unchanged():
    """A model that sees its input as given: the statistics are exactly those of the unnormalised image."""
    cfg = PreprocessConfig(input_size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = np.random.default_rng(3).normal(size=(64, 64, 3)).astype(np.float32)
    chw = np.ascontiguousarray(x.transpose(2, 0, 1))
    assert np.array_equal(model_view_statistics(x, cfg, "NHWC"), image_statistics(unnormalize(chw, cfg.mean, cfg.std)))
    assert np.array_equal(model_view_statistics(chw, cfg), image_statistics(unnormalize(chw, cfg.mean, cfg.std)))


def _photos(data_root, tmp_path) -> list:
    """80 HAM10000 and 80 ISIC 2017 JPEGs from the real-data root, else a generated HAM10000-like folder's."""
    from _fixtures_data import make_ham

    from lesionlite.preprocessing import load_image_file

    if data_root is not None and (data_root / "ham10000_200x150").is_dir():
        files = sorted((data_root / "ham10000_200x150" / "images").glob("*.jpg"))[:80]
        files += sorted((data_root / "isic2017_msk_256" / "images").glob("*.jpg"))[:80]
    else:
        files = sorted((make_ham(tmp_path / "ham", lesions_per_class=6) / "images").glob("*.jpg"))
    return [load_image_file(str(f)) for f in files]


def test_phone_input_statistics_on_photos(backend, data_root, tmp_path):
    """Real dermoscopy images (where present) through a 448 px phone input's preprocessing: the served statistics
    equal the definition (the float64 dense view of the unnormalised image) to float32 rounding, and a check
    fitted on half of them gives every other image the verdict the definition gives it."""
    from lesionlite.preprocessing import preprocess

    cfg = PreprocessConfig(input_size=448, mean=(0, 0, 0), std=(1, 1, 1),
                           extra={"in_graph_resize": {"from": 448, "to": 224}})
    xs = [preprocess(im, cfg, "NHWC") for im in _photos(data_root, tmp_path)]
    reference = np.stack([image_statistics(_dense_view(np.ascontiguousarray(x.transpose(2, 0, 1)), 224)) for x in xs])
    got = np.stack([model_view_statistics(x, cfg, "NHWC") for x in xs])
    np.testing.assert_allclose(got, reference, rtol=0, atol=2e-6)
    half = len(xs) // 2
    cal = fit(reference[::2], None, quantile=0.8)
    verdicts = [assess(cal, s, None)["out_of_distribution"] for s in reference[1::2]]
    assert 0 < sum(verdicts) < half
    assert [assess(cal, s, None)["out_of_distribution"] for s in got[1::2]] == verdicts


@pytest.fixture(params=["opencv", "numpy"])
def backend(request, monkeypatch):
    """The statistics through OpenCV (where installed) and through numpy alone (OpenCV made unavailable)."""
    import lesionlite.opencv_view as opencv_view

    if request.param == "numpy":
        monkeypatch.setattr(opencv_view, "opencv", lambda: None)
    elif opencv_view.opencv() is None:
        pytest.skip("OpenCV is not installed here (it comes with the export extra)")
    return request.param


@pytest.mark.parametrize("n_in,n_out", [(448, 224), (256, 64), (384, 128), (300, 100), (12, 3)])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("mean,std", [((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_both_backends_equal_the_definition(backend, n_in, n_out, layout, mean, std):
    cfg = PreprocessConfig(input_size=n_in, mean=mean, std=std, extra={"in_graph_resize": {"from": n_in, "to": n_out}})
    rng = np.random.default_rng(n_in)
    pixels = np.clip(rng.random((3, 1, 1)) * 0.6 + 0.2 + rng.normal(size=(3, n_in, n_in)) * 0.1, 0, 1)
    x_chw = ((pixels - np.asarray(mean).reshape(3, 1, 1)) / np.asarray(std).reshape(3, 1, 1)).astype(np.float32)
    reference = image_statistics(_dense_view(unnormalize(x_chw, mean, std), n_out))
    x = x_chw if layout == "NCHW" else np.ascontiguousarray(x_chw.transpose(1, 2, 0))
    np.testing.assert_allclose(model_view_statistics(x, cfg, layout), reference, rtol=0, atol=2e-6)


def test_whole_factor_plans_renormalise_their_borders_as_pillow():
    """OpenCV's path needs every border window to be the interior kernel cut to the image: true for Pillow's
    triangle at every whole factor used here."""
    for n_in, n_out in [(448, 224), (256, 64), (384, 128), (300, 100), (12, 3)]:
        plan = axis_plan(n_in, n_out)
        assert plan.border_gain is not None and len(plan.border_gain) == len(plan.border)
        assert all(g > 1.0 for _, g in plan.border_gain)


def test_view_backend_and_serves_start_up_line(backend, caplog):
    """serve says at start-up what computes a phone-input model's OOD view (numpy is ~2x dearer per request)."""
    import logging
    from types import SimpleNamespace

    from lesionlite.ood import view_backend
    from serve.models import _log_ood_view

    plain = PreprocessConfig(input_size=224, mean=(0, 0, 0), std=(1, 1, 1))
    phone = PreprocessConfig(input_size=448, mean=(0, 0, 0), std=(1, 1, 1), extra={"in_graph_resize": {"from": 448, "to": 224}})
    assert view_backend(plain) is None
    assert view_backend(phone) == backend
    with caplog.at_level(logging.INFO, logger="serve"):
        _log_ood_view("phone", SimpleNamespace(manifest=SimpleNamespace(preprocessing=phone), ood_calibration={}))
        _log_ood_view("plain", SimpleNamespace(manifest=SimpleNamespace(preprocessing=plain), ood_calibration={}))
        _log_ood_view("uncalibrated", SimpleNamespace(manifest=SimpleNamespace(preprocessing=phone), ood_calibration=None))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("phone: ") and "224 px view of its 448 px input" in lines[0]
    assert ("through OpenCV" in lines[0]) == (backend == "opencv")
    assert ("opencv-python-headless" in lines[0]) == (backend == "numpy")


def test_start_up_line_for_a_view_opencv_cannot_take(caplog):
    """A downscale that is not a whole factor goes through numpy, and the line says why (not a missing package)."""
    import logging
    from types import SimpleNamespace

    from serve.models import _log_ood_view

    odd = PreprocessConfig(input_size=451, mean=(0, 0, 0), std=(1, 1, 1), extra={"in_graph_resize": {"from": 451, "to": 97}})
    with caplog.at_level(logging.INFO, logger="serve"):
        _log_ood_view("odd", SimpleNamespace(manifest=SimpleNamespace(preprocessing=odd), ood_calibration={}))
    (line,) = [r.getMessage() for r in caplog.records]
    assert "through numpy" in line and "97 px view of its 451 px input" in line
    assert ("not a whole-factor downscale" in line) != ("opencv-python-headless" in line)
