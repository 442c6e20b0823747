"""UDCD (``udcd`` = paper, ``udcd-code`` = public code): every loss term against a float64
reference written here, the EMA teacher, memory-bank bookkeeping, gradient routing, a tiny
training run and the export contract. CPU only, tiny_cnn, a few seconds in all."""
from __future__ import annotations

import itertools
import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import Subset, TensorDataset  # noqa: E402

from distill.methods import udcd_losses as L  # noqa: E402
from distill.methods.base import Batch, MethodContext  # noqa: E402
from distill.methods.registry import get_method, list_methods  # noqa: E402
from distill.models import build_model  # noqa: E402

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
    assert (c.warmup_epochs, c.ccd_weight, c.rel_weight, c.nce_k, c.bank_momentum, c.ema_decay) == (20, 0.1, 25.0, 4096, 0.5, 0.99)
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
            for name, b in mod.named_buffers():
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
@pytest.mark.parametrize("name", ["udcd", "udcd-code"])
def test_gradient_reaches_student_only(name: str) -> None:
    m = _method(name, **({"warmup_epochs": 0} if name == "udcd-code" else {}))
    m.train()
    batch = _fixed_batch()
    m.training_loss(batch, 0, 0)  # fill the banks once so every term is non-trivial
    out = m.training_loss(batch, 0, 1)
    expected_terms = {"wce", "kl", "scl", "cra"} if name == "udcd" else {"wce", "cons", "ccd", "rel"}
    assert expected_terms <= set(out.logs) and all(math.isfinite(v) for v in out.logs.values())
    out.loss.backward()
    assert all(p.grad is not None for p in m.student.classifier.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in m.student.features.parameters())
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in m.student_head.parameters())
    assert all(p.grad is None and not p.requires_grad for p in m.ema.parameters())
    for b in (m.memory_s, m.memory_t):
        assert not b.requires_grad and b.grad is None
    ids = {id(p) for p in m.trainable_parameters()}
    assert ids == {id(p) for p in itertools.chain(m.student.parameters(), m.student_head.parameters())}
    assert out.logits is not None and out.logits.shape == (8, 3) and not out.logits.requires_grad


def test_weight_zero_skips_terms_and_warmup_skips_distillation() -> None:
    m = _method("udcd", lambda_kl=0.0, lambda_scl=0.0, lambda_cra=0.0)
    bank = m.memory_s.clone()
    m.train()
    logs = m.training_loss(_fixed_batch(), 0, 0).logs
    assert {"kl", "scl", "cra"}.isdisjoint(logs) and "wce" in logs and torch.equal(m.memory_s, bank)
    m = _method("udcd-code")  # warmup_epochs = 20
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
        out = m.training_loss(batch, 0, step)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        m.after_optimizer_step(step)
        losses.append(float(out.loss.detach()))
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
