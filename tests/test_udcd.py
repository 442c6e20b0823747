"""UDCD (``udcd`` = paper, ``udcd-code`` = public code): every loss term against a float64
reference written here, the EMA teacher, memory-bank bookkeeping, gradient routing, a tiny
training run and the export contract. CPU only, tiny_cnn, a few seconds in all."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F
from _fixtures_train import train_step
from torch.utils.data import Subset, TensorDataset

from distill.methods import udcd_losses as L
from distill.methods.base import Batch, MethodContext
from distill.methods.registry import get_method, list_methods
from distill.models import build_model

D64 = torch.float64


def _ctx(counts=(4, 3, 1)) -> MethodContext:
    return MethodContext(num_classes=len(counts), class_counts=list(counts), num_train=sum(counts),
                         device=torch.device("cpu"), epochs=2, steps_per_epoch=3)


def _method(name: str, counts=(4, 3, 1), **overrides):
    cls = get_method(name)
    torch.manual_seed(0)
    student = build_model("tiny_cnn", num_classes=len(counts))
    cfg = cls.config_cls(**overrides)
    return cls(student, None, cfg, _ctx(counts))


def _fixed_batch(counts=(4, 3, 1)):
    g = torch.Generator().manual_seed(1)
    n = sum(counts)
    base = 2.0 * torch.randn(n, 1, 3, 16, 16, generator=g)
    images = base + 0.1 * torch.randn(n, 2, 3, 16, 16, generator=g)  # two "augmented" views
    labels = torch.tensor([c for c, k in enumerate(counts) for _ in range(k)])
    return Batch(images=images, labels=labels, indices=torch.arange(n))


# ------------------------------------------------------------------------------------ registry
def test_both_variants_registered_with_contract_attributes() -> None:
    assert {"udcd", "udcd-code"} <= set(list_methods())
    for name in ("udcd", "udcd-code"):
        cls = get_method(name)
        assert cls.num_views == 2 and cls.view_mode == "independent" and cls.needs_teacher is False
        assert cls.config_cls().embed_dim == 128 and cls.config_cls().tau == 0.07
        rec = cls.default_overrides
        assert rec["optim.name"] == "adam" and rec["run.epochs"] == 80 and rec["optim.batch_size"] == 64
    c = get_method("udcd-code").config_cls()
    assert ((c.warmup_epochs, c.ccd_weight, c.rel_weight, c.nce_k, c.bank_momentum, c.ema_decay)
            == (20, 0.1, 25.0, 4096, 0.5, 0.99))
    p = get_method("udcd").config_cls()
    assert (p.lambda_kl, p.lambda_scl, p.lambda_cra, p.max_triplets) == (1.0, 1.0, 1.0, 4096)


# ------------------------------------------------------------------------------------ terms
def test_class_weights_and_weighted_ce_match_reference() -> None:
    w = L.inverse_frequency_weights([5, 3, 2, 0])
    assert torch.allclose(w.double(), torch.tensor([2.0, 10 / 3, 5.0, 0.0], dtype=D64))
    torch.manual_seed(0)
    logits = torch.randn(7, 4)
    y = torch.tensor([0, 1, 2, 2, 0, 1, 0])
    s = torch.rand(7) + 0.5
    assert torch.allclose(L.weighted_ce(logits, y, w), F.cross_entropy(logits, y, weight=w), atol=1e-6)
    ld, wd = logits.double(), w.double()
    num = den = 0.0
    for i in range(7):
        ce = -(ld[i, y[i]] - torch.logsumexp(ld[i], 0))
        num += float(s[i]) * wd[y[i]] * ce
        den += wd[y[i]]
    assert math.isclose(float(L.weighted_ce(logits, y, w, s)), float(num / den), rel_tol=1e-5)


def test_psi_hand_cases_and_reference() -> None:
    for c in (2, 5):
        assert torch.allclose(L.normalized_entropy(torch.zeros(3, c)), torch.ones(3))  # uniform -> psi1 = 1
    sharp = L.normalized_entropy(torch.tensor([[30.0, 0.0, 0.0], [0.0, 0.0, 30.0]]))
    assert float(sharp.max()) < 1e-9  # one-hot-ish -> psi1 ~ 0, psi2 ~ 1
    torch.manual_seed(1)
    logits = torch.randn(6, 7, requires_grad=True)
    psi = L.normalized_entropy(logits)
    assert not psi.requires_grad  # no gradient through psi
    p = torch.softmax(logits.detach().double(), 1)
    ref = -(p * p.log()).sum(1) / math.log(7)
    assert torch.allclose(psi.double(), ref, atol=1e-6)
    assert float(psi.min()) >= 0.0 and float(psi.max()) <= 1.0


def test_kl_matches_reference() -> None:
    torch.manual_seed(2)
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    got = L.kl_per_sample(a, b)
    pa, pb = torch.softmax(a.double(), 1), torch.softmax(b.double(), 1)
    ref = torch.tensor([sum(float(pa[i, c] * (pa[i, c].log() - pb[i, c].log())) for c in range(4)) for i in range(5)])
    assert torch.allclose(got.double(), ref.double(), atol=1e-6)
    assert torch.allclose(L.kl_per_sample(a, a), torch.zeros(5), atol=1e-6)


def test_anchors_hand_made_and_empty_class_is_zero_not_nan() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 2.0], [3.0, 4.0], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 1, -1, 0])  # row 3 unlabelled; class 2 has no rows
    a = L.class_anchors(bank, labels, 3)
    inv = 1 / math.sqrt(2)
    # class 0: mean(relu) of rows 0,1,4 = (2, 2) -> (1/√2, 1/√2); class 1: relu(-1, 2) = (0, 2) -> (0, 1)
    assert torch.allclose(a, torch.tensor([[inv, inv], [0.0, 1.0], [0.0, 0.0]]), atol=1e-6)
    z = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=1)
    r = L.relation_matrix(z, a, 0.07)
    assert r.shape == (2, 3) and torch.isfinite(r).all() and torch.all(r[:, 2] == 0)
    assert torch.allclose(r[1, 1], torch.tensor(0.8 / 0.07))


def test_supcon_vs_bank_matches_reference() -> None:
    torch.manual_seed(3)
    z = F.normalize(torch.randn(4, 6), dim=1)
    bank = F.normalize(torch.randn(9, 6), dim=1)
    bl = torch.tensor([0, 1, 2, 0, 1, -1, 0, 2, 1])
    y = torch.tensor([0, 1, 2, 3])  # class 3 has no positive -> 0
    tau = 0.1
    got = L.supcon_vs_bank(z, y, bank, bl, tau)
    zd, bd = z.double(), bank.double()
    for i in range(4):
        valid = [k for k in range(9) if bl[k] >= 0]
        pos = [k for k in valid if bl[k] == y[i]]
        if not pos:
            assert float(got[i]) == 0.0
            continue
        den = torch.logsumexp(torch.stack([zd[i] @ bd[k] / tau for k in valid]), 0)
        ref = -sum(float(zd[i] @ bd[p] / tau - den) for p in pos) / len(pos)
        assert math.isclose(float(got[i]), ref, rel_tol=1e-5)


def _angle_ref(rel: torch.Tensor, p: int, q: int, r: int) -> float:
    a, b = rel[p] - rel[q], rel[p] - rel[r]
    return float((a / a.norm()) @ (b / b.norm()))


def _huber(d: float, delta: float) -> float:
    return 0.5 * d * d / delta if abs(d) < delta else abs(d) - 0.5 * delta


def test_cra_matches_reference_all_triplets() -> None:
    torch.manual_seed(4)
    rs, rt = torch.randn(5, 3) * 3, torch.randn(5, 3) * 3
    w = torch.rand(5)
    trip = L.sample_triplets(5, 4096, None)
    assert trip.shape == (60, 3)  # all 5·4·3 ordered triplets
    got = L.cra_loss(rs, rt, trip, w, huber_delta=0.5)
    total, n = 0.0, 0
    for p, q, r in itertools.permutations(range(5), 3):
        d = _angle_ref(rs.double(), p, q, r) - _angle_ref(rt.double(), p, q, r)
        total += float(w[p]) * _huber(d, 0.5)
        n += 1
    assert n == 60 and math.isclose(float(got), total / n, rel_tol=1e-5)
    assert float(L.cra_loss(rs, rs, trip)) == pytest.approx(0.0, abs=1e-7)
    assert L.sample_triplets(2, 4096, None).shape == (0, 3)


def test_triplet_sampling_is_bounded_distinct_and_seeded() -> None:
    t1 = L.sample_triplets(64, 4096, torch.Generator().manual_seed(7))
    t2 = L.sample_triplets(64, 4096, torch.Generator().manual_seed(7))
    assert t1.shape == (4096, 3) and torch.equal(t1, t2)
    assert int(t1.min()) >= 0 and int(t1.max()) < 64
    assert bool(((t1[:, 0] != t1[:, 1]) & (t1[:, 0] != t1[:, 2]) & (t1[:, 1] != t1[:, 2])).all())


def test_nce_scores_and_loss_match_reference() -> None:
    torch.manual_seed(5)
    z = F.normalize(torch.randn(3, 4), dim=1)
    bank = F.normalize(torch.randn(10, 4), dim=1)
    cidx = torch.tensor([[0, 4, 5, 6], [1, 7, 8, 9], [2, 3, 3, 9]])
    tau, n = 0.07, 10
    s = L.nce_scores(z, bank, cidx, tau)
    ref_s = torch.exp(torch.einsum("bkd,bd->bk", bank.double()[cidx], z.double()) / tau)
    assert torch.allclose(s.double(), ref_s, rtol=1e-5)
    zn = float(ref_s.mean()) * n  # CRD's Z from a first batch
    p = ref_s / zn
    m = 3
    ref = 0.0
    for i in range(3):
        ref += math.log(p[i, 0] / (p[i, 0] + m / n + L.NCE_EPS))
        ref += sum(math.log((m / n) / (p[i, k] + m / n + L.NCE_EPS)) for k in range(1, 4))
    assert math.isclose(float(L.nce_loss((s / zn).float(), n)), -ref / 3, rel_tol=1e-5)


def test_relation_kl_and_consistency_match_reference() -> None:
    torch.manual_seed(6)
    rs, rt = torch.randn(4, 3) * 4, torch.randn(4, 3) * 4
    got = L.uncertainty_weighted_kl(rs, rt, rs)  # L_rel = mean psi(R_s) KL(softmax R_t || softmax R_s)
    ps, pt = torch.softmax(rs.double(), 1), torch.softmax(rt.double(), 1)
    psi = -(ps * ps.log()).sum(1) / math.log(3)
    kl = (pt * (pt.log() - ps.log())).sum(1)
    assert math.isclose(float(got), float((psi * kl).mean()), rel_tol=1e-5)
    s_log, t_log = torch.randn(4, 3), torch.randn(4, 3)
    cons = L.uncertainty_weighted_kl(t_log, s_log, t_log)  # L_cons = mean psi(t) KL(p_s || p_t)
    ps, pt = torch.softmax(s_log.double(), 1), torch.softmax(t_log.double(), 1)
    psi_t = -(pt * pt.log()).sum(1) / math.log(3)
    assert math.isclose(float(cons), float((psi_t * (ps * (ps.log() - pt.log())).sum(1)).mean()), rel_tol=1e-5)


def test_rampup_values() -> None:
    assert L.sigmoid_rampup(0, 30) == pytest.approx(math.exp(-5))
    assert L.sigmoid_rampup(15, 30) == pytest.approx(math.exp(-1.25))
    assert L.sigmoid_rampup(30, 30) == 1.0 and L.sigmoid_rampup(70, 30) == 1.0 and L.sigmoid_rampup(3, 0) == 1.0


# ------------------------------------------------------------------------------------ banks
@pytest.mark.parametrize("policy", ["clip", "replace_if_short"])
def test_negative_indices_in_range_with_tiny_classes(policy: str) -> None:
    bank_labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, -1])  # class 2 has one sample, row 7 unlabelled
    y = torch.tensor([0, 2, 1, 0])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        neg = L.sample_negative_indices(y, bank_labels, 4096, g, policy)
        k = 3 if policy == "clip" else 4096  # class 0 has only 3 other-class rows
        assert neg.shape == (4, k)
        assert int(neg.min()) >= 0 and int(neg.max()) < 8
        assert bool((bank_labels[neg] != y.unsqueeze(1)).all()) and bool((bank_labels[neg] >= 0).all())
    neg = L.sample_negative_indices(y, bank_labels, 4096, g, policy, min_candidates=2)  # host-known bound
    assert neg.shape == (4, 2 if policy == "clip" else 4096) and bool((bank_labels[neg] != y.unsqueeze(1)).all())
    neg = L.sample_negative_indices(torch.tensor([2]), bank_labels, 3, g, policy)
    assert neg.shape == (1, 3) and len(set(neg[0].tolist())) == 3  # enough candidates: no repeats
    assert L.sample_negative_indices(torch.tensor([0]), torch.tensor([0, 0, -1]), 5, g, policy) is None


def test_bank_update_is_momentum_then_renormalise() -> None:
    bank = L.random_unit_bank(5, 4, seed=3)
    assert torch.allclose(bank.norm(dim=1), torch.ones(5)) and torch.equal(bank, L.random_unit_bank(5, 4, seed=3))
    z = F.normalize(torch.randn(2, 4), dim=1)
    new = L.momentum_update_rows(bank, torch.tensor([1, 3]), z, 0.5)
    for j, i in enumerate([1, 3]):
        v = 0.5 * bank[i].double() + 0.5 * z[j].double()
        assert torch.allclose(new[i].double(), v / v.norm(), atol=1e-6)
    assert torch.equal(new[[0, 2, 4]], bank[[0, 2, 4]])


def test_prepare_reads_labels_through_subset() -> None:
    m = _method("udcd")
    full = TensorDataset(torch.zeros(10, 1))
    full.labels = [2, 1, 0, 0, 0, 1, 0, 1, 2, 0]
    sub = Subset(full, [2, 3, 4, 6, 1, 5, 7, 0])  # 8 rows = num_train: labels 0,0,0,0,1,1,1,2

    class Loader:
        dataset = sub

    m.prepare(Loader(), None)
    assert m.bank_labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 2]
    assert m._min_negatives == 4  # class 0 (4 of 8 rows) has the fewest other-class rows
    m2 = _method("udcd")
    m2.prepare(None, None)  # no labels available: filled from batches instead
    assert m2.bank_labels.tolist() == [-1] * 8
    m2.train()
    m2.training_loss(_fixed_batch(), 0, 0)
    assert m2.bank_labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 2]


def test_nce_normaliser_frozen_at_first_batch() -> None:
    m = _method("udcd-code", warmup_epochs=0)
    a = m._normalise(torch.full((2, 3), 2.0), "nce_z_s")
    assert float(m.nce_z_s) == pytest.approx(2.0 * 8)
    b = m._normalise(torch.full((2, 3), 50.0), "nce_z_s")
    assert float(m.nce_z_s) == pytest.approx(16.0) and torch.allclose(b, torch.full((2, 3), 50.0 / 16))
    assert torch.allclose(a, torch.full((2, 3), 2.0 / 16))


# ------------------------------------------------------------------------------------ EMA teacher
@pytest.mark.parametrize("step, alpha", [(0, 0.0), (1, 0.5), (5, 5 / 6), (1000, 0.99)])
def test_ema_update_exact(step: int, alpha: float) -> None:
    m = _method("udcd")
    g = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for mod in (m.student, m.student_head, m.ema.model, m.ema.head):
            for p in mod.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            for _name, b in mod.named_buffers():
                if b.is_floating_point():
                    b.copy_(torch.rand(b.shape, generator=g) + 0.1)
                else:
                    b.fill_(int(torch.randint(0, 100, (1,), generator=g)))
    before_t = {k: v.clone().double() for k, v in itertools.chain(
        (("m." + k, v) for k, v in m.ema.model.state_dict().items()),
        (("h." + k, v) for k, v in m.ema.head.state_dict().items()))}
    src = {**{"m." + k: v.double() for k, v in m.student.state_dict().items()},
           **{"h." + k: v.double() for k, v in m.student_head.state_dict().items()}}
    m.after_optimizer_step(step)
    after = {**{"m." + k: v for k, v in m.ema.model.state_dict().items()},
             **{"h." + k: v for k, v in m.ema.head.state_dict().items()}}
    assert set(after) == set(src)
    for k, v in after.items():
        if k.endswith("num_batches_tracked"):
            assert torch.equal(v.double(), src[k])  # integer buffers copied
        else:  # parameters AND BN running stats: alpha*teacher + (1-alpha)*student
            assert torch.allclose(v.double(), alpha * before_t[k] + (1 - alpha) * src[k], atol=1e-6), k


def test_teacher_forward_keeps_its_bn_buffers_and_uses_no_dropout() -> None:
    m = _method("udcd")
    m.train()
    before = {k: v.clone() for k, v in m.ema.model.state_dict().items() if "running" in k}
    s_before = {k: v.clone() for k, v in m.student.state_dict().items() if "running" in k}
    m.training_loss(_fixed_batch(), 0, 0)
    for k, v in m.ema.model.state_dict().items():
        if "running" in k:
            assert torch.equal(v, before[k]), k  # teacher BN buffers change only through the EMA
    assert any(not torch.equal(v, s_before[k]) for k, v in m.student.state_dict().items() if "running" in k)
    assert m.ema.model.training and m.ema.model.features[0][1].momentum == 0.1  # modes restored
    x = _fixed_batch().images[:, 1]
    l1, _ = m._teacher_forward(x)
    l2, _ = m._teacher_forward(x)
    assert torch.equal(l1, l2)


# ------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("name, heads", [("udcd", None), ("udcd-code", "code"), ("udcd-code", "ema")])
def test_gradient_reaches_student_only(name: str, heads: str | None) -> None:
    m = _method(name, **({"warmup_epochs": 0, "heads": heads} if name == "udcd-code" else {}))
    trained_heads = heads != "code"
    m.train()
    batch = _fixed_batch()
    m.training_loss(batch, 0, 0)  # fill the banks once so every term is non-trivial
    out = m.training_loss(batch, 0, 1)
    expected_terms = {"wce", "kl", "scl", "cra"} if name == "udcd" else {"wce", "cons", "ccd", "rel"}
    assert expected_terms <= set(out.logs) and all(math.isfinite(v) for v in out.logs.values())
    out.loss.backward()
    assert all(p.grad is not None for p in m.student.classifier.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in m.student.features.parameters())
    if trained_heads:
        assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in m.student_head.parameters())
    else:  # the code's embed_s is outside the optimizer
        assert all(p.grad is None and not p.requires_grad for p in m.student_head.parameters())
    assert all(p.grad is None and not p.requires_grad for p in m.ema.parameters())
    for b in (m.memory_s, m.memory_t):
        assert not b.requires_grad and b.grad is None
    ids = {id(p) for p in m.trainable_parameters()}
    heads = m.student_head.parameters() if trained_heads else []
    assert ids == {id(p) for p in itertools.chain(m.student.parameters(), heads)}
    assert out.logits is not None and out.logits.shape == (8, 3) and not out.logits.requires_grad


def test_weight_zero_skips_terms_and_warmup_skips_distillation() -> None:
    m = _method("udcd", lambda_kl=0.0, lambda_scl=0.0, lambda_cra=0.0)
    bank = m.memory_s.clone()
    m.train()
    logs = m.training_loss(_fixed_batch(), 0, 0).logs
    assert {"kl", "scl", "cra"}.isdisjoint(logs) and "wce" in logs and torch.equal(m.memory_s, bank)
    m = _method("udcd-code")  # warmup_epochs = 20
    bank = m.memory_s.clone()  # the variants start from different banks (Gaussian unit vs CRD uniform)
    m.train()
    out = m.training_loss(_fixed_batch(), 19, 0)
    assert set(out.logs) == {"wce", "distill"} and out.logs["distill"] == 0.0
    assert torch.equal(m.memory_s, bank)
    out = m.training_loss(_fixed_batch(), 20, 1)
    assert {"cons", "ccd", "rel"} <= set(out.logs) and not torch.equal(m.memory_s, bank)
    assert out.logs["nce_k"] == 4.0  # K = 4096 clipped to the 4 rows outside class 0


# ------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("name", ["udcd", "udcd-code"])
def test_few_steps_on_fixed_batch_lower_the_loss(name: str) -> None:
    m = _method(name, **({"warmup_epochs": 0} if name == "udcd-code" else {}))
    m.prepare(None, None)
    opt = torch.optim.Adam(list(m.trainable_parameters()), lr=1e-2)
    batch = _fixed_batch()
    m.train()
    losses = []
    for step in range(15):
        losses.append(float(train_step(m, opt, batch, 0, step).loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses


# ------------------------------------------------------------------------------------ export
@pytest.mark.parametrize("name", ["udcd", "udcd-code"])
def test_exported_student_is_the_plain_student(name: str) -> None:
    m = _method(name)
    plain = build_model("tiny_cnn", num_classes=3)
    sd = m.student.state_dict()
    assert list(sd) == list(plain.state_dict())
    assert all(sd[k].shape == v.shape for k, v in plain.state_dict().items())
    extra = m.extra_state_dict()
    assert not any(k.startswith("student.") for k in extra)
    assert {"memory_s", "memory_t", "bank_labels"} <= set(extra)
    assert any(k.startswith("ema.model.") for k in extra) and any(k.startswith("student_head.") for k in extra)
    # resume: a fresh method takes the saved banks/EMA back
    m.train()
    m.training_loss(_fixed_batch(), 0, 0)
    m.after_optimizer_step(3)
    fresh = _method(name)
    fresh.load_extra_state_dict(m.extra_state_dict())
    assert torch.equal(fresh.memory_t, m.memory_t)
    assert all(torch.equal(a, b) for a, b in zip(fresh.ema.parameters(), m.ema.parameters()))
    assert int(fresh.ema_updates) == 1


# ------------------------------------------------------------------------------------ udcd-code vs the authors' code
# References written from github.com/philsaurabh/UDCD_MICCAI (file:line in each docstring).
def _their_weighted_ce(logits: torch.Tensor, labels: torch.Tensor, counts) -> torch.Tensor:
    """train.py:127-130 weights = freq.sum()/freq; data/loader.py:41 one-hot float labels (np.eye);
    utils/trainer.py:87,125 nn.CrossEntropyLoss(weight=weights)(s_logits, target)."""
    freq = np.asarray(counts, dtype=np.float64)
    weights = torch.tensor(freq.sum() / freq)
    target = torch.tensor(np.eye(len(counts))[labels.numpy()])  # float64 one-hot
    return torch.nn.CrossEntropyLoss(weight=weights)(logits.double(), target)


def test_udcd_code_wce_is_the_codes_one_hot_weighted_ce() -> None:
    counts = (4, 3, 1)
    torch.manual_seed(11)
    logits, y = torch.randn(8, 3), torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])
    w = L.inverse_frequency_weights(counts)
    ref = _their_weighted_ce(logits, y, counts)
    assert math.isclose(float(L.weighted_ce(logits, y, w, denominator="batch")), float(ref), rel_tol=1e-5)
    # PyTorch's weighted mean (what udcd keeps) is smaller by mean(w_y): here 8/3 vs 8/4 vs 8/1
    assert not math.isclose(float(L.weighted_ce(logits, y, w)), float(ref), rel_tol=1e-2)
    m = _method("udcd-code", counts)  # warm-up epoch: the loss is the WCE alone
    m.train()
    out = m.training_loss(_fixed_batch(counts), 0, 0)
    ref = _their_weighted_ce(out.logits, _fixed_batch(counts).labels, counts)
    assert math.isclose(float(out.logs["wce"]), float(ref), rel_tol=1e-5)
    assert math.isclose(float(out.loss.detach()), float(ref), rel_tol=1e-5)


def _their_relation_loss(f_s, f_t, mem_s, mem_t, idx, labels, momentum, tau, num_classes):
    """utils/memory.py:79-95 (rows written, UPDATED buffers returned), utils/CRA.py:52-90 (anchors
    = l2norm(mean ReLU(rows of class c)) from those buffers), CRA.py:110-121 + losses.py:15-31."""
    mem_s, mem_t = mem_s.double().clone(), mem_t.double().clone()
    for mem, v in ((mem_s, f_s.double()), (mem_t, f_t.double())):
        pos = mem[idx] * momentum + v * (1 - momentum)
        mem.index_copy_(0, idx, pos / pos.pow(2).sum(1, keepdim=True).pow(0.5))

    def anchors(mem):
        a = torch.stack([F.relu(mem[labels == c]).mean(0) for c in range(num_classes)])
        return a / a.pow(2).sum(1, keepdim=True).pow(0.5)

    s_rel = f_s.double() @ anchors(mem_s).t() / tau
    t_rel = f_t.double() @ anchors(mem_t).t() / tau
    ps = torch.softmax(s_rel, 1)
    weight = -(ps * torch.log(ps + 1e-6)).sum(1) / math.log(num_classes)
    pt = torch.softmax(t_rel, 1)
    kl = (pt * (pt.log() - torch.log_softmax(s_rel, 1))).sum(1)
    return float((kl * weight).mean())


@pytest.mark.parametrize("heads", ["code", "ema"])
def test_udcd_code_anchors_come_from_the_updated_banks(heads: str) -> None:
    m = _method("udcd-code", warmup_epochs=0, cons_weight=0.0, ccd_weight=0.0, heads=heads)
    m.train()
    batch = _fixed_batch()
    bank_s, bank_t = m.memory_s.clone(), m.memory_t.clone()
    out = m.training_loss(batch, 0, 0)
    with torch.no_grad():  # the same embeddings again (BN on batch statistics: same output)
        z_s = m.student_head(m.student.forward_all(batch.images[:, 0]).pooled)
        _, t_pooled = m._teacher_forward(batch.images[:, 1])
        z_t = m.ema.head(t_pooled)
    args = (batch.indices, batch.labels, 0.5, 0.07, 3)
    ref = _their_relation_loss(z_s, z_t, bank_s, bank_t, *args)
    assert math.isclose(float(out.logs["rel"]), ref, rel_tol=1e-4)
    # reading the banks before the update (the former behaviour) gives another value
    stale = L.uncertainty_weighted_kl(L.relation_matrix(z_s, L.class_anchors(bank_s, batch.labels, 3), 0.07),
                                      L.relation_matrix(z_t, L.class_anchors(bank_t, batch.labels, 3), 0.07),
                                      L.relation_matrix(z_s, L.class_anchors(bank_s, batch.labels, 3), 0.07))
    assert not math.isclose(float(stale), ref, rel_tol=1e-2)


def test_udcd_code_banks_start_as_crd_uniform() -> None:
    m = _method("udcd-code", embed_dim=12, seed=5)
    n, d = m.memory_s.shape
    for bank, seed in ((m.memory_s, 5), (m.memory_t, 6)):
        g = torch.Generator().manual_seed(seed)  # utils/memory.py:20-22, with our seeded generator
        stdv = 1.0 / math.sqrt(d / 3)
        ref = torch.rand(n, d, generator=g).mul_(2 * stdv).add_(-stdv)
        assert torch.allclose(bank, ref, atol=1e-7)
        assert float(bank.abs().max()) <= stdv
    assert not torch.allclose(m.memory_s.norm(dim=1), torch.ones(n))  # not unit rows
    p = _method("udcd", embed_dim=12, seed=5)  # the paper variant keeps Gaussian unit vectors
    assert torch.allclose(p.memory_s.norm(dim=1), torch.ones(n))


def test_udcd_code_recipe_is_the_codes_onecycle() -> None:
    from torch import nn

    from distill.config import config_from_dict, defaults_tree
    from distill.optim import build_optimizer, build_scheduler

    steps = 3
    # utils/trainer.py:60-62, 79-81: Adam(lr=args.lr=1e-4, weight_decay=1e-5), OneCycleLR(max_lr=3e-4)
    theirs = nn.Linear(2, 2)
    t_opt = torch.optim.Adam(theirs.parameters(), lr=1e-4, weight_decay=1e-5)
    t_sch = torch.optim.lr_scheduler.OneCycleLR(t_opt, max_lr=3e-4, epochs=80, steps_per_epoch=steps)
    assert t_opt.param_groups[0]["lr"] == pytest.approx(3e-4 / 25)
    for name in ("udcd-code", "udcd"):
        cfg = config_from_dict(defaults_tree(name))
        ours = nn.Linear(2, 2)
        opt = build_optimizer(cfg, ours, list(ours.parameters()))
        sch, when = build_scheduler(cfg, opt, steps)
        assert when == "step" and len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 1e-5
        t_opt2 = torch.optim.Adam(nn.Linear(2, 2).parameters(), lr=1e-4, weight_decay=1e-5)
        t_sch2 = torch.optim.lr_scheduler.OneCycleLR(t_opt2, max_lr=3e-4, epochs=80, steps_per_epoch=steps)
        for _ in range(80 * steps):
            assert opt.param_groups[0]["lr"] == pytest.approx(t_opt2.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
            assert opt.param_groups[0]["betas"] == pytest.approx(t_opt2.param_groups[0]["betas"])
            opt.step(), t_opt2.step()
            sch.step(), t_sch2.step()
    del t_sch


def test_udcd_code_heads_are_the_codes_fixed_random_projections() -> None:
    m = _method("udcd-code", warmup_epochs=0)
    s_head, t_head = m.student_head, m.ema.head
    lin = [mod for mod in s_head.modules() if isinstance(mod, torch.nn.Linear)]
    assert len(lin) == 1 and lin[0].in_features == 32 and lin[0].out_features == 128
    x = torch.randn(5, 32)
    w, b = lin[0].weight.double(), lin[0].bias.double()
    ref = x.double() @ w.t() + b  # utils/CRA.py:161-171 Embed: linear, then x / ||x||
    ref = ref / ref.pow(2).sum(1, keepdim=True).pow(0.5)
    assert torch.allclose(s_head(x).double(), ref, atol=1e-6)
    assert not torch.allclose(s_head(x), t_head(x))  # embed_s and embed_t are independent
    assert not any(p.requires_grad for p in s_head.parameters())  # outside the optimizer
    before = {k: v.clone() for k, v in itertools.chain(s_head.state_dict().items(),
                                                        (("t." + k, v) for k, v in t_head.state_dict().items()))}
    m.prepare(None, None)  # fresh run: copies the student into the teacher, NOT the heads
    opt = torch.optim.Adam(list(m.trainable_parameters()), lr=1e-2)
    m.train()
    for step in range(2):
        train_step(m, opt, _fixed_batch(), 0, step)
    after = dict(itertools.chain(s_head.state_dict().items(), (("t." + k, v) for k, v in t_head.state_dict().items())))
    assert all(torch.equal(before[k], after[k]) for k in before)  # never trained, never EMA-ed
    assert _method("udcd-code").student_head.state_dict()["linear.weight"].equal(s_head.state_dict()["linear.weight"])


def test_frozen_z_nce_grows_with_similarity_to_negatives() -> None:
    """udcd-code's scale note: with Z frozen on a random first batch (utils/memory.py:65-77), the
    NCE (utils/CRA.py:133-158) is log(1 + Kμ0 e^{-s0/τ}) + Σ_k log(1 + e^{s_k/τ}/(Kμ0)) per sample,
    so it grows ~exp(Δc/τ) with the cosine c to the negatives while the positive stays fixed."""
    g = torch.Generator().manual_seed(0)
    n, d, k, b, tau = 2000, 128, 500, 16, 0.07
    bank0 = L.uniform_bank(n, d, 1)
    z0 = F.normalize(torch.randn(b, d, generator=g), dim=1)
    cidx = torch.randint(0, n, (b, 1 + k), generator=g)
    z_frozen = float(L.nce_scores(z0, bank0, cidx, tau).double().mean()) * n  # CRD's NCEAverage
    mu0 = z_frozen / n
    assert 1.8 < mu0 < 2.8  # ≈ exp(1/(2 d τ²)) = 2.22
    u = F.normalize(torch.randn(d, generator=g, dtype=D64), dim=0)  # the anchor z
    perp = torch.randn(1 + k, d, generator=g, dtype=D64)
    perp = F.normalize(perp - (perp @ u).unsqueeze(1) * u, dim=1)  # unit vectors orthogonal to z
    values = []
    for c in (0.0, 0.2, 0.4, 0.6):  # every negative at cosine c from z, the positive at 0.9
        cos = torch.full((1 + k, 1), c, dtype=D64)
        cos[0] = 0.9
        bank = cos * u + (1 - cos ** 2).sqrt() * perp
        scores = L.nce_scores(u.unsqueeze(0), bank, torch.arange(1 + k).unsqueeze(0), tau)
        values.append(float(L.nce_loss(scores / z_frozen, n)))
        mpn = k / n  # the closed form above, with CRD's ε kept
        expected = (math.log(1 + (mpn + L.NCE_EPS) * z_frozen * math.exp(-0.9 / tau))
                    + k * math.log(1 + (math.exp(c / tau) / z_frozen + L.NCE_EPS) / mpn))
        assert math.isclose(values[-1], expected, rel_tol=1e-6)
    assert values == sorted(values) and values[-1] / values[0] > 100, values


def _ccd_run(heads: str, epochs: int) -> list[dict[str, float]]:
    counts = [235, 39, 38, 18, 12, 5, 4]  # HAM10000's class proportions, /28
    n, c = sum(counts), len(counts)
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(c, 3, 16, 16, generator=g)
    y = torch.tensor([k for k, cnt in enumerate(counts) for _ in range(cnt)])
    base = protos[y] + 1.5 * torch.randn(n, 3, 16, 16, generator=g)
    torch.manual_seed(0)
    cls = get_method("udcd-code")
    ctx = MethodContext(num_classes=c, class_counts=counts, num_train=n, device=torch.device("cpu"),
                        epochs=epochs, steps_per_epoch=n // 64)
    m = cls(build_model("tiny_cnn", num_classes=c), None, cls.config_cls(warmup_epochs=0, heads=heads), ctx)
    m.prepare(None, None)
    opt = torch.optim.Adam(list(m.trainable_parameters()), lr=1e-3)
    rows, step = [], 0
    for ep in range(epochs):
        perm, acc = torch.randperm(n, generator=g), {}
        for i in range(n // 64):
            idx = perm[i * 64:(i + 1) * 64]
            views = base[idx].unsqueeze(1) + 0.5 * torch.randn(64, 2, 3, 16, 16, generator=g)
            out = train_step(m, opt, Batch(images=views, labels=y[idx], indices=idx), ep, step)
            step += 1
            for key in ("wce", "ccd_s", "ccd_t"):
                acc.setdefault(key, []).append(float(out.logs[key]))
        rows.append({k: sum(v) / len(v) for k, v in acc.items()})
    return rows


def test_ccd_scale_with_the_codes_heads_vs_shared_ema_heads() -> None:
    """Measured side of udcd-code's scale note (1 thread, a few seconds): with shared trained/EMA
    heads the teacher half (no gradient) grows several-fold while the CE falls; with the code's
    independent fixed heads both halves stay near their start."""
    ema = _ccd_run("ema", 4)
    assert ema[-1]["wce"] < ema[0]["wce"]
    assert ema[-1]["ccd_t"] > 2.0 * ema[0]["ccd_t"] and ema[-1]["ccd_s"] < ema[0]["ccd_s"], ema
    code = _ccd_run("code", 4)
    assert code[-1]["wce"] < code[0]["wce"]
    for key in ("ccd_s", "ccd_t"):
        assert 0.75 < code[-1][key] / code[0][key] < 1.3, code


def test_sampling_generator_state_round_trips_and_degrades_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """The checkpoint holds UDCD's sampling generator: an unused one (warm-up) resumes silently from its seed, a used
    one continues (also when saved again before sampling), and one that cannot continue — a checkpoint from before
    the generator was saved, or a CUDA generator resumed on CPU — starts from its seed with a warning."""
    cpu = torch.device("cpu")
    m = _method("udcd")
    unused = m.extra_state_dict()
    assert unused["sampling_generator_state"].numel() == 0
    with caplog.at_level("WARNING", logger="distill.methods.udcd"):
        fresh = _method("udcd")
        fresh.load_extra_state_dict(unused)
    assert "sampling generator" not in caplog.text
    assert torch.equal(fresh._gen(cpu).get_state(), _method("udcd")._gen(cpu).get_state())  # from its seed

    torch.randint(0, 100, (5,), generator=m._gen(cpu))  # sampled: the state moved on
    used = m.extra_state_dict()
    assert used["sampling_generator_device"] == "cpu"
    resumed = _method("udcd")
    resumed.load_extra_state_dict(used)
    again = resumed.extra_state_dict()  # saved before sampling again: the loaded state stands
    assert torch.equal(again["sampling_generator_state"], used["sampling_generator_state"])
    assert torch.equal(resumed._gen(cpu).get_state(), m._gen(cpu).get_state())

    for broken, why in (({k: v for k, v in used.items() if not k.startswith("sampling_generator")}, "no state"),
                        ({**used, "sampling_generator_device": "cuda"}, "cannot continue on cpu")):
        caplog.clear()
        with caplog.at_level("WARNING", logger="distill.methods.udcd"):
            other = _method("udcd")
            other.load_extra_state_dict(broken)
            state = other._gen(cpu).get_state()
        assert why in caplog.text and "bit-identical" in caplog.text
        assert torch.equal(state, _method("udcd")._gen(cpu).get_state())  # from its seed
