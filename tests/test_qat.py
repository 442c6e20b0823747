"""Quantization-aware fine-tuning (``distill --method qat``): folding, fake quantization, a real tiny run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import qat_probe
from distill.config import resolve_config
from distill.methods.base import MethodContext
from distill.methods.qat import QAT, ActivationRange, QATConfig, fold_batchnorm_into_identity
from distill.models import build_model
from lesionlite.errors import LesionliteError
from lesionlite.int8_grid import snap_to_int8_grid

TINY = {
    "data.name": "synthetic", "data.image_size": 16, "data.workers": 0,
    "data.options": {"synthetic_counts": [112, 28, 28]}, "model.arch": "tiny_cnn", "optim.lr": 0.01,
    "optim.batch_size": 16, "run.threads": 1, "run.device": "cpu", "run.progress": False, "run.plots": False,
}


def _ctx() -> MethodContext:
    return MethodContext(num_classes=3, class_counts=[4, 4, 4], num_train=12, device=torch.device("cpu"),
                         epochs=1, steps_per_epoch=1)


def _trained_like(arch: str = "tiny_cnn") -> nn.Module:
    """A model with non-trivial BatchNorm statistics, as after training."""
    torch.manual_seed(0)
    m = build_model(arch, 3)
    with torch.no_grad():
        for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    return m.eval()


def _conv_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_fold_batchnorm_into_identity_keeps_function_and_format():
    model = _trained_like()
    keys = set(model.state_dict())
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        pairs = fold_batchnorm_into_identity(model)
        after = model(x)
    assert pairs == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0
    assert torch.allclose(before, after, atol=1e-5)
    assert set(model.state_dict()) == keys  # same checkpoint format: loads into a fresh model
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.running_mean == 0)
        assert torch.all(1 / torch.sqrt(bn.running_var + bn.eps) == 1)  # exactly the identity scale


def test_activation_range_fake_quantizes_on_256_levels_including_zero():
    act = ActivationRange()
    x = torch.linspace(0.5, 6.0, 1000)
    assert torch.equal(act(x), x)  # no range yet: pass through
    act.observe(x, None)
    assert float(act.lo) == 0.0 and float(act.hi) == 6.0  # the range always includes 0
    y = act(x)
    scale = 6.0 / 255
    assert len(torch.unique(y)) <= 256
    assert (y - x).abs().max() <= scale / 2 + 1e-6
    act.observe(torch.full((4,), 12.0), 0.5)  # EMA while training
    assert float(act.hi) == pytest.approx(9.0)


def test_qat_starts_from_the_teacher_and_exports_grid_weights():
    teacher = _trained_like()
    t_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_model("tiny_cnn", 3)
    with pytest.raises(LesionliteError, match="--teacher"):
        QAT(student, None, QATConfig(), _ctx())
    method = QAT(student, teacher, QATConfig(), _ctx())
    x = torch.randn(8, 3, 16, 16)
    float_copy = build_model("tiny_cnn", 3).eval()
    float_copy.load_state_dict(method.student.state_dict())
    with torch.no_grad():  # the student's float weights are the teacher's with BatchNorm folded
        assert torch.allclose(float_copy(x), teacher(x), atol=1e-5)
        method.student.eval()  # its forward already rounds the weights (activations: not until calibrated)
        assert 0 < (method.student(x) - teacher(x)).abs().max() < 0.05
    method.prepare([type("B", (), {"images": x[:, None]})()], None)
    assert all(bool(a.seen) for a in method.act_ranges)
    state = method.student_state_for_export()
    assert set(state) == set(t_state)
    fresh = build_model("tiny_cnn", 3)
    fresh.load_state_dict(state)
    for w in _conv_weights(fresh):
        assert torch.allclose(snap_to_int8_grid(w), w, atol=1e-6)
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in t_state.items())  # teacher untouched
    assert not any(k.startswith("student.") for k in method.extra_state_dict())
    with pytest.raises(LesionliteError, match="--model with that run's architecture"):
        QAT(build_model("mobilenet_v2", 3), teacher, QATConfig(), _ctx())


@pytest.mark.slow
def test_qat_run_on_a_trained_tiny_model(tmp_path: Path):
    from distill.artifacts import load_student
    from distill.train import train
    from lesionlite.manifest import read_manifest

    torch.set_num_threads(1)
    base = train(resolve_config(flags={**TINY, "method.name": "scratch", "run.epochs": 4,
                                       "run.out": str(tmp_path / "fp32")}))
    qat = train(resolve_config(flags={**TINY, "method.name": "qat", "model.teacher": str(base.run_dir),
                                      "optim.lr": 0.002, "run.epochs": 2, "run.out": str(tmp_path / "qat")}))
    man = read_manifest(qat.run_dir)
    assert man.extra["method"] == "qat" and man.preprocessing == read_manifest(base.run_dir).preprocessing
    for r in qat.history:  # alpha 0.5: the total is half KD, half CE
        assert r["train_loss"] == pytest.approx(0.5 * r["train_kd"] + 0.5 * r["train_ce"], rel=1e-5)
    model, _ = load_student(qat.run_dir)
    for w in _conv_weights(model):
        assert torch.allclose(snap_to_int8_grid(w), w, atol=1e-6)
    # the simulated-int8 student still does the job the float one learned
    assert man.metrics["test_balanced_accuracy"] >= read_manifest(base.run_dir).metrics["test_balanced_accuracy"] - 0.1


@pytest.mark.slow
def test_qat_probe_compares_qat_int8_with_the_original_float_model(tmp_path: Path):
    """benchmarks/qat_probe.py: QAT copy trained on the run's own data (its config's data section), exported
    as the protocol exports, and the int8 drop measured against the *original* float model's test Bal-ACC."""
    import json

    import yaml

    from distill.data import load_dataset
    from distill.train import train
    from export.api import export_model

    torch.set_num_threads(1)
    base = train(resolve_config(flags={**TINY, "method.name": "scratch", "run.epochs": 3,
                                       "run.out": str(tmp_path / "runs" / "seed0" / "scratch_tiny")}))
    bundle = load_dataset("synthetic", seed=0, synthetic_size=16, synthetic_counts=[112, 28, 28])
    export_model(base.run_dir, base.run_dir / "export", ["onnx"], ["int8"], calib_samples=16, parity_threshold=0.0,
                 dataset=bundle, seed=0)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"export": {"formats": ["onnx"], "calib_samples": 16}}))
    out = tmp_path / "int8_qat.json"
    assert qat_probe.main([str(base.run_dir), "--epochs", "1", "--lr", "0.002", "--batch-size", "16", "--recipe", str(recipe),
                     "--base-out", str(tmp_path / "qat"), "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    float_bal = json.loads((base.run_dir / "manifest.json").read_text())["metrics"]["test_balanced_accuracy"]
    assert row["float_balanced_accuracy"] == float_bal
    assert set(row["ptq"]) == set(row["qat"]) == {"onnx"}
    assert row["qat"]["onnx"]["n"] == 28  # the run's own test split, not the recipe's dataset
    assert row["drop"]["qat"]["onnx"] == pytest.approx(float_bal - row["qat"]["onnx"]["balanced_accuracy"])
    assert row["qat_tflite_drop"] is None and row["qat_within_target"] is False  # no TFLite: no verdict
    assert (tmp_path / "qat" / "seed0_scratch_tiny_qat_e1_lr0.002" / "student.pt").exists()
    assert row["qat_wall_s"] > 0
    args = [str(base.run_dir), "--epochs", "1", "--lr", "0.002", "--batch-size", "16", "--recipe", str(recipe),
            "--base-out", str(tmp_path / "qat"), "--out", str(out)]
    assert qat_probe.main(args) == 0
    again = json.loads(out.read_text())["rows"]
    assert len(again) == 1 and again[0]["qat_wall_s"] == row["qat_wall_s"]  # reused run: same row, its own wall time
    assert again[0]["export_wall_s"] == row["export_wall_s"] > 0
    with pytest.raises(SystemExit, match="batch_size=16, not 8"):  # a reused run must hold the recipe the row names
        qat_probe.main(args[:5] + ["--batch-size", "8"] + args[7:])


def test_qat_probe_runs_the_recipe_the_protocol_declares_unless_told_otherwise():
    """The plain ``qat_probe.py RUN`` command runs the protocol's declared QAT recipe (``export.qat``, the one the
    table's verdict counts); explicit flags win; without a declared recipe the old defaults hold."""
    import argparse


    def resolved(recipe: dict, **flags) -> tuple:
        args = argparse.Namespace(**{"epochs": None, "lr": None, "alpha": None, "recipe": "r.yaml", **flags})
        qat_probe.apply_recipe_defaults(args, recipe)
        return args.epochs, args.lr, args.alpha

    declared = {"export": {"qat": {"epochs": 1, "lr": 1.0e-5, "alpha": 0.9}}}
    assert resolved(declared) == (1, 1e-5, 0.9)
    assert resolved(declared, lr=3e-4) == (1, 3e-4, 0.9)
    assert resolved({"export": {"formats": ["onnx"]}}) == (2, 1e-4, None)
    assert resolved({"export": {"qat": {"epochs": 1, "lr": "1e-5"}}}) == (1, 1e-5, None)  # YAML's string "1e-5"
    with pytest.raises(SystemExit, match="export.qat must be a mapping"):
        resolved({"export": {"qat": "1 epoch"}})


def test_qat_probe_rows_from_two_probes_at_once_are_both_kept(tmp_path: Path):
    """Two probes (one per seed, one per core) write the same results file: each re-reads it under a lock before
    writing, so the second keeps the first's row; a row of the same run and recipe is replaced, not duplicated."""
    import json

    out = tmp_path / "results" / "int8_qat.json"

    def row(seed: int, drop: float) -> dict:
        return {"run": f"runs/cpu/seed{seed}/ssdkd_mobilenet_v2", "qat_epochs": 1, "qat_lr": 1e-5, "qat_alpha": 0.9,
                "qat_tflite_drop": drop}

    qat_probe.record_row(out, row(1, 0.004))
    qat_probe.record_row(out, row(2, 0.006))  # each write merges with what the file holds now, not a copy read at start
    qat_probe.record_row(out, row(1, 0.003))  # the same run and recipe again: replaced
    doc = json.loads(out.read_text())
    assert sorted((r["run"], r["qat_tflite_drop"]) for r in doc["rows"]) == [
        ("runs/cpu/seed1/ssdkd_mobilenet_v2", 0.003), ("runs/cpu/seed2/ssdkd_mobilenet_v2", 0.006)]
    assert list(out.parent.iterdir()) == [out]  # no lock file left beside the results
