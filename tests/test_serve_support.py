"""Shared helpers for the serve tests (no tests here): model fixtures, a threaded uvicorn, images.

Fixture models are tiny_cnn (7 classes, 32 px) exported with torch: ONNX via ``torch.onnx.export``
and TFLite via ``litert_torch`` (NCHW as converted, plus an NHWC-wrapped variant); the TFLite set
serve's tests run on is what ``export.api.export_model`` writes, with no fallback (a broken export
fails them). Artifacts are cached per test session (several test modules share them).
"""
from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lesionlite.manifest import Manifest, read_manifest
from lesionlite.preprocessing import PreprocessConfig

CLASS_NAMES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
INPUT_SIZE = 32
TEMPERATURE = 1.7
_BUILT: dict[str, Path] = {}


def _torch_model(seed: int = 0):
    import torch

    from distill.models.registry import build_model

    torch.manual_seed(seed)
    model = build_model("tiny_cnn", len(CLASS_NAMES), dropout=0.0).eval()
    with torch.no_grad():  # spread the logits so that the classes (and orientations) differ clearly
        model.classifier.weight.mul_(25.0)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.fill_(0.05)
    return model


def _manifest(kind: str, layout: str, fname: str, extra: dict[str, Any] | None = None) -> Manifest:
    s = INPUT_SIZE
    return Manifest(
        kind=kind,
        architecture="tiny_cnn",
        class_names=list(CLASS_NAMES),
        preprocessing=PreprocessConfig(input_size=s),
        input={"layout": layout, "dtype": "float32",
               "shape": [1, 3, s, s] if layout == "NCHW" else [1, s, s, 3], "quantization": None},
        calibration={"temperature": TEMPERATURE},
        files={"model": fname},
        precision="fp32", extra={"fixture": True, **(extra or {})},
    )


def build_onnx(out_dir: Path) -> Path:
    """tiny_cnn → ONNX (dynamic batch) + manifest in ``out_dir``."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    model = _torch_model()
    x = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    torch.onnx.export(model, (x,), str(out_dir / "model.onnx"), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    _manifest("onnx", "NCHW", "model.onnx").write(out_dir)
    return out_dir


def build_tflite(out_dir: Path, layout: str = "NCHW") -> Path:
    """tiny_cnn → TFLite via litert_torch (batch fixed at 1). NHWC wraps the model in a permute."""
    import litert_torch
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    model = _torch_model()
    if layout == "NHWC":
        class _NHWC(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.inner(x.permute(0, 3, 1, 2))

        model = _NHWC(model).eval()
        sample = torch.zeros(1, INPUT_SIZE, INPUT_SIZE, 3)
    else:
        sample = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    litert_torch.convert(model, (sample,)).export(str(out_dir / "model.tflite"))
    _manifest("tflite", layout, "model.tflite").write(out_dir)
    return out_dir


def build_with_export_api(root: Path) -> Path:
    """The export stage's own artifacts: ONNX fp32 + TFLite fp32 and int8 (int8 input/output tensors).

    Uses ``tiny_checkpoint.make_tiny_checkpoint`` (tiny_cnn trained briefly on synthetic images) and
    ``export.api.export_model``; raises if the export stage is missing or fails.
    """
    from tiny_checkpoint import make_tiny_checkpoint, synthetic_bundle

    from export.api import export_model

    bundle = synthetic_bundle()
    ckpt = make_tiny_checkpoint(root.parent / (root.name + "_ckpt"), bundle)
    small = dict(dataset=bundle, eval_samples=28, calib_samples=28)
    export_model(ckpt, root, formats="onnx", precisions="fp32", **small)
    # at the model's own input (--phone-input-size none): test_serve compares these with the ONNX model on the same
    # tensor; the default 256 px phone input is served in tests/test_tflite_mediapipe.py
    export_model(ckpt, root, formats="tflite", precisions="fp32,int8", int8_io=True, phone_input_size=0, **small)
    if not any((d / "manifest.json").exists() and read_manifest(d).kind == "tflite" for d in root.iterdir()):
        raise RuntimeError("export wrote no TFLite artifact")
    return root


def model_root(base: Path) -> Path:
    """A dir with one hand-built ONNX artifact (``onnx/``), built once per session."""
    key = str(base)
    if key not in _BUILT:
        root = base / "serve_models"
        if not (root / "onnx" / "manifest.json").exists():
            build_onnx(root / "onnx")
        _BUILT[key] = root
    return _BUILT[key]


def tflite_root(base: Path) -> Path:
    """A parent dir with what the export stage writes (tiny_cnn_onnx_fp32, tiny_cnn_tflite_fp32 and
    tiny_cnn_tflite_int8 with int8 I/O, NHWC) plus one hand-built NCHW TFLite file (``tflite_nchw``: a
    third-party model as litert-torch converts it without export's NHWC wrapper; it has the weights of
    :func:`model_root`'s hand-built ONNX model, its reference).

    A broken export stage fails this fixture, and with it the serve tests that use it: serve's tests
    must never stay green on artifacts export can no longer write.
    """
    key = str(base) + ":tflite"
    if key not in _BUILT:
        root = base / "serve_models_export"
        build_with_export_api(root)
        build_tflite(root / "tflite_nchw", "NCHW")
        _BUILT[key] = root
    return _BUILT[key]


# ---------------------------------------------------------------------------------- independent reference


def reference_probabilities(onnx_dir: Path, image_bytes: bytes) -> np.ndarray:
    """softmax(onnxruntime logits / T), computed without serve's code."""
    import onnxruntime as ort

    from lesionlite.preprocessing import load_image_bytes, preprocess

    m = read_manifest(onnx_dir)
    sess = ort.InferenceSession(str(onnx_dir / m.files["model"]), providers=["CPUExecutionProvider"])
    x = preprocess(load_image_bytes(image_bytes), m.preprocessing, m.input.get("layout", "NCHW"))[None]
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0][0].astype(np.float64)
    z = logits / m.calibration["temperature"]
    e = np.exp(z - z.max())
    return e / e.sum()


# ---------------------------------------------------------------------------------- threaded uvicorn


class ServerThread:
    """A real uvicorn server on a free loopback port, in a daemon thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


def serving(model_dir: Path, **settings: Any) -> ServerThread:
    """The one way serve's tests start a live server: ``with serving(models, max_upload_mb=1) as s: s.url``.

    ``create_app`` on ``model_dir`` with :class:`serve.settings.Settings` built from ``settings``,
    behind a real uvicorn on a free loopback port.
    """
    from serve.app import create_app
    from serve.settings import Settings

    return ServerThread(create_app(model_dir, Settings(**settings)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(proc, url: str, timeout: float = 60.0, poll: float = 0.2) -> None:
    """Poll ``url/v2/health/ready`` until 200; fail with the server's stderr if it exits or times out."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline, "server did not become ready"
        time.sleep(poll)


# ---------------------------------------------------------------------------------- images


def pattern(w: int = 48, h: int = 40, seed: int = 0) -> np.ndarray:
    """A deterministic, asymmetric RGB test pattern (orientation changes the model's output)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    r = (xx * 255 // max(1, w - 1)).astype(np.uint8)
    g = (yy * 255 // max(1, h - 1)).astype(np.uint8)
    b = ((xx + 2 * yy) % 64 * 4).astype(np.uint8)
    img = np.stack([r, g, b], -1)
    img[: h // 3, : w // 4] = [250, 30, 30]
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    return img


def encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def image_variants() -> dict[str, tuple[bytes, str]]:
    """name → (bytes, file name) for every accepted image mode/format."""
    rgb = Image.fromarray(pattern())
    gray16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.full((rgb.height, rgb.width), 128, np.uint8)))
    return {
        "rgb_jpeg": (encode(rgb, "JPEG", quality=95), "a.jpg"),
        "l_png": (encode(rgb.convert("L"), "PNG"), "b.png"),
        "rgba_png": (encode(rgba, "PNG"), "c.png"),
        "p_png": (encode(rgb.convert("P"), "PNG"), "d.png"),
        "i16_png": (encode(gray16, "PNG"), "e.png"),
        "i16_tiff": (encode(gray16, "TIFF"), "f.tiff"),
        "rgb_tiff": (encode(rgb, "TIFF"), "g.tif"),
        "bmp": (encode(rgb, "BMP"), "h.bmp"),
        "webp": (encode(rgb, "WEBP", lossless=True), "i.webp"),
        "cmyk_jpeg": (encode(rgb.convert("CMYK"), "JPEG"), "j.jpg"),
    }


def exif_rotated_jpeg(orientation: int = 6) -> tuple[bytes, np.ndarray]:
    """A JPEG whose EXIF says rotate, and the pixels as stored (before applying the rotation)."""
    img = Image.fromarray(pattern(56, 36, seed=3))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(img, "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as raw:
        stored = np.asarray(raw.convert("RGB"))
    return data, stored


def png_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A tiny PNG whose header claims ``width`` × ``height`` pixels (a decompression bomb)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1)[:2000]
