"""The onnxruntime settings export records for an int8 artifact reach serve's and bench's sessions.

(export writes the manifest's ``session_config`` = ``session.x64quantprecision=1`` for static int8 on every
host; asserted in tests/test_export.py.) Serve and bench apply that entry only where the CPU needs it —
x86 without VNNI (lesionlite.cpu_features) — so each test here runs on every simulated CPU
(``simulated_cpu`` in conftest.py) rather than on whatever CPU runs the suite.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from _fixtures_cpu import PRECISE_INT8_APPLIED

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lesionlite.manifest import Manifest
from lesionlite.preprocessing import PreprocessConfig

CONFIG = {"session.x64quantprecision": "1"}
PRECISE = "session.x64quantprecision"
CPUS = pytest.mark.parametrize("cpu", sorted(PRECISE_INT8_APPLIED))


def _entry(opts, key: str) -> str | None:
    """A session config entry, or None when it was never set (onnxruntime raises for a missing key)."""
    try:
        return opts.get_session_config_entry(key)
    except Exception:  # onnxruntime's RuntimeException: "does not have configuration with key"
        return None


@pytest.fixture()
def tiny_onnx(tmp_path: Path) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


def _int8_manifest() -> Manifest:
    """The tiny model's manifest carrying the session config export records for static int8."""
    return Manifest(kind="onnx", architecture="tiny", class_names=["a", "b", "c"],
                    preprocessing=PreprocessConfig(input_size=8), files={"model": "model.onnx"},
                    session_config=CONFIG)


@CPUS
def test_serve_runtime_applies_the_manifest_session_config(tiny_onnx: Path, simulated_cpu, cpu: str):
    from serve.runtimes.onnx import OnnxRuntime

    simulated_cpu(cpu)
    rt = OnnxRuntime(tiny_onnx, _int8_manifest())
    assert _entry(rt.session.get_session_options(), PRECISE) == ("1" if PRECISE_INT8_APPLIED[cpu] else None)


@CPUS
def test_bench_runner_applies_ort_config(tiny_onnx: Path, simulated_cpu, cpu: str):
    from mobile_benchmarks import remote_runner

    simulated_cpu(cpu)
    sess, _load_ns, info = remote_runner._load_onnx(str(tiny_onnx), 1, [f"{PRECISE}=1", "session.other=x"])
    opts = sess.get_session_options()
    assert _entry(opts, "session.other") == "x"  # entries other than the CPU-dependent one always apply
    if PRECISE_INT8_APPLIED[cpu]:
        assert _entry(opts, PRECISE) == "1" and info["session_config_not_needed_here"] == {}
    else:  # skipped, and the result says so
        assert _entry(opts, PRECISE) is None and info["session_config_not_needed_here"] == {PRECISE: "1"}
    args = remote_runner.build_parser().parse_args(["--model", "m", "--kind", "onnx", "--ort-config", "a=1",
                                                    "--ort-config", "b=2"])
    assert args.ort_config == ["a=1", "b=2"]


@CPUS
def test_serve_runtime_does_not_spin_unless_asked(tiny_onnx: Path, simulated_cpu, cpu: str):
    """serve turns onnxruntime's spin-waiting off (its threads share the cores with image decoding);
    --runtime-spin restores it; a setting recorded in the manifest still applies on top where the CPU needs it."""
    from serve.runtimes import load_runtime

    simulated_cpu(cpu)
    manifest = _int8_manifest()
    key = "session.intra_op.allow_spinning"
    quiet = load_runtime(tiny_onnx, manifest)
    assert quiet.session.get_session_options().get_session_config_entry(key) == "0"
    assert quiet.describe()["spin_wait"] is False
    spinning = load_runtime(tiny_onnx, manifest, threads=1, spin_wait=True)
    opts = spinning.session.get_session_options()
    assert opts.get_session_config_entry(key) == "1"
    assert _entry(opts, PRECISE) == ("1" if PRECISE_INT8_APPLIED[cpu] else None)


def test_serve_cli_runtime_spin_flag():
    from serve.cli import build_parser, settings_from_args

    assert settings_from_args(build_parser().parse_args(["m"])).runtime_spin is False
    assert settings_from_args(build_parser().parse_args(["m", "--runtime-spin"])).runtime_spin is True
