"""Exported TFLite in the phone's task runtime: metadata present, MediaPipe's ImageClassifier loads every file.

One export of the tiny_cnn fixture (tests/tiny_checkpoint.py) to TFLite fp32/fp16/int8 and int8 with integer
I/O (uint8 pixels in, uint8 probabilities out), with the default phone input (``auto``: a 256 px input downscaled
to the model's 32 px inside the graph), and one fp32 export with it off (the model's own 32 px input): both
conftest's session fixtures (``phone_exports``, ``export_all``), shared with other modules. MediaPipe gets the
test images as they are (48x40 RGB, resized by MediaPipe itself to the input), as an app would give them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("mediapipe")

from tiny_checkpoint import CLASS_NAMES

#: the session fixture exports five TFLite files and their twins without the in-graph resize (~4 min alone on one
#: core of the 2-vCPU host; more when the core is shared) unless test_export.py made it already
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
MIN_AGREEMENT = 0.97
PHONE = 256  # --phone-input-size auto for the 32 px fixture model: the smallest multiple of 32 >= 256


@pytest.fixture(scope="module")
def bundle(phone_bundle):
    return phone_bundle


@pytest.fixture(scope="module")
def exported(phone_exports) -> dict[str, Path]:
    """conftest's session export (test_export's int8-I/O test reads the same ``int8-io`` artifact). No external set:
    this module is about the phone runtime, and each artifact is also converted (and run) without the in-graph
    resize to measure its cost."""
    return phone_exports


@pytest.mark.parametrize("which", ["fp32", "fp16", "int8", "int8-io"])
def test_metadata_and_manifest(exported, which):
    from export.tflite_metadata import DISCLAIMER, read_metadata
    from lesionlite.manifest import read_manifest

    md = read_metadata((exported[which] / "model.tflite").read_bytes())
    assert md["associated_files"]["labels.txt"].split() == CLASS_NAMES
    assert "melanoma (mel)" in md["associated_files"]["labels_en.txt"].splitlines()
    assert DISCLAIMER in md["description"] and md["name"].startswith("lesionlite tiny_cnn")
    assert md["normalization"] == {"mean": [0.0], "std": [255.0]}
    m = read_manifest(exported[which] / "manifest.json")
    assert m.output["kind"] == "probabilities" and m.output["temperature_applied"] is True
    assert list(m.preprocessing.mean) == [0.0, 0.0, 0.0] and list(m.preprocessing.std) == [1.0, 1.0, 1.0]
    assert m.extra["metadata"]["outputs_unchanged"] is True
    assert m.input["dtype"] == ("uint8" if which == "int8-io" else "float32")
    mp = m.parity["mediapipe"]
    assert mp["status"] == "ok" and mp["ok"] and mp["top1_agreement_litert"] >= MIN_AGREEMENT


@pytest.mark.parametrize("which", ["fp32", "fp16", "int8", "int8-io"])
def test_mediapipe_runs_each_file_as_exported(exported, bundle, which):
    from export.mediapipe_check import classify
    from lesionlite.manifest import read_manifest
    from lesionlite.preprocessing import preprocess_batch
    from serve.runtimes.tflite import TFLiteRuntime

    images = [p[0] for p in bundle.test]
    scores, labels = classify(exported[which] / "model.tflite", images, CLASS_NAMES)
    assert labels == CLASS_NAMES
    assert ((scores >= 0) & (scores <= 1)).all()
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=0.02)
    # serve's runtime on lesionlite's preprocessing (the artifact's own manifest) gives the same classes
    manifest = read_manifest(exported[which] / "manifest.json")
    rt = TFLiteRuntime(exported[which] / "model.tflite", manifest, threads=1)
    x = preprocess_batch(images, manifest.preprocessing, "NHWC")
    assert list(x.shape[1:]) == [PHONE, PHONE, 3] == list(rt.input_shape[1:])  # serve feeds what the manifest says
    served = np.exp(rt._run(x))  # log-probabilities → probabilities
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=0.02)
    assert np.mean(served.argmax(1) == scores.argmax(1)) >= MIN_AGREEMENT
    labels_true = np.array([p[1] for p in bundle.test])
    assert np.mean(scores.argmax(1) == labels_true) >= 0.9  # the fixture model really classifies on the phone path


def test_metadata_leaves_litert_outputs_unchanged(exported, bundle):
    from ai_edge_litert.interpreter import Interpreter

    from export.tflite_metadata import add_metadata, read_metadata

    data = (exported["fp32"] / "model.tflite").read_bytes()
    again, info = add_metadata(data, name="x", version="1", description="d", class_names=CLASS_NAMES)
    assert read_metadata(again)["name"] == "x"  # replaced, not appended twice

    def run(model: bytes) -> np.ndarray:
        it = Interpreter(model_content=model, num_threads=1)
        it.allocate_tensors()
        s = int(it.get_input_details()[0]["shape"][1])
        x = np.asarray(bundle.test[0][0].resize((s, s)), np.float32)[None] / 255.0
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        return it.get_tensor(it.get_output_details()[0]["index"])

    assert np.array_equal(run(data), run(again))


@pytest.mark.parametrize("which", ["fp32", "fp16", "int8", "int8-io"])
def test_phone_input_with_the_downscale_in_the_graph(exported, which):
    """Every precision takes the 256 px image and says so (manifest, metadata); the report has its cost."""
    from ai_edge_litert.interpreter import Interpreter

    from export.tflite_metadata import read_metadata
    from lesionlite.manifest import read_manifest
    from lesionlite.preprocessing import model_size

    data = (exported[which] / "model.tflite").read_bytes()
    it = Interpreter(model_content=data)
    assert [int(d) for d in it.get_input_details()[0]["shape"]] == [1, PHONE, PHONE, 3]
    md = read_metadata(data)
    assert md["image_size"] == [PHONE, PHONE] and f"{PHONE}x{PHONE}" in md["description"]
    assert "downscales" in md["input_description"]
    m = read_manifest(exported[which] / "manifest.json")
    assert m.preprocessing.input_size == PHONE and m.preprocessing.resize_size is None
    resize = m.preprocessing.extra["in_graph_resize"]
    assert (resize["from"], resize["to"]) == (PHONE, 32) and model_size(m.preprocessing) == 32
    assert m.input["shape"] == [1, PHONE, PHONE, 3] and "resize_in_graph" in m.input
    cost = m.extra["in_graph_resize"]["cost"]
    assert cost["size_bytes_with"] > cost["size_bytes_without"] > 0
    assert cost["litert_invoke_ms_p50_1thread_with"] > 0 and cost["litert_invoke_ms_p50_1thread_without"] > 0
    assert cost["mediapipe_top1_agreement_pytorch_with"] >= MIN_AGREEMENT
    assert cost["top1_agreement_with_vs_without"] >= MIN_AGREEMENT  # the int8 resize costs no answers here
    golden = np.load(exported[which] / "golden" / "inputs.npy")
    assert list(golden.shape[1:]) == [1, PHONE, PHONE, 3]
    report = (exported[which].parent / "export_report.md").read_text()
    assert "MediaPipe vs PyTorch, with / without" in report and exported[which].name in report


def test_verify_passes_on_the_phone_input_artifacts(exported, capsys):
    from lesionlite.cli import main

    assert main(["verify", str(exported["fp32"].parent)]) == 0  # golden 256 px inputs re-made and re-run
    assert "3 of 3 artifact(s) passed" in capsys.readouterr().out


def test_phone_input_off_gives_the_models_own_input(export_all, bundle):
    from export.mediapipe_check import classify
    from lesionlite.manifest import read_manifest

    out, _ = export_all  # conftest's every-format export, with --phone-input-size none
    art = out / "tiny_cnn_tflite_fp32"
    m = read_manifest(art / "manifest.json")
    assert m.input["shape"] == [1, 32, 32, 3] and m.preprocessing.input_size == 32
    assert "in_graph_resize" not in m.preprocessing.extra and "in_graph_resize" not in m.extra
    assert m.parity["mediapipe"]["status"] == "ok" and "in_graph_resize" not in m.parity
    scores, labels = classify(art / "model.tflite", [p[0] for p in bundle.test[:4]], CLASS_NAMES)
    assert labels == CLASS_NAMES and scores.shape == (4, len(CLASS_NAMES))


def test_serve_feeds_the_phone_input(exported, bundle):
    """serve's /predict gives a 256 px artifact its manifest's 256 px input (torch-free preprocessing), accepts a
    48x40 image (the shortest side allowed follows the model's 32 px, not the 256 px input) and answers as LiteRT
    on that input does."""
    import io

    from starlette.testclient import TestClient

    from lesionlite.manifest import read_manifest
    from lesionlite.preprocessing import preprocess
    from serve.app import create_app
    from serve.runtimes.tflite import TFLiteRuntime
    from serve.settings import Settings

    art = exported["fp32"]
    img = bundle.test[0][0]
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    with TestClient(create_app(art.parent, Settings())) as c:
        r = c.post("/predict", params={"model": art.name}, files={"file": ("x.png", buf.getvalue(), "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        probs = np.array([body["probabilities"][k] for k in CLASS_NAMES])
    m = read_manifest(art / "manifest.json")
    want = np.exp(TFLiteRuntime(art / "model.tflite", m, threads=1)._run(preprocess(img, m.preprocessing, "NHWC")[None]))[0]
    np.testing.assert_allclose(probs, want / want.sum(), atol=1e-5)
