"""The shared training loop, its config and CLI: exact resume, artifacts, reload, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from distill.cli import main as cli_main
from distill.config import TrainConfig, config_from_dict, resolve_config
from distill.optim import cosine_factor
from distill.train import train
from lesionlite.cli import run_stage
from lesionlite.errors import LesionliteError

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "data.name": "synthetic", "data.image_size": 16, "data.workers": 0,
    "data.options": {"synthetic_counts": [84, 21, 21]}, "model.arch": "tiny_cnn", "optim.lr": 0.01,
    "optim.batch_size": 16, "run.threads": 1, "run.device": "cpu", "run.progress": False,
    "run.plots": False,
}
TINY_ARGS = ["--data", "synthetic", "--image-size", "16", "--model", "tiny_cnn", "--workers", "0", "--device", "cpu",
             "--no-progress", "--set", "data.options={synthetic_counts: [84, 21, 21]}", "--set", "run.threads=1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------ config
def test_config_precedence_yaml_flags_set(tmp_path: Path) -> None:
    y = tmp_path / "exp.yaml"
    y.write_text(yaml.safe_dump({"method": {"name": "kd", "alpha": 0.5}, "optim": {"lr": 0.5, "batch_size": 8},
                                 "run": {"epochs": 7}}))
    cfg = resolve_config(y, flags={"optim.lr": 0.25}, sets=["optim.lr=0.125", "optim.betas=[0.8, 0.9]"])
    assert cfg.method_name == "kd" and cfg.method.alpha == 0.5 and cfg.method.temperature == 4.0
    assert cfg.optim.lr == 0.125 and cfg.optim.batch_size == 8 and cfg.run.epochs == 7
    assert cfg.optim.betas == (0.8, 0.9)
    # a YAML round trip gives the same config
    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    # switching method drops the other method's fields instead of failing on them
    cfg2 = resolve_config(y, flags={"method.name": "scratch"})
    assert cfg2.method_name == "scratch" and not hasattr(cfg2.method, "alpha")


@pytest.mark.parametrize("sets, needle", [
    (["optim.lrr=1"], "unknown config key 'optim.lrr'; did you mean 'optim.lr'"),
    (["optimizer.lr=1"], "unknown config key 'optimizer'"),
    (["optim.batch_size=many"], "optim.batch_size.*expected int"),
    (["optim.name=rmsprop"], "optim.name.*'sgd'"),
    (["run.epochs=0"], "run.epochs must be at least 1"),
    (["method.name=nope"], "unknown method 'nope'"),
    (["optim=3"], "is a section"),
    (["novalue"], "key.sub=value"),
])
def test_config_errors_name_the_key(sets: list[str], needle: str) -> None:
    with pytest.raises(LesionliteError, match=needle):
        resolve_config(sets=sets)


def test_cosine_schedule_shape() -> None:
    assert cosine_factor(0, 100, 10, 0.1, 0.0) == pytest.approx(0.1)
    assert cosine_factor(10, 100, 10, 0.1, 0.0) == pytest.approx(1.0)
    assert cosine_factor(55, 100, 10, 0.1, 0.0) == pytest.approx(0.5)
    assert cosine_factor(100, 100, 10, 0.1, 0.05) == pytest.approx(0.05)


# ------------------------------------------------------------------------------------------------ runs
def _cfg(out: Path, **extra) -> TrainConfig:
    return resolve_config(flags={**TINY, "run.out": str(out), **extra})


class _Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("runs") / "full"
    cfg = resolve_config(flags={**TINY, "run.out": str(out), "run.epochs": 4, "schedule.name": "cosine",
                                "optim.name": "sgd", "run.plots": True})
    return train(cfg)


def test_resume_reproduces_an_uninterrupted_run(full_run, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    cfg = resolve_config(flags={**TINY, "run.out": str(out), "run.epochs": 4, "schedule.name": "cosine",
                                "optim.name": "sgd"})

    def crash(rec: dict) -> None:
        if rec["epoch"] == 2:
            raise _Crash("simulated crash after epoch 2")

    with pytest.raises(_Crash):
        train(cfg, on_epoch=crash)
    assert not (out / "student.pt").exists()
    with pytest.raises(LesionliteError, match="--resume"):  # an existing run is never silently replaced
        train(cfg)
    with pytest.raises(LesionliteError, match="optim.lr"):  # resuming with a different recipe is refused
        train(resolve_config(flags={**TINY, "run.out": str(out), "run.epochs": 4, "optim.name": "sgd",
                                    "optim.lr": 0.5}), resume=True)
    res = train(cfg, resume=True)
    assert [r["epoch"] for r in res.history] == [1, 2, 3, 4]
    for a, b in zip(full_run.history, res.history):
        for k in ("train_loss", "val_loss", "val_balanced_accuracy", "lr"):
            assert a[k] == b[k], (k, a["epoch"], a[k], b[k])
    last_a = torch.load(full_run.run_dir / "last.pt", weights_only=True)
    last_b = torch.load(out / "last.pt", weights_only=True)
    for k, v in last_a["model"].items():
        assert torch.equal(v, last_b["model"][k]), k
    assert res.metrics == full_run.metrics
    assert res.best_epoch == full_run.best_epoch
    log_lines = (out / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log_lines] == [1, 2, 3, 4]


def test_artifacts_and_reload_gives_identical_logits(full_run) -> None:
    from distill.artifacts import load_student
    from distill.data import load_dataset
    from distill.metrics import classification_report
    from distill.models import build_model
    from distill.transforms import eval_transform

    run = full_run.run_dir
    for name in ("config.yaml", "last.pt", "student.pt", "manifest.json", "metrics.json", "train_log.jsonl",
                 "train.log", "curves.png", "confusion_matrix.png", "reliability.png"):
        assert (run / name).is_file(), name
    model, man = load_student(run)
    assert man.kind == "checkpoint" and man.architecture == "tiny_cnn" and man.num_classes == 7
    assert man.preprocessing.input_size == 16 and man.temperature > 0
    ood = man.calibration["ood"]  # fitted on the 21 validation images (lesionlite.ood), read by serve
    assert ood["n"] == 21 and ood["energy_threshold"] is not None and len(ood["mean"]) == 7
    assert 0.0 <= ood["val_abstain_rate"] <= 0.1
    assert man.data["synthetic"] is True and man.data["name"] == "synthetic" and man.data["fingerprint"]
    assert man.extra["method"] == "scratch" and man.extra["epochs"] == 4 and man.extra["seed"] == 0
    assert man.extra["images_per_s"] > 0 and man.extra["wall_time_s"] > 0
    for k in ("val_accuracy", "val_balanced_accuracy", "val_macro_f1", "val_ece", "val_ece_calibrated",
              "test_accuracy", "test_balanced_accuracy", "test_macro_auc", "test_ece", "test_nll"):
        assert isinstance(man.metrics[k], float), k
    doc = json.loads((run / "metrics.json").read_text())
    assert doc["synthetic"] is True and "SYNTHETIC" in doc["note"] and "SYNTHETIC" in doc["title"]
    assert len(doc["test"]["confusion_matrix"]) == 7

    # the reloaded student equals the best weights kept in last.pt, logit for logit
    best = torch.load(run / "last.pt", weights_only=True)["best"]
    ref = build_model("tiny_cnn", 7)
    ref.load_state_dict(best["state_dict"])
    ref.eval()
    bundle = load_dataset("synthetic", seed=0, synthetic_size=16, synthetic_counts=(84, 21, 21))
    tf = eval_transform(man.preprocessing)
    x = torch.stack([tf(bundle.test[i][0]) for i in range(len(bundle.test))])
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(logits, ref(x))
    # and reproduces the test metrics in the manifest
    rep = classification_report(bundle.test.labels, logits.numpy())
    assert rep["accuracy"] == pytest.approx(man.metrics["test_accuracy"])
    assert rep["balanced_accuracy"] == pytest.approx(man.metrics["test_balanced_accuracy"])


def test_early_stop_and_plateau(tmp_path: Path) -> None:
    # lr ~0 -> the predictions never change -> val balanced accuracy never improves after epoch 1
    cfg = _cfg(tmp_path / "es", **{"run.epochs": 6, "run.early_stop": 2, "optim.lr": 1e-6, "optim.name": "sgd",
                                   "schedule.name": "plateau", "schedule.plateau_patience": 0,
                                   "schedule.plateau_monitor": "val_balanced_accuracy",
                                   "schedule.plateau_min_lr": 0.0})
    res = train(cfg)
    assert res.stopped_early and res.epochs_run == 3 and res.best_epoch == 1
    lrs = [r["lr"] for r in res.history]
    assert lrs[0] == lrs[1] == pytest.approx(1e-6) and lrs[2] == pytest.approx(1e-7)  # plateau cut it after epoch 2


def test_onecycle_and_adam_run(tmp_path: Path) -> None:
    res = train(_cfg(tmp_path / "oc", **{"run.epochs": 2, "schedule.name": "onecycle", "optim.name": "adam",
                                         "optim.grad_clip": 1.0, "run.max_steps_per_epoch": 3}))
    assert res.epochs_run == 2 and res.history[-1]["step"] == 6


# ------------------------------------------------------------------------------------------------ CLI
def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = run_stage(cli_main, argv, prog="lesionlite distill")
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_lists_and_prints_config(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _cli(["--list-methods", "--list-models"], capsys)
    assert rc == 0 and "scratch" in out and "kd" in out and "tiny_cnn" in out and "method.temperature" in out
    rc, out, _ = _cli(["--method", "kd", "--lr", "0.02", "--no-amp", "--set", "method.temperature=3", "--print-config"],
                      capsys)
    cfg = config_from_dict(yaml.safe_load(out))
    assert rc == 0 and cfg.method.temperature == 3.0 and cfg.optim.lr == 0.02 and cfg.run.amp is False


@pytest.fixture(scope="module")
def wrong_class_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from distill.artifacts import save_student
    from distill.models import build_model
    from lesionlite.manifest import Manifest
    from lesionlite.preprocessing import PreprocessConfig

    d = tmp_path_factory.mktemp("teacher3")
    save_student(d, build_model("tiny_cnn", 3), Manifest(kind="checkpoint", architecture="tiny_cnn",
                                                          class_names=["a", "b", "c"],
                                                          preprocessing=PreprocessConfig(input_size=16)))
    return d


@pytest.mark.parametrize("argv, needle", [
    (["--model", "resnet9000"], "unknown model 'resnet9000'"),
    (["--method", "magic"], "unknown method 'magic'"),
    (["--method", "kd"], "needs a teacher: pass --teacher"),
    (["--method", "kd", "--teacher", "/nonexistent/run"], "teacher checkpoint not found"),
    (["--method", "kd", "--teacher", "WRONG_CLASSES"], "predicts 3 classes"),
    (["--data", "ham10000", "--data-root", "/nonexistent/data"], "data root /nonexistent/data does not exist"),
    (["--epochs", "ten"], "argument --epochs: invalid int value"),
    (["--set", "optim.lrr=1"], "did you mean 'optim.lr'"),
    (["--config", "/nonexistent.yaml"], "config file not found"),
    (["--resume"], "needs the run directory"),
])
def test_cli_errors_are_one_line_exit_2(argv: list[str], needle: str, tmp_path: Path,
                                        wrong_class_teacher: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(wrong_class_teacher) if a == "WRONG_CLASSES" else a for a in argv]
    extra = [] if argv == ["--resume"] else ["--out", str(tmp_path / "run")]
    rc, _, err = _cli(TINY_ARGS + argv + extra, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lesionlite distill: error:"), err
    assert needle in lines[0], lines[0]


@pytest.mark.slow
def test_python_m_distill_error_subprocess(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "distill", "--model", "nope", "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distill: error: unknown model 'nope'; available: "), out.stderr
    assert "tiny_cnn" in lines[0]


def test_cli_trains_and_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _cli(TINY_ARGS + ["--epochs", "1", "--out", str(tmp_path / "cli")], capsys)
    assert rc == 0, err
    assert "SYNTHETIC DATA" in out and "test bal-acc" in out and str(tmp_path / "cli") in out
    assert yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())["data"]["image_size"] == 16
    rc, _, err = _cli(TINY_ARGS + ["--epochs", "1", "--out", str(tmp_path / "cli")], capsys)
    assert rc == 2 and "already holds a run" in err


def test_kill_during_checkpoint_write_leaves_no_orphan_and_no_duplicate_epoch(tmp_path: Path, monkeypatch) -> None:
    """A process killed while writing last.pt (simulated: the write dies half-way) leaves a temporary
    file and an epoch line the checkpoint does not hold; --resume removes the first, rewrites the log
    from the checkpoint, and refuses an --epochs below what already ran."""
    import distill.train as T

    out = tmp_path / "run"
    cfg = resolve_config(flags={**TINY, "run.out": str(out), "run.epochs": 3, "optim.name": "sgd"})
    real_save = T.save_checkpoint

    def dying_save(path: Path, payload: dict) -> None:
        if payload["epoch"] == 2:  # what SIGKILL leaves: lesionlite.atomic's temporary, never renamed
            (path.parent / f".{path.name}.k1ll3d.tmp").write_bytes(b"partial")
            raise _Crash("killed during the checkpoint write")
        real_save(path, payload)

    monkeypatch.setattr(T, "save_checkpoint", dying_save)
    with pytest.raises(_Crash):
        train(cfg)
    monkeypatch.setattr(T, "save_checkpoint", real_save)
    assert list(out.glob(".last.pt.*.tmp"))
    assert [json.loads(x)["epoch"] for x in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    res = train(cfg, resume=True)
    assert not list(out.glob(".*.tmp"))
    assert [json.loads(x)["epoch"] for x in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert [r["epoch"] for r in res.history] == [1, 2, 3]


@pytest.mark.parametrize("method", ["udcd", "udcd-code", "ssdkd"])
def test_resume_of_a_method_with_its_own_sampling_generator_is_exact(method: str, tmp_path: Path) -> None:
    """UDCD samples triplets/negatives from a generator that runs on across epochs: a resumed run must continue
    it where the checkpoint stood (a CPU-protocol seed resumed at epoch 17 differed from its record after it).
    SSD-KD (a teacher, rotated views, the self-supervised warm-up epochs) is checked the same way, as its
    protocol runs take hours and are resumed across sessions."""
    flags = {**TINY, "method.name": method, "run.epochs": 3, "optim.name": "sgd"}
    if method == "udcd":
        flags["method.max_triplets"] = 8
    elif method == "udcd-code":
        flags.update({"method.nce_k": 8, "method.warmup_epochs": 0, "method.cons_rampup_epochs": 1.0})
    else:
        teacher = train(resolve_config(flags={**TINY, "run.epochs": 1, "run.out": str(tmp_path / "teacher")}))
        flags.update({"model.teacher": str(teacher.run_dir), "method.ss_epochs": 2})
    full = train(resolve_config(flags={**flags, "run.out": str(tmp_path / "full")}))
    out = tmp_path / "resumed"

    def crash(rec: dict) -> None:
        if rec["epoch"] == 1:
            raise _Crash("simulated crash after epoch 1")

    with pytest.raises(_Crash):
        train(resolve_config(flags={**flags, "run.out": str(out)}), on_epoch=crash)
    res = train(resolve_config(flags={**flags, "run.out": str(out)}), resume=True)
    assert [r["train_loss"] for r in res.history] == [r["train_loss"] for r in full.history]
    a = torch.load(full.run_dir / "last.pt", weights_only=True)
    b = torch.load(out / "last.pt", weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    if method != "ssdkd":
        assert torch.equal(a["method_state"]["sampling_generator_state"], b["method_state"]["sampling_generator_state"])


def test_illuminant_augmentation_reaches_the_training_views(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import distill.run_setup as run_setup

    seen = []
    real = run_setup.train_transform
    monkeypatch.setattr(run_setup, "train_transform", lambda *a: (seen.append(a), real(*a))[1])
    train(resolve_config(flags={**TINY, "run.epochs": 1, "run.out": str(tmp_path / "r"), "data.illuminant_augment": 0.3}))
    assert seen and seen[0][2] == 0.3
    for bad, msg in ((-0.1, "data.illuminant_augment must be a finite number >= 0"),
                     (float("nan"), "data.illuminant_augment must be a finite number >= 0")):
        with pytest.raises(LesionliteError, match=msg):
            resolve_config(flags={**TINY, "run.out": str(tmp_path / "x"), "data.illuminant_augment": bad})
    with pytest.raises(LesionliteError, match="data.augment none"):
        resolve_config(flags={**TINY, "run.out": str(tmp_path / "x"), "data.illuminant_augment": 0.3,
                              "data.augment": "none"})


def test_resume_refuses_fewer_epochs_than_already_run(full_run, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(full_run.run_dir, out)
    cfg = resolve_config(flags={**TINY, "run.out": str(out), "run.epochs": 2, "schedule.name": "cosine",
                                "optim.name": "sgd"})
    with pytest.raises(LesionliteError, match="already run 4 epochs; pass --epochs 4 or more"):
        train(cfg, resume=True)


def test_teacher_sees_its_native_larger_input_and_the_student_a_downscale(tmp_path: Path) -> None:
    """model.teacher_input=native: views at the teacher's 32 px, the student trained on their 16 px
    downscale (seen by a hook on its features), evaluated and saved at 16 px as usual."""
    from distill.artifacts import load_student

    base = {**TINY, "data.synthetic_size": 32}
    teacher = train(resolve_config(flags={**base, "data.image_size": 32, "run.epochs": 1, "run.out": str(tmp_path / "t")}))
    seen: dict[str, set] = {"student": set(), "teacher": set()}

    def run(mode: str) -> None:
        cfg = resolve_config(flags={**base, "method.name": "kd", "model.teacher": str(teacher.run_dir),
                                    "model.teacher_input": mode, "run.epochs": 1, "run.out": str(tmp_path / mode)})
        import distill.run_setup as R

        real = R.install_student_downscale

        def spy(student, size):
            handle = real(student, size)
            student.features.register_forward_hook(lambda m, a, out: seen["student"].add(tuple(a[0].shape[-2:])))
            return handle

        R.install_student_downscale = spy
        try:
            res = train(cfg)
        finally:
            R.install_student_downscale = real
        model, man = load_student(res.run_dir)
        assert man.preprocessing.input_size == 16 and model(torch.zeros(1, 3, 16, 16)).shape == (1, 7)

    run("native")
    assert seen["student"] == {(16, 16)}  # every training and eval input reached the student at 16 px
    assert "teacher sees its native 32px" in (tmp_path / "native" / "train.log").read_text()
    run("student")
    assert "teacher sees its native" not in (tmp_path / "student" / "train.log").read_text()
