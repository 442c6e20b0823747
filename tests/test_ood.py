"""Out-of-distribution signal: non-dermoscopy inputs abstain, real lesions do not.

Lesion images are real HAM10000 JPEGs when the data is present (``LESIONLITE_DATA``), else generated
lesion-like images (skin-toned background, a darker irregular blob, sensor noise). The detector is
fitted on 200 of them (as training fits it on validation images) and judged on 100 others and on
four kinds of non-dermoscopy input made here.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_serve_support import ServerThread, build_onnx, encode

from benchmarks.ood_inputs import lesion_images, non_dermoscopy
from lesionlite.manifest import MANIFEST_NAME
from lesionlite.ood import fit, image_statistics, unnormalize
from lesionlite.preprocessing import PreprocessConfig, preprocess

CFG = PreprocessConfig(input_size=64)


def _stats(images: list[Image.Image]) -> np.ndarray:
    return np.stack([image_statistics(unnormalize(preprocess(im, CFG, "NCHW"), CFG.mean, CFG.std)) for im in images])


def test_non_dermoscopy_inputs_are_flagged_and_lesions_are_not(data_root) -> None:
    from lesionlite.ood import assess

    lesions, source = lesion_images(data_root, 300)
    cal = fit(_stats(lesions[:200]), None)
    assert cal["val_abstain_rate"] <= 0.02
    held_out = [assess(cal, s, None)["out_of_distribution"] for s in _stats(lesions[200:])]
    counts = {"lesion (held out)": (sum(held_out), len(held_out))}
    for kind, images in non_dermoscopy().items():
        flags = [assess(cal, s, None)["out_of_distribution"] for s in _stats(images)]
        counts[kind] = (sum(flags), len(flags))
    print(f"\nout-of-distribution flags ({source}):", json.dumps(counts))
    for kind in ("flat colour", "noise", "text screenshot", "natural photo"):
        assert counts[kind][0] == counts[kind][1], (kind, counts)
    assert counts["lesion (held out)"][0] <= 5, counts  # about 1 % expected


def test_energy_threshold_is_the_validation_quantile() -> None:
    rng = np.random.default_rng(0)
    stats = rng.normal(size=(400, 7))
    logits = rng.normal(size=(400, 7)) * 3
    cal = fit(stats, logits, temperature=1.5, quantile=0.95)
    from lesionlite.ood import energy

    e = energy(logits, 1.5)
    assert abs((e < cal["energy_threshold"]).mean() - 0.05) < 0.01
    assert cal["temperature"] == 1.5 and 0.05 <= cal["val_abstain_rate"] <= 0.12


@pytest.fixture(scope="module")
def ood_model(tmp_path_factory: pytest.TempPathFactory, data_root) -> Path:
    """The serve fixture model (32 px) with an image-statistics calibration fitted on lesion images."""
    root = tmp_path_factory.mktemp("ood")
    d = build_onnx(root / "m")
    m = json.loads((d / MANIFEST_NAME).read_text())
    cfg = PreprocessConfig.from_dict(m["preprocessing"])
    lesions, _ = lesion_images(data_root, 200)
    stats = np.stack([image_statistics(unnormalize(preprocess(im, cfg, "NCHW"), cfg.mean, cfg.std)) for im in lesions])
    m["calibration"]["ood"] = fit(stats, None)
    (d / MANIFEST_NAME).write_text(json.dumps(m))
    return d


def test_predict_abstains_on_non_dermoscopy_and_refuses_tiny_images(ood_model: Path, data_root) -> None:
    from serve.app import create_app

    lesion = encode(lesion_images(data_root, 201)[0][200], "JPEG")  # not among the fitted ones
    black_1px = encode(Image.new("RGB", (1, 1)), "PNG")
    flat = encode(Image.new("RGB", (200, 150), (30, 60, 200)), "PNG")
    with ServerThread(create_app(ood_model)) as srv:
        def post(data: bytes, name: str) -> httpx.Response:
            return httpx.post(srv.url + "/predict", files={"file": (name, data, "application/octet-stream")}, timeout=30)

        r = post(black_1px, "a.png")
        assert r.status_code == 422 and r.json()["error"] == "image_too_small"
        assert "1x1 px" in r.json()["detail"] and "at least 16 px" in r.json()["detail"]
        r = post(flat, "b.png").json()
        assert r["out_of_distribution"] is True and r["abstain"] is True
        assert any("out of distribution" in x for x in r["abstain_reasons"])
        r = post(lesion, "c.jpg").json()
        assert r["out_of_distribution"] is False
        meta = httpx.get(srv.url + "/v2/models/m", timeout=10).json()
        assert meta["calibration"]["out_of_distribution"]["n"] == 200
        batch = httpx.post(srv.url + "/predict/batch", files=[("files", ("x.png", flat, "image/png")),
                                                              ("files", ("y.png", black_1px, "image/png"))],
                           timeout=30).json()["results"]
        assert batch[0]["out_of_distribution"] is True and batch[1]["error"] == "image_too_small"


def test_a_model_without_calibration_says_null(tmp_path: Path) -> None:
    from serve.app import create_app

    d = build_onnx(tmp_path / "plain")
    with ServerThread(create_app(d)) as srv:
        flat = encode(Image.new("RGB", (64, 64), (30, 60, 200)), "PNG")
        r = httpx.post(srv.url + "/predict", files={"file": ("b.png", flat, "image/png")}, timeout=30).json()
        assert r["out_of_distribution"] is None
    shutil.rmtree(d)


def test_the_vectorised_verdict_equals_assess_image_by_image():
    """lesionlite.ood.out_of_distribution (evaluate, export) says what assess (serve) says, image by image."""
    import numpy as np

    from lesionlite.ood import assess, fit, out_of_distribution

    rng = np.random.default_rng(0)
    cal = fit(rng.normal(size=(300, 7)), rng.normal(size=(300, 5)) * 3)
    stats, logits = rng.normal(size=(200, 7)) * 1.6, rng.normal(size=(200, 5)) * 3 - 1.5
    one_by_one = [assess(cal, stats[i], logits[i:i + 1])["out_of_distribution"] for i in range(200)]
    assert out_of_distribution(cal, stats, logits).tolist() == one_by_one and 0 < sum(one_by_one) < 200
    assert out_of_distribution(cal, stats).tolist() == [assess(cal, s, None)["out_of_distribution"] for s in stats]
