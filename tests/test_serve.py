"""serve: a real uvicorn on a loopback port, fed every image mode and every kind of bad input."""
from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_serve_support import (
    CLASS_NAMES,
    INPUT_SIZE,
    TEMPERATURE,
    ServerThread,
    encode,
    exif_rotated_jpeg,
    free_port,
    image_variants,
    pattern,
    png_bomb,
    reference_probabilities,
    tflite_root,
    wait_until_ready,
)

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

from serve.app import create_app
from serve.settings import Settings

REPO = Path(__file__).resolve().parents[1]
VARIANTS = image_variants()
JPEG = VARIANTS["rgb_jpeg"][0]


@pytest.fixture(scope="session")
def tfl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    return tflite_root(tmp_path_factory.getbasetemp())


def post_file(client: httpx.Client, data: bytes, name: str = "x.jpg", ctype: str = "image/jpeg",
              path: str = "/predict", **params) -> httpx.Response:
    return client.post(path, params=params, files={"file": (name, data, ctype)})


def assert_error(r: httpx.Response, status: int, error: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"error", "detail"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    if error:
        assert body["error"] == error, body
    return body


# ------------------------------------------------------------------------------ health + metadata


def test_health_and_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["name"] == "lesionlite"
    models = client.get("/v2/models").json()
    assert models["default"] == "onnx" and [m["name"] for m in models["models"]] == ["onnx"]
    meta = client.get("/v2/models/onnx").json()
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["class_names"] == CLASS_NAMES
    assert meta["inputs"][0]["datatype"] == "FP32"
    assert meta["inputs"][0]["shape"] == [-1, 3, INPUT_SIZE, INPUT_SIZE]
    assert meta["outputs"][0]["shape"] == [-1, len(CLASS_NAMES)]
    assert meta["calibration"]["temperature"] == pytest.approx(TEMPERATURE)
    assert len(meta["versions"]) == 1
    assert client.get("/v2/models/onnx/ready").json()["ready"] is True
    assert_error(client.get("/v2/models/nope"), 404, "model_not_found")
    schema = client.get("/openapi.json").json()
    assert "/predict" in schema["paths"] and "/predict/batch" in schema["paths"]
    assert client.get("/docs").status_code == 200


# ------------------------------------------------------------------------------ valid images


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_predict_every_image_mode_matches_onnxruntime(client: httpx.Client, models_dir: Path, variant: str) -> None:
    data, name = VARIANTS[variant]
    # the part's Content-Type is deliberately generic: the server sniffs the bytes
    r = post_file(client, data, name, "application/octet-stream")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"model", "version", "probabilities", "top_k", "uncertainty", "abstain", "abstain_reasons",
                         "out_of_distribution", "referral", "synthetic_training_data", "latency_ms"}
    assert body["model"] == "onnx"
    # the hand-built fixture model's manifest names no training data and no operating point
    assert body["synthetic_training_data"] is False and body["referral"] is None
    probs = np.array([body["probabilities"][c] for c in CLASS_NAMES])
    assert probs.sum() == pytest.approx(1.0, abs=1e-6)
    expected = reference_probabilities(models_dir / "onnx", data)
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)
    top = body["top_k"]
    assert len(top) == 3 and top[0]["label"] == CLASS_NAMES[int(expected.argmax())]
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
    p = expected
    h = -(p[p > 0] * np.log(p[p > 0])).sum() / np.log(len(p))
    assert body["uncertainty"] == pytest.approx(h, abs=1e-5)
    assert 0.0 <= body["uncertainty"] <= 1.0
    assert body["abstain"] == bool(p.max() < 0.6)
    assert body["latency_ms"] > 0


def test_exif_orientation_is_honoured(client: httpx.Client) -> None:
    data, stored = exif_rotated_jpeg(6)  # 6 = the camera was turned: rotate 90° clockwise to view
    upright = Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270)
    as_stored = post_file(client, encode(Image.fromarray(stored), "PNG"), "s.png").json()["probabilities"]
    rotated = post_file(client, encode(upright, "PNG"), "u.png").json()["probabilities"]
    exif = post_file(client, data, "e.jpg").json()["probabilities"]
    vec = lambda d: np.array([d[c] for c in CLASS_NAMES])  # noqa: E731
    np.testing.assert_allclose(vec(exif), vec(rotated), atol=1e-9)
    assert not np.allclose(vec(exif), vec(as_stored), atol=1e-4), "orientation made no difference to the model"


def test_top_k_and_temperature(client: httpx.Client, models_dir: Path) -> None:
    r = post_file(client, JPEG, top_k=2)
    assert [t["label"] for t in r.json()["top_k"]] == [t["label"] for t in post_file(client, JPEG).json()["top_k"][:2]]
    assert len(post_file(client, JPEG, top_k=50).json()["top_k"]) == len(CLASS_NAMES)  # clamped
    assert_error(post_file(client, JPEG, top_k=0), 422, "invalid_request")
    assert_error(post_file(client, JPEG, top_k="abc"), 422, "invalid_request")
    # the calibration temperature really is applied: T=1 would give sharper probabilities
    import onnxruntime as ort

    from lesionlite.preprocessing import PreprocessConfig, load_image_bytes, preprocess

    sess = ort.InferenceSession(str(models_dir / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": preprocess(load_image_bytes(JPEG), PreprocessConfig(input_size=INPUT_SIZE))[None]})[0][0]
    raw = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    served = max(r.json()["probabilities"].values())
    assert served < raw.max() - 1e-6 or raw.max() > 1 - 1e-9


def test_batch(client: httpx.Client, models_dir: Path) -> None:
    files = [("files", ("a.jpg", JPEG, "image/jpeg")),
             ("files", ("evil.jpg", b"%PDF-1.7 not an image", "image/jpeg")),
             ("files", ("c.png", VARIANTS["l_png"][0], "image/png")),
             ("files", ("t.jpg", JPEG[: len(JPEG) // 3], "image/jpeg"))]
    r = client.post("/predict/batch", files=files, params={"top_k": 2})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["index"] for x in res] == [0, 1, 2, 3]
    assert [x["filename"] for x in res] == ["a.jpg", "evil.jpg", "c.png", "t.jpg"]
    np.testing.assert_allclose([res[0]["probabilities"][c] for c in CLASS_NAMES],
                               reference_probabilities(models_dir / "onnx", JPEG), rtol=1e-4, atol=1e-6)
    assert len(res[0]["top_k"]) == 2
    assert res[1]["status"] == 415 and res[1]["error"] == "unsupported_media_type" and "probabilities" not in res[1]
    assert res[2]["probabilities"] and "error" not in res[2]
    assert res[3]["status"] == 400 and res[3]["error"] == "corrupt_image"
    assert_error(client.post("/predict/batch", files=[("files", ("a.jpg", JPEG, "image/jpeg"))] * 17), 400, "too_many_files")
    assert_error(client.post("/predict/batch", data={"x": "1"}, files=[("other", ("a", b"1", "text/plain"))]), 422,
                 "missing_field")


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "data,name,ctype,status,error",
    [
        (b"", "e.jpg", "image/jpeg", 400, "empty_file"),
        (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "c.jpg", "image/jpeg", 400, "corrupt_image"),
        (JPEG[: len(JPEG) // 2], "t.jpg", "image/jpeg", 400, "corrupt_image"),
        (VARIANTS["rgb_tiff"][0][:200], "t.tiff", "image/tiff", 400, "corrupt_image"),
        (VARIANTS["l_png"][0][:-30], "t.png", "image/png", 400, "corrupt_image"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj", "scan.jpg", "image/jpeg", 415, "unsupported_media_type"),
        (b"hello, I am text pretending to be a JPEG", "note.jpg", "image/jpeg", 415, "unsupported_media_type"),
        (encode(Image.new("RGB", (8, 8)), "GIF"), "a.gif", "image/gif", 415, "unsupported_media_type"),
        (png_bomb(60000, 60000), "bomb.png", "image/png", 413, "image_too_large"),  # past Pillow's own guard
        (png_bomb(8000, 8000), "bomb2.png", "image/png", 413, "image_too_large"),  # lesionlite's 40 MP limit
    ],
    ids=["empty", "corrupt", "truncated_jpeg", "truncated_tiff", "truncated_png", "pdf_as_jpg", "text_as_jpg",
         "gif", "bomb_huge", "bomb_40mp"],
)
def test_bad_images(client: httpx.Client, data: bytes, name: str, ctype: str, status: int, error: str) -> None:
    body = assert_error(post_file(client, data, name, ctype), status, error)
    assert "Traceback" not in body["detail"]


@pytest.mark.parametrize("side", [8000, 20000, 60000])
def test_too_many_pixels_names_the_servers_limit(client: httpx.Client, side: int) -> None:
    """Past Pillow's own guard (2 x 89478485 pixels) the 413 still states the server's limit, not Pillow's."""
    body = assert_error(post_file(client, png_bomb(side, side), "big.png", "image/png"), 413, "image_too_large")
    assert f"{side}x{side} = {side * side} pixels exceeds the limit of {Settings().max_pixels}" in body["detail"]
    assert "178956970" not in body["detail"] and "decompression bomb" not in body["detail"].lower()


def test_request_shape_errors(client: httpx.Client) -> None:
    assert_error(client.post("/predict", data={"x": "1"}, files={"image": ("a.jpg", JPEG, "image/jpeg")}), 422,
                 "missing_field")
    assert_error(client.post("/predict", json={"file": "aGVsbG8="}), 415, "unsupported_request_type")
    assert_error(client.post("/predict", content=b"raw", headers={"content-type": "image/jpeg"}), 415)
    assert_error(client.post("/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}), 400)
    assert_error(client.post("/predict", files=[("file", ("a.jpg", JPEG, "image/jpeg"))] * 2), 400, "too_many_files")
    assert_error(post_file(client, JPEG, model="nope"), 404, "model_not_found")
    assert_error(client.get("/predict"), 405, "method_not_allowed")
    assert_error(client.get("/no/such/route"), 404, "not_found")
    assert_error(client.delete("/v2/models/onnx"), 405)


def test_too_large_upload(client: httpx.Client, server) -> None:
    big = b"\xff\xd8\xff" + os.urandom(1024 * 1024 + 200_000)  # over 1 MiB + multipart allowance
    # 1) refused from Content-Length
    assert_error(post_file(client, big), 413, "request_too_large")
    # 2) refused while reading: chunked body without Content-Length
    boundary = "lesionliteboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()

    def chunks():
        for i in range(0, len(body), 64 * 1024):
            yield body[i:i + 64 * 1024]

    r = client.post("/predict", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "request_too_large")
    # 3) one oversized file in a batch (body within the batch limit) → the per-file cap
    r = client.post("/predict/batch", files=[("files", ("a.jpg", big, "image/jpeg"))])
    assert_error(r, 413, "file_too_large")
    # the server is fine afterwards
    assert post_file(client, JPEG).status_code == 200


def test_metrics(client: httpx.Client) -> None:
    post_file(client, JPEG)
    post_file(client, b"")
    text = client.get("/metrics").text
    assert 'lesionlite_requests_total{endpoint="/predict",method="POST",status="200"}' in text
    assert 'lesionlite_requests_total{endpoint="/predict",method="POST",status="400"}' in text
    assert "lesionlite_request_latency_seconds_bucket" in text
    assert "lesionlite_requests_in_flight" in text
    assert 'lesionlite_batch_size_count{model="onnx"}' in text
    assert 'lesionlite_queue_depth{model="onnx"}' in text
    client.get("/definitely/not/here")
    assert "/definitely/not/here" not in client.get("/metrics").text  # no label per unknown URL


def test_metrics_label_the_schema_and_the_offline_docs_files_by_route(client: httpx.Client) -> None:
    """/openapi.json and the docs' own JS/CSS (plain Starlette routes, not FastAPI's) get their route, not
    ``unmatched``; a static mount is one label, never one per file."""
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/static-offline-docs/swagger-ui.css").status_code == 200
    assert client.get("/static-offline-docs/no-such-file.js").status_code == 404
    text = client.get("/metrics").text
    assert 'lesionlite_requests_total{endpoint="/openapi.json",method="GET",status="200"}' in text
    assert 'lesionlite_requests_total{endpoint="/static-offline-docs/{path}",method="GET",status="200"}' in text
    assert 'lesionlite_requests_total{endpoint="/static-offline-docs/{path}",method="GET",status="404"}' in text
    assert "swagger-ui.css" not in text and "no-such-file" not in text


def test_web_page_is_self_contained(client: httpx.Client) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "Research prototype — not a diagnosis" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for path in ("/", "/static/app.js", "/static/style.css"):
        text = client.get(path).text
        assert client.get(path).status_code == 200
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path


# ------------------------------------------------------------------------------ auth


def test_api_key(models_dir: Path) -> None:
    app = create_app(models_dir, Settings(api_key="s3cret-key"))
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        body = assert_error(post_file(c, JPEG), 401, "unauthorized")
        assert "missing" in body["detail"]
        r = c.post("/predict", files={"file": ("a.jpg", JPEG, "image/jpeg")}, headers={"X-API-Key": "wrong"})
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(c.post("/predict", files={"file": ("a.jpg", JPEG)}, headers={"Authorization": "Bearer nope"}), 401)
        assert_error(c.get("/v2/models"), 401)
        assert c.post("/predict", files={"file": ("a.jpg", JPEG)}, headers={"X-API-Key": "s3cret-key"}).status_code == 200
        assert c.post("/predict", files={"file": ("a.jpg", JPEG)},
                      headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert c.get("/v2/models", headers={"X-API-Key": "s3cret-key"}).status_code == 200
        # probes, metrics and the page stay open
        for path in ("/v2/health/live", "/v2/health/ready", "/metrics", "/"):
            assert c.get(path).status_code == 200, path
        # an unauthenticated client cannot make the server buffer a big upload
        assert_error(post_file(c, b"\xff\xd8\xff" + bytes(900_000)), 401)


# ------------------------------------------------------------------------------ overload


def test_overload_gives_503_with_retry_after_then_recovers(models_dir: Path) -> None:
    app = create_app(models_dir, Settings(max_batch=2, max_wait_ms=1, queue_size=3, preprocess_threads=2))
    with ServerThread(app) as s:
        batcher = app.state.server.batchers["onnx"]
        real = batcher.predict_fn

        def slow(batch):
            time.sleep(0.05)
            return real(batch)

        batcher.predict_fn = slow

        async def burst(n: int) -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            async with httpx.AsyncClient(base_url=s.url, timeout=60, limits=limits) as ac:
                return await asyncio.gather(*[ac.post("/predict", files={"file": ("a.jpg", JPEG, "image/jpeg")})
                                              for _ in range(n)])

        rs = asyncio.run(burst(40))
        codes = [r.status_code for r in rs]
        assert set(codes) <= {200, 503}, codes
        assert codes.count(503) > 0 and codes.count(200) > 0, codes
        for r in rs:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1"
                assert r.json()["error"] == "overloaded"
        assert 'lesionlite_overload_rejections_total{model="onnx"}' in httpx.get(s.url + "/metrics").text
        # recovered: the queue drained and new requests succeed
        batcher.predict_fn = real
        with httpx.Client(base_url=s.url, timeout=30) as c:
            assert c.get("/v2/health/ready").status_code == 200
            assert all(post_file(c, JPEG).status_code == 200 for _ in range(5))
        assert app.state.server.pending == 0 and batcher.depth == 0


# ------------------------------------------------------------------------------ TFLite


@pytest.mark.slow
def test_tflite_models(tfl_dir: Path, models_dir: Path) -> None:
    """TFLite artifacts as export writes them (and one NCHW file from elsewhere) agree with their ONNX models."""
    root = tfl_dir
    app = create_app(root, Settings(max_batch=4))
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        models = {m["name"]: m for m in c.get("/v2/models").json()["models"]}
        onnx_name = next(n for n, m in models.items() if m["kind"] == "onnx" and m["precision"] == "fp32")
        tfl = [n for n, m in models.items() if m["kind"] == "tflite"]
        assert sorted(tfl) == ["tflite_nchw", "tiny_cnn_tflite_fp32", "tiny_cnn_tflite_int8"], models
        assert models["tflite_nchw"]["layout"] == "NCHW" and models["tiny_cnn_tflite_fp32"]["layout"] == "NHWC"
        # int8 I/O is uint8 pixels in and uint8 probabilities out: what MediaPipe's ImageClassifier accepts
        assert models["tiny_cnn_tflite_int8"]["runtime_tensors"]["input"]["datatype"] == "UINT8"
        for name in ("tiny_cnn_onnx_fp32", "tiny_cnn_tflite_fp32"):  # exported from a synthetic-data checkpoint
            assert models[name]["synthetic_training_data"] is True and models[name]["operating_point"]["chosen_on"] == "val"
        body = post_file(c, JPEG, "x.jpg", model="tiny_cnn_onnx_fp32").json()
        ref = body["referral"]  # the operating point export chose on validation, applied to this image
        assert body["synthetic_training_data"] is True and ref["positive_classes"] == ["mel"]
        probs = body["probabilities"]
        assert ref["given_classes"] == ["mel", "nv"]  # the default target: P(mel | mel or nv)
        assert ref["score"] == pytest.approx(probs["mel"] / (probs["mel"] + probs["nv"]), rel=1e-5)
        assert ref["refer"] == (ref["score"] >= ref["threshold"])
        assert ref["threshold"] == models["tiny_cnn_onnx_fp32"]["operating_point"]["threshold"]
        infer = c.post("/v2/models/tiny_cnn_onnx_fp32/infer", json={"inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(JPEG).decode()]}]}).json()
        outs = {o["name"]: o for o in infer["outputs"]}
        assert outs["referral_score"]["data"][0] == pytest.approx(ref["score"], abs=1e-6)
        assert outs["refer"]["datatype"] == "BOOL" and outs["refer"]["data"][0] == ref["refer"]
        images = [encode(Image.fromarray(pattern(60, 44, seed=i)), "PNG") for i in range(3)] + [JPEG]
        from tiny_checkpoint import synthetic_bundle  # int8 is calibrated on these: compare in distribution

        in_dist = [encode(img, "PNG") for img, _ in synthetic_bundle().test[:7]]
        for name in tfl:
            meta = models[name]
            manifest_layout = app.state.server.models[name].manifest.input.get("layout")
            assert meta["platform"] == "tflite" and meta["layout"] == (manifest_layout or meta["layout"])
            shape = meta["inputs"][0]["shape"]
            assert shape[1:] == ([3, INPUT_SIZE, INPUT_SIZE] if meta["layout"] == "NCHW" else [INPUT_SIZE, INPUT_SIZE, 3])
            quantized = meta["runtime_tensors"]["input"]["datatype"] in ("INT8", "UINT8")
            for data in (in_dist if quantized else images):
                r = post_file(c, data, "x.png", model=name)
                assert r.status_code == 200, r.text
                probs = np.array([r.json()["probabilities"][k] for k in meta["class_names"]])
                # the hand-built NCHW file has the weights of the hand-built ONNX model (models_dir)
                reference = models_dir / "onnx" if name == "tflite_nchw" else root / onnx_name
                expected = reference_probabilities(reference, data)
                assert probs.sum() == pytest.approx(1.0, abs=1e-6)
                if quantized:  # int8 in/out (de)quantised by serve: close to fp32, same top class
                    assert np.abs(probs - expected).max() < 0.05, (name, probs, expected)
                    assert probs.argmax() == expected.argmax()
                else:
                    np.testing.assert_allclose(probs, expected, atol=1e-4)
        # a fixed-batch-1 model still serves concurrent requests and batches (items run one by one)
        assert all(models[n]["max_batch"] == 1 for n in tfl)

        async def many() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as ac:
                return await asyncio.gather(*[ac.post("/predict", params={"model": tfl[i % len(tfl)]},
                                                      files={"file": ("a.jpg", JPEG)}) for i in range(12)])
        assert all(r.status_code == 200 for r in asyncio.run(many()))
        r = c.post("/predict/batch", params={"model": tfl[-1]},
                   files=[("files", ("a.jpg", JPEG)), ("files", ("b.png", VARIANTS["rgba_png"][0]))])
        assert r.status_code == 200 and all("probabilities" in x for x in r.json()["results"])


@pytest.mark.slow
def test_serve_runs_without_torch(tfl_dir: Path) -> None:
    script = r"""
import sys
for m in ("torch", "torchvision", "distill", "export", "litert_torch", "timm"):
    sys.modules[m] = None  # any import of these now raises ImportError
from serve.app import create_app
import serve.cli, serve.runtimes.onnx, serve.runtimes.tflite
from starlette.testclient import TestClient
import io
from PIL import Image
buf = io.BytesIO(); Image.new("RGB", (40, 30), (200, 120, 90)).save(buf, "JPEG")
app = create_app(sys.argv[1])
with TestClient(app) as c:
    names = [m["name"] for m in c.get("/v2/models").json()["models"]]
    assert any("tflite" in n for n in names), names
    for model in names:
        r = c.post("/predict", params={"model": model}, files={"file": ("a.jpg", buf.getvalue(), "image/jpeg")})
        assert r.status_code == 200, r.text
loaded = [m for m in ("torch", "distill", "export") if sys.modules.get(m) is not None]
assert not loaded, loaded
print("TORCH-FREE OK")
"""
    out = subprocess.run([sys.executable, "-c", script, str(tfl_dir)], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0 and "TORCH-FREE OK" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]


# ------------------------------------------------------------------------------ CLI


def test_cli_errors_are_one_line() -> None:
    out = subprocess.run([sys.executable, "-m", "serve", "/nonexistent/models"], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "lesionlite serve: error: model directory /nonexistent/models does not exist or is not a directory"]
    out = subprocess.run([sys.executable, "-m", "lesionlite.cli", "serve", ".", "--max-batch", "0"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 2 and "--max-batch must be at least 1" in out.stderr and "Traceback" not in out.stderr


def test_cli_starts_uvicorn(models_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serve", str(models_dir), "--port", str(port), "--log-level",
                             "warning", "--max-batch", "4"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(proc, url)
        r = httpx.post(url + "/predict", files={"file": ("a.jpg", JPEG, "image/jpeg")}, timeout=30)
        assert r.status_code == 200 and r.json()["model"] == "onnx"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -signal.SIGINT), proc.returncode


# ------------------------------------------------------------------------------ the benchmark's load generator


def test_benchmark_load_generator_reads_real_answers(server) -> None:
    """benchmarks/loadgen.py (serve_load's lean client) against the real server: 200s with
    probabilities are counted as such, a non-image is a 415 (not a success), keep-alive holds."""
    from benchmarks.loadgen import drive_fast, multipart_request

    ok = multipart_request(server.url, "/predict", "file", "a.jpg", JPEG)
    res = asyncio.run(drive_fast(server.url, ok, concurrency=3, n_requests=12, duration=60))
    assert res["statuses"] == {"200": 12} and res["ok"] == 12 and res["unexpected_count"] == 0
    assert res["p50_ms"] > 0 and res["throughput_rps"] > 0
    pdf = multipart_request(server.url, "/predict", "file", "a.jpg", b"%PDF-1.7 not an image", "application/pdf")
    res = asyncio.run(drive_fast(server.url, pdf, concurrency=2, n_requests=4, duration=60))
    assert res["statuses"] == {"415": 4} and res["ok"] == 0 and res["errors"] == 4
    # a 200 without the expected body is not counted as a success
    res = asyncio.run(drive_fast(server.url, ok, concurrency=1, n_requests=2, duration=60, expect_in_body=b"nope"))
    assert res["ok"] == 0 and res["unexpected_count"] == 2
