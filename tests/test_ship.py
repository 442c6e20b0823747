"""Which precision to ship (lesionlite.ship), and export/bench reporting it."""
from __future__ import annotations

import pytest

from lesionlite.ship import describe, recommend


def _row(name, fmt, prec, bal, ms, size, ok=True):
    return {"name": name, "format": fmt, "precision": prec, "balanced_accuracy": bal, "latency_ms": ms,
            "size_bytes": size, "ok": ok}


def test_fastest_within_one_point_and_slower_int8_flagged() -> None:
    recs = {r["format"]: r for r in recommend([
        _row("onnx_fp32", "onnx", "fp32", 0.700, 0.74, 9_000_000),
        _row("onnx_fp16", "onnx", "fp16", 0.700, 0.90, 4_500_000),
        _row("onnx_int8", "onnx", "int8", 0.695, 1.14, 2_500_000),   # within a point, but slower than fp32
        _row("tfl_fp32", "tflite", "fp32", 0.700, 2.0, 9_000_000),
        _row("tfl_int8", "tflite", "int8", 0.696, 0.9, 2_400_000),
        _row("tfl_fp16", "tflite", "fp16", 0.650, 0.5, 4_600_000),   # fastest, but 5 points worse
    ])}
    assert recs["onnx"]["ship"] == "onnx_fp32" and recs["onnx"]["slower_int8"] == ["onnx_int8"]
    assert recs["tflite"]["ship"] == "tfl_int8" and recs["tflite"]["slower_int8"] == []
    lines = describe(list(recs.values()))
    assert any("WARNING: onnx_int8 is slower than fp32" in line for line in lines)


def test_near_ties_go_to_the_smaller_file_and_unverified_never_ships() -> None:
    (rec,) = recommend([_row("a_fp32", "onnx", "fp32", 0.7, 1.00, 9_000_000),
                        _row("a_int8", "onnx", "int8", 0.7, 1.03, 2_000_000),
                        _row("a_fp16", "onnx", "fp16", 0.7, 0.50, 4_000_000, ok=False)])
    assert rec["ship"] == "a_int8"
    (none,) = recommend([_row("b_int8", "onnx", "int8", 0.7, None, 1)])
    assert none["ship"] is None


def test_an_int8_only_export_is_held_to_pytorch() -> None:
    """Without an fp32 sibling the yardstick is the PyTorch source: an int8 artifact 1.34 points below it is not
    recommended, and the reason says what it costs."""
    (rec,) = recommend([_row("m_tflite_int8", "tflite", "int8", 0.6866, 0.3, 2_400_000)], reference=0.7000)
    assert rec["ship"] is None
    assert "within 1 point of PyTorch" in rec["reason"] and "m_tflite_int8: -1.3 pt" in rec["reason"]
    (ok,) = recommend([_row("m_tflite_int8", "tflite", "int8", 0.6950, 0.3, 2_400_000)], reference=0.7000)
    assert ok["ship"] == "m_tflite_int8" and "vs PyTorch" in ok["reason"]


@pytest.mark.slow
def test_export_report_and_cli_say_what_to_ship(small_export) -> None:
    """conftest's small_export: a tiny_cnn exported to ONNX fp32 + fp16 (eval and calibration on 28 images)."""
    import json

    doc = json.loads((small_export / "export_report.json").read_text())
    (rec,) = doc["ship"]
    assert rec["format"] == "onnx" and rec["ship"] in ("tiny_cnn_onnx_fp32", "tiny_cnn_onnx_fp16")
    assert "Which precision to ship" in (small_export / "export_report.md").read_text()
