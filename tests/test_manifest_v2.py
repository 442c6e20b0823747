"""Schema 2 manifests: v1 files are migrated on read, and shipped manifests carry no absolute path.

The v1 documents below are trimmed copies of what lesionlite wrote before schema 2 (a KD checkpoint and
its int8 TFLite export on HAM10000): every field that v1 kept in ``extra`` and another stage reads must
arrive in its declared v2 field, and nothing of the training machine's directory layout may survive.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lesionlite.errors import LesionliteError
from lesionlite.manifest import SCHEMA_VERSION, Manifest, absolute_paths_in, portable_text, read_manifest
from lesionlite.preprocessing import PreprocessConfig

PRE = {"input_size": 64, "resize_size": None, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "version": "1",
       "interpolation": "bilinear", "extra": {}}
DATA_V1 = {"name": "ham10000", "fingerprint": "667a53f1", "synthetic": False, "spec": "ham10000", "split_seed": 0,
           "source": "HAM10000 at /work/shared/data/ham10000_200x150: 10015 images of 7470 lesions, split 70/10/20 "
                     "by lesion_id (seed 0)", "options": {}}
CHECKPOINT_V1 = {
    "kind": "checkpoint", "architecture": "mobilenet_v2", "class_names": ["akiec", "bcc", "mel"], "preprocessing": PRE,
    "input": {"layout": "NCHW", "dtype": "float32", "shape": [1, 3, 64, 64], "quantization": None},
    "calibration": {"temperature": 1.05}, "metrics": {"test_balanced_accuracy": 0.67}, "data": DATA_V1,
    "files": {"model": "student.pt"}, "git_commit": "38bfde43", "schema_version": 1,
    "extra": {"method": "kd", "epochs": 20, "best_epoch": 15,
              "weights": "ImageNet weights /work/shared/weights/mobilenet_v2/mnv2_tf2ptq.pth",
              "weights_info": {"path": "/work/shared/weights/mobilenet_v2/mnv2_tf2ptq.pth", "sha256": "a53c1c24",
                               "source": "TF2 MobileNetV2 PTQ (shared/weights)", "bn_folded": True}},
}
TFLITE_V1 = {
    "kind": "tflite", "architecture": "mobilenet_v2", "class_names": ["akiec", "bcc", "mel"], "preprocessing": PRE,
    "input": {"name": "serving_default_args_0", "dtype": "int8", "shape": [1, 64, 64, 3], "layout": "NHWC",
              "quantization": {"scale": 0.0078, "zero_point": 0}},
    "calibration": {"temperature": 1.05}, "metrics": {"accuracy": 0.70, "balanced_accuracy": 0.68}, "data": DATA_V1,
    "files": {"model": "model.tflite"}, "git_commit": "0b0f616c", "schema_version": 1,
    "extra": {"format": "tflite", "precision": "int8",
              "output": {"name": "out", "dtype": "int8", "shape": [1, 3], "quantization": {"scale": 0.1, "zero_point": -3},
                         "kind": "logits", "temperature_applied": False},
              "source_checkpoint_sha256": "be342e03", "params": 2232839, "macs": 24457472,
              "parity": {"top1_agreement": 0.973, "threshold": 0.0, "verified": True, "n": 2005},
              "parity_accepted": True, "onnxruntime_session_config": {"session.x64quantprecision": "1"},
              "export_data": {"name": "ham10000", "eval_split": "test", "eval_samples": 2005},
              "tool_versions": {"torch": "2.14.1"}, "version": "2026-11"},
}


def _v1_file(tmp_path: Path, doc: dict) -> Path:
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    return tmp_path


def test_v1_export_manifest_reads_into_declared_fields(tmp_path: Path) -> None:
    m = read_manifest(_v1_file(tmp_path, TFLITE_V1))
    assert m.schema_version == SCHEMA_VERSION == 2
    assert m.precision == "int8" and m.parameters == 2232839 and m.macs == 24457472
    assert m.output_quantization == {"scale": 0.1, "zero_point": -3} and m.output["kind"] == "logits"
    assert m.parity["accepted"] is True and m.parity["top1_agreement"] == 0.973 and m.parity_verified
    assert m.session_config == {"session.x64quantprecision": "1"}
    assert m.source_sha256 == "be342e03" and m.evaluation["eval_split"] == "test" and m.version == "2026-11"
    # promoted keys leave extra; what no other stage reads stays there
    assert set(m.extra) == {"format", "tool_versions"}


def test_v1_checkpoint_migrates_weights_and_data_without_paths(tmp_path: Path) -> None:
    m = read_manifest(_v1_file(tmp_path, CHECKPOINT_V1))
    assert m.precision == "fp32"  # a v1 checkpoint did not say; it is the float model
    assert m.weights == {"file": "mnv2_tf2ptq.pth", "sha256": "a53c1c24", "source": "TF2 MobileNetV2 PTQ (shared/weights)",
                         "bn_folded": True}
    assert m.data["description"].startswith("HAM10000 at ham10000_200x150: 10015 images")
    assert "source" not in m.data and m.data["spec"] == "ham10000" and m.data["fingerprint"] == "667a53f1"
    assert m.extra["weights"] == "ImageNet weights mnv2_tf2ptq.pth" and m.extra["best_epoch"] == 15
    assert absolute_paths_in(m.to_dict()) == []


def test_a_migrated_manifest_round_trips_as_v2(tmp_path: Path) -> None:
    m = read_manifest(_v1_file(tmp_path, TFLITE_V1))
    out = tmp_path / "v2"
    m.write(out)
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["schema_version"] == 2 and doc["precision"] == "int8" and "parity_accepted" not in doc["extra"]
    assert read_manifest(out).to_dict() == m.to_dict()


def test_a_refused_v1_artifact_stays_refused(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(TFLITE_V1))
    doc["extra"]["parity_accepted"] = False
    m = read_manifest(_v1_file(tmp_path, doc))
    assert m.parity["accepted"] is False and not m.parity_verified


@pytest.mark.parametrize("field, value, needle", [
    ("precision", "int4", "unknown precision 'int4'"),
    ("parameters", "many", "parameters must be an integer"),
    ("output", [1, 7], "output must be a JSON object"),
    ("schema_version", "two", "schema_version must be an integer"),
])
def test_bad_declared_fields_name_the_problem(tmp_path: Path, field: str, value: object, needle: str) -> None:
    doc = Manifest(kind="onnx", architecture="x", class_names=["a"], preprocessing=PreprocessConfig()).to_dict()
    doc[field] = value
    with pytest.raises(LesionliteError, match=needle):
        read_manifest(_v1_file(tmp_path, doc))


@pytest.mark.parametrize("text, want", [
    ("HAM10000 at /work/shared/data/ham10000_200x150: 10015 images", "HAM10000 at ham10000_200x150: 10015 images"),
    ("weights C:\\Users\\me\\mnv2.pth", "weights mnv2.pth"),
    ("split 70/10/20 by lesion_id (runs/cpu/teacher)", "split 70/10/20 by lesion_id (runs/cpu/teacher)"),
])
def test_portable_text_keeps_only_the_last_component_of_absolute_paths(text: str, want: str) -> None:
    assert portable_text(text) == want and absolute_paths_in(want) == []
