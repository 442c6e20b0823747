"""The onnxruntime settings export records for an int8 artifact reach serve's and bench's sessions.

(export writes the manifest's ``session_config`` = ``session.x64quantprecision=1`` for static int8:
precise int8 kernels on x86 CPUs without VNNI; asserted in tests/test_export.py.)
"""
from __future__ import annotations

from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lesionlite.manifest import Manifest  # noqa: E402
from lesionlite.preprocessing import PreprocessConfig  # noqa: E402

CONFIG = {"session.x64quantprecision": "1"}


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


def test_serve_runtime_applies_the_manifest_session_config(tiny_onnx: Path):
    from serve.runtimes.onnx import OnnxRuntime

    manifest = _int8_manifest()
    rt = OnnxRuntime(tiny_onnx, manifest)
    assert rt.session.get_session_options().get_session_config_entry("session.x64quantprecision") == "1"


def test_bench_runner_applies_ort_config(tiny_onnx: Path):
    from mobile_benchmarks import remote_runner

    sess, _load_ns, _info = remote_runner._load_onnx(str(tiny_onnx), 1, ["session.x64quantprecision=1"])
    assert sess.get_session_options().get_session_config_entry("session.x64quantprecision") == "1"
    args = remote_runner.build_parser().parse_args(["--model", "m", "--kind", "onnx", "--ort-config", "a=1",
                                                    "--ort-config", "b=2"])
    assert args.ort_config == ["a=1", "b=2"]


def test_serve_runtime_does_not_spin_unless_asked(tiny_onnx: Path):
    """serve turns onnxruntime's spin-waiting off (its threads share the cores with image decoding);
    --runtime-spin restores it; a setting recorded in the manifest still applies on top."""
    from serve.runtimes import load_runtime

    manifest = _int8_manifest()
    key = "session.intra_op.allow_spinning"
    quiet = load_runtime(tiny_onnx, manifest)
    assert quiet.session.get_session_options().get_session_config_entry(key) == "0"
    assert quiet.describe()["spin_wait"] is False
    spinning = load_runtime(tiny_onnx, manifest, threads=1, spin_wait=True)
    opts = spinning.session.get_session_options()
    assert opts.get_session_config_entry(key) == "1"
    assert opts.get_session_config_entry("session.x64quantprecision") == "1"


def test_serve_cli_runtime_spin_flag():
    from serve.cli import build_parser, settings_from_args

    assert settings_from_args(build_parser().parse_args(["m"])).runtime_spin is False
    assert settings_from_args(build_parser().parse_args(["m", "--runtime-spin"])).runtime_spin is True
