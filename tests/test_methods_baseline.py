"""The baseline methods: class-weighted CE (scratch) and Hinton KD, their losses and tiny real runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.config import resolve_config
from distill.methods.base import Batch, MethodContext
from distill.methods.kd import KD, KDConfig, kd_loss
from distill.methods.registry import get_method, list_methods
from distill.methods.scratch import Scratch, ScratchConfig, class_weights, weighted_cross_entropy
from distill.models import build_model
from lesionlite.errors import LesionliteError

TINY = {
    "data.name": "synthetic", "data.image_size": 16, "data.workers": 0,
    "data.options": {"synthetic_counts": [112, 28, 28]}, "model.arch": "tiny_cnn", "optim.lr": 0.01,
    "optim.batch_size": 16, "run.threads": 1, "run.device": "cpu", "run.progress": False,
    "run.plots": False,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ctx(counts: list[int]) -> MethodContext:
    return MethodContext(num_classes=len(counts), class_counts=counts, num_train=sum(counts),
                         device=torch.device("cpu"), epochs=1, steps_per_epoch=1)


def test_registered() -> None:
    assert {"scratch", "kd"} <= set(list_methods())
    assert get_method("scratch") is Scratch and get_method("kd") is KD
    assert Scratch.config_cls is ScratchConfig and KD.config_cls is KDConfig
    assert KD.needs_teacher and not Scratch.needs_teacher


def test_class_weights_normalisation() -> None:
    w = class_weights([10, 30, 0, 60])
    n, k_present = 100, 3
    assert w.tolist() == pytest.approx([n / (k_present * 10), n / (k_present * 30), 0.0, n / (k_present * 60)])
    # mean weight over the training samples is 1
    assert float((w * torch.tensor([10.0, 30, 0, 60])).sum() / n) == pytest.approx(1.0)
    assert class_weights([5, 5, 5]).tolist() == pytest.approx([1.0, 1.0, 1.0])
    with pytest.raises(LesionliteError):
        class_weights([0, 0])


def test_weighted_cross_entropy_matches_manual() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    w = torch.tensor([0.5, 2.0, 1.0])
    per = -torch.log_softmax(logits, 1)[torch.arange(6), y]
    assert weighted_cross_entropy(logits, y, w).item() == pytest.approx((per * w[y]).mean().item(), rel=1e-6)
    assert weighted_cross_entropy(logits, y, None).item() == pytest.approx(per.mean().item(), rel=1e-6)


def _kd_reference(s: np.ndarray, t: np.ndarray, y: np.ndarray, temp: float, alpha: float, w: np.ndarray) -> float:
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    log_ps, log_pt = log_softmax(s / temp), log_softmax(t / temp)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(1).mean() * temp**2
    ce = (-log_softmax(s)[np.arange(len(y)), y] * w[y]).mean()
    return alpha * kl + (1 - alpha) * ce


@pytest.mark.parametrize("temp,alpha", [(4.0, 0.9), (1.0, 0.5), (2.5, 1.0), (3.0, 0.0)])
def test_kd_loss_equals_float64_reference(temp: float, alpha: float) -> None:
    rng = np.random.default_rng(int(temp * 10 + alpha * 100))
    s = rng.normal(scale=3, size=(8, 5))
    t = rng.normal(scale=3, size=(8, 5))
    y = rng.integers(0, 5, 8)
    w = rng.uniform(0.2, 3, 5)
    ref = _kd_reference(s, t, y, temp, alpha, w)
    total, _, _ = kd_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32),
                          torch.tensor(y), temp, alpha, torch.tensor(w, dtype=torch.float32))
    assert total.item() == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_kd_gradient_is_t_times_prob_difference() -> None:
    torch.manual_seed(1)
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3)
    temp = 3.0
    total, _, _ = kd_loss(s, t, torch.zeros(4, dtype=torch.long), temp, alpha=1.0)
    total.backward()
    expected = temp * (torch.softmax(s.detach() / temp, 1) - torch.softmax(t / temp, 1)) / 4
    assert torch.allclose(s.grad, expected, atol=1e-6)


def test_kd_needs_teacher_and_keeps_it_frozen() -> None:
    student, teacher = build_model("tiny_cnn", 3), build_model("tiny_cnn", 3)
    with pytest.raises(LesionliteError, match="teacher"):
        KD(student, None, KDConfig(), _ctx([4, 4, 4]))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    m = KD(student, teacher, KDConfig(), _ctx([4, 4, 4]))
    m.train()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("teacher") for k in m.state_dict())  # never saved with the method
    batch = Batch(images=torch.randn(6, 1, 3, 16, 16), labels=torch.tensor([0, 1, 2, 0, 1, 2]), indices=torch.arange(6))
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.1)
    out = m.training_loss(batch, 0, 0)
    assert set(out.logs) == {"kd", "ce"} and out.logits.shape == (6, 3)
    out.loss.backward()
    opt.step()
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running stats too: the teacher runs in eval mode


def test_method_configs_validate_and_resolve_from_set() -> None:
    with pytest.raises(LesionliteError, match="alpha"):
        KDConfig(alpha=1.5)
    with pytest.raises(LesionliteError, match="temperature"):
        KDConfig(temperature=0)
    cfg = resolve_config(flags={"method.name": "kd"}, sets=["method.temperature=3", "method.class_weighted=false"])
    assert isinstance(cfg.method, KDConfig)
    assert cfg.method.temperature == 3.0 and isinstance(cfg.method.temperature, float)
    assert cfg.method.class_weighted is False and cfg.method.alpha == 0.9
    with pytest.raises(LesionliteError, match="unknown config key 'method.temprature'.*temperature"):
        resolve_config(flags={"method.name": "kd"}, sets=["method.temprature=3"])
    with pytest.raises(LesionliteError, match="method.alpha"):
        resolve_config(flags={"method.name": "kd"}, sets=["method.alpha=high"])


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory: pytest.TempPathFactory):
    from distill.train import train

    out = tmp_path_factory.mktemp("runs") / "scratch"
    cfg = resolve_config(flags={**TINY, "method.name": "scratch", "run.epochs": 4, "run.out": str(out)})
    return train(cfg)


def test_scratch_lowers_training_loss(scratch_run) -> None:
    h = scratch_run.history
    assert len(h) == 4
    assert h[-1]["train_loss"] < 0.85 * h[0]["train_loss"], [r["train_loss"] for r in h]
    assert h[-1]["train_ce"] == pytest.approx(h[-1]["train_loss"])


def test_kd_lowers_training_loss_with_the_scratch_teacher(scratch_run, tmp_path: Path) -> None:
    from distill.train import train

    cfg = resolve_config(flags={**TINY, "method.name": "kd", "model.teacher": str(scratch_run.run_dir),
                                "run.epochs": 4, "run.out": str(tmp_path / "kd")},
                         sets=["method.temperature=2"])
    res = train(cfg)
    h = res.history
    assert h[-1]["train_loss"] < 0.85 * h[0]["train_loss"], [r["train_loss"] for r in h]
    assert {"train_kd", "train_ce"} <= set(h[0])
    for r in h:  # the total is exactly alpha·kd + (1 − alpha)·ce, epoch means included
        assert r["train_loss"] == pytest.approx(0.9 * r["train_kd"] + 0.1 * r["train_ce"], rel=1e-5)
    from lesionlite.manifest import read_manifest

    man = read_manifest(res.run_dir)
    assert man.extra["method"] == "kd" and man.extra["teacher"]["run_dir"] == str(scratch_run.run_dir)
    assert man.extra["method_config"]["temperature"] == 2.0


def test_class_weighted_kl_is_the_weighted_mean_of_per_image_kl() -> None:
    """method.kl_class_weighted: Σ w_y·KLᵢ / Σ w_y (the CE's normalisation); equal weights = Hinton's term."""
    from distill.methods.kd import kd_kl

    torch.manual_seed(0)
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    labels = torch.tensor([0, 0, 0, 1, 2, 3])
    w = torch.tensor([0.5, 2.0, 3.0, 4.0])
    temp = 3.0
    per_row = (F.softmax(t / temp, 1) * (F.log_softmax(t / temp, 1) - F.log_softmax(s / temp, 1))).sum(1) * temp**2
    expect = (w[labels] * per_row).sum() / w[labels].sum()
    total, kl, _ = kd_loss(s, t, labels, temp, alpha=1.0, weights=w, kl_class_weighted=True)
    assert torch.allclose(kl, expect, atol=1e-5) and torch.allclose(total, expect, atol=1e-5)
    assert torch.allclose(kd_kl(s, t, temp, torch.ones(6)), kd_kl(s, t, temp), atol=1e-6)
    assert not torch.allclose(kl, kd_kl(s, t, temp))  # the minority rows now count more
    with pytest.raises(LesionliteError, match="needs method.class_weighted=true"):
        KDConfig(kl_class_weighted=True, class_weighted=False)
