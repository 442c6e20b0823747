"""ONNX int8 with uint8 activations: every convolution runs as onnxruntime's fused int8 kernel.

With int8 (S8S8) activations onnxruntime 1.32 left MobileNetV2's residual Adds and the 15 convolutions next to them
in float between Quantize/DequantizeLinear pairs, which made int8 slower than fp32 on x86 without VNNI
(benchmarks/RESULTS.md 2a, benchmarks/onnx_int8_speed.py). This exports the tiny test model to ONNX int8 and reads
onnxruntime's own op profile (``bench --op-profile``'s runner): no float ``Conv`` is left and the export still
passes its parity gate.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from lesionlite.manifest import read_manifest
from mobile_benchmarks.remote_runner import MARKER

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_onnx_int8_has_uint8_activations_and_no_float_conv(export_all):
    out, report = export_all  # conftest's every-format export of the tiny_cnn fixture (read-only)
    assert [a.status for a in report.artifacts if a.name == "tiny_cnn_onnx_int8"] == ["written"]
    d = out / "tiny_cnn_onnx_int8"
    m = read_manifest(d)
    assert m.extra["quantization"]["activations"] == "uint8 per-tensor"
    assert m.parity["accepted"] is True and m.parity["top1_agreement"] >= 0.97
    p = subprocess.run([sys.executable, str(ROOT / "mobile_benchmarks" / "remote_runner.py"), "--model",
                        str(d / "model.onnx"), "--op-profile", "--kind", "onnx", "--runs", "5", "--warmup", "1",
                        "--input-shape", "1,3,32,32"], capture_output=True, text=True, timeout=120)
    data = json.loads(p.stdout.strip().splitlines()[-1][len(MARKER):])
    types = {r["op_type"]: r["nodes"] for r in data["summary"]["ops"]}
    assert types.get("QLinearConv", 0) > 0 and "Conv" not in types, types
