"""export.triton: the Triton model repository written from exported ONNX artifacts.

``config.pbtxt`` is parsed into Triton's own ModelConfig protobuf (the ``model_config_pb2`` that
tritonclient ships) and checked against the ONNX graph; the repository's ``1/model.onnx`` is run with
onnxruntime the way Triton's onnxruntime backend would run it, on images preprocessed client-side
with lesionlite.preprocessing, and must give serve's answers. No Triton server runs here (none is
installable from PyPI); what Triton itself would do with the repository is not tested.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_serve_support import CLASS_NAMES, TEMPERATURE, image_variants, reference_probabilities

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
text_format = pytest.importorskip("google.protobuf.text_format")

from export.triton import RepoOptions, build_triton_repository
from lesionlite.manifest import read_manifest

pytestmark = pytest.mark.slow  # real exports and Triton clients
from lesionlite.preprocessing import PreprocessConfig, load_image_bytes, preprocess

REPO = Path(__file__).resolve().parents[1]
IMAGES = [v[0] for v in image_variants().values()][:5]


def model_config_pb2() -> Any:
    """Triton's model_config.proto as compiled into tritonclient.

    ``tritonclient.grpc`` needs grpcio, which tritonclient's http extra does not install; the generated
    module itself needs only protobuf, so it is loaded from its file when the package import fails.
    """
    tc = pytest.importorskip("tritonclient")
    try:
        return importlib.import_module("tritonclient.grpc.model_config_pb2")
    except (ImportError, RuntimeError):
        path = Path(tc.__file__).parent / "grpc" / "model_config_pb2.py"
        spec = importlib.util.spec_from_file_location("tritonclient_model_config_pb2", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module


def parse_config(model_dir: Path) -> Any:
    pb2 = model_config_pb2()
    return text_format.Parse((model_dir / "config.pbtxt").read_text(encoding="utf-8"), pb2.ModelConfig())


@pytest.fixture(scope="module")
def repo(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    report = build_triton_repository([models_dir], out, RepoOptions(max_batch_size=4, max_queue_delay_us=2000))
    assert [m.name for m in report.models] == ["onnx"] and not report.skipped
    return out


def client_batch(model_dir: Path, images: list[bytes]) -> np.ndarray:
    """Client-side preprocessing from the repository alone (its copy of the manifest), torch-free."""
    m = json.loads((model_dir / "lesionlite_manifest.json").read_text())
    cfg = PreprocessConfig.from_dict(m["preprocessing"])
    return np.stack([preprocess(load_image_bytes(b), cfg, m["input"]["layout"]) for b in images])


# ---------------------------------------------------------------------------------- config.pbtxt


def test_config_is_a_valid_triton_model_config_matching_the_graph(repo: Path, models_dir: Path) -> None:
    pb2 = model_config_pb2()
    cfg = parse_config(repo / "onnx")  # text_format.Parse refuses unknown fields and wrong types
    assert cfg.name == "onnx" and cfg.backend == "onnxruntime"
    assert cfg.max_batch_size == 4
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, pb2.ModelInstanceGroup.KIND_CPU)]
    assert cfg.version_policy.latest.num_versions == 1

    sess = ort.InferenceSession(str(repo / "onnx" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (gi,) = sess.get_inputs()
    (inp,) = cfg.input
    assert inp.name == gi.name == "input" and inp.data_type == pb2.TYPE_FP32
    assert list(inp.dims) == list(gi.shape[1:]) == [3, 32, 32]  # the batch axis is Triton's, not in dims
    assert inp.format == pb2.ModelInput.FORMAT_NCHW
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [
        (go.name, pb2.TYPE_FP32, list(go.shape[1:])) for go in sess.get_outputs()]
    assert [o.name for o in cfg.output] == ["logits", "probabilities"]  # the names serve's /infer uses
    assert all(o.label_filename == "labels.txt" for o in cfg.output)
    assert (repo / "onnx" / "labels.txt").read_text().split() == CLASS_NAMES

    params = {k: v.string_value for k, v in cfg.parameters.items()}
    manifest = read_manifest(models_dir / "onnx")
    assert json.loads(params["lesionlite.preprocessing"]) == manifest.preprocessing.to_dict()
    assert float(params["lesionlite.temperature"]) == pytest.approx(TEMPERATURE)
    assert params["lesionlite.probabilities"] == f"softmax(logits / {TEMPERATURE!r})"
    assert json.loads(params["lesionlite.class_names"]) == CLASS_NAMES
    assert sorted(p.name for p in repo.iterdir()) == ["onnx"]  # nothing but model directories at the top


def test_repository_model_gives_serves_answers(repo: Path, models_dir: Path) -> None:
    """Run 1/model.onnx as Triton's backend would (config input name, a batch of client-preprocessed
    images): its logits are the artifact's and its probabilities are what /predict returns."""
    x = client_batch(repo / "onnx", IMAGES)
    cfg = parse_config(repo / "onnx")
    sess = ort.InferenceSession(str(repo / "onnx" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, probs = sess.run([o.name for o in cfg.output], {cfg.input[0].name: x})
    original = ort.InferenceSession(str(models_dir / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(logits, original.run(None, {"input": x})[0])
    expected = np.stack([reference_probabilities(models_dir / "onnx", b) for b in IMAGES])
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)


def test_fixed_batch_graph_no_probabilities_and_skipped_kinds(models_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "artifacts"
    fixed = src / "tiny_cnn_onnx_b1"
    shutil.copytree(models_dir / "onnx", fixed)
    model = onnx.load(str(fixed / "model.onnx"))
    for t in (*model.graph.input, *model.graph.output):
        t.type.tensor_type.shape.dim[0].dim_value = 1  # a graph exported with batch 1
    onnx.save(model, str(fixed / "model.onnx"))
    plain = src / "tiny_cnn_onnx_plain"
    shutil.copytree(models_dir / "onnx", plain)
    tfl = src / "tiny_cnn_tflite_fp32"
    tfl.mkdir()
    m = read_manifest(models_dir / "onnx")
    m.kind, m.files = "tflite", {"model": "model.tflite"}
    m.write(tfl)

    out = tmp_path / "repo"
    report = build_triton_repository([src], out, RepoOptions(add_probabilities=False, instance_kind="gpu", instances=2))
    assert sorted(r.name for r in report.models) == ["tiny_cnn_onnx_b1", "tiny_cnn_onnx_plain"]
    assert [(p.name, "TFLite" in why) for p, why in report.skipped] == [("tiny_cnn_tflite_fp32", True)]
    pb2 = model_config_pb2()
    cfg = parse_config(out / "tiny_cnn_onnx_b1")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [1, 3, 32, 32] and list(cfg.output[0].dims) == [1, 7]
    assert cfg.input[0].format == pb2.ModelInput.FORMAT_NONE  # Triton allows a format on 3-dim inputs only
    assert [o.name for o in cfg.output] == ["logits"]
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, pb2.ModelInstanceGroup.KIND_GPU)]
    # --no-probabilities copies the graph byte for byte
    assert (out / "tiny_cnn_onnx_plain" / "1" / "model.onnx").read_bytes() == (plain / "model.onnx").read_bytes()
    # rebuilding replaces the model directories, leaving no staging debris
    build_triton_repository([src], out)
    assert sorted(p.name for p in out.iterdir()) == ["tiny_cnn_onnx_b1", "tiny_cnn_onnx_plain"]
    assert [o.name for o in parse_config(out / "tiny_cnn_onnx_plain").output] == ["logits", "probabilities"]


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    tfl = tmp_path / "only_tflite"
    tfl.mkdir()
    from lesionlite.manifest import Manifest

    Manifest(kind="tflite", architecture="tiny_cnn", class_names=CLASS_NAMES, preprocessing=PreprocessConfig(),
             files={"model": "model.tflite"}).write(tfl)
    out = subprocess.run([sys.executable, "-m", "export.triton", str(tfl), "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "no ONNX artifact" in lines[0] and "Traceback" not in out.stderr, out.stderr


@pytest.mark.slow
def test_export_cli_writes_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_run: Path) -> None:
    """``lesionlite export --triton-repo DIR``: the fp32, fp16 and int8 ONNX exports become three Triton models."""
    from tiny_checkpoint import SMALL_BUNDLE_ARGS, synthetic_bundle

    import export.data
    from export.cli import main as export_main

    bundle = synthetic_bundle(**SMALL_BUNDLE_ARGS)
    monkeypatch.setattr(export.data, "load_bundle", lambda spec, root, seed=0: bundle)
    run = small_run  # conftest's: tiny_cnn trained on this bundle (read-only)
    repo_dir = tmp_path / "triton"
    rc = export_main(["--checkpoint", str(run), "--format", "onnx", "--precision", "fp32,fp16,int8", "--out",
                      str(tmp_path / "out"), "--data", "synthetic", "--calib-samples", "28", "--eval-samples", "28",
                      "--triton-repo", str(repo_dir)])
    assert rc == 0
    names = ["tiny_cnn_onnx_fp16", "tiny_cnn_onnx_fp32", "tiny_cnn_onnx_int8"]
    assert sorted(p.name for p in repo_dir.iterdir()) == names
    for name in names:
        cfg = parse_config(repo_dir / name)
        assert cfg.max_batch_size == 8 and [i.name for i in cfg.input] == ["input"]
        sess = ort.InferenceSession(str(repo_dir / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        x = client_batch(repo_dir / name, IMAGES[:2])
        logits, probs = sess.run(["logits", "probabilities"], {"input": x})
        z = logits / read_manifest(tmp_path / "out" / name).temperature
        np.testing.assert_allclose(probs, np.exp(z) / np.exp(z).sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    params = parse_config(repo_dir / "tiny_cnn_onnx_int8").parameters
    assert "session.x64quantprecision" in params["lesionlite.onnxruntime_session_config"].string_value
