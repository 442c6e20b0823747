"""``/predict``'s faster path gives the answers the route gave before, to the bit.

Before, ``/predict`` decoded in the preprocessing pool, ran the image through the micro-batcher, scored
the OOD statistics of the channel-last image on the event loop, and FastAPI validated the dict through
the ``Prediction`` pydantic model before rendering it. Now the image may be decoded on the inference
thread (when the model is idle), the OOD statistics are taken on the decoding thread from a
channel-first copy, and the body is rendered without re-validation. Here the old pipeline is rebuilt
from its parts (:func:`serve.images.decode_image`, the runtime, :func:`lesionlite.ood.assess` on the
old statistics, :func:`serve.postprocess.summarize`, ``Prediction.model_validate(...).model_dump``)
and compared with the server's answers on real HAM10000 images (``LESIONLITE_DATA``; generated images
otherwise), through both decode paths, with the OOD check and a referral operating point switched on;
error answers are compared with what ``decode_image`` raises.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

from fastapi.testclient import TestClient

import serve.images as serve_images
from lesionlite.ood import assess, fit, image_statistics, unnormalize
from serve.app import create_app
from serve.batching import MicroBatcher
from serve.errors import ApiError
from serve.images import decode_image
from serve.postprocess import summarize
from serve.schemas import Prediction
from serve.settings import Settings
from serve.threads import LeanPool

REPO = Path(__file__).resolve().parents[1]
#: a real 64 px int8 TFLite student (NHWC), when this checkout has it (artifacts/ is not in git)
REAL_ARTIFACT = REPO / "artifacts" / "qs_scratch4" / "mobilenet_v2_tflite_int8"


def _images(data_root: Path | None, n: int = 24) -> list[bytes]:
    folder = data_root / "ham10000_200x150" / "images" if data_root is not None else None
    if folder is not None and folder.is_dir():
        odd = []
        for colour in ((255, 255, 255), (0, 0, 255)):  # unlike any lesion: the OOD check flags them
            buf = io.BytesIO()
            Image.new("RGB", (200, 150), colour).save(buf, "JPEG")
            odd.append(buf.getvalue())
        return [p.read_bytes() for p in sorted(folder.glob("*.jpg"))[:n]] + odd
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):  # lesion-like blobs on skin-like backgrounds, plus a few odd ones (OOD verdicts vary)
        h, w = 150, 200
        yy, xx = np.mgrid[:h, :w]
        bg = np.array([200, 150, 130]) + rng.integers(-30, 30, 3)
        blob = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (20 + 3 * i) ** 2
        arr = np.where(blob[..., None], np.array([90, 60, 50]) + rng.integers(-20, 20, 3), bg)
        arr = np.clip(arr + rng.normal(0, 4 + 4 * (i % 5), (h, w, 3)), 0, 255).astype(np.uint8)
        if i % 6 == 5:
            arr = np.full((h, w, 3), 255 * (i % 2), np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG" if i % 3 else "PNG")
        out.append(buf.getvalue())
    return out


def _bad_payloads(real: bytes) -> dict[str, bytes]:
    tiny = io.BytesIO()
    Image.new("RGB", (8, 8), (100, 50, 20)).save(tiny, "PNG")
    return {"empty": b"", "text": b"hello, world", "pdf": b"%PDF-1.4 not an image", "gif": b"GIF89a" + bytes(40),
            "truncated": real[:300], "tiny": tiny.getvalue()}


def _with_ood_and_referral(src: Path, dst: Path, images: list[bytes]) -> Path:
    """A copy of the artifact ``src`` whose manifest also carries an OOD calibration fitted on ``images``
    and a referral operating point (so that both shape every answer)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    cal = manifest.setdefault("calibration", {})
    if "ood" not in cal:
        from serve.models import load_models

        (entry,) = load_models(dst).models.values()
        pre = entry.manifest.preprocessing
        stats = [image_statistics(unnormalize(decode_image(d, entry, 10**8), pre.mean, pre.std, entry.runtime.layout))
                 for d in images]
        cal["ood"] = fit(np.stack(stats), None, quantile=0.7)
    cal.setdefault("operating_point", {"target": "mel", "positive_classes": ["mel"], "sensitivity_target": 0.9,
                                       "threshold": 0.15, "chosen_on": "val"})
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _old_answer(entry, data: bytes, settings: Settings, top_k: int) -> dict:
    """What ``/predict`` answered before its faster path (latency aside), rebuilt from its parts."""
    x = decode_image(data, entry, settings.max_pixels, settings.min_image_side)
    logits = entry.runtime.predict(x[None])[0]
    ood = None
    if entry.ood_calibration is not None:
        pre = entry.manifest.preprocessing
        ood = assess(entry.ood_calibration, image_statistics(unnormalize(x, pre.mean, pre.std, entry.runtime.layout)),
                     logits)
    out = summarize(logits, entry.class_names, entry.temperature, min(top_k, entry.manifest.num_classes),
                    settings.abstain_threshold, ood, entry.operating_point)
    body = {"model": entry.name, "version": entry.version, **out, "synthetic_training_data": entry.synthetic,
            "latency_ms": 0.0}
    return Prediction.model_validate(body).model_dump(mode="json")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, data_root: Path | None) -> list[Path]:
    images = _images(data_root)
    base = tmp_path_factory.mktemp("fastpath")
    found = []
    if REAL_ARTIFACT.is_dir():
        pytest.importorskip("ai_edge_litert")
        found.append(_with_ood_and_referral(REAL_ARTIFACT, base / "real_tflite_int8", images))
    pytest.importorskip("torch")
    from test_serve_support import model_root

    found.append(_with_ood_and_referral(model_root(tmp_path_factory.getbasetemp()) / "onnx", base / "onnx", images))
    return found


@pytest.mark.parametrize("decode_path", ["inference_thread", "preprocessing_pool", "ood_beside_inference"])
def test_predict_answers_are_the_old_answers(artifacts: list[Path], data_root: Path | None, decode_path: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if decode_path == "preprocessing_pool":  # as when the model is busy: decoded in the pool
        monkeypatch.setattr(MicroBatcher, "idle", property(lambda self: False))
    # an idle model with a large input computes the OOD statistics on the pool while it runs (every size here)
    monkeypatch.setattr(serve_images, "OVERLAP_OOD_MIN_PIXELS", 0 if decode_path == "ood_beside_inference" else 10**9)
    beside = []  # the functions queued on the pools (the OOD statistics: from the inference thread)
    run_threadsafe = LeanPool.run_threadsafe
    monkeypatch.setattr(LeanPool, "run_threadsafe", lambda self, *a: (beside.append(a[2]), run_threadsafe(self, *a)))
    images = _images(data_root)
    settings = Settings()
    for art in artifacts:
        beside.clear()
        app = create_app(art, settings)
        state = app.state.server
        (entry,) = state.models.values()
        verdicts = set()
        with TestClient(app) as client:
            for i, data in enumerate(images):
                top_k = 1 + i % 7
                r = client.post(f"/predict?top_k={top_k}", files={"file": (f"{i}.jpg", data, "image/jpeg")})
                assert r.status_code == 200, r.text
                assert r.headers["content-type"] == "application/json"
                got = r.json()
                assert got.pop("latency_ms") > 0
                want = _old_answer(entry, data, settings, top_k)
                want.pop("latency_ms")
                assert got == want, (art.name, i)  # same keys, same order of top_k, same floats to the bit
                assert list(got) == [k for k in Prediction.model_fields if k != "latency_ms"]  # field order kept
                Prediction.model_validate_json(r.content)  # still a valid Prediction
                verdicts.add(got["out_of_distribution"])
                assert got["referral"] is not None
            assert verdicts == {True, False}, (art.name, verdicts)  # both OOD verdicts were exercised
            n_beside = sum(fn is serve_images.ood_statistics for fn in beside)
            assert n_beside == (len(images) if decode_path == "ood_beside_inference" else 0), decode_path

            for name, data in _bad_payloads(images[0]).items():
                r = client.post("/predict", files={"file": (name, data, "application/octet-stream")})
                with pytest.raises(ApiError) as exc:
                    decode_image(data, entry, settings.max_pixels, settings.min_image_side)
                assert r.status_code == exc.value.status, (name, r.text)
                assert r.json() == {"error": exc.value.error, "detail": exc.value.detail}, name

            metrics = client.get("/metrics").text
            n_ok = len(images)
            assert f'lesionlite_requests_total{{endpoint="/predict",method="POST",status="200"}} {n_ok}.0' in metrics
            assert f'lesionlite_images_total{{model="{entry.name}"}} {n_ok}.0' in metrics
            schema = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["responses"]["200"]
            assert schema["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Prediction"}
