"""Golden vectors beside every exported artifact and ``lesionlite verify``.

The tiny_cnn fixture's ONNX fp32 and TFLite fp32 + int8 with uint8 I/O (conftest's shared exports); verify
passes on the fresh export and names the cause when the model file, the preprocessing or the runtime's
outputs disagree.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

from tiny_checkpoint import CLASS_NAMES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, export_all, phone_exports) -> Path:
    """ONNX fp32 from conftest's every-format export beside (in ``tfl/``) TFLite fp32 and int8 with uint8 I/O from
    its phone-input export: three artifacts export wrote for the same tiny_cnn run, copied into one folder."""
    out = tmp_path_factory.mktemp("export") / "out"
    shutil.copytree(export_all[0] / "tiny_cnn_onnx_fp32", out / "tiny_cnn_onnx_fp32")
    shutil.copytree(phone_exports["fp32"], out / "tfl/tiny_cnn_tflite_fp32")
    shutil.copytree(phone_exports["int8-io"], out / "tfl/tiny_cnn_tflite_int8")
    return out


def _copy(export_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(export_dir, dest)
    return dest


def test_every_artifact_has_a_golden_set(export_dir):
    from lesionlite.golden import read_golden
    from lesionlite.manifest import read_manifest

    dirs = sorted(p.parent for p in export_dir.rglob("manifest.json"))
    assert len(dirs) == 3
    for d in dirs:
        g = read_golden(d)
        m = read_manifest(d / "manifest.json")
        assert len(g.inputs) == len(g.outputs) == len(g.spec["images"]) >= len(CLASS_NAMES) - 1
        assert g.inputs.dtype.name == m.input["dtype"] and list(g.inputs.shape[1:]) == [int(s) for s in m.input["shape"]]
        assert {e["class_name"] for e in g.spec["images"]} == set(CLASS_NAMES)  # one image of each class first
        assert all((g.directory / e["file"]).is_file() for e in g.spec["images"])
    int8 = read_golden(export_dir / "tfl/tiny_cnn_tflite_int8")
    assert int8.inputs.dtype == np.uint8  # pixels, as the phone hands them over


def test_verify_passes_on_a_fresh_export(export_dir, capsys):
    from lesionlite.cli import main

    assert main(["verify", str(export_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS ") == 3 and "3 of 3 artifact(s) passed" in out


def test_verify_fails_on_a_damaged_model_file(export_dir, tmp_path, capsys):
    from mobile_benchmarks.verify import main

    d = _copy(export_dir, tmp_path)
    model = d / "tfl/tiny_cnn_tflite_fp32/model.tflite"
    data = bytearray(model.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(64)  # zero a run of weights: the file still loads, its answers change
    model.write_bytes(bytes(data))
    assert main([str(d), "--json", str(tmp_path / "v.json")]) == 1
    out = capsys.readouterr().out
    assert "FAIL tfl/tiny_cnn_tflite_fp32: model file damaged or replaced" in out
    assert out.count("PASS ") == 2
    verdicts = {v["name"]: v for v in json.loads((tmp_path / "v.json").read_text())["verdicts"]}
    assert not verdicts["tfl/tiny_cnn_tflite_fp32"]["ok"] and verdicts["tiny_cnn_onnx_fp32"]["ok"]


def test_verify_names_preprocessing_and_runtime(export_dir, tmp_path, capsys):
    from PIL import Image

    from mobile_benchmarks.verify import main

    d = _copy(export_dir, tmp_path)
    g = d / "tiny_cnn_onnx_fp32/golden"
    img = g / "images/0000.png"
    Image.open(img).transpose(Image.FLIP_LEFT_RIGHT).save(img)  # the image no longer gives the stored tensor
    expected = np.load(g / "expected_outputs.npy")
    expected[:, 0] += 1.0  # the runtime no longer gives the stored outputs
    np.save(g / "expected_outputs.npy", expected)
    assert main([str(d / "tiny_cnn_onnx_fp32")]) == 1
    out = capsys.readouterr().out
    assert "preprocessing disagrees: 0000.png" in out and "runtime disagrees on target local" in out
    assert "model file damaged" not in out


def test_verify_without_golden_set_is_one_clear_error(export_dir, tmp_path, capsys):
    from lesionlite.cli import main

    d = _copy(export_dir, tmp_path)
    shutil.rmtree(d / "tiny_cnn_onnx_fp32/golden")
    assert main(["verify", str(d / "tiny_cnn_onnx_fp32")]) == 2
    assert "no golden/golden.json" in capsys.readouterr().err
