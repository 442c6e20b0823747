"""Export round trips: every format × precision, run (ONNX, TFLite) or spec-checked (CoreML) on CPU.

One export of a briefly trained tiny_cnn (tests/tiny_checkpoint.py) to every format × fp32/fp16/int8, plus
one TFLite int8 export with int8 I/O (both conftest's session fixtures, shared with other modules). The
artifacts are then run *independently* of export's own runners (onnxruntime / the LiteRT interpreter, fed by
lesionlite.preprocessing) and compared with PyTorch.

Parity levels asserted: fp32 max |Δlogit| < 1e-4 and 100 % top-1; fp16 ≥ 99 % top-1; int8 ≥ 97 %.
The int8 level is what this model really achieves with margin: trained to well-separated logits on
the synthetic classes, its int8 versions agree with PyTorch on 84/84 test images (100 %) with ONNX
and TFLite; 97 % allows two flips should another CPU's int8 kernels round differently.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tiny_checkpoint import PREPROCESSING, synthetic_bundle

from export.formats import list_formats
from lesionlite.manifest import absolute_paths_in, read_manifest
from lesionlite.preprocessing import preprocess_batch

#: every registered format, in ``--format all`` order (a new format is held to the same round trip)
FORMATS = tuple(list_formats())
PRECISIONS = ("fp32", "fp16", "int8")
INT8_MIN_AGREEMENT = 0.97

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def exported(export_all):
    # conftest's session export (shared with test_executorch and test_tflite_mediapipe): --phone-input-size none, so
    # every format takes the model's own 32 px input and TFLite is held to PyTorch on the same tensor (the default
    # phone input, 256 px downscaled in the graph, is tested with int8 I/O below and in tests/test_tflite_mediapipe.py)
    return export_all


@pytest.fixture(scope="module")
def exported_int8_io(phone_exports):
    """TFLite int8 with int8 I/O at the default phone input: conftest's session export, shared with
    tests/test_tflite_mediapipe.py (its report read back from the export's export_report.json)."""
    out = phone_exports["int8-io"].parent
    return out, json.loads((out / "export_report.json").read_text())


@pytest.fixture(scope="module")
def reference(run_dir, bundle):
    """Preprocessed test images (NCHW), labels and PyTorch logits."""
    import torch

    from distill.artifacts import load_student

    model, _ = load_student(run_dir)
    x = preprocess_batch([p[0] for p in bundle.test], PREPROCESSING, "NCHW")
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    return x, np.array([p[1] for p in bundle.test]), logits


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def _assert_parity(y: np.ndarray, ref: np.ndarray, prec: str) -> float:
    """An artifact's outputs against PyTorch's: exact for fp32, the precision's agreement floor otherwise."""
    agree = _agreement(y, ref)
    if prec == "fp32":
        assert np.abs(y - ref).max() < 1e-4 and agree == 1.0
    elif prec == "fp16":
        assert agree >= 0.99
    else:
        assert agree >= INT8_MIN_AGREEMENT
    return agree


def test_every_artifact_has_its_own_manifest(exported, run_dir):
    out, report = exported
    source = read_manifest(run_dir)
    assert len(report.artifacts) == len(FORMATS) * len(PRECISIONS) and all(a.status == "written" for a in report.artifacts)
    for fmt in FORMATS:
        for prec in PRECISIONS:
            d = out / f"tiny_cnn_{fmt}_{prec}"
            m = read_manifest(d)
            assert m.kind == fmt
            assert (d / m.files["model"]).exists()
            in_graph = m.preprocessing.extra.get("normalization_in_graph")
            if in_graph:  # TFLite takes pixels in [0, 1] and normalises with the source's mean/std in its graph
                src_cfg = source.preprocessing
                assert (m.preprocessing.mean, m.preprocessing.std) == ((0.0,) * 3, (1.0,) * 3)
                assert in_graph == {"mean": list(src_cfg.mean), "std": list(src_cfg.std)}
                assert m.preprocessing.input_size == src_cfg.input_size
            else:
                assert m.preprocessing == source.preprocessing  # copied, one source of truth
            assert m.class_names == source.class_names
            # the checkpoint's calibration, plus the operating point export chose on validation
            assert {k: v for k, v in m.calibration.items() if k != "operating_point"} == source.calibration
            assert m.calibration["operating_point"] == report.source["evidence"]["operating_point"]
            assert m.precision == prec
            assert absolute_paths_in(m.to_dict()) == [], "a shipped manifest names a path of this machine"
            assert m.source_sha256 == report.source["sha256"]
            assert m.parameters == report.source["params"] > 0
            # tiny_cnn: convs 55296 + 73728 + 73728 + 36864 MACs at 32x32, linear 32*7
            assert m.macs == 239616 + 32 * 7
            assert m.extra["tool_versions"]["torch"]
            assert set(m.input) >= {"layout", "dtype", "shape", "quantization"}
            if fmt != "coreml":
                assert set(m.metrics) >= {"accuracy", "balanced_accuracy", "macro_f1"}
                assert m.parity["verified"] is True and m.parity["accepted"] is True
            if prec == "int8":  # every format quantizes the same prepared copy (export.int8_prep)
                prep = m.extra["quantization"]["preparation"]
                assert prep["folded_batchnorms"] == 4 and prep["corrected_layers"] == 5
                if fmt == "onnx":  # also evaluated as defined, beside this host's fused int8 kernels
                    assert m.parity["as_defined"]["top1_agreement"] >= INT8_MIN_AGREEMENT
                    assert m.parity["host_int8_kernels"]["machine"]
                    assert m.session_config == {"session.x64quantprecision": "1"}
                if fmt == "tflite":  # duplicate zero-point vectors stored once, outputs checked bit-identical
                    assert m.extra["flatbuffer_dedup"]["applied"] is True
                    assert m.extra["flatbuffer_dedup"]["bytes_saved"] > 0
    # no staging leftovers
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_report_files(exported):
    out, report = exported
    data = json.loads((out / "export_report.json").read_text())
    assert [a["name"] for a in data["artifacts"]] == [f"tiny_cnn_{f}_{p}" for f in FORMATS for p in PRECISIONS]
    assert data["source"]["metrics"]["balanced_accuracy"] > 0.9  # the fixture model really learned
    md = (out / "export_report.md").read_text()
    assert "| tiny_cnn_onnx_int8 |" in md and "PyTorch (source)" in md and "not numerically verified" in md
    assert "- tiny_cnn_onnx_int8: top-1 agree" in md and "evaluated as defined" in md
    for a in data["artifacts"]:
        assert a["size_bytes"] > 0


def test_onnx_round_trip_in_onnxruntime(exported, reference):
    import onnx
    import onnxruntime as ort

    out, report = exported
    x, labels, ref = reference
    for prec in PRECISIONS:
        d = out / f"tiny_cnn_onnx_{prec}"
        m = read_manifest(d)
        assert m.input["layout"] == "NCHW" and m.input["dtype"] == "float32" and m.input["shape"] == [1, 3, 32, 32]
        sess = ort.InferenceSession(str(d / m.files["model"]), providers=["CPUExecutionProvider"])
        y = sess.run(None, {m.input["name"]: x})[0]
        one = sess.run(None, {m.input["name"]: x[:1]})[0]  # dynamic batch axis: 84 and 1
        np.testing.assert_allclose(one, y[:1], atol=1e-5)
        agree = _assert_parity(y, ref, prec)
        assert report.artifact("onnx", prec).parity["top1_agreement"] == pytest.approx(agree)
        meta = {p.key: p.value for p in onnx.load(str(d / m.files["model"])).metadata_props}
        assert json.loads(meta["lesionlite.class_names"]) == m.class_names
        assert json.loads(meta["lesionlite.preprocessing"]) == m.preprocessing.to_dict()
    int8_ops = report.artifact("onnx", "int8").validation["op_types"]
    assert int8_ops.get("QuantizeLinear", 0) > 0 and int8_ops.get("DequantizeLinear", 0) > 0


def _run_tflite(path: Path, x_nhwc: np.ndarray, in_q, out_q) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    ind, outd = it.get_input_details()[0], it.get_output_details()[0]
    ys = []
    for i in range(len(x_nhwc)):
        xi = x_nhwc[i : i + 1]
        if in_q:
            info = np.iinfo(ind["dtype"])
            xi = np.clip(np.round(xi / in_q["scale"]) + in_q["zero_point"], info.min, info.max).astype(ind["dtype"])
        it.set_tensor(ind["index"], xi)
        it.invoke()
        y = it.get_tensor(outd["index"])
        ys.append((y.astype(np.float32) - out_q["zero_point"]) * out_q["scale"] if out_q else y)
    return np.concatenate(ys)


def _tflite_inputs(bundle, m) -> np.ndarray:
    """The test images preprocessed with the TFLite artifact's own manifest: pixels in [0, 1] (the graph
    normalises them and computes softmax(logits / T) itself)."""
    return preprocess_batch([p[0] for p in bundle.test], m.preprocessing, "NHWC")


def test_tflite_round_trip_in_litert_interpreter(exported, reference, bundle):
    from export.parity import softmax

    out, report = exported
    x, _, logits = reference
    ref = softmax(logits, 1.25)  # make_tiny_checkpoint's calibration temperature
    for prec in PRECISIONS:
        d = out / f"tiny_cnn_tflite_{prec}"
        m = read_manifest(d)
        assert m.input["layout"] == "NHWC" and m.input["shape"] == [1, 32, 32, 3]
        assert m.input["dtype"] == "float32" and m.input["quantization"] is None  # float I/O by default
        assert m.output["kind"] == "probabilities" and m.output["temperature_applied"]
        y = _run_tflite(d / m.files["model"], _tflite_inputs(bundle, m), None, None)
        _assert_parity(y, ref, prec)
    ops = report.artifact("tflite", "int8").validation["op_types"]
    assert "TRANSPOSE" not in ops and ops.get("QUANTIZE") == 1 and ops.get("DEQUANTIZE") == 1


def test_tflite_int8_io(exported_int8_io, reference, bundle):
    out, report = exported_int8_io
    x, _, ref = reference
    d = out / "tiny_cnn_tflite_int8"
    m = read_manifest(d)
    # uint8 pixels in, uint8 probabilities out (MediaPipe refuses int8 I/O tensors): export.tflite_metadata.uint8_io
    assert m.input["dtype"] == "uint8" and m.input["layout"] == "NHWC"
    # the default phone input: 256 px pixels in, the downscale to the model's 32 px inside the graph
    assert m.input["shape"] == [1, 256, 256, 3] and m.preprocessing.input_size == 256
    assert m.preprocessing.extra["in_graph_resize"]["to"] == 32
    q_in, q_out = m.input["quantization"], m.output_quantization
    assert q_in == {"scale": pytest.approx(1 / 255), "zero_point": 0} and m.output["dtype"] == "uint8"
    assert q_out["scale"] == pytest.approx(1 / 256) and q_out["zero_point"] == 0
    y = _run_tflite(d / m.files["model"], _tflite_inputs(bundle, m), q_in, q_out)
    assert _agreement(y, ref) >= INT8_MIN_AGREEMENT
    (art,) = report["artifacts"]
    assert art["name"] == "tiny_cnn_tflite_int8" and art["parity"]["top1_agreement"] >= INT8_MIN_AGREEMENT
    ops = art["validation"]["op_types"]
    assert ops.get("QUANTIZE") == 2 and "DEQUANTIZE" not in ops  # integer end to end, two exact uint8<->int8 shifts


def test_coreml_spec_reload(exported):
    ct = pytest.importorskip("coremltools")
    out, report = exported
    for prec in PRECISIONS:
        d = out / f"tiny_cnn_coreml_{prec}"
        m = read_manifest(d)
        spec = ct.utils.load_spec(str(d / m.files["model"]))
        img = spec.description.input[0].type.imageType
        assert (img.width, img.height) == (32, 32)
        assert spec.description.predictedProbabilitiesName == "classLabel_probs"
        assert m.parity["verified"] is False  # not numerically verified on Linux
        assert m.output["kind"] == "probabilities" and m.output["temperature_applied"]
        ops = report.artifact("coreml", prec).validation["op_types"]
        assert "classify" in ops and "softmax" in ops
    assert report.artifact("coreml", "int8").validation["int8_weight_tensors"] > 0
    assert report.artifact("coreml", "fp16").validation["int8_weight_tensors"] == 0
    assert report.artifact("coreml", "int8").size_bytes < report.artifact("coreml", "fp16").size_bytes


def test_parity_refusal_leaves_existing_artifact_intact(exported, run_dir, bundle, tmp_path):
    from export.api import ParityError, export_model

    src, _ = exported
    out = tmp_path / "out"
    shutil.copytree(src / "tiny_cnn_onnx_fp32", out / "tiny_cnn_onnx_fp32")
    before = {p.relative_to(out): p.read_bytes() for p in (out / "tiny_cnn_onnx_fp32").rglob("*") if p.is_file()}
    with pytest.raises(ParityError, match="nothing was written"):
        export_model(run_dir, out, "onnx", "fp32,fp16", dataset=bundle, calib_samples=20, parity_threshold=1.01)
    assert sorted(p.name for p in out.iterdir()) == ["tiny_cnn_onnx_fp32"]  # no fp16, no staging, no report
    assert {p.relative_to(out): p.read_bytes() for p in (out / "tiny_cnn_onnx_fp32").rglob("*") if p.is_file()} == before


def test_parity_refusal_is_per_artifact(run_dir, bundle, tmp_path):
    """A broken artifact is refused while the ones that pass are written and the report says so."""
    from export.api import ParityError, export_model

    out = tmp_path / "out"
    with pytest.raises(ParityError, match="wrote the other 1 artifact") as err:
        export_model(run_dir, out, "onnx", "fp32,fp16", dataset=bundle, calib_samples=20,
                     parity_threshold={"fp16": 1.01})
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "export_report.json", "export_report.md",
                                                     "model_card.json", "pytorch_reference.npz", "tiny_cnn_onnx_fp32"]
    statuses = {a.name: a.status for a in err.value.report.artifacts}
    assert statuses == {"tiny_cnn_onnx_fp32": "written", "tiny_cnn_onnx_fp16": "refused"}
    assert "refused" in (out / "export_report.md").read_text()


def test_data_class_count_mismatch_is_refused(run_dir, tmp_path):
    from export.api import export_model
    from lesionlite.errors import LesionliteError

    with pytest.raises(LesionliteError, match="has 3 classes but the checkpoint has 7"):
        export_model(run_dir, tmp_path / "o", "onnx", "fp32", dataset=synthetic_bundle(21, 7, 7, num_classes=3))
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_match_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    from export.parity import classification_metrics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    scores = rng.normal(size=(200, 6))  # class 5 never a label; may be predicted
    scores[np.arange(200), labels] += 1.0
    m = classification_metrics(labels, scores, 6)
    pred = scores.argmax(1)
    assert m["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, pred))
    assert m["balanced_accuracy"] == pytest.approx(sklearn_metrics.balanced_accuracy_score(labels, pred))
    assert m["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(labels, pred, average="macro"))
