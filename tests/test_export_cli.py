"""The export CLI: bad input is one line on stderr with exit status 2 and never a half-written file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tiny_checkpoint import SMALL_BUNDLE_ARGS, make_tiny_checkpoint, synthetic_bundle

import export.data
from export.cli import main as export_main
from lesionlite.cli import main as lesionlite_main
from lesionlite.cli import run_stage
from lesionlite.manifest import read_manifest

pytestmark = pytest.mark.slow  # real conversions through the CLI

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle():
    return synthetic_bundle(**SMALL_BUNDLE_ARGS)


@pytest.fixture(scope="module")
def run_dir(small_run) -> Path:
    """conftest's small_run: tiny_cnn trained on ``bundle`` (read-only)."""
    return small_run


@pytest.fixture
def data(monkeypatch, bundle):
    """Serve --data from the synthetic bundle (the CLI goes through export.data.load_bundle)."""
    calls = []

    def fake_load_bundle(spec, root, seed=0):
        calls.append((spec, root))
        return bundle

    monkeypatch.setattr(export.data, "load_bundle", fake_load_bundle)
    return calls


def _cli(argv, capsys) -> tuple[int, str]:
    rc = run_stage(export_main, argv, prog="lesionlite export")
    err = capsys.readouterr().err.strip()
    return rc, err


def _assert_one_line(rc: int, err: str, needle: str) -> None:
    assert rc == 2, err
    assert err.startswith("lesionlite export: error:"), err
    assert "\n" not in err and "Traceback" not in err, err
    assert needle in err, err


def _entries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_missing_checkpoint(tmp_path, capsys):
    rc, err = _cli(["--checkpoint", str(tmp_path / "nope"), "--format", "onnx", "--out", str(tmp_path / "o")], capsys)
    _assert_one_line(rc, err, "does not exist")
    assert not (tmp_path / "o").exists()


def test_directory_without_manifest(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "student.pt").write_bytes(b"junk")
    rc, err = _cli(["--checkpoint", str(tmp_path / "run"), "--format", "onnx"], capsys)
    _assert_one_line(rc, err, "not a lesionlite run directory")


def test_foreign_checkpoint(tmp_path, run_dir, capsys):
    import torch

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text((run_dir / "manifest.json").read_text())
    torch.save({"model": [1, 2, 3]}, foreign / "student.pt")
    rc, err = _cli(["--checkpoint", str(foreign), "--format", "onnx", "--out", str(tmp_path / "o")], capsys)
    _assert_one_line(rc, err, "foreign checkpoint")
    assert _entries(tmp_path / "o") == []


def test_manifest_of_an_exported_artifact_is_not_a_checkpoint(tmp_path, run_dir, capsys):
    d = tmp_path / "onnx_dir"
    d.mkdir()
    m = read_manifest(run_dir)
    m.kind = "onnx"
    m.write(d)
    rc, err = _cli(["--checkpoint", str(d), "--format", "onnx"], capsys)
    _assert_one_line(rc, err, "not a checkpoint")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--format", "keras"], "unknown export format 'keras'"),
        (["--format", "onnx", "--precision", "int4"], "unknown precision 'int4'"),
        (["--format", "onnx", "--onnx-quant", "weird"], "invalid choice"),
        (["--format", "onnx", "--calib-samples", "0"], "--calib-samples must be at least 1"),
        (["--format", "onnx", "--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_options(tmp_path, run_dir, capsys, args, needle):
    rc, err = _cli(["--checkpoint", str(run_dir), "--out", str(tmp_path / "o"), *args], capsys)
    _assert_one_line(rc, err, needle)
    assert _entries(tmp_path / "o") == []


def test_converter_not_installed(tmp_path, run_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "coremltools", None)  # import coremltools → ImportError
    rc, err = _cli(["--checkpoint", str(run_dir), "--format", "onnx,coreml", "--out", str(tmp_path / "o")], capsys)
    _assert_one_line(rc, err, "pip install 'lesionlite[export]'")
    assert "coremltools" in err
    assert _entries(tmp_path / "o") == []


def test_no_data_named(tmp_path, bundle, capsys):
    run = make_tiny_checkpoint(tmp_path / "run", bundle, steps=1, data={})
    rc, err = _cli(["--checkpoint", str(run), "--format", "onnx", "--out", str(tmp_path / "o")], capsys)
    _assert_one_line(rc, err, "pass --data")


def test_converter_that_cannot_lower_an_op(tmp_path, run_dir, capsys, data, monkeypatch):
    """A converter failure mid-run (TFLite after ONNX succeeded) is one line and writes nothing."""
    from export.formats.tflite import import_litert_torch

    litert_torch = import_litert_torch()  # as export imports it: without torch's deprecation chatter

    def unlowerable(*_a, **_k):
        raise RuntimeError("failed to legalize operation 'aten.fancy_op' that was explicitly marked illegal\n<mlir dump>")

    monkeypatch.setattr(litert_torch, "convert", unlowerable)
    out = tmp_path / "o"
    rc, err = _cli(["--checkpoint", str(run_dir), "--format", "onnx,tflite", "--precision", "fp32", "--data", "x",
                    "--calib-samples", "10", "--out", str(out)], capsys)
    _assert_one_line(rc, err, "tflite fp32 conversion of tiny_cnn failed: RuntimeError: failed to legalize")
    assert _entries(out) == []  # the finished ONNX artifact was not installed either


def test_refusal_and_force(tmp_path, run_dir, capsys, data):
    out = tmp_path / "o"
    base = ["--checkpoint", str(run_dir), "--format", "onnx", "--precision", "fp32", "--data", "syn",
            "--calib-samples", "10", "--out", str(out), "--parity-threshold", "1.01"]
    rc, err = _cli(base, capsys)
    _assert_one_line(rc, err, "refused to write: parity broken (tiny_cnn_onnx_fp32 top-1 agreement 1.0000 < 1.01)")
    assert "pass --force" in err
    assert _entries(out) == []
    assert data == [("syn", None), ("isic-archive", None)]  # the training data, then the external set ("auto")

    rc = run_stage(export_main, [*base, "--force", "--simplify"], prog="lesionlite export")
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "forced" in captured.out
    m = read_manifest(out / "tiny_cnn_onnx_fp32")
    assert m.parity["accepted"] is False and m.parity["top1_agreement"] == 1.0
    assert m.extra["simplified"] is True and m.parity["max_abs_logits"] < 1e-4
    assert _entries(out) == ["MODEL_CARD.md", "export_report.json", "export_report.md", "model_card.json",
                            "pytorch_reference.npz", "tiny_cnn_onnx_fp32"]


def test_lesionlite_dispatch_and_python_m(tmp_path):
    """`lesionlite export` dispatches to export.cli; `python -m export` prints one line and exits 2."""
    assert lesionlite_main(["export", "--checkpoint", str(tmp_path / "missing")]) == 2
    proc = subprocess.run([sys.executable, "-m", "export", "--format", "onnx"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("lesionlite export: error:") and "--checkpoint" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_default_data_is_the_checkpoints_own(tmp_path):
    """Without --data, export finds the checkpoint's data through distill.data (name → spec, fingerprint)."""
    load_dataset = pytest.importorskip("distill.data").load_dataset
    from export.api import export_model

    real = load_dataset("synthetic", None, 0)
    run = make_tiny_checkpoint(tmp_path / "run", real, steps=20,
                               data={"name": real.name, "fingerprint": real.fingerprint, "synthetic": True})
    report = export_model(run, tmp_path / "o", "onnx", "fp32", calib_samples=16, eval_samples=40)
    assert report.data["name"] == real.name and report.data["fingerprint"] == real.fingerprint
    assert report.artifacts[0].parity["top1_agreement"] == 1.0


def test_no_bias_correction_quantizes_the_model_as_trained(tmp_path, run_dir, capsys, data):
    out = tmp_path / "o"
    args = ["--checkpoint", str(run_dir), "--format", "onnx", "--precision", "int8", "--data", "syn",
            "--calib-samples", "10", "--out", str(out), "--force"]
    assert run_stage(export_main, [*args, "--no-bias-correction"], prog="lesionlite export") == 0, capsys.readouterr().err
    assert "preparation" not in read_manifest(out / "tiny_cnn_onnx_int8").extra["quantization"]
    assert run_stage(export_main, args, prog="lesionlite export") == 0, capsys.readouterr().err
    assert read_manifest(out / "tiny_cnn_onnx_int8").extra["quantization"]["preparation"]["corrected_layers"] == 5


def test_help_states_each_default_once(capsys):
    """`export --help` said "(default: RUN_DIR/export) (default: None)"; each default appears once now."""
    from export.cli import build_parser

    text = build_parser().format_help()
    assert "(default: None)" not in text and "(default: False)" not in text
    assert ") (default:" not in text.replace("\n", " ")
    assert "(default: 300)" in text  # a plain default is still shown
