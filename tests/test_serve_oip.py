"""serve speaks the Open Inference Protocol: /v2/models/{name}/infer with real clients on a real uvicorn.

Clients: ``tritonclient.http`` (its default binary tensor data extension and plain JSON) and httpx with
hand-built bodies (to check the framing byte by byte and every malformed request). The server is
test_serve's own fixture (one ONNX tiny_cnn behind a uvicorn on a loopback port).

KServe's Python package is not tested: kserve 0.21.0 requires psutil<6 and protobuf<7, and this
project pins psutil 7.2.2 (bench extra), so it does not install beside lesionlite[dev].
"""
from __future__ import annotations

import asyncio
import base64
import gzip
import json
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from test_serve import JPEG, VARIANTS
from test_serve_support import CLASS_NAMES, TEMPERATURE, ServerThread

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException

from lesionlite.manifest import read_manifest
from lesionlite.preprocessing import load_image_bytes, preprocess

INFER = "/v2/models/onnx/infer"
HL = "Inference-Header-Content-Length"
IMAGES = [VARIANTS[k][0] for k in ("rgb_jpeg", "l_png", "rgba_png", "i16_tiff", "webp", "cmyk_jpeg")]


@pytest.fixture(scope="module")
def triton(server) -> Any:
    c = httpclient.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
    yield c
    c.close()


# ---------------------------------------------------------------------------------- references


def client_preprocess(models_dir: Path, images: list[bytes]) -> np.ndarray:
    """What a Triton client does: lesionlite.preprocessing with the manifest's settings (no torch)."""
    m = read_manifest(models_dir / "onnx")
    return np.stack([preprocess(load_image_bytes(b), m.preprocessing, "NCHW") for b in images])


def reference_logits(models_dir: Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime on the model file, one image at a time: nothing of serve's code involved."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(models_dir / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


def softmax_t(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) / TEMPERATURE
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def tensor_input(x: np.ndarray, binary: bool, name: str = "input") -> Any:
    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


def image_input(images: list[bytes], binary: bool = True) -> Any:
    inp = httpclient.InferInput("image", [len(images)], "BYTES")
    inp.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=binary)
    return inp


def oip_error(r: httpx.Response, status: int, code: str, *needles: str) -> str:
    """The protocol's error body: {"error": message, "code": code}; the message names the problem."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "code"}, body
    assert body["code"] == code, body
    for needle in needles:
        assert needle in body["error"], (needle, body)
    assert "Traceback" not in body["error"]
    return body["error"]


def framed(header: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body: the JSON header, then the raw tensor bytes."""
    h = json.dumps(header).encode()
    return h + blob, {HL: str(len(h))}


# ---------------------------------------------------------------------------------- tritonclient


def test_tritonclient_health_and_metadata(triton) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "lesionlite" and {"binary_tensor_data", "classification"} <= set(meta["extensions"])
    model = triton.get_model_metadata("onnx")
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]},
                               {"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in model["outputs"]] == ["logits", "probabilities"]
    version = model["versions"][0]
    assert triton.get_model_metadata("onnx", model_version=version)["name"] == "onnx"
    assert triton.is_model_ready("onnx") and triton.is_model_ready("onnx", model_version=version)
    assert not triton.is_model_ready("onnx", model_version="no-such-version")
    assert not triton.is_model_ready("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_tensor_input(triton, models_dir: Path, binary: bool) -> None:
    """A client-preprocessed FP32 batch, sent and answered as binary data or as JSON numbers."""
    x = client_preprocess(models_dir, IMAGES[:3])
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "probabilities")]
    res = triton.infer("onnx", [tensor_input(x, binary)], outputs=outputs, request_id="req-7")
    doc = res.get_response()
    assert doc["id"] == "req-7" and doc["model_name"] == "onnx"
    for out in doc["outputs"]:  # the framing the client asked for
        assert ("binary_data_size" in out.get("parameters", {})) is binary and ("data" in out) is not binary
    ref = reference_logits(models_dir, x)
    np.testing.assert_allclose(res.as_numpy("logits"), ref, rtol=1e-5, atol=1e-5)
    probs = res.as_numpy("probabilities")
    assert probs.shape == (3, len(CLASS_NAMES)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, softmax_t(ref), rtol=1e-4, atol=1e-7)


def test_tritonclient_default_request_returns_every_output_as_binary(triton, models_dir: Path) -> None:
    x = client_preprocess(models_dir, IMAGES[:2])
    res = triton.infer("onnx", [tensor_input(x, True)])  # no outputs named → binary_data_output
    doc = res.get_response()
    assert [o["name"] for o in doc["outputs"]] == ["logits", "probabilities"]
    assert all(o["parameters"]["binary_data_size"] == 2 * len(CLASS_NAMES) * 4 for o in doc["outputs"])
    assert "id" not in doc
    np.testing.assert_allclose(res.as_numpy("probabilities").sum(axis=1), 1.0, rtol=1e-5)


def test_predict_and_infer_agree(client: httpx.Client, triton, models_dir: Path) -> None:
    """Parity: /predict, /infer with encoded images (binary and base64 JSON) and /infer with the
    client-preprocessed tensor all give the same calibrated probabilities for the same images."""
    predicted = np.array([[client.post("/predict", files={"file": ("x", img)}).json()["probabilities"][c]
                           for c in CLASS_NAMES] for img in IMAGES])
    by_bytes = triton.infer("onnx", [image_input(IMAGES)]).as_numpy("probabilities")
    by_tensor = triton.infer("onnx", [tensor_input(client_preprocess(models_dir, IMAGES), True)]).as_numpy("probabilities")
    r = client.post(INFER, json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(IMAGES), 1],
                                             "data": [[base64.b64encode(b).decode()] for b in IMAGES]}],
                                 "outputs": [{"name": "probabilities"}]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    (out,) = r.json()["outputs"]
    by_json = np.array(out["data"]).reshape(out["shape"])
    for got in (by_bytes, by_tensor, by_json):
        np.testing.assert_allclose(got, predicted, rtol=1e-5, atol=1e-7)
    assert len({tuple(row.argmax() for row in a) for a in (predicted, by_bytes)}) == 1
    assert len(set(predicted.argmax(axis=1))) > 1, "the images should not all look alike to the model"


def test_requested_outputs_and_classification(triton, models_dir: Path) -> None:
    x = client_preprocess(models_dir, IMAGES[:2])
    res = triton.infer("onnx", [tensor_input(x, True)], outputs=[httpclient.InferRequestedOutput("probabilities")])
    assert [o["name"] for o in res.get_response()["outputs"]] == ["probabilities"]
    assert res.as_numpy("logits") is None
    probs = res.as_numpy("probabilities")
    top = triton.infer("onnx", [tensor_input(x, True)],
                       outputs=[httpclient.InferRequestedOutput("probabilities", class_count=3)]).as_numpy("probabilities")
    assert top.shape == (2, 3)
    for row, p in zip(top, probs):
        parsed = [e.decode().split(":") for e in row]
        assert [int(i) for _, i, _ in parsed] == list(np.argsort(-p, kind="stable")[:3])
        assert [label for _, _, label in parsed] == [CLASS_NAMES[int(i)] for _, i, _ in parsed]
        np.testing.assert_allclose([float(v) for v, _, _ in parsed], np.sort(p)[::-1][:3], atol=1e-6)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(triton, models_dir: Path, algorithm: str) -> None:
    x = client_preprocess(models_dir, IMAGES[:2])
    plain = triton.infer("onnx", [tensor_input(x, True)]).as_numpy("logits")
    packed = triton.infer("onnx", [tensor_input(x, True)], request_compression_algorithm=algorithm).as_numpy("logits")
    np.testing.assert_array_equal(plain, packed)


def test_tritonclient_sees_the_servers_message(triton, models_dir: Path) -> None:
    x = np.zeros((1, 3, 31, 32), np.float32)
    with pytest.raises(InferenceServerException) as err:
        triton.infer("onnx", [tensor_input(x, True)])
    assert err.value.status() == "400"
    assert "shape [1, 3, 31, 32]" in err.value.message() and "[N, 3, 32, 32]" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        triton.infer("nope", [tensor_input(x, True)])
    assert err.value.status() == "404" and "unknown model 'nope'" in err.value.message()


# ---------------------------------------------------------------------------------- framing by hand


def test_binary_framing_by_hand(client: httpx.Client, models_dir: Path) -> None:
    """Request: JSON header + raw FP32 bytes; response: one output binary, one JSON, as requested."""
    x = client_preprocess(models_dir, IMAGES[:2])
    body, headers = framed({"id": "b1", "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                                    "parameters": {"binary_data_size": x.nbytes}}],
                            "outputs": [{"name": "logits", "parameters": {"binary_data": True}},
                                        {"name": "probabilities", "parameters": {"binary_data": False}}]},
                           x.astype("<f4").tobytes())
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers[HL])
    doc = json.loads(r.content[:n])
    assert doc["id"] == "b1"
    logits_meta, probs_meta = doc["outputs"]
    size = logits_meta["parameters"]["binary_data_size"]
    assert size == 2 * len(CLASS_NAMES) * 4 and len(r.content) == n + size  # nothing else after the header
    logits = np.frombuffer(r.content[n:], "<f4").reshape(logits_meta["shape"])
    ref = reference_logits(models_dir, x)
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
    assert "parameters" not in probs_meta
    np.testing.assert_allclose(np.array(probs_meta["data"]).reshape(2, -1), softmax_t(ref), rtol=1e-4, atol=1e-7)

    # BYTES by hand: a 4-byte little-endian length before each image
    blob = b"".join(struct.pack("<I", len(b)) + b for b in IMAGES[:2])
    body, headers = framed({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                        "parameters": {"binary_data_size": len(blob)}}],
                            "parameters": {"binary_data_output": True}}, blob)
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    n = int(r.headers[HL])
    outs = json.loads(r.content[:n])["outputs"]
    assert [o["name"] for o in outs] == ["logits", "probabilities"]
    got = np.frombuffer(r.content[n:n + outs[0]["parameters"]["binary_data_size"]], "<f4").reshape(2, -1)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)

    # plain JSON in, plain JSON out: no binary header at all
    r = client.post(INFER, json={"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                             "data": x.ravel().tolist()}]})
    assert r.status_code == 200 and HL.lower() not in r.headers and r.headers["content-type"] == "application/json"
    np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"]).reshape(2, -1), ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- errors


def _tensor_json(shape: list[int], data: Any = None, datatype: str = "FP32", name: str = "input") -> dict:
    n = int(np.prod(shape))
    return {"name": name, "datatype": datatype, "shape": shape, "data": [0.0] * n if data is None else data}


def _bin(shape: list[int], nbytes: int | None = None, extra: bytes = b"", dtype: str = "<f4",
         datatype: str = "FP32", header: str | None = None) -> tuple[bytes, dict[str, str]]:
    blob = np.zeros(shape, dtype).tobytes()
    declared = len(blob) if nbytes is None else nbytes
    body, headers = framed({"inputs": [{"name": "input", "datatype": datatype, "shape": shape,
                                        "parameters": {"binary_data_size": declared}}]}, blob + extra)
    if header is not None:
        headers[HL] = header
    return body, headers


def _images_json(*items: bytes | str) -> dict:
    data = [i if isinstance(i, str) else base64.b64encode(i).decode() for i in items]
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(data)], "data": data}]}


def _images_bin(*items: bytes) -> tuple[bytes, dict[str, str]]:
    blob = b"".join(struct.pack("<I", len(b)) + b for b in items)
    return framed({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(items)],
                               "parameters": {"binary_data_size": len(blob)}}]}, blob)


ONE = [1, 3, 32, 32]
ERROR_CASES: dict[str, tuple[Any, int, str, tuple[str, ...]]] = {
    # name: (json body | (raw body, headers), status, code, words the message must contain)
    "wrong_shape": ({"inputs": [_tensor_json([1, 3, 31, 32])]}, 400, "bad_shape", ("[1, 3, 31, 32]", "[N, 3, 32, 32]")),
    "wrong_rank": ({"inputs": [_tensor_json([3, 32, 32])]}, 400, "bad_shape", ("[3, 32, 32]",)),
    "nhwc_to_nchw_model": ({"inputs": [_tensor_json([1, 32, 32, 3])]}, 400, "bad_shape", ("NCHW",)),
    "wrong_datatype": (_bin(ONE, dtype="<f8", datatype="FP64"), 400, "bad_datatype", ("FP64", "FP32")),
    "unknown_datatype": ({"inputs": [_tensor_json(ONE, datatype="FLOAT")]}, 400, "bad_datatype", ("'FLOAT'",)),
    "binary_too_short": (_bin(ONE, nbytes=ONE[1] * 32 * 32 * 4 + 8), 400, "binary_size_mismatch",
                         ("declares 12296 bytes", "12288")),
    "binary_trailing_bytes": (_bin(ONE, extra=b"\0" * 5), 400, "binary_size_mismatch", ("12293", "12288")),
    "binary_size_vs_shape": (_bin(ONE, nbytes=100, extra=b""), 400, "binary_size_mismatch", ("12288",)),
    "binary_size_without_header": ((json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": ONE, "parameters": {
        "binary_data_size": 12288}}]}).encode(), {}), 400, "binary_size_mismatch", ("Inference-Header-Content-Length",)),
    "binary_data_without_header": ((_bin(ONE)[0], {}), 400, "bad_request", ("not valid JSON", HL)),
    "bad_header_value": (_bin(ONE, header="12x"), 400, "bad_binary_header", ("'12x'",)),
    "header_past_body": (_bin(ONE, header="99999999"), 400, "bad_binary_header", ("99999999",)),
    "corrupt_image": (_images_bin(JPEG, b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4), 400, "corrupt_image",
                      ("element 1", "JPEG")),
    "truncated_image": (_images_json(JPEG[: len(JPEG) // 2]), 400, "corrupt_image", ("element 0", "truncated")),
    "not_an_image": (_images_bin(b"%PDF-1.7 not an image"), 400, "unsupported_image", ("PDF",)),
    "empty_image": (_images_bin(b""), 400, "empty_file", ("empty",)),
    "bad_base64": (_images_json("not base64!!"), 400, "bad_data", ("base64",)),
    "bytes_count_vs_shape": ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                          "data": [base64.b64encode(JPEG).decode()]}]}, 400, "bad_shape", ("1 elements",)),
    "truncated_bytes_length": (framed({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                                   "parameters": {"binary_data_size": 6}}]},
                                      struct.pack("<I", 10) + b"ab"), 400, "binary_size_mismatch", ("says 10 bytes",)),
    "image_as_fp32": ({"inputs": [_tensor_json([1], name="image")]}, 400, "bad_datatype", ("BYTES",)),
    "unknown_input": ({"inputs": [_tensor_json(ONE, name="pixels")]}, 400, "unknown_input", ("'pixels'", "'input'", "'image'")),
    "two_inputs": ({"inputs": [_tensor_json(ONE), _images_json(JPEG)["inputs"][0]]}, 400, "bad_request", ("one input",)),
    "unknown_output": ({"inputs": [_tensor_json(ONE)], "outputs": [{"name": "scores"}]}, 400, "unknown_output",
                       ("'scores'", "'probabilities'")),
    "not_json": ((b"{inputs: nope", {}), 400, "bad_request", ("not valid JSON",)),
    "not_an_object": ([1, 2], 400, "bad_request", ("JSON object",)),
    "no_inputs": ({"inputs": []}, 400, "bad_request", ("'inputs'",)),
    "strings_as_fp32": ({"inputs": [_tensor_json([1, 3], data=["0.5", "1", "2"], name="input")]}, 400, "bad_data",
                        ("strings",)),
    "ragged_data": ({"inputs": [_tensor_json([2, 2], data=[[1.0, 2.0], [3.0]])]}, 400, "bad_data", ("regular array",)),
    "count_vs_shape": ({"inputs": [_tensor_json(ONE, data=[0.0] * 100)]}, 400, "bad_shape", ("100 values",)),
    "nan_input": ((b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [NaN'
                   + b", 0" * (3 * 32 * 32 - 1) + b"]}]}", {}), 400, "bad_data", ("NaN",)),
    "overflow_fp32": ({"inputs": [_tensor_json([1, 1], data=[1e300])]}, 400, "bad_data", ("out of range",)),
    "empty_batch": ({"inputs": [_tensor_json([0, 3, 32, 32], data=[])]}, 400, "bad_shape", ("empty",)),
    "too_many_images": (_images_json(*([JPEG] * 17)), 400, "too_many_files", ("17 images", "at most 16")),
    "shared_memory": ({"inputs": [{**_tensor_json(ONE), "parameters": {"shared_memory_region": "r"}}]}, 400,
                      "unsupported_extension", ("shared-memory",)),
    "bad_id": ({"id": 7, "inputs": [_tensor_json(ONE)]}, 400, "bad_request", ("'id'",)),
    "image_over_upload_limit": (_images_bin(b"\xff\xd8\xff" + bytes(1024 * 1024)), 413, "file_too_large",
                                ("element 0",)),
    "json_part_too_large": ((b'{"inputs": [], "pad": "' + b"x" * (4 * 1024 * 1024 + 70 * 1024) + b'"}', {}), 413,
                            "request_too_large", ("binary tensor data extension",)),
    "unsupported_encoding": ((b"{}", {"Content-Encoding": "br"}), 415, "unsupported_content_encoding", ("'br'",)),
    "corrupt_gzip": ((gzip.compress(b'{"inputs": []}')[:-6], {"Content-Encoding": "gzip"}), 400, "bad_request",
                     ("gzip",)),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_requests_get_a_clear_4xx(client: httpx.Client, case: str) -> None:
    payload, status, code, needles = ERROR_CASES[case]
    if isinstance(payload, tuple):
        r = client.post(INFER, content=payload[0], headers=payload[1])
    else:
        r = client.post(INFER, json=payload)
    oip_error(r, status, code, *needles)


def test_route_and_model_errors(client: httpx.Client) -> None:
    body = {"inputs": [_tensor_json(ONE)]}
    oip_error(client.post("/v2/models/nope/infer", json=body), 404, "model_not_found", "'nope'")
    oip_error(client.post(INFER.replace("/infer", "/versions/v0/infer"), json=body), 404, "model_not_found", "'v0'")
    version = client.get("/v2/models/onnx").json()["versions"][0]
    assert client.post(f"/v2/models/onnx/versions/{version}/infer", json=body).status_code == 200
    oip_error(client.get(INFER), 405, "method_not_allowed")
    # the server is fine afterwards, and the route template is what /metrics counts
    assert client.post(INFER, json=body).status_code == 200
    assert 'endpoint="/v2/models/{name}/infer",method="POST",status="200"' in client.get("/metrics").text


# ---------------------------------------------------------------------------------- shared limits


def test_api_key_and_overload_apply_to_infer(models_dir: Path) -> None:
    """The same API key and the same queue as /predict: 401 without the key, 503 + Retry-After when full."""
    from serve.app import create_app
    from serve.settings import Settings

    app = create_app(models_dir, Settings(api_key="k3y", max_batch=1, max_wait_ms=1, queue_size=2,
                                          preprocess_threads=2, max_batch_files=2))
    x = np.zeros((1, 3, 32, 32), np.float32)
    with ServerThread(app) as s:
        c = httpclient.InferenceServerClient(s.url.removeprefix("http://"), network_timeout=60)
        try:
            with pytest.raises(InferenceServerException) as err:
                c.infer("onnx", [tensor_input(x, True)])
            assert err.value.status() == "401" and "API key" in err.value.message()
            ok = c.infer("onnx", [tensor_input(x, True)], headers={"X-API-Key": "k3y"})
            assert ok.as_numpy("logits").shape == (1, len(CLASS_NAMES))
        finally:
            c.close()
        r = httpx.post(s.url + INFER, json={"inputs": [_tensor_json(ONE)]})
        oip_error(r, 401, "unauthorized", "API key")

        batcher = app.state.server.batchers["onnx"]
        real = batcher.predict_fn

        def slow(batch: np.ndarray) -> np.ndarray:
            time.sleep(0.05)
            return real(batch)

        batcher.predict_fn = slow
        body, headers = framed({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, 32, 32],
                                            "parameters": {"binary_data_size": 2 * x.nbytes}}]},
                               np.zeros((2, 3, 32, 32), "<f4").tobytes())
        headers["X-API-Key"] = "k3y"

        async def burst(n: int) -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            async with httpx.AsyncClient(base_url=s.url, timeout=60, limits=limits) as ac:
                return await asyncio.gather(*[ac.post(INFER, content=body, headers=headers) for _ in range(n)])

        rs = asyncio.run(burst(16))
        codes = [r.status_code for r in rs]
        assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) > 0, codes
        for r in rs:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1"
                oip_error(r, 503, "overloaded", "retry later")
        batcher.predict_fn = real
        assert httpx.post(s.url + INFER, content=body, headers=headers, timeout=30).status_code == 200
        assert app.state.server.pending == 0 and batcher.depth == 0


# ---------------------------------------------------------------------------------- scaling out


def test_several_workers_behind_one_port(models_dir: Path) -> None:
    """``lesionlite serve --workers 2``: two processes share the port and both routes answer on it."""
    import os
    import signal
    import subprocess
    import sys

    from test_serve_support import free_port, wait_until_ready

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serve", str(models_dir), "--port", str(port), "--workers", "2",
                             "--log-level", "warning", "--threads", "1"],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, url, timeout=120, poll=0.3)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        if children.exists():
            assert len(children.read_text().split()) >= 2, "expected two uvicorn worker processes"
        c = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60, concurrency=4)
        try:
            pending = [c.async_infer("onnx", [image_input([JPEG])]) for _ in range(8)]
            probs = [p.get_result().as_numpy("probabilities") for p in pending]
        finally:
            c.close()
        predicted = httpx.post(url + "/predict", files={"file": ("a.jpg", JPEG)}, timeout=30).json()["probabilities"]
        for p in probs:
            np.testing.assert_allclose(p[0], [predicted[k] for k in CLASS_NAMES], rtol=1e-5, atol=1e-7)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---------------------------------------------------------------------------------- codec property


def test_codec_refuses_anything_malformed_with_a_4xx() -> None:
    """serve.oip.parse_request on generated requests (right and wrong types, sizes, framings): it
    returns tensors or raises ApiError 4xx, never anything else (which would be a 500)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from serve.errors import ApiError
    from serve.oip import DATATYPES, parse_request

    leaves = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6)
    values = st.recursive(leaves, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                          max_leaves=24)
    tensor = st.fixed_dictionaries(
        {"name": st.sampled_from(["input", "image", "x"]),
         "datatype": st.sampled_from([*DATATYPES, "BYTES", "STRING", 3]),
         "shape": st.lists(st.integers(-1, 5), max_size=4) | values},
        optional={"data": values | st.lists(st.floats(), max_size=40) | st.lists(st.text(max_size=8), max_size=4),
                  "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-1, 96) | values,
                                                                    "shared_memory_region": st.text(max_size=3)})})
    request = st.fixed_dictionaries(
        {"inputs": st.lists(tensor, max_size=3) | values},
        optional={"id": values, "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": values}),
                  "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=5) | values}, optional={
                      "parameters": st.dictionaries(st.sampled_from(["binary_data", "classification"]), values)}),
                      max_size=3) | values})

    @given(doc=request | values, blob=st.binary(max_size=96),
           header=st.none() | st.integers(-2, 400).map(str) | st.text(max_size=4), frame=st.booleans())
    @settings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    def run(doc: Any, blob: bytes, header: str | None, frame: bool) -> None:
        body = json.dumps(doc).encode()
        if frame:
            body, header = body + blob, str(len(body)) if header is None else header
        try:
            parse_request(body, header, 100_000)
        except ApiError as exc:
            assert 400 <= exc.status < 500 and exc.detail
    run()
